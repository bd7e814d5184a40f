//! The code of an indexed block of several decisions and `count`/`log` rules (planned in
//! `index::mixed_block`): the terminal rules' lookups keep the smallest `rule <<
//! DECISION_BITS | decision` in SLOT (branch-free, `keep_smaller_rule`), the block's
//! terminal rules of code lower it if they match first; then the `count`/`log` rules
//! act, from their lookups and as code, each only if it comes before that rule; then a
//! few compares on the decision bits send the rule to its decision's tail.
//!
//! Nothing in the block narrows SLOT (the `count`/`log` rules compare a copy that the
//! verifier does not link to it): the verifier walks the block once, however many rules
//! it holds, and the dispatch once per decision.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, JmpOp, Reg, Src};
use crate::hir::{self, Action};

use super::index::{self, DECISION_BITS};
use super::lir::{Label, Lir, Mark};
use super::maps::IndexMaps;
use super::{Gen, SLOT};

impl Gen {
    /// Block `block` of several decisions, `mixed` what it adds (see the module doc).
    pub(super) fn mixed_block(
        &mut self,
        policy: &hir::Policy,
        block: &index::Block,
        mixed: &index::Mixed,
        maps: IndexMaps,
    ) {
        let counters = self.options.counters;
        // "No rule": the size with its top bit set, above every `rule << DECISION_BITS
        // | decision` and unknown to the verifier (see `indexed_block`).
        self.ctx_ld(SLOT, SK_MSG_MD_SIZE);
        self.alu32(AluOp::Or, SLOT, Src::Imm(super::lookup::NO_RULE_BIT));
        let all: Vec<index::Tuple> = block.tuples.iter().chain(&mixed.effects).cloned().collect();
        self.load_index_fields(&all);
        self.index_lookups(&block.tuples, maps, super::lookup::OnHit::Best);
        // The terminal rules of code, in order: the first that matches is the only one
        // that can be smaller than the best indexed rule.
        let effects = self.label();
        let packed = |r: usize, d: &hir::Decision| {
            let number = mixed.decisions.iter().position(|x| x == d);
            let number = number.expect("index::mixed_block numbers every terminal rule's decision");
            (policy.rules[r].counter as u32) << DECISION_BITS | number as u32
        };
        for &r in &block.rest {
            let rule = &policy.rules[r];
            let Action::Decide(d) = &rule.action else {
                continue;
            };
            let Some(next) = self.rule_of_code(rule, r) else {
                continue;
            };
            self.mov32(Reg::R1, packed(r, d));
            self.keep_smaller_rule();
            // The fields the test narrowed, loaded again: the matches of every rule
            // of code then reach the `count`/`log` rules in one state.
            self.forget_search_bounds(&rule.cond, r);
            self.goto(effects);
            self.place(next);
            self.forget_search_bounds(&rule.cond, r);
        }
        self.place(effects);
        let logs = policy.rules[block.first..=block.last]
            .iter()
            .any(|r| r.action == Action::Log);
        // Without counters a `count` rule does nothing: no lookup is needed for it.
        if !mixed.effects.is_empty() && (counters || logs) {
            let act = super::lookup::OnHit::Act { logs, below: true };
            self.index_lookups(&mixed.effects, maps, act);
        }
        for &r in &block.rest {
            let rule = &policy.rules[r];
            if rule.action.is_terminal() || (rule.action != Action::Log && !counters) {
                continue;
            }
            let Some(next) = self.rule_of_code(rule, r) else {
                continue;
            };
            self.mov32(Reg::R2, rule.counter as u32);
            self.skip_unless_before_best(Reg::R2, next);
            self.count_or_log(rule);
            self.place(next);
            self.forget_search_bounds(&rule.cond, r);
        }
        self.code.push(Lir::Mark(Mark::Rule(block.first)));
        self.dispatch_best(&mixed.decisions);
    }

    /// Jumps to `skip` unless rule `reg` (a u32) comes before the best terminal rule in
    /// SLOT: `(reg << DECISION_BITS) - SLOT` is negative, its sign bit one. The compare
    /// is on that bit, which the verifier does not link to SLOT: no path narrows it.
    /// Clobbers `reg`.
    pub(super) fn skip_unless_before_best(&mut self, reg: Reg, skip: Label) {
        self.alu64(AluOp::Lsh, reg, Src::Imm(DECISION_BITS as i32));
        self.alu64(AluOp::Sub, reg, Src::Reg(SLOT));
        self.alu64(AluOp::Rsh, reg, Src::Imm(63));
        self.jmp64(JmpOp::Jeq, reg, Src::Imm(0), skip);
    }

    /// Sends the best rule in SLOT to its decision's tail (SLOT the rule's counter slot,
    /// as the tails want it), or falls through when no rule matched: the start's "no
    /// rule" (at least 2^31), or a port array's "none" (`u32::MAX << DECISION_BITS |
    /// decision`), both above the last rule.
    fn dispatch_best(&mut self, decisions: &[hir::Decision]) {
        let miss = self.label();
        let last = (self.counter_slots.max(1) - 1) << DECISION_BITS | ((1 << DECISION_BITS) - 1);
        self.jmp64(JmpOp::Jgt, SLOT, Src::Imm(last as i32), miss);
        let labels: Vec<Label> = decisions.iter().map(|_| self.label()).collect();
        if decisions.len() > 1 {
            self.mov64(Reg::R1, Src::Reg(SLOT));
            self.alu64(AluOp::And, Reg::R1, Src::Imm((1 << DECISION_BITS) - 1));
            for (k, l) in labels.iter().enumerate().skip(1) {
                self.jmp64(JmpOp::Jeq, Reg::R1, Src::Imm(k as i32), *l);
            }
        }
        for (d, l) in decisions.iter().zip(&labels) {
            self.place(*l);
            if self.options.counters {
                self.alu64(AluOp::Rsh, SLOT, Src::Imm(DECISION_BITS as i32));
            }
            let tail = self.tail(d);
            self.goto(tail);
        }
        self.place(miss);
    }
}
