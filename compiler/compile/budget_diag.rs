//! E0401: the refusal of a policy over the verifier's budget (`lower::budget`), naming
//! the rules that cost most and what to change.

use crate::diag::{Code, Diag};
use crate::hir::{self, Test};
use crate::lower::budget::{self, Budget, Over, BPF_COMPLEXITY_LIMIT_INSNS, MARGIN_PERCENT};
use crate::lower::lir::Mark;
use crate::syntax::Span;

/// The refusal of a policy whose counters take more than `limit` bytes.
fn counters_refusal(policy: &hir::Policy, limit: u64) -> Option<Diag> {
    let size = skpc_abi::Counter::SIZE as u64;
    let bytes = policy.counters.len() as u64 * size;
    if bytes <= limit {
        return None;
    }
    // The first rule whose counter does not fit (the named counters and the default
    // come after the rules).
    let span = policy
        .rules
        .get((limit / size) as usize)
        .map(|r| r.span)
        .or(policy.default.span)
        .unwrap_or(Span { start: 0, end: 0 });
    Some(
        Diag::new(
            Code::VerifierBudget,
            format!(
                "skpc cannot count this policy: its {} counters (one per rule, per `count NAME` and the default) take {bytes} bytes, over the {limit} bytes of its {} counters maps (the kernel creates no larger map value than 4 MiB)",
                policy.counters.len(),
                skpc_abi::COUNTER_CHUNKS_MAX
            ),
            span,
        )
        .label("the counters from here on do not fit")
        .help("split the policy into smaller ones (one per cgroup), or build it with `skpc build --no-counters`"),
    )
}

/// What the estimate is, under every refusal.
const NOTE: &str = "the estimate is an upper bound of the verifier's work, calibrated against Linux (docs/language.md, \"The verifier's budget\")";
/// How many of the costliest rules the diagnostic names.
const NAMED_RULES: usize = 3;
/// An inline set with more elements than this is worth naming in the help.
const LARGE_SET: usize = 64;

/// The most bytes of counters a policy may have: `skpc_abi::COUNTER_CHUNKS_MAX` maps of
/// the largest value the kernel creates (`KMALLOC_MAX_SIZE` with 4 KiB pages, which
/// `array_map_alloc_check` holds an ARRAY's value to).
pub const MAX_MAP_VALUE_BYTES: u64 = skpc_abi::COUNTER_CHUNKS_MAX as u64
    * skpc_abi::COUNTER_CHUNK_SLOTS as u64
    * skpc_abi::Counter::SIZE as u64;

/// The E0401 error for `budget`, or None when the program fits.
pub(super) fn refusal(policy: &hir::Policy, budget: &Budget) -> Option<Diag> {
    if let Some(d) = counters_refusal(policy, MAX_MAP_VALUE_BYTES) {
        return Some(d);
    }
    let over = budget.over()?;
    let message = match over {
        Over::Processed {
            estimate,
            refused_above,
        } => format!(
            "the kernel's verifier would reject this policy: its program costs an estimated {estimate} processed instructions, over skpc's limit of {refused_above} ({MARGIN_PERCENT}% of the kernel's {BPF_COMPLEXITY_LIMIT_INSNS})"
        ),
        Over::Size { slots, limit } => format!(
            "the kernel would reject this policy: its program has {slots} instructions, over the kernel's limit of {limit}"
        ),
        Over::Stack { bytes, limit } => format!(
            "skpc generated a program using {bytes} bytes of stack, over the kernel's {limit}: this is a bug in skpc, please report it with this policy"
        ),
        Over::Maps { maps, limit } => format!(
            "the kernel would reject this policy: its program uses {maps} maps, over the kernel's limit of {limit} per program"
        ),
        Over::JumpChain { jumps, limit } => format!(
            "the kernel's verifier would reject this policy: a path through its program leaves {jumps} conditional jumps pending at once, over the verifier's limit of {limit}"
        ),
    };
    if let Over::Maps { limit, .. } = over {
        return Some(maps_refusal(policy, budget, message, limit));
    }
    // The costliest marks that stand for a rule (a parser stands for the first rule
    // reading its protocol; the default and the shared tails for no rule).
    let rules: Vec<(usize, Mark, u64)> = budget
        .costs
        .iter()
        .filter_map(|&(m, c)| match m {
            Mark::Rule(i) | Mark::Parser { rule: i, .. } => Some((i, m, c)),
            _ => None,
        })
        .filter(|(i, _, _)| *i < policy.rules.len())
        .take(NAMED_RULES)
        .collect();
    let share = |c: u64| c * 100 / budget.estimate.max(1);
    let Some(&(first, first_mark, first_cost)) = rules.first() else {
        let span = policy.default.span.unwrap_or(Span { start: 0, end: 0 });
        return Some(
            Diag::new(Code::VerifierBudget, message, span)
                .label("the program's shared code is over the budget")
                .help("split the policy into smaller ones"),
        );
    };
    let rules_of_code: Vec<usize> = budget
        .costs
        .iter()
        .filter_map(|(m, _)| match m {
            Mark::Rule(i) => Some(*i),
            _ => None,
        })
        .filter(|i| *i < policy.rules.len())
        .collect();
    let many_rules_help = format!(
        "{} rules are compiled to code: rules that compare only ports, addresses, payload bytes or slices, uid, gid, pid, cgroup or comm with values (besides one range of `len`, `uid`, `gid`, `pid` or a port), or one protocol field with strings, are looked up in the rule index instead; rules comparing one field with many values are cheaper as one rule over a set (`drop if uid in {{...}};`); or split the policy into smaller ones (one per cgroup)",
        rules_of_code.len()
    );
    if let (Over::JumpChain { jumps, .. }, Some(&lo), Some(&hi)) =
        (over, rules_of_code.iter().min(), rules_of_code.iter().max())
    {
        let d = Diag::new(Code::VerifierBudget, message, policy.rules[lo].span)
            .label(format!(
                "from here, {} rules of code leave up to {jumps} branches pending at once",
                rules_of_code.len()
            ))
            .secondary(policy.rules[hi].span, "to here");
        return Some(d.help(many_rules_help).note(NOTE));
    }
    let mut d = Diag::new(Code::VerifierBudget, message, policy.rules[first].span).label(format!(
        "{} an estimated {first_cost} ({}% of the estimate)",
        what_costs(first_mark),
        share(first_cost)
    ));
    for &(i, m, c) in &rules[1..] {
        d = d.secondary(
            policy.rules[i].span,
            format!("{} an estimated {c} ({}%)", what_costs(m), share(c)),
        );
    }
    let limit = match over {
        Over::Processed { refused_above, .. } => refused_above,
        _ => budget::refused_above(),
    };
    let help = match first_mark {
        Mark::Parser { proto, .. } => format!(
            "the {} parser's bounded loops cost {first_cost} to verify: drop the tests of `{}` fields, or keep them in a policy of their own",
            proto.name(),
            proto.name()
        ),
        _ if share(first_cost) >= 50 => match largest_set(&policy.rules[first].cond) {
            Some(n) => format!(
                "this rule's {n} values are searched in code: about {} of them fit in one policy; shrink the set (aggregate its prefixes) or split it across policies",
                (n as u64).saturating_mul(limit) / first_cost.max(1)
            ),
            None => "simplify this rule, or split the policy".to_string(),
        },
        _ => many_rules_help,
    };
    Some(d.help(help).note(NOTE))
}

/// The refusal of a program that uses more maps than the kernel allows: each large set
/// is a map of its own (and each group of protocol-field rules in the index), so it
/// points at the rule that brings in the first map over the limit.
fn maps_refusal(policy: &hir::Policy, budget: &Budget, message: String, limit: u64) -> Diag {
    let rule = match budget.first_map_over {
        Some(Mark::Rule(i) | Mark::Parser { rule: i, .. }) => policy.rules.get(i),
        _ => None,
    };
    let span = rule
        .map(|r| r.span)
        .or(policy.default.span)
        .unwrap_or(Span { start: 0, end: 0 });
    Diag::new(Code::VerifierBudget, message, span)
        .label(format!("the map over the limit of {limit} is this rule's"))
        .help("every large set is a map of its own: merge the sets one field is tested against into one (`uid in a or uid in b` as `uid in ab`), or split the policy into smaller ones (one per cgroup)")
}

fn what_costs(m: Mark) -> String {
    match m {
        Mark::Parser { proto, .. } => format!("the {} parser this rule needs costs", proto.name()),
        _ => "costs".to_string(),
    }
}

/// The element count of the largest inline set in `cond`, when over `LARGE_SET`.
fn largest_set(cond: &hir::Cond) -> Option<usize> {
    cond.tests()
        .map(|t| match t {
            Test::Int { ranges, .. } => ranges.len(),
            Test::Addr { nets, .. } => nets.len(),
            Test::Payload { alts, .. } | Test::Comm { alts, .. } | Test::Text { alts, .. } => {
                alts.len()
            }
            // A set read from a file is a map whatever its size.
            Test::Proto(_) | Test::InFile { .. } => 0,
        })
        .max()
        .filter(|&n| n > LARGE_SET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_over_the_largest_map_value_are_refused_at_the_first_rule_over() {
        let src = "drop if port == 1;\ndrop if port == 2;\ndrop if port == 3;";
        let (policy, _) = crate::check::check_in(src, None);
        let policy = policy.expect("checks");
        // Four counters (three rules and the default): 64 bytes.
        assert!(counters_refusal(&policy, 64).is_none());
        let d = counters_refusal(&policy, 32).expect("refused");
        assert!(d.message.contains("its 4 counters"), "{}", d.message);
        assert!(d.message.contains("64 bytes"), "{}", d.message);
        assert_eq!(&src[d.span.start..d.span.end], "drop if port == 3;");
    }
}
