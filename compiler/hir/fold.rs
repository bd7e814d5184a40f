//! Constant folding of conditions: what every later pass relies on to see that a
//! condition is always true or always false (dead-rule warnings, code generation).

use super::{Cond, Test};

/// Folds constants, flattens nested `and`/`or`, removes double negation.
pub fn simplify(c: &Cond) -> Cond {
    match c {
        Cond::Const(b) => Cond::Const(*b),
        Cond::Test(t) => match fold_test(t) {
            Some(b) => Cond::Const(b),
            None => Cond::Test(t.clone()),
        },
        Cond::Not(inner) => match simplify(inner) {
            Cond::Const(b) => Cond::Const(!b),
            Cond::Not(x) => *x,
            other => Cond::Not(Box::new(other)),
        },
        Cond::And(cs) => junction(cs, true),
        Cond::Or(cs) => junction(cs, false),
    }
}

/// [`simplify`] by value: the condition itself, without a copy, when it is already
/// simplified (as most are: the checker builds flat conditions).
pub fn fold(c: Cond) -> Cond {
    if is_simplified(&c) {
        c
    } else {
        simplify(&c)
    }
}

/// Whether [`simplify`] would return the condition unchanged.
fn is_simplified(c: &Cond) -> bool {
    match c {
        Cond::Const(_) => true,
        Cond::Test(t) => fold_test(t).is_none(),
        Cond::Not(inner) => {
            !matches!(**inner, Cond::Const(_) | Cond::Not(_)) && is_simplified(inner)
        }
        Cond::And(cs) => {
            cs.len() >= 2
                && cs
                    .iter()
                    .all(|c| !matches!(c, Cond::Const(_) | Cond::And(_)) && is_simplified(c))
        }
        Cond::Or(cs) => {
            cs.len() >= 2
                && cs
                    .iter()
                    .all(|c| !matches!(c, Cond::Const(_) | Cond::Or(_)) && is_simplified(c))
        }
    }
}

/// `and` when `is_and`, else `or`: the neutral element is `is_and`, the absorbing one `!is_and`.
fn junction(cs: &[Cond], is_and: bool) -> Cond {
    let mut out = Vec::with_capacity(cs.len());
    for c in cs {
        match simplify(c) {
            Cond::Const(b) if b == is_and => {}
            Cond::Const(b) => return Cond::Const(b),
            Cond::And(inner) if is_and => out.extend(inner),
            Cond::Or(inner) if !is_and => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Cond::Const(is_and),
        1 => out.pop().unwrap_or(Cond::Const(is_and)),
        _ if is_and => Cond::And(out),
        _ => Cond::Or(out),
    }
}

/// The constant value of a test, if it has one.
fn fold_test(t: &Test) -> Option<bool> {
    match t {
        Test::Int { ranges, .. } if ranges.is_empty() => Some(false),
        Test::Int { field, ranges } if ranges.len() == 1 && ranges[0] == (0, field.max_value()) => {
            // payload bytes still need the message to be long enough.
            if matches!(field, super::IntField::PayloadByte(_)) {
                None
            } else {
                Some(true)
            }
        }
        Test::Addr { nets, .. } if nets.is_empty() => Some(false),
        Test::Payload { alts, .. } if alts.is_empty() => Some(false),
        Test::Payload { offset: 0, alts } if alts.iter().any(|a| a.is_empty()) => Some(true),
        Test::Comm { alts, .. } if alts.is_empty() => Some(false),
        Test::Comm { alts, prefix: true } if alts.iter().any(|a| a.is_empty()) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hir::IntField;

    fn t(ranges: Vec<(u64, u64)>) -> Cond {
        Cond::Test(Test::Int {
            field: IntField::Len,
            ranges,
        })
    }

    #[test]
    fn folds_empty_and_full_ranges() {
        assert_eq!(simplify(&t(vec![])), Cond::Const(false));
        assert_eq!(simplify(&t(vec![(0, u32::MAX as u64)])), Cond::Const(true));
        assert_eq!(simplify(&Cond::Not(Box::new(t(vec![])))), Cond::Const(true));
    }

    #[test]
    fn fold_keeps_exactly_what_simplify_keeps() {
        let a = t(vec![(1, 2)]);
        let conds = [
            Cond::Const(true),
            a.clone(),
            t(vec![]),
            Cond::Not(Box::new(a.clone())),
            Cond::Not(Box::new(Cond::Not(Box::new(a.clone())))),
            Cond::Not(Box::new(Cond::Const(false))),
            Cond::And(vec![a.clone(), a.clone()]),
            Cond::And(vec![a.clone()]),
            Cond::And(vec![a.clone(), Cond::Const(true)]),
            Cond::And(vec![a.clone(), Cond::And(vec![a.clone(), a.clone()])]),
            Cond::And(vec![a.clone(), Cond::Or(vec![a.clone(), a.clone()])]),
            Cond::Or(vec![a.clone(), Cond::Or(vec![a.clone(), a.clone()])]),
            Cond::Or(vec![a.clone(), Cond::Not(Box::new(t(vec![])))]),
            Cond::Or(vec![]),
        ];
        for c in &conds {
            assert_eq!(fold(c.clone()), simplify(c), "{c:?}");
            // `fold` returns its argument untouched exactly where `simplify` keeps it.
            assert_eq!(is_simplified(c), simplify(c) == *c, "{c:?}");
        }
    }

    #[test]
    fn flattens_and_short_circuits() {
        let a = t(vec![(1, 2)]);
        let c = Cond::And(vec![
            Cond::Const(true),
            Cond::And(vec![a.clone(), a.clone()]),
        ]);
        assert_eq!(simplify(&c), Cond::And(vec![a.clone(), a.clone()]));
        assert_eq!(
            simplify(&Cond::Or(vec![a.clone(), Cond::Const(true)])),
            Cond::Const(true)
        );
        assert_eq!(
            simplify(&Cond::Not(Box::new(Cond::Not(Box::new(a.clone()))))),
            a
        );
    }
}
