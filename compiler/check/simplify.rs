//! Constant folding of conditions: what every later pass relies on to see that a
//! condition is always true or always false (dead-rule warnings, code generation).

use super::hir::{Cond, Test};

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
            if matches!(field, super::hir::IntField::PayloadByte(_)) {
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
    use crate::check::hir::IntField;

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
