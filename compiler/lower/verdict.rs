//! The verdict program driver: the rule loop (single rules, runs, indexed blocks), the
//! choice of where the context lives, and the context fields cached in callee-saved
//! registers.

use crate::bpf::{Reg, Src};
use crate::hir::{self, Action, Cond, Decision, IntField, SockSlot, Target, Test, Verdict};

use super::cond::is_search;
use super::lir::{Label, Lir, Mark};
use super::{flat, index, proto, runs, sets};
use super::{Gen, Options, CACHE_REGS, CTX, FLAT_ABOVE_RULES};

/// Policies with more rules than this carry the counter slot's number in SLOT to a count
/// block shared by the decisions (see `count_reg`, which hides it from the verifier
/// when many rules set it); in smaller ones SLOT holds the counter's byte offset, one add
/// per rule (see `set_slot`), and the verifier walks the count block once per rule, a few
/// hundred instructions at most.
const BLUR_SLOT_ABOVE_RULES: usize = 16;

impl Gen {
    pub(super) fn verdict_program(&mut self, policy: &hir::Policy, blocks: &[index::Block]) {
        let indexed: usize = blocks.iter().map(|b| b.indexed).sum();
        self.flat = policy.rules.len() - indexed > FLAT_ABOVE_RULES;
        self.blur_slot = policy.rules.len() > BLUR_SLOT_ABOVE_RULES;
        self.decision_slots = decision_slots(policy);
        // Branch-free rules use r0-r5 as scratch, and index lookups call a helper: the
        // context must live in r6.
        let plan = split_small_runs(
            runs::plan(policy, blocks, self.options.set_maps_above),
            self.options,
        );
        // Runs searched for their counter slot use r1 as scratch.
        let runs_with_counters =
            self.options.counters && plan.iter().any(|s| !matches!(s, runs::Step::Rule(_)));
        self.ctx_in_r1 = !self.flat
            && blocks.is_empty()
            && !runs_with_counters
            && !needs_helper_before_verdict(policy, self.options);
        if !self.ctx_in_r1 {
            self.mov64(CTX, Src::Reg(Reg::R1));
        }
        if self.flat {
            self.take_snapshot();
        }
        self.sets_ready_check();
        self.parse_protocols(&proto::used(policy));
        self.cache_fields(policy, blocks);
        for step in plan {
            let (i, run) = match step {
                runs::Step::Indexed(k) => {
                    if self.indexed_block(policy, &blocks[k]) {
                        // An unconditional rule of the block decided: the rest is dead.
                        self.emit_tails();
                        return;
                    }
                    continue;
                }
                runs::Step::Rule(i) => (i, None),
                runs::Step::Run {
                    first,
                    last,
                    cond,
                    keyed,
                } => {
                    if let (true, Some(keys), Action::Decide(d)) =
                        (self.options.counters, &keyed, &policy.rules[first].action)
                    {
                        // One keyed search finds both whether and which rule matched.
                        self.code.push(Lir::Mark(Mark::Rule(first)));
                        self.keyed_run(keys, d);
                        self.forget_search_bounds(&cond, last);
                        continue;
                    }
                    (first, Some((last, cond)))
                }
            };
            let rule = &policy.rules[i];
            let cond = match &run {
                Some((_, merged)) => merged.clone(),
                None => rule.cond.clone(),
            };
            if cond == Cond::Const(false) {
                continue;
            }
            self.code.push(Lir::Mark(Mark::Rule(i)));
            let last = run.as_ref().map_or(i, |(last, _)| *last);
            if self.options.counters && !self.blur_slot && run.is_none() {
                // Before the test: on every path on to the next rule, SLOT is this one's.
                self.set_slot(rule.counter as u32);
            }
            let (act, next) = (self.label(), self.label());
            self.rule_test(&cond, act, next);
            self.place(act);
            match (&rule.action, run) {
                (Action::Decide(d), Some((last, _))) => self.run_matched(policy, i, last, d),
                (Action::Decide(d), None) => self.decide_via_tail(d, rule.counter as u32),
                (Action::Count { counter }, _) => {
                    self.count_const(rule.counter as u32);
                    self.count_const(*counter as u32);
                    self.goto(next);
                }
                (Action::Log, _) => {
                    self.count_const(rule.counter as u32);
                    self.log(Src::Imm(rule.counter as i32));
                    self.goto(next);
                }
            }
            self.place(next);
            self.forget_search_bounds(&cond, last);
            if cond == Cond::Const(true) && rule.action.is_terminal() {
                // Everything after an unconditional verdict is dead.
                self.emit_tails();
                return;
            }
        }
        self.code.push(Lir::Mark(Mark::Default));
        self.decide_via_tail(&policy.default.decision, policy.default.counter as u32);
        self.emit_tails();
    }

    /// The test of one rule (or merged run): branch-free in large policies where it can be.
    pub(super) fn rule_test(&mut self, cond: &Cond, t: Label, f: Label) {
        if self.flat && flat::flat_ok(cond, self.options.set_maps_above) {
            self.flat_cond(cond, f);
        } else {
            self.cond(cond, t, f);
        }
    }

    /// A run `first..=last` (one decision `d`) matched: decide. With counters, find the
    /// first rule of the run that matches (only on this, the matching, path) for its
    /// counter slot.
    pub(super) fn run_matched(
        &mut self,
        policy: &hir::Policy,
        first: usize,
        last: usize,
        d: &Decision,
    ) {
        if !self.options.counters {
            self.decide_via_tail(d, first as u32);
            return;
        }
        // Read the fields afresh here, not from the cached registers: the search left
        // them narrowed to the matched value, a different state for every value, and the
        // verifier would walk this chain once per value. Unread, they do not count.
        let cached = std::mem::take(&mut self.cached);
        for i in first..=last {
            let rule = &policy.rules[i];
            let (hit, miss) = (self.label(), self.label());
            self.code.push(Lir::Mark(Mark::Rule(i)));
            self.rule_test(&rule.cond, hit, miss);
            self.place(hit);
            self.decide_via_tail(d, rule.counter as u32);
            self.place(miss);
        }
        // The run's search matched, so one of its rules does; the verifier cannot know.
        self.decide_via_tail(d, policy.rules[last].counter as u32);
        self.cached = cached;
    }

    /// Loads the cheap context fields that several tests read into callee-saved
    /// registers, once, so that each test is a single compare.
    pub(super) fn cache_fields(&mut self, policy: &hir::Policy, blocks: &[index::Block]) {
        let mut uses: Vec<(IntField, usize)> = Vec::new();
        let mut in_index = vec![false; policy.rules.len()];
        for b in blocks {
            in_index[b.first..=b.last].fill(true);
            for &r in &b.rest {
                in_index[r] = false;
            }
        }
        for (i, (r, _)) in policy
            .rules
            .iter()
            .zip(&in_index)
            .enumerate()
            .filter(|(_, (_, x))| !**x)
        {
            for f in r.cond.tests().filter_map(int_field) {
                match uses.iter_mut().find(|(g, _)| *g == f) {
                    Some(u) => u.1 += 1,
                    None => uses.push((f, 1)),
                }
                match self.last_use.iter_mut().find(|(g, _)| *g == f) {
                    Some(at) => at.1 = i,
                    None => self.last_use.push((f, i)),
                }
            }
        }
        let mut words: Vec<(IntField, usize, i16, bool)> = uses
            .into_iter()
            .filter_map(|(f, n)| {
                f.ctx_word()
                    .filter(|_| n >= 2)
                    .map(|(off, swap)| (f, n, off, swap))
            })
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for ((field, _, off, swap), reg) in words.into_iter().zip(CACHE_REGS) {
            self.load_ctx_field(off, swap, reg);
            self.cached.push((field, reg));
        }
    }

    /// After a binary search over a cached field, every leaf that missed knows the field
    /// within a different range; after `port == 80 and ...` failed in its second half,
    /// the field is known to be 80 on that path and not on the others. Later rules that
    /// read the field would then be verified once per range (a 1000-rule policy hit the
    /// verifier's 1M limit that way, and a 170-rule one of such `and`s). Loading the
    /// field again makes the old bounds dead, so those paths merge. Only where a rule
    /// after `last` still reads the field.
    pub(super) fn forget_search_bounds(&mut self, cond: &Cond, last: usize) {
        let cached = self.cached.clone();
        for (field, reg) in cached {
            let read_later = self
                .last_use
                .iter()
                .any(|(f, at)| *f == field && *at > last);
            if read_later && narrows(cond, field) {
                if let Some((off, swap)) = field.ctx_word() {
                    self.load_ctx_field(off, swap, reg);
                }
            }
        }
    }
}

/// Whether any path calls a helper (which clobbers r1-r5) while it still needs the
/// context afterwards; if not, the context stays in r1 and no copy is made.
pub(super) fn needs_helper_before_verdict(policy: &hir::Policy, options: Options) -> bool {
    let test_calls = |t: &Test| {
        sets::shape(t, options.set_maps_above).is_some()
            || match t {
                Test::Int { field, .. } => field.ctx_word().is_none(),
                Test::Addr { .. } => false,
                Test::Payload { .. }
                | Test::Comm { .. }
                | Test::Proto(_)
                | Test::Text { .. }
                | Test::InFile { .. } => true,
            }
    };
    // `discard` and `cork` call their helper last, with nothing read from the context
    // after it, so they do not count; `for N`, field slots and `reply` (data, data_end
    // and the key after pop/push/pull) read it after a call.
    let decision_calls = |d: &Decision| {
        d.apply_bytes.is_some()
            || matches!(d.verdict, Verdict::Reply(_))
            || matches!(
                d.verdict,
                Verdict::Redirect {
                    target: Target::Sock(SockSlot::Field(_)),
                    ..
                }
            )
    };
    decision_calls(&policy.default.decision)
        || policy.rules.iter().any(|r| match &r.action {
            Action::Decide(d) => decision_calls(d) || r.cond.any_test(test_calls),
            Action::Count { .. } | Action::Log => true,
        })
}

/// With counters, a run of at most BLUR_SLOT_ABOVE_RULES rules is compiled rule by
/// rule: a compare per value and an add to SLOT per rule is shorter than the keyed
/// search that finds which rule of the run matched (rules_10: 96 instructions over
/// `--no-counters` with the search before issue 13, 35 without; 18 now).
fn split_small_runs(plan: Vec<runs::Step>, options: Options) -> Vec<runs::Step> {
    if !options.counters {
        return plan;
    }
    plan.into_iter()
        .flat_map(|step| match step {
            runs::Step::Run { first, last, .. } if last - first < BLUR_SLOT_ABOVE_RULES => {
                (first..=last).map(runs::Step::Rule).collect()
            }
            other => vec![other],
        })
        .collect()
}

/// The counter slots that reach each decision: its rules' and, for the default's
/// decision, the default's.
fn decision_slots(policy: &hir::Policy) -> Vec<(Decision, Vec<u32>)> {
    let mut out: Vec<(Decision, Vec<u32>)> = Vec::new();
    let deciding = policy.rules.iter().filter_map(|r| match &r.action {
        Action::Decide(d) => Some((d, r.counter)),
        Action::Count { .. } | Action::Log => None,
    });
    for (d, slot) in deciding.chain([(&policy.default.decision, policy.default.counter)]) {
        match out.iter_mut().find(|(x, _)| x == d) {
            Some((_, slots)) => slots.push(slot as u32),
            None => out.push((d.clone(), vec![slot as u32])),
        }
    }
    out
}

/// The field an integer test reads.
fn int_field(t: &Test) -> Option<IntField> {
    match t {
        Test::Int { field, .. } => Some(*field),
        _ => None,
    }
}

/// Whether some path on which `c` is false knows more about `field` than the others:
/// a binary search or a range test over it, or a test of it inside an `and` or `not`
/// (its true side can lead to a false result). A plain `==` (or an `or` of them) leaves
/// nothing behind: where it is false, the field is just not that value.
pub(super) fn narrows(c: &Cond, field: IntField) -> bool {
    c.disjuncts().any(|d| match d {
        Cond::Test(Test::Int { field: f, ranges }) => {
            *f == field && (ranges.iter().any(|(lo, hi)| lo != hi) || is_search(ranges))
        }
        Cond::And(_) | Cond::Not(_) => d.any_test(|t| int_field(t) == Some(field)),
        Cond::Const(_) | Cond::Test(_) | Cond::Or(_) => false,
    })
}
