//! What happens once a rule decides: the shared verdict tails (one per distinct decision,
//! reached with the rule's counter slot in `SLOT`), the counters (atomic adds into one
//! map value, see `maps`), the decisions
//! themselves (verdicts, `discard`, `reply`, redirects, `for N`, `cork N`) and `log` records.

use skpc_abi::{Counter, LogRecord};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{Decision, SockSlot, Target, Verdict};

use super::lir::{Label, Lir, Mark};
use super::programs::SK_MSG_LAYOUT;
use super::Gen;
use super::{SLOT, STACK_LOG, STACK_SOCK_KEY};

/// A plain verdict: pass or drop, without `for N`.
fn plain(d: &Decision) -> bool {
    d.apply_bytes.is_none() && matches!(d.verdict, Verdict::Pass | Verdict::Drop)
}

/// The program's return value for a plain verdict (`plain`).
fn plain_return(d: &Decision) -> i32 {
    if d.verdict == Verdict::Pass {
        SK_PASS
    } else {
        SK_DROP
    }
}

/// Sorted, merged runs of consecutive slots.
fn slot_ranges(mut slots: Vec<u32>) -> Vec<(u32, u32)> {
    slots.sort_unstable();
    slots.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for s in slots {
        match out.last_mut() {
            Some(last) if last.1 + 1 == s => last.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// Which decision the shared count block dispatches to: set by each decision's label.
/// r8 is a cached field's register, which nothing reads once a rule has decided.
const DECISION: Reg = Reg::R8;
/// The count's scratch registers: the message size, the counter's address and the 1
/// added to its messages. Not r1, which may hold the context the decision reads.
const SIZE: Reg = Reg::R2;
const COUNTER: Reg = Reg::R3;
const ONE: Reg = Reg::R4;
/// The slot's number, then its offset in its counters map, where the counters take more
/// than one map (`add_to_counter`).
const CHUNK_SLOT: Reg = Reg::R5;
/// Up to this many rules that decide (plain verdicts only), each sets the verdict and
/// its counter's address itself (see `count_then_dispatch_on_offset`).
const FEW_SITES: usize = 3;
/// Up to this many rules with a constant counter slot, the verifier walks the count
/// block once for each (a dozen instructions each) rather than the block hiding the
/// slot's value (two instructions).
const BLUR_ABOVE_SITES: usize = 16;

impl Gen {
    /// Jumps to the shared tail of decision `d`, counting slot `slot`: with the slot's
    /// byte offset in SLOT straight away where the verifier may see it (small
    /// policies), else with the slot in SLOT.
    pub(super) fn decide_via_tail(&mut self, d: &Decision, slot: u32) {
        if self.options.counters && !self.blur_slot {
            self.set_slot(slot);
            self.count_sites.push((self.code.len(), slot, d.clone()));
            self.tail(d);
            let count = *self.count_block.get_or_insert_with(|| {
                self.labels += 1;
                Label(self.labels)
            });
            self.goto(count);
            return;
        }
        if self.options.counters {
            self.const_slot_sites += 1;
            self.mov32(SLOT, slot);
        }
        let tail = self.tail(d);
        self.goto(tail);
    }

    /// Makes SLOT hold the byte offset of counter `slot` (policies that do not blur
    /// the slot): nothing if it does already, else an add when it holds a smaller slot's
    /// (the rules' slots rise one by one: one add per rule, on the path that goes on to
    /// the next rule, instead of a move and a jump per rule that decides), else a move.
    pub(super) fn set_slot(&mut self, slot: u32) {
        let at = |s: u32| (s * Counter::SIZE as u32) as i32;
        match self.slot_in_reg {
            Some(s) if s == slot => return,
            Some(s) if s < slot => {
                self.slot_writes.push(self.code.len());
                self.alu64(AluOp::Add, SLOT, Src::Imm(at(slot) - at(s)));
            }
            _ => {
                self.slot_writes.push(self.code.len());
                self.mov32(SLOT, slot * Counter::SIZE as u32);
            }
        }
        self.slot_in_reg = Some(slot);
    }

    /// The label of the shared tail of decision `d`.
    pub(super) fn tail(&mut self, d: &Decision) -> Label {
        match self.tails.iter().find(|(x, _)| x == d) {
            Some((_, l)) => *l,
            None => {
                let l = self.label();
                self.tails.push((d.clone(), l));
                l
            }
        }
    }

    /// The shared tails. Without counters, one decision per label. With counters, every
    /// decision's label sets DECISION to the decision's number and joins one count block
    /// (the counter in SLOT: a bounds check and two atomic adds), which then dispatches
    /// on DECISION to the decision itself: the update is emitted once, however many
    /// decisions there are. DECISION is a constant per decision, so the verifier walks
    /// the count block once per decision (SLOT is blurred, see `count_reg`), as it
    /// walked each decision's own copy.
    pub(super) fn emit_tails(&mut self) {
        let tails = std::mem::take(&mut self.tails);
        self.code.push(Lir::Mark(Mark::Tails));
        if self.options.counters && !self.blur_slot {
            self.count_then_dispatch_on_offset(&tails);
        } else if self.options.counters && tails.len() > 1 && tails.iter().all(|(d, _)| plain(d)) {
            // Pass and drop only: each decision's label sets the verdict, which the
            // count block leaves alone, and the count block ends the program.
            let count = self.label();
            let last = tails.len() - 1;
            for (k, (d, l)) in tails.iter().enumerate() {
                self.place(*l);
                self.mov64(Reg::R0, Src::Imm(plain_return(d)));
                if k != last {
                    self.goto(count);
                }
            }
            self.place(count);
            self.count_reg();
            self.emit(Insn::Exit);
        } else if self.options.counters && tails.len() > 1 {
            let count = self.label();
            let last = tails.len() - 1;
            for (k, (_, l)) in tails.iter().enumerate() {
                self.place(*l);
                self.mov32(DECISION, k as u32);
                if k != last {
                    self.goto(count);
                }
            }
            self.place(count);
            self.count_reg();
            let decide: Vec<Label> = tails.iter().map(|_| self.label()).collect();
            for (k, l) in decide.iter().enumerate().skip(1) {
                self.jmp32(JmpOp::Jeq, DECISION, k as i32, *l);
            }
            for ((d, _), l) in tails.iter().zip(decide) {
                self.place(l);
                self.decision(d);
            }
        } else {
            for (d, l) in tails {
                self.place(l);
                self.count_reg();
                self.decision(&d);
            }
        }
        if let Some(not_ready) = self.sets_not_ready {
            // Fail closed: the sets are empty, so the rules that read them cannot be
            // enforced.
            self.place(not_ready);
            self.ret(SK_DROP);
        }
        if let Some(not_ready) = self.index_not_ready {
            // Fail closed: the index is empty, so the rules in it cannot be enforced.
            self.place(not_ready);
            self.ret(SK_DROP);
        }
    }

    /// The tails of a policy whose slots the verifier may see: every rule set SLOT to
    /// its counter's byte offset (a constant on every path: no bounds check) and joins
    /// at the count block. One count block, then SLOT says which decision follows: a
    /// compare per slot range of every decision but the one with the most ranges, which
    /// is the fall-through. Where every rule that decides counts the same slot (`pass;`,
    /// `redirect to sock 1;`), the offset is the address's constant and SLOT is not set;
    /// where at most FEW_SITES rules decide, all with a plain verdict, each sets r0 and
    /// its counter's address instead, and the count block ends the program.
    fn count_then_dispatch_on_offset(&mut self, tails: &[(Decision, Label)]) {
        for (_, l) in tails {
            self.place(*l);
        }
        if let Some(count) = self.count_block {
            self.place(count);
        }
        let sites = std::mem::take(&mut self.count_sites);
        let writes = std::mem::take(&mut self.slot_writes);
        let one_slot = match sites.split_first() {
            Some((&(_, first, _), rest)) if rest.iter().all(|&(_, s, _)| s == first) => Some(first),
            _ => None,
        };
        let few_plain = sites.len() <= FEW_SITES && sites.iter().all(|(_, _, d)| plain(d));
        if one_slot.is_none() && few_plain {
            // Each site sets the verdict and the counter's address itself: with one to
            // three rules that decide, two instructions per site are fewer than the
            // offset's add and the dispatch on it, and the count block ends the program.
            let mut edits: Vec<(usize, Option<(u32, i32)>)> = writes
                .iter()
                .map(|&at| (at, None))
                .chain(
                    sites
                        .iter()
                        .map(|(at, slot, d)| (*at, Some((*slot, plain_return(d))))),
                )
                .collect();
            edits.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (at, edit) in edits {
                match edit {
                    None => {
                        self.code.remove(at);
                    }
                    Some((slot, v)) => {
                        let (map, off) = self.counter_address(slot * Counter::SIZE as u32);
                        let ld = Insn::LdMapValue {
                            dst: COUNTER,
                            map: map.number(),
                            off,
                        };
                        let r0 = Insn::Alu64 {
                            op: AluOp::Mov,
                            dst: Reg::R0,
                            src: Src::Imm(v),
                        };
                        self.code.insert(at, Lir::Insn(ld));
                        self.code.insert(at, Lir::Insn(r0));
                    }
                }
            }
            self.ctx_ld(SIZE, SK_MSG_MD_SIZE);
            self.mov32(ONE, 1);
            self.atomic_adds();
            self.emit(Insn::Exit);
            return;
        }
        if let Some(slot) = one_slot {
            // The writes of SLOT are dead: drop them (from the last, so that the
            // positions of the others stay valid).
            for &at in writes.iter().rev() {
                self.code.remove(at);
            }
            self.count_at(slot * Counter::SIZE as u32, None);
        } else {
            self.count_at(0, Some(SLOT));
        }
        if tails.len() > 1 && one_slot.is_none() {
            let ranges: Vec<Vec<(u32, u32)>> = tails
                .iter()
                .map(|(d, _)| {
                    let slots = self
                        .decision_slots
                        .iter()
                        .find(|(x, _)| x == d)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default();
                    slot_ranges(slots)
                })
                .collect();
            let fall = (0..tails.len())
                .max_by_key(|&k| (ranges[k].len(), std::cmp::Reverse(k)))
                .unwrap_or(0);
            let decide: Vec<Label> = tails.iter().map(|_| self.label()).collect();
            let at = |slot: u32| (slot * Counter::SIZE as u32) as i32;
            for (k, rs) in ranges.iter().enumerate().filter(|(k, _)| *k != fall) {
                for &(lo, hi) in rs {
                    if lo == hi {
                        self.jmp32(JmpOp::Jeq, SLOT, at(lo), decide[k]);
                    } else {
                        let next = self.label();
                        self.jmp32(JmpOp::Jlt, SLOT, at(lo), next);
                        self.jmp32(JmpOp::Jle, SLOT, at(hi), decide[k]);
                        self.place(next);
                    }
                }
            }
            let order = std::iter::once(fall).chain((0..tails.len()).filter(|&k| k != fall));
            for k in order {
                self.place(decide[k]);
                self.decision(&tails[k].0);
            }
        } else if let Some((d, _)) = tails.first() {
            self.decision(d);
        }
    }

    /// Bumps counter `slot` by one message and `sk_msg_md.size` bytes.
    pub(super) fn count_const(&mut self, slot: u32) {
        if self.options.counters {
            self.count_at(slot * Counter::SIZE as u32, None);
        }
    }

    /// Bumps the counter whose slot is in SLOT (see `emit_tails`). SLOT holds a
    /// constant on the paths from rules compiled as code, a different one per rule: the
    /// verifier would track it exactly and walk this block once per rule. With more
    /// than BLUR_ABOVE_SITES of them, `+ size - size` leaves the value alone but makes
    /// it unknown to the verifier, so the block is verified once per decision. A bounds
    /// check then keeps the counter inside the map's value for the verifier, as for a
    /// slot from a keyed run (a slot from the rule index comes bounded, see `lookup`).
    /// Clobbers SLOT.
    pub(super) fn count_reg(&mut self) {
        if !self.options.counters {
            return;
        }
        self.ctx_ld(SIZE, SK_MSG_MD_SIZE);
        let blur = self.const_slot_sites > BLUR_ABOVE_SITES;
        if blur {
            self.alu64(AluOp::Add, SLOT, Src::Reg(SIZE));
            self.alu64(AluOp::Sub, SLOT, Src::Reg(SIZE));
        }
        self.count_slot_number(SLOT, blur || self.slot_unbounded);
    }

    /// Bumps the counter whose slot is in `reg` (not r2-r4), a value the verifier cannot
    /// bound (read from the rule index's entries): checked against the last slot first.
    /// Clobbers `reg`.
    pub(super) fn count_slot_in(&mut self, reg: Reg) {
        if !self.options.counters {
            return;
        }
        self.ctx_ld(SIZE, SK_MSG_MD_SIZE);
        self.count_slot_number(reg, true);
    }

    /// Bumps the counter whose slot number is in `reg` (the size already in SIZE): with
    /// `check`, only if it is a slot (the verifier cannot bound it otherwise). Clobbers
    /// `reg`.
    fn count_slot_number(&mut self, reg: Reg, check: bool) {
        let skip = self.label();
        if check {
            let last_slot = self.counter_slots as i32 - 1;
            self.jmp64(JmpOp::Jgt, reg, Src::Imm(last_slot), skip);
        }
        self.alu64(
            AluOp::Lsh,
            reg,
            Src::Imm(Counter::SIZE.trailing_zeros() as i32),
        );
        self.add_to_counter(0, Some(reg));
        self.place(skip);
    }

    /// Bumps the counter at byte `off` of the counters (plus `slot`, a register holding
    /// a byte offset the verifier knows to be in bounds): `lock` adds of 1 and the
    /// message size, straight into the map's value (no lookup: the map is an ARRAY of
    /// one entry, see `maps`). Atomic, as CPUs share the counters.
    fn count_at(&mut self, off: u32, slot: Option<Reg>) {
        self.ctx_ld(SIZE, SK_MSG_MD_SIZE);
        self.add_to_counter(off, slot);
    }

    /// The counters map and the offset in its value of the counter at byte `off` of all
    /// the counters (`maps::Maps::counters_chunk`: a value holds at most
    /// `Options::counter_chunk_slots` of them).
    fn counter_address(&self, off: u32) -> (super::maps::MapId, u32) {
        let chunk_bytes = self.options.counter_chunk_slots.max(1) * Counter::SIZE as u32;
        (
            self.maps.counters_chunk(off / chunk_bytes),
            off % chunk_bytes,
        )
    }

    /// The adds of `count_at`, with the size already in SIZE. With `slot` (a byte offset
    /// the verifier knows to be below the counters' end, left as it is) and more than one
    /// counters map, a compare per map boundary on the slot's number picks the map, and
    /// the offset in it is computed in CHUNK_SLOT: on slot numbers the verifier's bounds
    /// are exact, so the offset stays inside the map's value (a byte offset compared
    /// with a boundary would leave it a byte short of a whole counter).
    fn add_to_counter(&mut self, off: u32, slot: Option<Reg>) {
        let maps = self.maps.counter_maps;
        let Some(slot) = slot.filter(|_| maps > 1) else {
            let (map, off) = self.counter_address(off);
            return self.bump(map, off, slot);
        };
        debug_assert_eq!(off, 0, "a slot in a register counts from the first counter");
        let chunk_slots = self.options.counter_chunk_slots.max(1) as i32;
        let shift = Counter::SIZE.trailing_zeros() as i32;
        let done = self.label();
        self.mov64(CHUNK_SLOT, Src::Reg(slot));
        self.alu64(AluOp::Rsh, CHUNK_SLOT, Src::Imm(shift));
        for chunk in 0..maps {
            let next = self.label();
            if chunk + 1 < maps {
                self.jmp64(
                    JmpOp::Jge,
                    CHUNK_SLOT,
                    Src::Imm(chunk_slots * (chunk as i32 + 1)),
                    next,
                );
            }
            if chunk > 0 {
                self.alu64(AluOp::Sub, CHUNK_SLOT, Src::Imm(chunk_slots * chunk as i32));
            }
            self.alu64(AluOp::Lsh, CHUNK_SLOT, Src::Imm(shift));
            self.bump(self.maps.counters_chunk(chunk), 0, Some(CHUNK_SLOT));
            self.goto(done);
            self.place(next);
        }
        self.place(done);
    }

    /// Adds 1 and SIZE to the counter at byte `off` (plus `plus`) of the value of
    /// counters map `map`.
    fn bump(&mut self, map: super::maps::MapId, off: u32, plus: Option<Reg>) {
        self.emit(Insn::LdMapValue {
            dst: COUNTER,
            map: map.number(),
            off,
        });
        if let Some(plus) = plus {
            self.alu64(AluOp::Add, COUNTER, Src::Reg(plus));
        }
        self.mov32(ONE, 1);
        self.atomic_adds();
    }

    /// `lock` adds of ONE and SIZE to the counter at COUNTER.
    fn atomic_adds(&mut self) {
        self.emit(Insn::AtomicAdd {
            size: Size::DW,
            dst: COUNTER,
            src: ONE,
            off: Counter::OFF_MESSAGES,
        });
        self.emit(Insn::AtomicAdd {
            size: Size::DW,
            dst: COUNTER,
            src: SIZE,
            off: Counter::OFF_BYTES,
        });
    }

    pub(super) fn decision(&mut self, d: &Decision) {
        if let Some(n) = d.apply_bytes {
            self.mov64(Reg::R1, Src::Reg(self.ctx()));
            self.mov32(Reg::R2, n);
            self.call(BPF_FUNC_msg_apply_bytes);
        }
        match &d.verdict {
            Verdict::Pass => self.ret(SK_PASS),
            Verdict::Drop => self.ret(SK_DROP),
            Verdict::Discard => {
                // Pop every byte of the message, then pass what is left (nothing): the
                // send succeeds, the peer gets nothing, and unlike SK_DROP nothing sticks
                // to the socket. The size is read before r1 is set: with the context in
                // r1 the load needs it, and nothing after the call reads the context.
                self.ctx_ld(Reg::R3, SK_MSG_MD_SIZE);
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.mov64(Reg::R2, Src::Imm(0));
                self.mov64(Reg::R4, Src::Imm(0));
                self.call(BPF_FUNC_msg_pop_data);
                self.ret(SK_PASS);
            }
            Verdict::Reply(bytes) => self.reply(bytes),
            Verdict::Cork(n) => {
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.mov32(Reg::R2, *n);
                self.call(BPF_FUNC_msg_cork_bytes);
                self.ret(SK_PASS);
            }
            Verdict::Redirect {
                ingress,
                target: Target::Sock(slot),
            } => {
                match slot {
                    SockSlot::Const(k) => self.mov32(Reg::R3, *k),
                    SockSlot::Field(f) => {
                        // Payload bytes are rejected by the checker as keys.
                        let fail = self.label();
                        self.load_int(*f, fail);
                        self.mov64(Reg::R3, Src::Reg(Reg::R2));
                        let go = self.label();
                        self.goto(go);
                        self.place(fail);
                        self.ret(SK_DROP);
                        self.place(go);
                    }
                }
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.ld_map(Reg::R2, self.maps.sockmap);
                self.mov64(
                    Reg::R4,
                    Src::Imm(if *ingress { BPF_F_INGRESS as i32 } else { 0 }),
                );
                self.call(BPF_FUNC_msg_redirect_map);
                self.emit(Insn::Exit);
            }
            Verdict::Redirect {
                ingress,
                target: Target::Peer,
            } => {
                // Egress (no `ingress`) sends the bytes out of the peer socket, i.e. back to
                // this one; the checker warns (W0004), the kernel does what it is told.
                self.sock_key(SK_MSG_LAYOUT, true);
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.ld_map(Reg::R2, self.maps.sockhash);
                self.stack_ptr(Reg::R3, STACK_SOCK_KEY);
                self.mov64(
                    Reg::R4,
                    Src::Imm(if *ingress { BPF_F_INGRESS as i32 } else { 0 }),
                );
                self.call(BPF_FUNC_msg_redirect_hash);
                self.emit(Insn::Exit);
            }
        }
    }

    /// `reply STRING`: rewrite the message to `bytes` and redirect it to the sender's own
    /// receive queue. With N = size and M = bytes.len(): pop the N-M bytes past M (N > M)
    /// or push M-N bytes at the end (N < M), pull 0..M, write the bytes through `data`,
    /// then `bpf_msg_redirect_hash(msg, sockhash, &own_key, BPF_F_INGRESS)`, whose result
    /// is the verdict. Every failure (a helper's error, a failed bounds check) drops: the
    /// message must never reach the peer. The context lives in CTX (a reply reads it after
    /// calls, see `needs_helper_before_verdict`); N is kept in r8, whose cached field no
    /// one reads once a tail runs.
    fn reply(&mut self, bytes: &[u8]) {
        let m = bytes.len() as i32;
        let n = Reg::R8;
        let (grow, pull, fail) = (self.label(), self.label(), self.label());
        self.ctx_ld(n, SK_MSG_MD_SIZE);
        self.jmp32(JmpOp::Jlt, n, m, grow);
        self.jmp32(JmpOp::Jeq, n, m, pull);
        // N > M: pop the N - M bytes after the first M.
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov32(Reg::R2, m as u32);
        self.mov64(Reg::R3, Src::Reg(n));
        self.alu64(AluOp::Sub, Reg::R3, Src::Imm(m));
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_pop_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), fail);
        self.goto(pull);
        // N < M: push M - N bytes at the end.
        self.place(grow);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov64(Reg::R2, Src::Reg(n));
        self.mov32(Reg::R3, m as u32);
        self.alu64(AluOp::Sub, Reg::R3, Src::Reg(n));
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_push_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), fail);
        // The message has M bytes now: make them readable (and writable) through data.
        self.place(pull);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov64(Reg::R2, Src::Imm(0));
        self.mov32(Reg::R3, m as u32);
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_pull_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), fail);
        // Every data pointer is new after the calls: load both and check the bounds.
        let ctx = self.ctx();
        self.ldx(Size::DW, Reg::R2, ctx, SK_MSG_MD_DATA);
        self.ldx(Size::DW, Reg::R3, ctx, SK_MSG_MD_DATA_END);
        self.mov64(Reg::R4, Src::Reg(Reg::R2));
        self.alu64(AluOp::Add, Reg::R4, Src::Imm(m));
        self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R3), fail);
        self.write_bytes(Reg::R2, bytes);
        // The sender's own key (not swapped), ingress: the sender reads the bytes.
        self.sock_key(SK_MSG_LAYOUT, false);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.ld_map(Reg::R2, self.maps.sockhash);
        self.stack_ptr(Reg::R3, STACK_SOCK_KEY);
        self.mov64(Reg::R4, Src::Imm(BPF_F_INGRESS as i32));
        self.call(BPF_FUNC_msg_redirect_hash);
        self.emit(Insn::Exit);
        self.place(fail);
        self.ret(SK_DROP);
    }

    /// Stores `bytes` at `*(ptr + 0..)`: 8 bytes at a time (a store of an immediate when
    /// the double word is a sign-extended 32-bit one, else ld_imm64 into r1 and a store),
    /// then 4, 2 and 1. Clobbers r1.
    fn write_bytes(&mut self, ptr: Reg, bytes: &[u8]) {
        for (off, size, v) in super::payload::words(bytes) {
            let at = off as i16;
            match size {
                Size::DW if v as i64 != v as i32 as i64 => {
                    self.emit(Insn::LdImm64 {
                        dst: Reg::R1,
                        imm: v,
                    });
                    self.stx(Size::DW, ptr, at, Reg::R1);
                }
                // The kernel stores the low `n` bytes of the (sign-extended) immediate.
                _ => self.st(size, ptr, at, v as u32 as i32),
            }
        }
    }

    /// Sends a `LogRecord` for rule `rule` (a constant, or a register other than r10)
    /// to the ring buffer.
    pub(super) fn log(&mut self, rule: Src) {
        let b = STACK_LOG;
        for i in 0..(LogRecord::SIZE as i16 / 8) {
            self.st(Size::DW, Reg::R10, b + i * 8, 0);
        }
        match rule {
            Src::Imm(rule) => self.st(Size::W, Reg::R10, b + LogRecord::OFF_RULE, rule),
            Src::Reg(r) => self.stx(Size::W, Reg::R10, b + LogRecord::OFF_RULE, r),
        }
        let (v6, done) = (self.label(), self.label());
        self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_FAMILY, Reg::R2);
        self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6);
        self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_IP4);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_LOCAL_IP, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_IP4);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_REMOTE_IP, Reg::R3);
        self.goto(done);
        self.place(v6);
        for w in 0..4 {
            self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_IP6 + w * 4);
            self.stx(
                Size::W,
                Reg::R10,
                b + LogRecord::OFF_LOCAL_IP + w * 4,
                Reg::R3,
            );
            self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_IP6 + w * 4);
            self.stx(
                Size::W,
                Reg::R10,
                b + LogRecord::OFF_REMOTE_IP + w * 4,
                Reg::R3,
            );
        }
        self.place(done);
        self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_PORT);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_LOCAL_PORT, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_PORT);
        self.emit(Insn::End {
            dst: Reg::R3,
            endian: Endian::ToBe,
            bits: 32,
        });
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_REMOTE_PORT, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_SIZE);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_SIZE, Reg::R3);
        self.call(BPF_FUNC_get_current_pid_tgid);
        self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_PID, Reg::R0);
        self.call(BPF_FUNC_get_current_uid_gid);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_UID, Reg::R0);
        self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_GID, Reg::R0);
        self.current_comm(b + LogRecord::OFF_COMM);
        let events = self
            .maps
            .events
            .expect("maps::define defines the events map when a rule logs");
        self.ld_map(Reg::R1, events);
        self.stack_ptr(Reg::R2, b);
        self.mov64(Reg::R3, Src::Imm(LogRecord::SIZE as i32));
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_ringbuf_output);
    }
}
