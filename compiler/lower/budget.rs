//! The verifier's budget: an upper bound of the instructions the kernel's verifier
//! processes (`verified_insns`) for a lowered policy program, per rule, and the kernel's
//! hard limits it is held to. `compile` refuses a policy over the budget (E0401) so that
//! skpc never writes an object the kernel rejects.
//!
//! How the verifier counts. It walks every path of the program, depth first, the
//! fall-through of a conditional jump first and the taken side later from a stack of
//! pending states, and counts every instruction it steps through, the same instruction
//! once per visit. At jump targets (prune points) it stops a walk whose state is covered
//! by one it saved there, but it saves a state only every few jumps and instructions.
//! skpc's rule code jumps forward only, with dead scratch registers at its joins, so
//! most walks stop a few instructions after their jump. The model, per slot:
//! - every instruction once, and a conditional jump's taken side `BRANCH_VISITS` more;
//!   the code of a rule that calls a helper, compares a cached field or branches more
//!   than once, and of every rule after it, `CODE_FACTOR` times over, the others' (the
//!   `flat` rules of large policies, one compare each) once (helper calls, log records
//!   and cached fields
//!   narrowed by compares keep states apart: measured up to 2.9 times the slots, 2.1
//!   times this sum without the factor);
//! - the code under one mark with many helper calls or branches (an indexed block, a
//!   rule that is an `or` of searches) once more per `CALLS_PER_VISIT` calls and per
//!   `JUMPS_PER_VISIT` branches, up to `MAX_MARK_FACTOR` (random policies of
//!   tests/differential_kernel.rs, which holds every one it loads to the estimate);
//! - a compare on a field cached in r8/r9 `NARROWED_VISITS` more (the narrowed value
//!   stays live and keeps later states apart);
//! - the first jump into each entry of the shared verdict tails walks the tail to its
//!   exit (later ones are pruned there: the counter slot in r7 is not precise);
//! - a bounded loop (the protocol parsers' `counted_loop`, a backward `if K < N goto`)
//!   once per round, nested loops multiplied, and the parsers `PARSER_FACTOR` times over
//!   (their ways out per round walk on until their states merge).
//!
//! It is an upper bound by calibration, not by proof: tests/kernel_budget.rs holds
//! every shape of policy and every construct to it against the kernel (actual at most
//! 0.98 of the estimate for the branch-free rules of large policies, which it counts
//! almost exactly, 0.91 for other rule code, 0.36 with a parser; exactly it for a
//! straight-line program), and the bench's `budget` part records it up to a million
//! elements. It is loose where it must cover the worst of its class (binary searches
//! over sets cost about a third of it), so skpc may refuse a policy that would load.
//!
//! Hard limits besides: the program's size, the stack (512 bytes), and the pending
//! branches (the conditional jumps whose fall-through one path follows, each leaving
//! its target on the stack).
//!
//! The estimate is linear in the program's size (one pass over the slots, one over the
//! jumps), so a policy of a million elements costs milliseconds here. Each cost is
//! charged to the mark of the instruction that causes it, so the refusal can name the
//! rules that cost most.

use std::collections::{HashMap, HashSet};

use crate::bpf::{Insn, Reg, Src};

use super::lir::{Assembled, Mark};

/// The kernel's limit of processed instructions (`BPF_COMPLEXITY_LIMIT_INSNS`,
/// kernel/bpf/verifier.c): a program whose walk processes more is rejected ("BPF
/// program is too large").
pub const BPF_COMPLEXITY_LIMIT_INSNS: u64 = 1_000_000;
/// The kernel's limit of pending branches (`BPF_COMPLEXITY_LIMIT_JMP_SEQ`): more
/// conditional jumps on one walk before it ends are rejected ("The sequence of N jumps
/// is too complex").
pub const BPF_COMPLEXITY_LIMIT_JMP_SEQ: u64 = 8192;
/// The largest program a privileged loader may load (`BPF_COMPLEXITY_LIMIT_INSNS` again,
/// as the size limit of `bpf_prog_load`), in 8-byte slots.
pub const BPF_MAX_PROGRAM_SLOTS: u64 = 1_000_000;

/// The most maps one program may use (`MAX_USED_MAPS`, include/linux/bpf_verifier.h):
/// the verifier rejects a program that loads more ("The total number of maps per
/// program has reached the limit of 64").
pub const MAX_USED_MAPS: u64 = 64;

/// The stack a program may use (`MAX_BPF_STACK`, include/linux/filter.h), in bytes.
pub const MAX_BPF_STACK: u64 = 512;

/// skpc refuses a policy whose estimate is over this share of the kernel's limit
/// (percent): the estimate is calibrated on one kernel, and other versions prune
/// differently.
pub const MARGIN_PERCENT: u64 = 80;

/// Extra visits of a conditional jump's taken side: its target (a prune point, where
/// the walk usually stops) and the instruction after.
const BRANCH_VISITS: u64 = 2;
/// Visits of every instruction on the first walk.
const VISIT_COST: u64 = 1;
/// The parsers' code costs more than its rounds: a round's ways out (a value found at
/// this round) walk on until their state merges, and the verifier keeps a state to
/// prune against only every few jumps. Measured over every parser field alone and
/// together (tests/kernel_budget.rs): the kernel processes at most 0.36 of the
/// estimate with this factor. It was 10 until the parser fixes of 2026-12-01 (scan
/// indexes unlinked from their start, the Host search branch-free, `lower::proto`): the
/// scans were then walked up to 7.7 times their rounds' slots.
const PARSER_FACTOR: u64 = 4;
/// Rule code whose walks stay apart (helper calls, log records, cached fields narrowed
/// by compares, several branches) costs more than one visit per instruction and branch:
/// measured up to 2.1 times that sum (1000 mixed rules; 1.0 for rules of one kind, 1.4
/// for the `log` construct), and more than 2 for the rule index's gated lookups (300
/// `discard` rules: 603 processed against 563 estimated at 2): 3 covers both.
const CODE_FACTOR: u64 = 3;
/// Code with many helper calls under one mark (an indexed block: a lookup, a gate and
/// a pull per tuple) is walked once more per this many calls: every call's outcomes
/// (found or not, pulled or not) leave the key words, the packet range and the best
/// rule in different states, which later tuples keep apart. Random indexed blocks of
/// 15 tuples and 45 calls (tests/differential_kernel.rs) were walked 5.7 times per slot
/// on average, 17 at most, against 3.8 estimated with `CODE_FACTOR` alone.
const CALLS_PER_VISIT: u64 = 4;
/// Likewise a rule with many branches (an `or` of searches over sets and ranges): its
/// tests narrow registers that stay live to its end, so the walks that leave one test
/// through different branches meet the next apart (a random 107-slot rule of 50
/// branches: 10.8 visits per slot).
const JUMPS_PER_VISIT: u64 = 16;
/// The most visits per instruction that calls and branches add up to.
const MAX_MARK_FACTOR: u64 = 16;
/// Extra visits of a compare on a field cached in a callee-saved register (r8, r9)
/// outside the parsers: the narrowed value stays live and keeps the states after the
/// compare apart until its last use (1000 mixed rules needed about 5 more per compare
/// than `CODE_FACTOR` gives).
const NARROWED_VISITS: u64 = 16;
/// Rounds assumed of a loop whose bound is in a register (skpc emits none).
const UNKNOWN_LOOP_ROUNDS: u64 = 4096;

/// What a lowered program costs the verifier, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The estimate of the processed instructions (an upper bound of verified_insns).
    pub estimate: u64,
    /// The program's size in slots.
    pub slots: u64,
    /// The most conditional jumps whose fall-through one forward path follows: the
    /// branches the verifier keeps pending at once on that path.
    pub jump_chain: u64,
    /// The estimate, per mark, costliest first.
    pub costs: Vec<(Mark, u64)>,
    /// The deepest stack access through r10, in bytes below the frame pointer.
    pub stack_bytes: u64,
    /// The distinct maps the program loads (`ld_imm64` of a map or of a map's value),
    /// and the mark of the instruction that loads the `MAX_USED_MAPS + 1`-th, if any.
    pub maps: u64,
    pub first_map_over: Option<Mark>,
}

/// Why a program would not load: which limit the budget exceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The estimated processed instructions are over the margin of the 1M limit.
    Processed { estimate: u64, refused_above: u64 },
    /// The program has more slots than the kernel loads.
    Size { slots: u64, limit: u64 },
    /// A forward path holds more conditional jumps than the verifier keeps pending.
    JumpChain { jumps: u64, limit: u64 },
    /// The program reaches deeper into its stack than the kernel gives it.
    Stack { bytes: u64, limit: u64 },
    /// The program uses more maps than the kernel lets one program use.
    Maps { maps: u64, limit: u64 },
}

/// The estimate skpc refuses above: `MARGIN_PERCENT` of the kernel's limit.
pub fn refused_above() -> u64 {
    BPF_COMPLEXITY_LIMIT_INSNS / 100 * MARGIN_PERCENT
}

impl Budget {
    /// The limit this budget exceeds, if any (the stack first, then the maps, then the
    /// size, then the jumps, then the processed instructions).
    pub fn over(&self) -> Option<Over> {
        let refused_above = refused_above();
        if self.stack_bytes > MAX_BPF_STACK {
            Some(Over::Stack {
                bytes: self.stack_bytes,
                limit: MAX_BPF_STACK,
            })
        } else if self.maps > MAX_USED_MAPS {
            Some(Over::Maps {
                maps: self.maps,
                limit: MAX_USED_MAPS,
            })
        } else if self.slots > BPF_MAX_PROGRAM_SLOTS {
            Some(Over::Size {
                slots: self.slots,
                limit: BPF_MAX_PROGRAM_SLOTS,
            })
        } else if self.jump_chain > BPF_COMPLEXITY_LIMIT_JMP_SEQ {
            Some(Over::JumpChain {
                jumps: self.jump_chain,
                limit: BPF_COMPLEXITY_LIMIT_JMP_SEQ,
            })
        } else if self.estimate > refused_above {
            Some(Over::Processed {
                estimate: self.estimate,
                refused_above,
            })
        } else {
            None
        }
    }
}

/// The budget of the verdict program `code`. Linear in its slots, with two `u32` and
/// (only for a program with loops) one `u64` per slot: a million-element policy has
/// millions of slots.
pub fn estimate(code: &Assembled) -> Budget {
    let n = code.marks.len();
    let mark_at = |slot: usize| code.marks.get(slot).copied().flatten();
    // Every instruction with its slot, from the last (the backward passes).
    let backward = || {
        let mut slot = n;
        code.insns.iter().rev().map(move |insn| {
            slot -= insn.slots();
            (slot, insn)
        })
    };

    // From each slot, the slots a walk steps through to its exit, following
    // fall-throughs and forward gotos: a jump into the shared tails walks to the end of
    // the tail it enters.
    let mut to_exit = vec![0u32; n + 1];
    // The most pending branches on a forward path from each slot (a loop's rounds each
    // end their pending branches before the next: its body counts once).
    let mut chain = vec![0u32; n + 1];
    for (slot, insn) in backward() {
        let after = slot + insn.slots();
        let forward = target(slot, insn).filter(|&t| t > slot && t <= n);
        let (walk, pending) = match (insn, forward) {
            (Insn::Exit, _) => (1, 0),
            // The verifier walks the fall-through first, with the target pending; the
            // target's own walk starts after that entry is taken off the stack.
            (i, Some(t)) if is_conditional(i) => {
                (1 + to_exit[after], (1 + chain[after]).max(chain[t]))
            }
            (_, Some(t)) => (1 + to_exit[t], chain[t]),
            (i, None) if i.jump_off().is_some() && !is_conditional(i) => (1, 0),
            _ => (1 + to_exit[after], chain[after]),
        };
        to_exit[slot] = walk.min(u32::MAX - 1);
        chain[slot] = pending;
    }

    // Bounded loops (the parsers' `counted_loop`: a backward `if K < count goto top`):
    // the verifier walks the body once per round, so every slot of a loop counts once
    // per round of every loop around it.
    let mut rounds: Option<Vec<u64>> = None;
    for (slot, insn) in backward() {
        let (Insn::Jmp { src, .. } | Insn::Jmp32 { src, .. }) = insn else {
            continue;
        };
        if let Some(top) = target(slot, insn).filter(|&t| t <= slot) {
            let count = match src {
                Src::Imm(c) => u64::try_from(*c).unwrap_or(0).max(1),
                Src::Reg(_) => UNKNOWN_LOOP_ROUNDS,
            };
            let rounds = rounds.get_or_insert_with(|| vec![1; n]);
            for r in &mut rounds[top..=slot] {
                *r = r.saturating_mul(count);
            }
        }
    }

    // The marks whose walks stay apart after their branches: code that calls a helper
    // (its results, the log record and the comm on the stack differ per path), compares
    // a cached field (the narrowed register stays live), or branches more than once.
    // A rule with a single compare of a scratch register (the branch-free `flat` rules
    // of large policies end in one) has its two walks merge at the target.
    let mut jumps_of: HashMap<Mark, u32> = HashMap::new();
    let mut calls_of: HashMap<Mark, u64> = HashMap::new();
    let mut branching: HashSet<Mark> = HashSet::new();
    let mut split_rule_seen = false;
    let mut slot = 0;
    for insn in &code.insns {
        let mark = mark_at(slot).unwrap_or(Mark::Tails);
        let splits = match insn {
            Insn::Call { .. } => {
                *calls_of.entry(mark).or_insert(0) += 1;
                true
            }
            Insn::Jmp { dst, .. } | Insn::Jmp32 { dst, .. } => {
                let jumps = jumps_of.entry(mark).or_insert(0);
                *jumps += 1;
                *jumps > 1 || matches!(dst, Reg::R8 | Reg::R9)
            }
            _ => false,
        };
        // After a rule whose walks stay apart, every later rule is walked once per
        // walk that reaches it (1000-4000 mixed rules: the `flat` rules after the
        // others cost 2.2 times their size).
        if splits || (split_rule_seen && matches!(mark, Mark::Rule(_) | Mark::Default)) {
            branching.insert(mark);
        }
        if splits && matches!(mark, Mark::Rule(_)) {
            split_rule_seen = true;
        }
        slot += insn.slots();
    }

    // The cost per mark, in order of first appearance (a hash from mark to its row: a
    // policy of a million rules has a million marks; consecutive slots share one).
    let mut costs: Vec<(Mark, u64)> = Vec::new();
    let mut row_of: HashMap<Mark, usize> = HashMap::new();
    let mut last: Option<(Mark, usize)> = None;
    // The tail entries walked so far: the first rule to jump there walks the tail; a
    // later arrival is pruned at its entry (the counter slot in r7 is not precise).
    let mut tails_walked: HashSet<usize> = HashSet::new();
    let mut slot = 0;
    for insn in &code.insns {
        let mark = mark_at(slot);
        let mut c = VISIT_COST;
        if is_conditional(insn) {
            c += BRANCH_VISITS;
        }
        c = c.saturating_mul(rounds.as_ref().map_or(1, |r| r[slot]));
        c *= match mark {
            Some(Mark::Parser { .. }) => PARSER_FACTOR,
            m if branching.contains(&m.unwrap_or(Mark::Tails)) => {
                let m = m.unwrap_or(Mark::Tails);
                let calls = calls_of.get(&m).copied().unwrap_or(0);
                let jumps = u64::from(jumps_of.get(&m).copied().unwrap_or(0));
                (CODE_FACTOR + calls / CALLS_PER_VISIT + jumps / JUMPS_PER_VISIT)
                    .min(MAX_MARK_FACTOR)
            }
            // One compare of a scratch register: the walks merge at its target.
            _ => 1,
        };
        if let (Insn::Jmp { dst, .. } | Insn::Jmp32 { dst, .. }, false) =
            (insn, matches!(mark, Some(Mark::Parser { .. })))
        {
            if matches!(dst, Reg::R8 | Reg::R9) {
                c += NARROWED_VISITS;
            }
        }
        if let Some(t) = target(slot, insn).filter(|&t| t > slot && t < n) {
            let from_rule = !matches!(mark, Some(Mark::Tails) | None);
            if from_rule && mark_at(t) == Some(Mark::Tails) && tails_walked.insert(t) {
                c += u64::from(to_exit[t]);
            }
        }
        let mark = mark.unwrap_or(Mark::Tails);
        let row = match last {
            Some((m, row)) if m == mark => row,
            _ => *row_of.entry(mark).or_insert_with(|| {
                costs.push((mark, 0));
                costs.len() - 1
            }),
        };
        last = Some((mark, row));
        costs[row].1 = costs[row].1.saturating_add(c);
        slot += insn.slots();
    }

    costs.sort_by_key(|&(_, c)| std::cmp::Reverse(c));
    // The stack: every access through r10 (the helpers' pointers into the stack are
    // made from the same layout constants, and the verifier checks them the same way).
    let stack_bytes = code
        .insns
        .iter()
        .filter_map(|i| match *i {
            Insn::Ldx {
                src: Reg::R10, off, ..
            }
            | Insn::Stx {
                dst: Reg::R10, off, ..
            }
            | Insn::St {
                dst: Reg::R10, off, ..
            } => Some(u64::from(off.unsigned_abs())),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    // The maps, in program order.
    let mut maps: HashSet<u32> = HashSet::new();
    let mut first_map_over = None;
    let mut slot = 0;
    for insn in &code.insns {
        if let Insn::LdMap { map, .. } | Insn::LdMapValue { map, .. } = *insn {
            if maps.insert(map) && maps.len() as u64 == MAX_USED_MAPS + 1 {
                first_map_over = Some(mark_at(slot).unwrap_or(Mark::Tails));
            }
        }
        slot += insn.slots();
    }
    Budget {
        stack_bytes,
        maps: maps.len() as u64,
        first_map_over,
        estimate: costs.iter().map(|(_, c)| c).sum(),
        slots: n as u64,
        jump_chain: chain.first().copied().map_or(0, u64::from),
        costs,
    }
}

fn is_conditional(i: &Insn) -> bool {
    matches!(i, Insn::Jmp { .. } | Insn::Jmp32 { .. })
}

/// The slot a jump at `slot` goes to.
fn target(slot: usize, i: &Insn) -> Option<usize> {
    let off = i.jump_off()?;
    usize::try_from(slot as i64 + 1 + off as i64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{AluOp, JmpOp, Reg};

    fn program(insns: Vec<Insn>, mark: Mark) -> Assembled {
        let slots: usize = insns.iter().map(|i| i.slots()).sum();
        Assembled {
            insns,
            marks: vec![Some(mark); slots],
        }
    }

    fn mov(dst: Reg, imm: i32) -> Insn {
        Insn::Alu64 {
            op: AluOp::Mov,
            dst,
            src: Src::Imm(imm),
        }
    }

    fn jmp(op: JmpOp, dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::Jmp {
            op,
            dst,
            src: Src::Imm(imm),
            off,
        }
    }

    #[test]
    fn a_chain_of_fall_throughs_leaves_each_branch_pending() {
        // n compares whose targets are all the final exit: the walk follows every
        // fall-through with all n targets pending.
        let n = 50i16;
        let mut insns = vec![mov(Reg::R0, 0)];
        for k in 0..n {
            insns.push(jmp(JmpOp::Jeq, Reg::R1, k as i32, n - k));
        }
        insns.push(Insn::Exit);
        let b = estimate(&program(insns, Mark::Rule(0)));
        assert_eq!(b.jump_chain, n as u64);
        assert_eq!(b.slots, n as u64 + 2);
        assert!(b.estimate >= b.slots, "{b:?}");
        assert_eq!(b.over(), None);
    }

    #[test]
    fn a_taken_side_leaves_no_branch_pending() {
        // Each compare jumps to the next compare on a match and falls through to the
        // exit: the fall-through walk ends at once, so at most one branch is pending.
        let mut insns = vec![mov(Reg::R0, 0)];
        for k in 0..50 {
            insns.push(jmp(JmpOp::Jeq, Reg::R1, k, 1));
            insns.push(Insn::Exit);
        }
        insns.push(Insn::Exit);
        assert_eq!(estimate(&program(insns, Mark::Rule(0))).jump_chain, 1);
    }

    #[test]
    fn a_bounded_loop_costs_its_body_once_per_round() {
        let rounds = 200;
        let body = 5;
        let mut insns = vec![mov(Reg::R8, 0)];
        for _ in 0..body - 2 {
            insns.push(mov(Reg::R0, 1));
        }
        insns.push(Insn::Alu64 {
            op: AluOp::Add,
            dst: Reg::R8,
            src: Src::Imm(1),
        });
        insns.push(jmp(JmpOp::Jlt, Reg::R8, rounds, -(body as i16)));
        insns.push(Insn::Exit);
        let rule = estimate(&program(insns.clone(), Mark::Rule(0)));
        assert!(rule.estimate >= rounds as u64 * body, "{rule:?}");
        let parser = estimate(&program(
            insns,
            Mark::Parser {
                proto: crate::fields::Proto::Http,
                rule: 0,
            },
        ));
        assert!(
            parser.estimate > rule.estimate,
            "parsers cost more per round"
        );
    }

    #[test]
    fn costs_are_per_mark_costliest_first_and_sum_to_the_estimate() {
        let insns = vec![
            mov(Reg::R0, 0),
            mov(Reg::R0, 1),
            mov(Reg::R0, 2),
            Insn::Exit,
        ];
        let mut p = program(insns, Mark::Rule(0));
        p.marks[0] = Some(Mark::Prologue);
        let b = estimate(&p);
        assert_eq!(b.costs[0].0, Mark::Rule(0));
        assert_eq!(b.costs.len(), 2);
        assert_eq!(b.costs.iter().map(|c| c.1).sum::<u64>(), b.estimate);
    }

    #[test]
    fn over_names_the_limit_exceeded() {
        let b = |estimate, slots, jump_chain| Budget {
            estimate,
            slots,
            jump_chain,
            costs: Vec::new(),
            stack_bytes: 8,
            maps: MAX_USED_MAPS,
            first_map_over: None,
        };
        assert_eq!(b(refused_above(), 10, 10).over(), None);
        assert!(matches!(
            b(refused_above() + 1, 10, 10).over(),
            Some(Over::Processed { .. })
        ));
        assert!(matches!(
            b(1, 10, BPF_COMPLEXITY_LIMIT_JMP_SEQ + 1).over(),
            Some(Over::JumpChain { .. })
        ));
        assert!(matches!(
            b(1, BPF_MAX_PROGRAM_SLOTS + 1, 1).over(),
            Some(Over::Size { .. })
        ));
        let deep = Budget {
            stack_bytes: MAX_BPF_STACK + 8,
            ..b(1, 1, 1)
        };
        assert!(matches!(deep.over(), Some(Over::Stack { .. })));
        let many = Budget {
            maps: MAX_USED_MAPS + 1,
            ..b(1, 1, 1)
        };
        assert!(matches!(many.over(), Some(Over::Maps { maps: 65, .. })));
    }

    #[test]
    fn maps_are_counted_once_each_and_the_first_over_the_limit_is_marked() {
        use crate::bpf::Insn;
        let mut p = Assembled::default();
        for map in (0..=MAX_USED_MAPS as u32).chain([0, 3]) {
            let rule = map as usize;
            p.insns.push(Insn::LdMap { dst: Reg::R1, map });
            p.marks
                .extend([Some(Mark::Rule(rule)), Some(Mark::Rule(rule))]);
        }
        p.insns.push(Insn::Exit);
        p.marks.push(Some(Mark::Tails));
        let b = estimate(&p);
        assert_eq!(b.maps, MAX_USED_MAPS + 1);
        assert_eq!(b.first_map_over, Some(Mark::Rule(MAX_USED_MAPS as usize)));
    }
}
