//! Warnings about rules that do nothing: never matching (W0001), never reached (W0002),
//! or evaluated before a `default` written above them (W0003).

use std::borrow::Cow;

use super::Checker;
use crate::diag::{Code, Diag};
use crate::hir::ranges::{complement, intersect};
use crate::hir::{self, Cond, IntField, Test};
use crate::syntax::Span;

impl Checker {
    /// W0003 for a `default` (at `span`) with rules after it.
    pub(super) fn default_position_warning(&mut self, span: Span, rules_after: bool) {
        if rules_after {
            self.diags.push(
                Diag::new(Code::DefaultNotLast, "`default` is not the last rule", span)
                    .label("rules after this line are still evaluated before the default")
                    .help("move `default` to the end of the policy, where it takes effect"),
            );
        }
    }

    pub(super) fn dead_rule_warnings(&mut self, rules: &[hir::Rule], default: Option<Span>) {
        let mut shadow: Option<&hir::Rule> = None;
        for r in rules {
            if let Some(s) = shadow {
                self.diags.push(
                    Diag::new(Code::NeverReached, "this rule is never reached", r.span)
                        .label("unreachable")
                        .secondary(s.span, "every message is decided here first")
                        .help(
                            "move this rule above the unconditional one, or give that one an `if`",
                        ),
                );
                continue;
            }
            let cond = &r.cond;
            if never_true(cond) {
                self.diags.push(
                    Diag::new(Code::NeverMatches, "this rule can never match", r.span)
                        .label("its condition is always false")
                        .help("check the values against the fields' ranges, or remove the rule"),
                );
            } else if r.action.is_terminal() && *cond == Cond::Const(true) {
                shadow = Some(r);
            }
        }
        if let (Some(s), Some(d)) = (shadow, default) {
            self.diags.push(
                Diag::new(Code::NeverReached, "the `default` is never reached", d)
                    .label("unreachable")
                    .secondary(s.span, "every message is decided here first")
                    .help("give the unconditional rule an `if`, or remove the default"),
            );
        }
    }
}

/// Whether a simplified condition can never hold: constant false, or an `and` whose
/// integer tests of one field leave no value (`len > 5000 and len < 10`). Only for the
/// W0001 warning: it does not change the HIR.
fn never_true(c: &Cond) -> bool {
    match c {
        Cond::Const(b) => !b,
        Cond::Or(cs) => cs.iter().all(never_true),
        Cond::And(cs) => {
            if cs.iter().any(never_true) {
                return true;
            }
            // The values each field may still take; an `and` tests a few fields, so a
            // list, and a field's first test's own ranges where they are the answer.
            let mut per_field: Vec<(IntField, Ranges)> = Vec::new();
            for c in cs {
                let (field, ranges): (IntField, Ranges) = match c {
                    Cond::Test(Test::Int { field, ranges }) => (*field, Cow::Borrowed(ranges)),
                    // `not payload[i] ...` also holds for a message too short to have byte
                    // i, so only the other fields' negations are complements.
                    Cond::Not(inner) => match &**inner {
                        Cond::Test(Test::Int { field, ranges })
                            if !matches!(field, IntField::PayloadByte(_)) =>
                        {
                            (*field, Cow::Owned(complement(ranges, field.max_value())))
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                let all = match per_field.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, all)) => {
                        *all = Cow::Owned(intersect(all, &ranges));
                        &**all
                    }
                    None => {
                        // Sorted, disjoint ranges within 0..=max are their own
                        // intersection with 0..=max.
                        let max = field.max_value();
                        let all = if ranges.last().map_or(true, |r| r.1 <= max) {
                            ranges
                        } else {
                            Cow::Owned(intersect(&[(0, max)], &ranges))
                        };
                        per_field.push((field, all));
                        &*per_field[per_field.len() - 1].1
                    }
                };
                if all.is_empty() {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Sorted, disjoint inclusive ranges, borrowed from a test or computed.
type Ranges<'a> = Cow<'a, [(u64, u64)]>;
