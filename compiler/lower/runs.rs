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

use crate::hir::{self, Action, Cond, Decision, End, IntField, Net, Test};
use crate::hir::{fold::simplify, ranges::normalize};

/// Runs shorter than this stay separate rules (a run's search only pays off when there
/// are several values to search).
pub(super) const MIN_RUN: usize = 4;

/// One step of the verdict program.
#[derive(Debug)]
pub(super) enum Step {
    /// Rule `index`, compiled on its own.
    Rule(usize),
    /// Rules `first..=last` (all terminal, one decision), tested together by `cond`.
    /// `keyed`, when the run's tests allow it: the same search with every interval
    /// labelled by the first rule that matches it, which also finds the rule.
    Run {
        first: usize,
        last: usize,
        cond: Cond,
        keyed: Option<Vec<Keyed>>,
    },
    /// Indexed block `blocks[k]` (see `index`): its rules from `first` to `last`.
    Indexed(usize),
}

/// What a keyed search reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// A context word field (len, family, ports).
    Int(IntField),
    /// The IPv4 address of one end, in host order (and, with `mapped`, the IPv4-mapped
    /// address of an IPv6 socket).
    Addr4 { end: End, mapped: bool },
}

/// One keyed search: disjoint, sorted intervals, each with the index of the first rule
/// of the run that matches values in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Keyed {
    pub key: Key,
    pub intervals: Vec<(u64, u64, usize)>,
}

/// Intervals `(lo, hi)` labelled with a rule index.
type Labeled = Vec<(u64, u64, usize)>;

/// Keyed searches per run at most (each keeps an index and a flag in a stack word).
pub(super) const MAX_KEYS: usize = 8;

/// Splits the rules into steps; the rules of indexed `blocks` are one step per block.
pub(super) fn plan(
    policy: &hir::Policy,
    blocks: &[super::index::Block],
    set_maps_above: Option<usize>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut i = 0;
    let rules = &policy.rules;
    let mut blocks = blocks.iter().enumerate().peekable();
    while i < rules.len() {
        if let Some((k, b)) = blocks.next_if(|(_, b)| b.first == i) {
            steps.push(Step::Indexed(k));
            i = b.last + 1;
            continue;
        }
        let end = blocks.peek().map_or(rules.len(), |(_, b)| b.first);
        let Some((decision, _)) = value_rule(&rules[i], set_maps_above) else {
            steps.push(Step::Rule(i));
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < end && value_rule(&rules[j], set_maps_above).is_some_and(|(d, _)| d == decision) {
            j += 1;
        }
        if j - i >= MIN_RUN {
            let tests: Vec<Test> = rules[i..j]
                .iter()
                .filter_map(|r| value_rule(r, set_maps_above))
                .flat_map(|(_, t)| t)
                .collect();
            let keyed = keyed(&rules[i..j], i, set_maps_above);
            steps.push(Step::Run {
                first: i,
                last: j - 1,
                cond: group(tests),
                keyed,
            });
        } else {
            steps.extend((i..j).map(Step::Rule));
        }
        i = j;
    }
    steps
}

/// A terminal rule whose condition is an `or` of integer and address tests: its decision
/// and those tests.
fn value_rule(r: &hir::Rule, set_maps_above: Option<usize>) -> Option<(&Decision, Vec<Test>)> {
    let Action::Decide(d) = &r.action else {
        return None;
    };
    let tests = r
        .cond
        .disjuncts()
        .map(|c| match c {
            // A large set is a map lookup of its own (see `sets`), not part of a search.
            Cond::Test(t) if super::sets::shape(t, set_maps_above).is_some() => None,
            Cond::Test(t @ Test::Int { field, .. })
                if !matches!(field, IntField::PayloadByte(_)) =>
            {
                Some(t.clone())
            }
            Cond::Test(t @ Test::Addr { .. }) => Some(t.clone()),
            _ => None,
        })
        .collect::<Option<Vec<Test>>>()?;
    Some((d, tests))
}

/// The keyed searches of a run (rules `rules`, the first of which has index `base`), if
/// every test reads a context word or an IPv4 address and there are few keys.
fn keyed(rules: &[hir::Rule], base: usize, set_maps_above: Option<usize>) -> Option<Vec<Keyed>> {
    let mut keys: Vec<(Key, Labeled)> = Vec::new();
    for (k, r) in rules.iter().enumerate() {
        let (_, tests) = value_rule(r, set_maps_above)?;
        for t in tests {
            let (key, ranges): (Key, Vec<(u64, u64)>) = match t {
                Test::Int { field, ranges } if field.ctx_word().is_some() => {
                    (Key::Int(field), ranges)
                }
                Test::Addr { end, nets, mapped } => {
                    let mut ranges = Vec::new();
                    for n in nets {
                        match n {
                            Net::V4 { addr, prefix } => {
                                ranges.push((addr as u64, (addr | !hir::mask32(prefix)) as u64))
                            }
                            Net::V6 { .. } => return None,
                        }
                    }
                    (Key::Addr4 { end, mapped }, ranges)
                }
                _ => return None,
            };
            let slot = match keys.iter().position(|(k, _)| *k == key) {
                Some(p) => p,
                None => {
                    keys.push((key, Vec::new()));
                    keys.len() - 1
                }
            };
            keys[slot]
                .1
                .extend(ranges.into_iter().map(|(lo, hi)| (lo, hi, base + k)));
        }
    }
    if keys.len() > MAX_KEYS {
        return None;
    }
    Some(
        keys.into_iter()
            .map(|(key, labeled)| Keyed {
                key,
                intervals: envelope(labeled),
            })
            .collect(),
    )
}

/// Disjoint sorted intervals labelled with the smallest label covering them, from
/// intervals given in ascending label order (the first rule wins).
fn envelope(labeled: Vec<(u64, u64, usize)>) -> Vec<(u64, u64, usize)> {
    use std::collections::BTreeMap;
    let mut covered: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for (lo, hi, label) in labeled {
        // Existing intervals that overlap [lo, hi], in ascending order.
        let mut overlaps: Vec<(u64, u64)> = covered
            .range(..=hi)
            .rev()
            .map(|(s, (e, _))| (*s, *e))
            .take_while(|(_, e)| *e >= lo)
            .collect();
        overlaps.reverse();
        let mut at = lo;
        let mut done = false;
        for (s, e) in overlaps {
            if s > at {
                covered.insert(at, (s - 1, label));
            }
            if e >= hi {
                done = true;
                break;
            }
            at = e + 1;
        }
        if !done && at <= hi {
            covered.insert(at, (hi, label));
        }
    }
    let mut out: Vec<(u64, u64, usize)> = Vec::with_capacity(covered.len());
    for (s, (e, label)) in covered {
        match out.last_mut() {
            Some(last) if last.2 == label && last.1.checked_add(1) == Some(s) => last.1 = e,
            _ => out.push((s, e, label)),
        }
    }
    out
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
            Test::Addr { end, nets, mapped } => {
                match addrs.iter_mut().find(|(k, _)| *k == (end, mapped)) {
                    Some((_, all)) => all.extend(nets),
                    None => addrs.push(((end, mapped), nets)),
                }
            }
            // `collect` admits nothing else.
            other => return Cond::Test(other),
        }
    }
    let mut parts: Vec<Cond> = ints
        .into_iter()
        .map(|(field, ranges)| {
            Cond::Test(Test::Int {
                field,
                ranges: normalize(ranges),
            })
        })
        .collect();
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
        let src: String = (1..=10)
            .map(|p| format!("drop if port == {};\n", p * 100))
            .collect();
        let p = check(&src).0.expect("checks");
        let steps = plan(&p, &[], None);
        assert_eq!(steps.len(), 1);
        let Step::Run {
            first: 0,
            last: 9,
            cond: Cond::Or(parts),
            keyed: Some(keys),
        } = &steps[0]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].intervals[3], (400, 400, 3));
        assert_eq!(parts.len(), 2);
        for part in parts {
            let Cond::Test(Test::Int { ranges, .. }) = part else {
                panic!("{part:?}")
            };
            assert_eq!(ranges.len(), 10);
        }
    }

    #[test]
    fn the_envelope_gives_each_value_its_first_rule() {
        let e = envelope(vec![
            (10, 20, 0),
            (5, 30, 1),
            (15, 15, 2),
            (40, 40, 3),
            (31, 39, 4),
        ]);
        assert_eq!(
            e,
            vec![
                (5, 9, 1),
                (10, 20, 0),
                (21, 30, 1),
                (31, 39, 4),
                (40, 40, 3)
            ]
        );
        assert_eq!(
            envelope(vec![(0, u64::MAX, 7), (3, 3, 8)]),
            vec![(0, u64::MAX, 7)]
        );
    }

    #[test]
    fn runs_stop_at_other_decisions_and_other_shapes() {
        let src =
            "drop if port == 1;\ndrop if port == 2;\ndrop if port == 3;\ndrop if port == 4;\n\
                   pass if port == 5;\ndrop if port == 6 and len > 3;\n";
        let p = check(src).0.expect("checks");
        let steps = plan(&p, &[], None);
        assert!(matches!(
            steps[0],
            Step::Run {
                first: 0,
                last: 3,
                ..
            }
        ));
        assert!(matches!(steps[1], Step::Rule(4)));
        assert!(matches!(steps[2], Step::Rule(5)));
    }
}
