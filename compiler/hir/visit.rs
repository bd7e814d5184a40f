//! Walking a condition: the backend asks many questions of a condition that differ only
//! in what they look for at a test (does any test call a helper, read this field, cost
//! this much), so the recursion over `and`/`or`/`not` is written once, here.

use super::{Cond, Test};

impl Cond {
    /// Every test of the condition, depth first and left to right, under any `not`,
    /// `and` or `or` (constants have none).
    pub fn tests(&self) -> Tests<'_> {
        Tests { stack: vec![self] }
    }

    /// Whether some test of the condition satisfies `f`.
    pub fn any_test(&self, f: impl FnMut(&Test) -> bool) -> bool {
        self.tests().any(f)
    }

    /// The operands of the condition's `or`, with nested `or`s flattened: `a or (b or c)`
    /// gives `a`, `b`, `c`; any other condition gives itself; an empty `or` nothing.
    pub fn disjuncts(&self) -> Disjuncts<'_> {
        Disjuncts { stack: vec![self] }
    }
}

/// The tests of a condition (see [`Cond::tests`]).
pub struct Tests<'a> {
    /// Conditions still to visit, the next on top.
    stack: Vec<&'a Cond>,
}

impl<'a> Iterator for Tests<'a> {
    type Item = &'a Test;

    fn next(&mut self) -> Option<&'a Test> {
        while let Some(c) = self.stack.pop() {
            match c {
                Cond::Const(_) => {}
                Cond::Not(x) => self.stack.push(x),
                Cond::And(cs) | Cond::Or(cs) => self.stack.extend(cs.iter().rev()),
                Cond::Test(t) => return Some(t),
            }
        }
        None
    }
}

/// The operands of a condition's `or` (see [`Cond::disjuncts`]).
pub struct Disjuncts<'a> {
    /// Conditions still to visit, the next on top.
    stack: Vec<&'a Cond>,
}

impl<'a> Iterator for Disjuncts<'a> {
    type Item = &'a Cond;

    fn next(&mut self) -> Option<&'a Cond> {
        while let Some(c) = self.stack.pop() {
            match c {
                Cond::Or(cs) => self.stack.extend(cs.iter().rev()),
                other => return Some(other),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hir::IntField;

    fn int(field: IntField, v: u64) -> Cond {
        Cond::Test(Test::Int {
            field,
            ranges: vec![(v, v)],
        })
    }

    fn value(t: &Test) -> u64 {
        match t {
            Test::Int { ranges, .. } => ranges[0].0,
            _ => u64::MAX,
        }
    }

    #[test]
    fn tests_come_in_source_order_under_every_connective() {
        let c = Cond::And(vec![
            int(IntField::Len, 1),
            Cond::Not(Box::new(Cond::Or(vec![
                int(IntField::Len, 2),
                Cond::Const(true),
                int(IntField::Len, 3),
            ]))),
            int(IntField::Len, 4),
        ]);
        assert_eq!(c.tests().map(value).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(c.any_test(|t| value(t) == 3));
        assert_eq!(Cond::Const(false).tests().count(), 0);
    }

    #[test]
    fn disjuncts_flatten_nested_ors_only() {
        let and = Cond::And(vec![int(IntField::Len, 2), int(IntField::Len, 3)]);
        let c = Cond::Or(vec![
            int(IntField::Len, 1),
            Cond::Or(vec![and.clone(), int(IntField::Len, 4)]),
        ]);
        let d: Vec<&Cond> = c.disjuncts().collect();
        assert_eq!(d, [&int(IntField::Len, 1), &and, &int(IntField::Len, 4)]);
        assert_eq!(and.disjuncts().collect::<Vec<_>>(), [&and]);
        assert_eq!(Cond::Or(vec![]).disjuncts().count(), 0);
    }
}
