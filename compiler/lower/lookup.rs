//! The code of an indexed block (planned in `index`): the ready check, one pull of the
//! payload bytes the block's keys read (`pull_payload`), one map lookup per tuple (hash
//! keys built from the context and payload bytes, or a port-array slot), the entry's
//! slots checked in order against the tuple's residual field (`len`, a port, or the
//! sender's `uid`/`gid`/`pid`), the block's other
//! rules as code, and the smallest matching rule index deciding. Blocks of several
//! decisions reuse the lookups (`OnHit::Best`, `OnHit::Act` with `below`; see `mixed`).

use skpc_abi::{IndexEntry, IndexSlot, PORTS_PER_TUPLE};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, JmpOp, Reg, Size, Src};
use crate::hir::{self, Cond, Decision, IntField};

use super::addr::addr_words;
use super::index;
use super::lir::{Label, Lir, Mark};
use super::maps::IndexMaps;
use super::{
    Gen, SLOT, STACK_COMM, STACK_INDEX_ENTRY, STACK_INDEX_FIELDS, STACK_INDEX_KEY, STACK_PROTO,
    STACK_READY_KEY,
};

/// SLOT's "no rule found" at the start of a block: the message size with this bit set
/// (see `indexed_block`).
pub(super) const NO_RULE_BIT: i32 = i32::MIN;

// The key fits below the parser's region.
const _: () = assert!(
    STACK_INDEX_KEY >= -512 && STACK_INDEX_KEY + IndexEntry::KEY_SIZE as i16 <= STACK_PROTO
);

/// Where word `w` of a helper component's key words is (see `Gen::load_index_fields`):
/// each helper's u64 as stored, low word first (`uid` low, `gid` high; the tgid, the
/// pid, high), and the comm at STACK_COMM. None for the other components.
fn helper_word(c: index::Component, w: usize) -> Option<i16> {
    use index::Component;
    let first = match c {
        Component::Uid => STACK_INDEX_FIELDS,
        Component::Gid => STACK_INDEX_FIELDS + 4,
        Component::Pid => STACK_INDEX_FIELDS + 12,
        Component::Cgroup => STACK_INDEX_FIELDS + 16,
        Component::Comm => STACK_COMM,
        _ => return None,
    };
    Some(first + 4 * w as i16)
}

/// What a lookup does with a slot whose rule matches.
#[derive(Clone, Copy)]
pub(super) enum OnHit<'a> {
    /// The block decides: keep the smallest rule (with counters), or decide at once.
    Decide(&'a Decision),
    /// A block of `count`/`log` rules: the rule acts (`act_on_slot`); `logs`: some rule
    /// of the block logs; `below`: only if it is before the best terminal rule found
    /// (in SLOT, see `Best`).
    Act { logs: bool, below: bool },
    /// A block of several decisions: keep the smallest `rule << DECISION_BITS |
    /// decision` in SLOT (see `mixed`).
    Best,
}

impl Gen {
    /// An indexed block (see `index`): one map lookup per tuple, then the block's other
    /// rules as code; the smallest matching rule index decides (and is counted). Returns
    /// whether an unconditional rule of the block makes everything after it dead.
    pub(super) fn indexed_block(&mut self, policy: &hir::Policy, block: &index::Block) -> bool {
        self.code.push(Lir::Mark(Mark::Rule(block.first)));
        let maps = self
            .maps
            .index
            .expect("maps::define defines the index maps when a block is indexed");
        if self.index_not_ready.is_none() {
            // Every path to a later block passes this one: one check is enough.
            let not_ready = self.label();
            self.index_not_ready = Some(not_ready);
            self.st(Size::W, Reg::R10, STACK_READY_KEY, 0);
            self.map_lookup(maps.ready, STACK_READY_KEY);
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), not_ready);
            self.ldx(Size::W, Reg::R1, Reg::R0, 0);
            self.jmp32(JmpOp::Jne, Reg::R1, skpc_abi::INDEX_READY as i32, not_ready);
        }
        if let Some(mixed) = &block.mixed {
            self.mixed_block(policy, block, mixed, maps);
            return false;
        }
        let counters = self.options.counters;
        let Some(decision) = &block.decision else {
            self.effects_block(policy, block, maps);
            return false;
        };
        if counters {
            // "No rule": any value above the last counter slot will do, so the size
            // with its top bit set (at least 2^31, more than any policy has slots),
            // which the verifier cannot tell apart from a rule found: a known constant
            // would make the compares below decided on the paths that found nothing,
            // marking the word precise, and the verifier would walk the rest of the
            // program once for "nothing found" and once for "found".
            // The best rule so far lives in SLOT, which nothing else touches before a
            // rule decides (helpers keep it).
            self.ctx_ld(SLOT, SK_MSG_MD_SIZE);
            self.alu32(AluOp::Or, SLOT, Src::Imm(NO_RULE_BIT));
        }
        self.load_index_fields(&block.tuples);
        self.index_lookups(&block.tuples, maps, OnHit::Decide(decision));
        self.text_index_lookups(&block.text, decision);
        // The block's other rules, in order: a match decides with the smaller of its
        // index and the best indexed one.
        let found_best = self.label();
        let mut ends = false;
        for &r in &block.rest {
            let rule = &policy.rules[r];
            let cond = &rule.cond;
            let Some(next) = self.rule_of_code(rule, r) else {
                continue;
            };
            if counters {
                // 64-bit: SLOT holds a u32 (see `keep_smaller_rule`), and the bound
                // holds for the count block's offset.
                self.jmp64(JmpOp::Jlt, SLOT, Src::Imm(r as i32), found_best);
            }
            self.decide_via_tail(decision, rule.counter as u32);
            self.place(next);
            self.forget_search_bounds(cond, r);
            if *cond == Cond::Const(true) {
                ends = true;
                break;
            }
        }
        if counters {
            let miss = self.label();
            self.code.push(Lir::Mark(Mark::Rule(block.first)));
            // NO_RULE, or (never) a rule past the counters: nothing found. Above the
            // last slot rather than `== NO_RULE`, so that the verifier knows the
            // counter is in the map's value (the count block checks no bound).
            let last_slot = self.counter_slots as i32 - 1;
            self.jmp64(JmpOp::Jgt, SLOT, Src::Imm(last_slot), miss);
            self.place(found_best);
            let tail = self.tail(decision);
            self.goto(tail);
            self.place(miss);
        }
        ends
    }

    /// A block of `count`/`log` rules: every lookup acts on each slot that matches (see
    /// `act_on_slots`), then the block's other rules are code, each acting if it holds.
    fn effects_block(&mut self, policy: &hir::Policy, block: &index::Block, maps: IndexMaps) {
        let logs = policy.rules[block.first..=block.last]
            .iter()
            .any(|r| r.action == hir::Action::Log);
        // Without counters a `count` rule does nothing: no lookup is needed for it.
        if self.options.counters || logs {
            self.load_index_fields(&block.tuples);
            let act = OnHit::Act { logs, below: false };
            self.index_lookups(&block.tuples, maps, act);
        }
        for &r in &block.rest {
            let rule = &policy.rules[r];
            let Some(next) = self.rule_of_code(rule, r) else {
                continue;
            };
            self.count_or_log(rule);
            self.place(next);
            self.forget_search_bounds(&rule.cond, r);
        }
    }

    /// The start of a block's rule of code `r`: its mark and its test, leaving the code
    /// where the rule holds. Returns the label of the code after the rule, which the
    /// caller places; None for a rule that never holds (no code at all).
    pub(super) fn rule_of_code(&mut self, rule: &hir::Rule, r: usize) -> Option<Label> {
        if rule.cond == Cond::Const(false) {
            return None;
        }
        self.code.push(Lir::Mark(Mark::Rule(r)));
        let (act, next) = (self.label(), self.label());
        self.rule_test(&rule.cond, act, next);
        self.place(act);
        Some(next)
    }

    /// What a `count` or `log` rule that holds does: its own counter, and `count NAME`'s
    /// counter or a log record (nothing more for a deciding rule, which no block of
    /// `count`/`log` rules holds).
    pub(super) fn count_or_log(&mut self, rule: &hir::Rule) {
        self.count_const(rule.counter as u32);
        match rule.action {
            hir::Action::Count { counter } => self.count_const(counter as u32),
            hir::Action::Log => self.log(Src::Imm(rule.counter as i32)),
            hir::Action::Decide(_) => {}
        }
    }

    /// The lookups of every tuple of `block`, by family: the sender's fields first, then
    /// the tuples of ports (and payload and sender fields) on any socket, then those with
    /// IPv4 or IPv6 addresses.
    pub(super) fn index_lookups(&mut self, tuples: &[index::Tuple], maps: IndexMaps, d: OnHit) {
        if tuples.iter().any(|t| t.port_slot.is_none()) {
            self.zero_index_key();
            self.index_lookups_from(tuples, maps, d, 0);
        } else {
            // Array lookups only: their key is the first word, which each one writes.
            self.index_lookups_from(tuples, maps, d, IndexEntry::KEY_WORDS - 1);
        }
    }

    /// Zeroes every word of the index key. Then every path reaches each lookup with
    /// every word written: a path that skipped the lookups so far would otherwise come
    /// with words the verifier holds unwritten, a state no other path's covers, and
    /// walk the rest of the block again (`mixed_rules` at 1,000: 8,936 processed
    /// instructions without, 6,468 with).
    pub(super) fn zero_index_key(&mut self) {
        for w in 0..IndexEntry::KEY_WORDS {
            self.st(Size::W, Reg::R10, STACK_INDEX_KEY + 4 * w as i16, 0);
        }
    }

    /// `index_lookups`, where the key words after the tuple id from `dirty` on are zero.
    fn index_lookups_from(
        &mut self,
        tuples: &[index::Tuple],
        maps: IndexMaps,
        d: OnHit,
        mut dirty: usize,
    ) {
        use index::Component;
        let mut needs: Vec<u32> = tuples.iter().filter_map(payload_need).collect();
        needs.sort_unstable_by(|a, b| b.cmp(a));
        needs.dedup();
        self.pull_payload(&needs);
        let has = |t: &index::Tuple, f: fn(&Component) -> bool| t.components.iter().any(f);
        let is_ip4 = |c: &Component| matches!(c, Component::Ip4 { .. });
        let is_ip6 = |c: &Component| matches!(c, Component::Ip6 { .. });
        let unmapped = |c: &Component| matches!(c, Component::Ip4 { mapped: false, .. });
        // Ports only: any socket.
        for t in tuples.iter().filter(|t| !has(t, is_ip4) && !has(t, is_ip6)) {
            self.index_lookup(maps, t, false, d, &mut dirty);
        }
        let v4: Vec<&index::Tuple> = tuples
            .iter()
            .filter(|t| has(t, is_ip4) && !has(t, is_ip6))
            .collect();
        let v6: Vec<&index::Tuple> = tuples
            .iter()
            .filter(|t| (has(t, is_ip4) || has(t, is_ip6)) && !has(t, unmapped))
            .collect();
        if !v4.is_empty() || !v6.is_empty() {
            let (l4, l6, done) = (self.label(), self.label(), self.label());
            self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
            if !v4.is_empty() {
                self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, l4);
            }
            if !v6.is_empty() {
                self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, l6);
            }
            self.goto(done);
            // Both families start from the key the port-only lookups left.
            let after_ports = dirty;
            if !v4.is_empty() {
                self.place(l4);
                for t in v4 {
                    self.index_lookup(maps, t, false, d, &mut dirty);
                }
                self.goto(done);
            }
            if !v6.is_empty() {
                self.place(l6);
                dirty = after_ports;
                for t in v6 {
                    self.index_lookup(maps, t, true, d, &mut dirty);
                }
            }
            self.place(done);
        }
    }

    /// Calls the helpers whose values some of a block's `tuples` key on, once for the
    /// block, and keeps what they return on the stack (`helper_word`): the lookups copy
    /// them into their keys, and the helpers clobber r1-r5, which the lookups use.
    pub(super) fn load_index_fields(&mut self, tuples: &[index::Tuple]) {
        use index::Component;
        let uses = |f: fn(&Component) -> bool| tuples.iter().any(|t| t.components.iter().any(f));
        // A residual on a helper's value reads it where a key component would.
        let checks = |f: fn(IntField) -> bool| tuples.iter().any(|t| t.residual.is_some_and(f));
        if uses(|c| matches!(c, Component::Uid | Component::Gid))
            || checks(|f| matches!(f, IntField::Uid | IntField::Gid))
        {
            self.call(BPF_FUNC_get_current_uid_gid);
            self.stx(Size::DW, Reg::R10, STACK_INDEX_FIELDS, Reg::R0);
        }
        if uses(|c| matches!(c, Component::Pid)) || checks(|f| f == IntField::Pid) {
            self.call(BPF_FUNC_get_current_pid_tgid);
            self.stx(Size::DW, Reg::R10, STACK_INDEX_FIELDS + 8, Reg::R0);
        }
        if uses(|c| matches!(c, Component::Cgroup)) {
            self.call(BPF_FUNC_get_current_cgroup_id);
            self.stx(Size::DW, Reg::R10, STACK_INDEX_FIELDS + 16, Reg::R0);
        }
        if uses(|c| matches!(c, Component::Comm)) {
            self.current_comm(STACK_COMM);
        }
    }

    /// Looks tuple `t` up in the index `maps`: builds the key at STACK_INDEX_KEY from the
    /// context (on an IPv6 socket, `v6`: IPv4 components from the IPv4-mapped address,
    /// skipping the lookup if it is not one) and keeps the smaller rule index in
    /// SLOT; without counters a hit decides at once; in a block of
    /// `count`/`log` rules, every matching slot acts. `dirty`: how many key words after
    /// the tuple id may hold something other than zero.
    fn index_lookup(
        &mut self,
        maps: IndexMaps,
        t: &index::Tuple,
        v6: bool,
        on_hit: OnHit,
        dirty: &mut usize,
    ) {
        use index::Component;
        let skip = self.label();
        // `index::plan` gives the tuples of `count`/`log` blocks no port slot, nor those
        // of blocks of several decisions whose rules do not share one.
        let port_slot = match on_hit {
            OnHit::Decide(d) => t.port_slot.map(|slot| (slot, Ok(d))),
            OnHit::Best => t.port_slot.zip(t.decision).map(|(slot, n)| (slot, Err(n))),
            OnHit::Act { .. } => None,
        };
        if let Some((slot, decision)) = port_slot {
            // One port: the array slot `slot * 65536 + port` holds the rule plus one.
            let port = matches!(
                t.components[0],
                Component::LocalPort | Component::RemotePort
            );
            match t.components[0] {
                Component::Payload { offset, len } => {
                    // One or two payload bytes: their value is the port.
                    self.payload_in_window(offset + len as u32, skip);
                    let size = if len == 1 { Size::B } else { Size::H };
                    self.ldx(size, Reg::R2, Reg::R2, offset as i16);
                    self.port_slot_lookup(maps, slot, skip);
                }
                c => self.port_slot_value(maps, c, slot, skip),
            }
            match decision {
                Err(number) => {
                    // 0 (no rule) becomes u32::MAX << DECISION_BITS | number, above
                    // every rule found (a u32: 32-bit operations), and the smaller
                    // kept without a branch: a block of several decisions may have
                    // many array tuples (see `mixed`).
                    self.alu32(AluOp::Sub, Reg::R1, Src::Imm(1));
                    let bits = index::DECISION_BITS as i32;
                    self.alu32(AluOp::Lsh, Reg::R1, Src::Imm(bits));
                    self.alu32(AluOp::Or, Reg::R1, Src::Imm(number as i32));
                    self.keep_smaller_rule();
                }
                Ok(_) if self.options.counters && port => {
                    // 0 (no rule) becomes u32::MAX, never smaller than SLOT. A compare,
                    // not `keep_smaller_rule`: neither side narrows SLOT to a constant
                    // (the array's values are unknown to the verifier), and a block has
                    // at most two port tuples, so its states at most double.
                    self.alu32(AluOp::Sub, Reg::R1, Src::Imm(1));
                    self.jmp64(JmpOp::Jge, Reg::R1, Src::Reg(SLOT), skip);
                    self.mov64(SLOT, Src::Reg(Reg::R1));
                }
                Ok(_) if self.options.counters => {
                    // A payload tuple (a block may have dozens): without a branch.
                    self.alu32(AluOp::Sub, Reg::R1, Src::Imm(1));
                    self.keep_smaller_rule();
                }
                Ok(d) => {
                    self.jmp32(JmpOp::Jeq, Reg::R1, 0, skip);
                    let tail = self.tail(d);
                    self.goto(tail);
                }
            }
            self.place(skip);
            return;
        }
        // Payload bytes first, while r2 is the data pointer: a message too short for a
        // slice skips the lookup before anything is stored.
        let need = payload_need(t);
        if let Some(need) = need {
            self.payload_in_window(need, skip);
            let mut at = STACK_INDEX_KEY + 4;
            for &c in &t.components {
                if let Component::Payload { offset, len } = c {
                    self.store_payload_words(offset, len, at);
                }
                at += 4 * c.words() as i16;
            }
        }
        if let Some((c, slot)) = t.gate {
            // No key of the tuple has the message's gate value: no hash lookup.
            let at: usize = t
                .components
                .iter()
                .take_while(|&&x| x != c)
                .map(|x| x.words())
                .sum();
            self.gate_value(c, v6, STACK_INDEX_KEY + 4 + 4 * at as i16);
            self.port_slot_lookup(maps, slot, skip);
            self.jmp32(JmpOp::Jeq, Reg::R1, 0, skip);
        }
        self.st(Size::W, Reg::R10, STACK_INDEX_KEY, t.id as i32);
        let mut at = STACK_INDEX_KEY + 4;
        for &c in &t.components {
            if helper_word(c, 0).is_some() {
                for from in (0..c.words()).filter_map(|w| helper_word(c, w)) {
                    self.ldx(Size::W, Reg::R2, Reg::R10, from);
                    self.stx(Size::W, Reg::R10, at, Reg::R2);
                    at += 4;
                }
                continue;
            }
            let words: Vec<i16> = match c {
                Component::Payload { .. } => {
                    at += 4 * c.words() as i16;
                    continue;
                }
                Component::Uid
                | Component::Gid
                | Component::Pid
                | Component::Cgroup
                | Component::Comm => continue, // `helper_word` above
                Component::LocalPort => vec![SK_MSG_MD_LOCAL_PORT],
                Component::RemotePort => vec![SK_MSG_MD_REMOTE_PORT],
                Component::Ip4 { end, .. } => {
                    let (ip4, ip6) = addr_words(end);
                    if v6 {
                        self.unless_mapped(ip6, skip);
                        vec![ip6 + 12]
                    } else {
                        vec![ip4]
                    }
                }
                Component::Ip6 { end, .. } => {
                    let (_, ip6) = addr_words(end);
                    (0..4).map(|w| ip6 + 4 * w).collect()
                }
            };
            for (w, off) in words.into_iter().enumerate() {
                let mask = index::mask_word(c, w);
                if mask == 0 {
                    self.st(Size::W, Reg::R10, at, 0);
                } else {
                    self.ctx_ld(Reg::R2, off);
                    if mask != u32::MAX {
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(mask as i32));
                    }
                    self.stx(Size::W, Reg::R10, at, Reg::R2);
                }
                at += 4;
            }
        }
        // Words past this tuple's must be zero; only those an earlier key set need it.
        let used = ((at - STACK_INDEX_KEY) / 4 - 1) as usize;
        for w in used..*dirty {
            self.st(Size::W, Reg::R10, STACK_INDEX_KEY + 4 * (w as i16 + 1), 0);
        }
        // On an IPv6 socket, an address that is not IPv4-mapped skips an IPv4 component's
        // lookup before the stores above: the words an earlier key left stay there.
        let skips_early = need.is_some()
            || t.gate.is_some()
            || v6
                && t.components
                    .iter()
                    .any(|c| matches!(c, Component::Ip4 { .. }));
        *dirty = if skips_early {
            (*dirty).max(used)
        } else {
            used
        };
        // A key with more rules than an entry has slots has more entries (pages, see
        // `index`): the next is looked up with the page in the tuple id's upper bits,
        // the rest of the key as it is, until a page is missing.
        for page in 0..t.slots.div_ceil(IndexEntry::SLOTS) {
            if page > 0 {
                let id = t.id | (page as u32) << index::PAGE_SHIFT;
                self.st(Size::W, Reg::R10, STACK_INDEX_KEY, id as i32);
            }
            self.map_lookup(maps.hash, STACK_INDEX_KEY);
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
            let slots = (t.slots - page * IndexEntry::SLOTS).min(IndexEntry::SLOTS);
            match on_hit {
                OnHit::Decide(d) => self.first_matching_slot(slots, t.residual, Some(d), t, skip),
                OnHit::Best => self.first_matching_slot(slots, t.residual, None, t, skip),
                OnHit::Act { logs, below } => {
                    self.stx(Size::DW, Reg::R10, STACK_INDEX_ENTRY, Reg::R0);
                    for s in 0..slots {
                        self.act_on_slot(s, t.residual, logs, below);
                    }
                }
            }
        }
        self.place(skip);
    }

    /// The first of `slots` slots of the entry at r0 whose rule matches (the range of
    /// the `residual` field holds, if any) decides: kept in SLOT if smaller (with
    /// counters; then on to `done`), or the decision `d` at once. Falls through when none
    /// matches. `d` None: a block of several decisions (tuple `t`), where SLOT keeps the
    /// smallest `rule << DECISION_BITS | decision`.
    fn first_matching_slot(
        &mut self,
        slots: usize,
        residual: Option<IntField>,
        d: Option<&Decision>,
        t: &index::Tuple,
        done: Label,
    ) {
        if let Some(field) = residual {
            // The slots in rule order: the first whose range holds decides.
            self.load_residual(field, Reg::R4);
        }
        for s in 0..slots {
            let base = (s * IndexSlot::SIZE) as i16;
            let next = self.label();
            if residual.is_some() {
                self.ldx(Size::W, Reg::R2, Reg::R0, base + IndexSlot::OFF_LEN_MIN);
                self.jmp64(JmpOp::Jlt, Reg::R4, Src::Reg(Reg::R2), next);
                self.ldx(Size::W, Reg::R2, Reg::R0, base + IndexSlot::OFF_LEN_MAX);
                self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R2), next);
            }
            match d {
                None => {
                    self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_RULE);
                    let bits = index::DECISION_BITS as i32;
                    self.alu32(AluOp::Lsh, Reg::R1, Src::Imm(bits));
                    if let Some(decision) = t.decision {
                        self.alu32(AluOp::Or, Reg::R1, Src::Imm(decision as i32));
                    } else {
                        self.ldx(Size::W, Reg::R2, Reg::R0, base + IndexSlot::OFF_THEN);
                        self.alu32(AluOp::Or, Reg::R1, Src::Reg(Reg::R2));
                    }
                    self.keep_smaller_rule();
                    self.goto(done);
                }
                Some(_) if self.options.counters => {
                    self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_RULE);
                    self.keep_smaller_rule();
                    self.goto(done);
                }
                Some(d) => {
                    let tail = self.tail(d);
                    self.goto(tail);
                }
            }
            self.place(next);
        }
    }

    /// Slot `s` of the entry whose address is at STACK_INDEX_ENTRY, in a block of
    /// `count`/`log` rules: if it holds a rule whose range of the `residual` field holds, the
    /// rule's counter is bumped, and its `then` (`skpc_abi::IndexSlot`) done: a second
    /// counter, or (`logs`) a log record. The rule and `then` are map data, unknown to
    /// the verifier: one walk for every slot of every entry.
    /// With `below`, only a rule before the best terminal rule in SLOT acts (a block of
    /// several decisions).
    fn act_on_slot(&mut self, s: usize, residual: Option<IntField>, logs: bool, below: bool) {
        let base = (s * IndexSlot::SIZE) as i16;
        let next = self.label();
        let entry = |g: &mut Gen| g.ldx(Size::DW, Reg::R0, Reg::R10, STACK_INDEX_ENTRY);
        entry(self);
        self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_RULE);
        // An unused slot (its range is empty too, but a slot without one is not checked).
        self.jmp32(JmpOp::Jeq, Reg::R1, IndexSlot::EMPTY.rule as i32, next);
        if let Some(field) = residual {
            self.load_residual(field, Reg::R4);
            self.ldx(Size::W, Reg::R2, Reg::R0, base + IndexSlot::OFF_LEN_MIN);
            self.jmp64(JmpOp::Jlt, Reg::R4, Src::Reg(Reg::R2), next);
            self.ldx(Size::W, Reg::R2, Reg::R0, base + IndexSlot::OFF_LEN_MAX);
            self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R2), next);
        }
        if below {
            self.mov64(Reg::R2, Src::Reg(Reg::R1));
            self.skip_unless_before_best(Reg::R2, next);
        }
        if self.options.counters {
            self.count_slot_in(Reg::R1);
            // `count NAME`: `then` is NAME's counter slot, below IndexSlot::LOG.
            let not_count = self.label();
            entry(self);
            self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_THEN);
            self.jmp32(JmpOp::Jge, Reg::R1, IndexSlot::LOG as i32, not_count);
            self.count_slot_in(Reg::R1);
            self.place(not_count);
        }
        if logs {
            entry(self);
            self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_THEN);
            self.jmp32(JmpOp::Jne, Reg::R1, IndexSlot::LOG as i32, next);
            self.ldx(Size::W, Reg::R1, Reg::R0, base + IndexSlot::OFF_RULE);
            self.log(Src::Reg(Reg::R1));
        }
        self.place(next);
    }

    /// Loads residual field `field` (`index_keys::residual_field`) into `dst`, in host
    /// order as the slots' ranges are: a context word, or a helper's value that
    /// `load_index_fields` stored for the block.
    fn load_residual(&mut self, field: IntField, dst: Reg) {
        let helper = match field {
            IntField::Uid => helper_word(index::Component::Uid, 0),
            IntField::Gid => helper_word(index::Component::Gid, 0),
            IntField::Pid => helper_word(index::Component::Pid, 0),
            _ => None,
        };
        match (helper, field.ctx_word()) {
            (Some(at), _) => self.ldx(Size::W, dst, Reg::R10, at),
            (None, Some((off, swap))) => self.load_ctx_field(off, swap, dst),
            // `len`: the message size.
            (None, None) => self.ctx_ld(dst, SK_MSG_MD_SIZE),
        }
    }

    /// Stores payload bytes `offset..offset + len` (readable at r2, see
    /// `ensure_payload`) at `at` as the little-endian words `index::payload_words`
    /// gives: 4-byte loads, and a 2- and 1-byte load for a last partial word. Uses r4
    /// and r5.
    fn store_payload_words(&mut self, offset: u32, len: u8, at: i16) {
        let (offset, len) = (offset as i16, len as i16);
        for w in 0..(len + 3) / 4 {
            let from = offset + 4 * w;
            match len - 4 * w {
                4.. => self.ldx(Size::W, Reg::R4, Reg::R2, from),
                3 => {
                    self.ldx(Size::H, Reg::R4, Reg::R2, from);
                    self.ldx(Size::B, Reg::R5, Reg::R2, from + 2);
                    self.alu64(AluOp::Lsh, Reg::R5, Src::Imm(16));
                    self.alu64(AluOp::Or, Reg::R4, Src::Reg(Reg::R5));
                }
                2 => self.ldx(Size::H, Reg::R4, Reg::R2, from),
                _ => self.ldx(Size::B, Reg::R4, Reg::R2, from),
            }
            self.stx(Size::W, Reg::R10, at + 4 * w, Reg::R4);
        }
    }

    /// Pulls the first `needs[0]` payload bytes of the message (fewer if it is shorter)
    /// into the data window unless they are there; if the pull fails, the next of
    /// `needs` (longest first), and so on: the window then holds every slice that a pull
    /// of its own would have made readable, and the block's lookups only check it
    /// (`payload_in_window`). A pull per lookup (`ensure_payload`) gave the verifier
    /// four ways through each lookup, and walks that met only much later.
    fn pull_payload(&mut self, needs: &[u32]) {
        if needs.is_empty() {
            return;
        }
        let done = self.label();
        for &need in needs {
            self.window_check(need);
            self.jmp64(JmpOp::Jle, Reg::R4, Src::Reg(Reg::R3), done);
            // `bpf_msg_pull_data` fails past the message's end: min(need, size).
            let fits = self.label();
            self.ctx_ld(Reg::R3, SK_MSG_MD_SIZE);
            self.jmp64(JmpOp::Jle, Reg::R3, Src::Imm(need as i32), fits);
            self.mov32(Reg::R3, need);
            self.place(fits);
            self.mov64(Reg::R1, Src::Reg(self.ctx()));
            self.mov64(Reg::R2, Src::Imm(0));
            self.mov64(Reg::R4, Src::Imm(0));
            self.call(BPF_FUNC_msg_pull_data);
            // A failed pull leaves the window as it was: try a shorter one.
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), done);
        }
        self.place(done);
    }

    /// r2 = data with at least `need` bytes before data_end (`pull_payload` pulled them
    /// if the message has them), or a jump to `short`.
    fn payload_in_window(&mut self, need: u32, short: Label) {
        self.window_check(need);
        self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R3), short);
    }

    /// r1 = the port array's value at `slot * 65536 + port` (the port of component
    /// `c`, a port). Jumps to `skip` if the lookup fails (it does not: the slot is in
    /// the array, but the verifier must see the check).
    fn port_slot_value(&mut self, maps: IndexMaps, c: index::Component, slot: u32, skip: Label) {
        self.gate_value(c, false, 0);
        self.port_slot_lookup(maps, slot, skip);
    }

    /// r2 = the gate value of component `c` (`index::gate_value`) from the message: a
    /// port in host order, else 16 bits of the first word of an address (on an IPv6
    /// socket, `v6`, an IPv4 component's mapped address) or of the payload slice's
    /// key word already stored at `payload_at`.
    fn gate_value(&mut self, c: index::Component, v6: bool, payload_at: i16) {
        use index::Component;
        if let Some(from) = helper_word(c, 0) {
            self.ldx(Size::W, Reg::R2, Reg::R10, from);
            self.alu32(AluOp::And, Reg::R2, Src::Imm(index::gate_mask(c) as i32));
            return;
        }
        match c {
            Component::LocalPort => self.load_ctx_field(SK_MSG_MD_LOCAL_PORT, false, Reg::R2),
            Component::RemotePort => self.load_ctx_field(SK_MSG_MD_REMOTE_PORT, true, Reg::R2),
            Component::Payload { .. } => self.ldx(Size::W, Reg::R2, Reg::R10, payload_at),
            Component::Ip4 { end, .. } => {
                let (ip4, ip6) = addr_words(end);
                self.ctx_ld(Reg::R2, if v6 { ip6 + 12 } else { ip4 });
            }
            Component::Ip6 { end, .. } => self.ctx_ld(Reg::R2, addr_words(end).1),
            Component::Uid
            | Component::Gid
            | Component::Pid
            | Component::Cgroup
            | Component::Comm => {} // `helper_word` above
        }
        if !matches!(c, Component::LocalPort | Component::RemotePort) {
            self.alu32(AluOp::And, Reg::R2, Src::Imm(index::gate_mask(c) as i32));
        }
    }

    /// r1 = the port array's value at `slot * 65536 + r2`; jumps to `skip` if the
    /// lookup fails.
    fn port_slot_lookup(&mut self, maps: IndexMaps, slot: u32, skip: Label) {
        if slot > 0 {
            self.alu32(
                AluOp::Add,
                Reg::R2,
                Src::Imm((slot * PORTS_PER_TUPLE) as i32),
            );
        }
        // Word 0 is the tuple id of hash keys, which every hash lookup writes anew.
        self.stx(Size::W, Reg::R10, STACK_INDEX_KEY, Reg::R2);
        let ports = maps
            .ports
            .expect("maps::define defines the port array when a block has a port tuple or gate");
        self.map_lookup(ports, STACK_INDEX_KEY);
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
        self.ldx(Size::W, Reg::R1, Reg::R0, 0);
    }

    /// SLOT = min(SLOT, w1), without a branch: SLOT += (r1 - SLOT) & ((r1 - SLOT) >> 63).
    /// Both are u32s (zero-extended), so the 64-bit difference has the sign of the
    /// comparison and SLOT stays a u32. A compare would narrow the best rule on each
    /// side, the final `NO_RULE` test would then be decided on some paths, and the
    /// verifier would have to keep apart states that differ only in which rule was found.
    pub(super) fn keep_smaller_rule(&mut self) {
        self.alu64(AluOp::Sub, Reg::R1, Src::Reg(SLOT));
        self.mov64(Reg::R3, Src::Reg(Reg::R1));
        self.alu64(AluOp::Arsh, Reg::R3, Src::Imm(63));
        self.alu64(AluOp::And, Reg::R1, Src::Reg(Reg::R3));
        self.alu64(AluOp::Add, SLOT, Src::Reg(Reg::R1));
    }
}

/// The payload bytes tuple `t`'s key reads (the end of its last slice), if any.
fn payload_need(t: &index::Tuple) -> Option<u32> {
    t.components
        .iter()
        .filter_map(|c| match *c {
            index::Component::Payload { offset, len } => Some(offset + len as u32),
            _ => None,
        })
        .max()
}
