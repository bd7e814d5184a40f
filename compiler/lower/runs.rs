//! Rule runs: consecutive terminal rules with the same decision whose conditions are
//! plain value tests (integer fields, addresses) are evaluated as one search instead of
//! one rule after another.
//!
//! `drop if port == 1; drop if port == 2; ... drop if port == 1000;` decides exactly like
//! `drop if local.port in {1..1000 points} or remote.port in {...}`: the first matching
//! rule of a run has the run's decision whichever rule it is. The grouped test is a
//! binary search (see `Gen::ranges`), so a message costs O(log n) compares instead of n.
//! Which rule matched matters only for its counter; that is found, on the matching
//! path only, by testing the run's rules in order.

use crate::check::hir::{self, Action, Cond, Decision, End, IntField, Net, Test};
use crate::check::{normalize, simplify};

/// Runs shorter than this stay separate rules (a run's search only pays off when there
/// are several values to search).
pub(super) const MIN_RUN: usize = 4;

/// One step of the verdict program.
#[derive(Debug)]
pub(super) enum Step {
    /// Rule `index`, compiled on its own.
    Rule(usize),
    /// Rules `first..=last` (all terminal, one decision), tested together by `cond`.
    Run { first: usize, last: usize, cond: Cond },
}

/// Splits the rules into steps.
pub(super) fn plan(policy: &hir::Policy) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut i = 0;
    let rules = &policy.rules;
    while i < rules.len() {
        let Some((decision, _)) = value_rule(&rules[i]) else {
            steps.push(Step::Rule(i));
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < rules.len() && value_rule(&rules[j]).is_some_and(|(d, _)| d == decision) {
            j += 1;
        }
        if j - i >= MIN_RUN {
            let tests: Vec<Test> = rules[i..j].iter().filter_map(value_rule).flat_map(|(_, t)| t).collect();
            steps.push(Step::Run { first: i, last: j - 1, cond: group(tests) });
        } else {
            steps.extend((i..j).map(Step::Rule));
        }
        i = j;
    }
    steps
}

/// A terminal rule whose condition is an `or` of integer and address tests: its decision
/// and those tests.
fn value_rule(r: &hir::Rule) -> Option<(&Decision, Vec<Test>)> {
    let Action::Decide(d) = &r.action else { return None };
    let mut tests = Vec::new();
    collect(&simplify(&r.cond), &mut tests).then_some((d, tests))
}

fn collect(c: &Cond, out: &mut Vec<Test>) -> bool {
    match c {
        Cond::Or(cs) => cs.iter().all(|c| collect(c, out)),
        Cond::Test(t @ Test::Int { field, .. }) if !matches!(field, IntField::PayloadByte(_)) => {
            out.push(t.clone());
            true
        }
        Cond::Test(t @ Test::Addr { .. }) => {
            out.push(t.clone());
            true
        }
        _ => false,
    }
}

/// Merges tests of the same field (and addresses of the same end and mapping) into one.
fn group(tests: Vec<Test>) -> Cond {
    let mut ints: Vec<(IntField, Vec<(u64, u64)>)> = Vec::new();
    let mut addrs: Vec<((End, bool), Vec<Net>)> = Vec::new();
    for t in tests {
        match t {
            Test::Int { field, ranges } => match ints.iter_mut().find(|(f, _)| *f == field) {
                Some((_, all)) => all.extend(ranges),
                None => ints.push((field, ranges)),
            },
            Test::Addr { end, nets, mapped } => match addrs.iter_mut().find(|(k, _)| *k == (end, mapped)) {
                Some((_, all)) => all.extend(nets),
                None => addrs.push(((end, mapped), nets)),
            },
            // `collect` admits nothing else.
            other => return Cond::Test(other),
        }
    }
    let mut parts: Vec<Cond> =
        ints.into_iter().map(|(field, ranges)| Cond::Test(Test::Int { field, ranges: normalize(ranges) })).collect();
    for ((end, mapped), mut nets) in addrs {
        nets.sort();
        nets.dedup();
        parts.push(Cond::Test(Test::Addr { end, nets, mapped }));
    }
    simplify(&Cond::Or(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;

    #[test]
    fn a_port_chain_becomes_one_run_with_two_searches() {
        let src: String = (1..=10).map(|p| format!("drop if port == {};\n", p * 100)).collect();
        let p = check(&src).0.expect("checks");
        let steps = plan(&p);
        assert_eq!(steps.len(), 1);
        let Step::Run { first: 0, last: 9, cond: Cond::Or(parts) } = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(parts.len(), 2);
        for part in parts {
            let Cond::Test(Test::Int { ranges, .. }) = part else { panic!("{part:?}") };
            assert_eq!(ranges.len(), 10);
        }
    }

    #[test]
    fn runs_stop_at_other_decisions_and_other_shapes() {
        let src = "drop if port == 1;\ndrop if port == 2;\ndrop if port == 3;\ndrop if port == 4;\n\
                   pass if port == 5;\ndrop if port == 6 and len > 3;\n";
        let p = check(src).0.expect("checks");
        let steps = plan(&p);
        assert!(matches!(steps[0], Step::Run { first: 0, last: 3, .. }));
        assert!(matches!(steps[1], Step::Rule(4)));
        assert!(matches!(steps[2], Step::Rule(5)));
    }
}
