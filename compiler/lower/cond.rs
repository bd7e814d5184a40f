//! Conditions as jumping code: `and`/`or`/`not` as jumps to a true and a false label
//! (cheap operands first), integer tests as range checks (a linear scan or a binary
//! search), and the loads of integer fields.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{Cond, IntField, Test};

use super::lir::Label;
use super::{Gen, STACK_COMM};

impl Gen {
    /// Emits code that jumps to `t` when `c` holds and to `f` when it does not.
    pub(super) fn cond(&mut self, c: &Cond, t: Label, f: Label) {
        match c {
            Cond::Const(true) => self.goto(t),
            Cond::Const(false) => self.goto(f),
            Cond::Not(inner) => self.cond(inner, f, t),
            Cond::And(cs) | Cond::Or(cs) => {
                let is_and = matches!(c, Cond::And(_));
                // Cheap tests first: a payload test may pull data, a helper test calls.
                let mut order: Vec<&Cond> = cs.iter().collect();
                order.sort_by_key(|c| cost(c));
                let last = order.len().saturating_sub(1);
                for (i, sub) in order.into_iter().enumerate() {
                    if i == last {
                        self.cond(sub, t, f);
                    } else {
                        let next = self.label();
                        if is_and {
                            self.cond(sub, next, f);
                        } else {
                            self.cond(sub, t, next);
                        }
                        self.place(next);
                    }
                }
            }
            Cond::Test(test) => self.test(test, t, f),
        }
    }

    pub(super) fn test(&mut self, test: &Test, t: Label, f: Label) {
        if let Some(k) = self.set_of(test) {
            // A large set: one map lookup (see `sets`).
            self.set_test(k, t, f);
            return;
        }
        match test {
            Test::Int { field, ranges } => {
                let points = ranges.iter().all(|(lo, hi)| lo == hi) && ranges.len() <= 4;
                if *field == IntField::RemotePort
                    && points
                    && !self.cached.iter().any(|(c, _)| c == field)
                {
                    // Equality with a few ports: compare the raw network-order word with
                    // byte-swapped constants instead of swapping the word (as clang does).
                    self.ctx_ld(Reg::R2, SK_MSG_MD_REMOTE_PORT);
                    for (port, _) in ranges {
                        self.jmp32(JmpOp::Jeq, Reg::R2, raw_remote_port(*port as u16), t);
                    }
                    self.goto(f);
                    return;
                }
                let reg = match self.cached.iter().find(|(c, _)| c == field) {
                    Some((_, r)) => *r,
                    None => {
                        self.load_int(*field, f);
                        Reg::R2
                    }
                };
                self.ranges(
                    reg,
                    ranges,
                    field.max_value(),
                    *field == IntField::Cgroup,
                    t,
                    f,
                );
            }
            Test::Addr { end, nets, mapped } => self.addr(*end, nets, *mapped, t, f),
            Test::Payload { offset, alts } => {
                let len = alts.first().map(|a| a.len() as u32).unwrap_or(0);
                self.ensure_payload(offset + len, f);
                for alt in alts {
                    let next = self.label();
                    self.compare_bytes(Reg::R2, *offset as i16, alt, None, next);
                    self.goto(t);
                    self.place(next);
                }
                self.goto(f);
            }
            Test::Proto(p) => self.proto_test(*p, t, f),
            // `sets::plan` made every set read from a file a map, which `set_of` found
            // above; the elements as checked are the same test otherwise.
            Test::InFile { of, .. } => self.test(of, t, f),
            Test::Text { field, op, alts } => self.text_test(*field, *op, alts, t, f),
            Test::Comm { alts, prefix } => {
                self.current_comm(STACK_COMM);
                for alt in alts {
                    let next = self.label();
                    // Exact names also compare the NUL after them.
                    let mut want = alt.clone();
                    if !prefix {
                        want.push(0);
                    }
                    self.compare_bytes(Reg::R10, STACK_COMM, &want, None, next);
                    self.goto(t);
                    self.place(next);
                }
                self.goto(f);
            }
        }
    }

    /// Loads an integer field into r2 (host order, zero-extended). Payload bytes jump
    /// to `short` when the message is too short.
    pub(super) fn load_int(&mut self, field: IntField, short: Label) {
        match field {
            IntField::Len | IntField::Family | IntField::LocalPort | IntField::RemotePort => {
                let (off, swap) = field.ctx_word().unwrap_or((SK_MSG_MD_SIZE, false));
                self.load_ctx_field(off, swap, Reg::R2);
            }
            IntField::Uid => {
                self.call(BPF_FUNC_get_current_uid_gid);
                self.alu32(AluOp::Mov, Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Gid => {
                self.call(BPF_FUNC_get_current_uid_gid);
                self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Pid => {
                self.call(BPF_FUNC_get_current_pid_tgid);
                self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Cgroup => {
                self.call(BPF_FUNC_get_current_cgroup_id);
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::PayloadByte(i) => {
                self.ensure_payload(i + 1, short);
                self.ldx(Size::B, Reg::R2, Reg::R2, i as i16);
            }
        }
    }

    /// Jumps to `t` if `reg` lies in one of the sorted, disjoint `ranges`, else to `f`.
    /// `max` is the largest value the register can hold (no test needed up to it).
    pub(super) fn ranges(
        &mut self,
        reg: Reg,
        ranges: &[(u64, u64)],
        max: u64,
        wide: bool,
        t: Label,
        f: Label,
    ) {
        let labeled: Vec<(u64, u64, Label)> = ranges.iter().map(|&(lo, hi)| (lo, hi, t)).collect();
        self.ranges_to(reg, &labeled, max, wide, f);
    }

    /// Jumps to the label of the sorted, disjoint range that holds `reg`, else to `f`.
    /// Few ranges: a linear scan that leaves early; many: binary search.
    pub(super) fn ranges_to(
        &mut self,
        reg: Reg,
        ranges: &[(u64, u64, Label)],
        max: u64,
        wide: bool,
        f: Label,
    ) {
        // A leaf scans up to LEAF_COMPARES compares.
        let compares = compares(ranges.iter().map(|&(lo, hi, _)| (lo, hi)));
        if compares > LEAF_COMPARES && ranges.len() > 1 {
            let mid = ranges.len() / 2;
            let right = self.label();
            self.cmp_const(JmpOp::Jgt, reg, ranges[mid - 1].1, wide, right);
            self.ranges_to(reg, &ranges[..mid], max, wide, f);
            self.place(right);
            self.ranges_to(reg, &ranges[mid..], max, wide, f);
            return;
        }
        for &(lo, hi, t) in ranges {
            if lo == hi {
                self.cmp_const(JmpOp::Jeq, reg, lo, wide, t);
                continue;
            }
            if lo > 0 {
                self.cmp_const(JmpOp::Jlt, reg, lo, wide, f);
            }
            if hi >= max {
                // Sorted ranges: nothing above this one, and the register cannot exceed max.
                self.goto(t);
                return;
            }
            self.cmp_const(JmpOp::Jle, reg, hi, wide, t);
        }
        self.goto(f);
    }

    /// `if reg OP value goto target`, unsigned; 32-bit compares for 32-bit fields.
    pub(super) fn cmp_const(&mut self, op: JmpOp, reg: Reg, value: u64, wide: bool, target: Label) {
        if !wide {
            self.jmp32(op, reg, value as u32 as i32, target);
        } else if value <= i32::MAX as u64 {
            self.jmp64(op, reg, Src::Imm(value as i32), target);
        } else {
            self.emit(Insn::LdImm64 {
                dst: Reg::R3,
                imm: value,
            });
            self.jmp64(op, reg, Src::Reg(Reg::R3), target);
        }
    }
}

/// `sk_msg_md.remote_port` as a 32-bit load sees port `p`: the network-order port in
/// the upper half.
pub(super) fn raw_remote_port(p: u16) -> i32 {
    ((p.swap_bytes() as u32) << 16) as i32
}

/// Relative cost of evaluating a condition, for ordering `and`/`or` operands: that of
/// its most expensive test.
pub(super) fn cost(c: &Cond) -> u32 {
    c.tests().map(test_cost).max().unwrap_or(0)
}

/// Payload tests may pull data; helper fields and comm call a helper; the rest loads.
fn test_cost(t: &Test) -> u32 {
    match t {
        Test::Int {
            field: IntField::PayloadByte(_),
            ..
        }
        | Test::Payload { .. }
        | Test::Proto(_)
        | Test::Text { .. } => 3,
        Test::Int {
            field: IntField::Uid | IntField::Gid | IntField::Pid | IntField::Cgroup,
            ..
        }
        | Test::Comm { .. }
        | Test::InFile { .. } => 2,
        Test::Int { .. } | Test::Addr { .. } => 1,
    }
}

/// Compares a leaf of `Gen::ranges_to` makes at most: fewer internal nodes and leaf exits
/// keep both the code and the verifier's work below a compare chain's (clang's rules_1000).
const LEAF_COMPARES: usize = 16;

/// Compares a linear scan over ranges makes: one per point, two per interval.
fn compares(ranges: impl Iterator<Item = (u64, u64)>) -> usize {
    ranges.map(|(lo, hi)| if lo == hi { 1 } else { 2 }).sum()
}

/// Whether a test of `ranges` is a binary search (see `Gen::ranges_to`).
pub(super) fn is_search(ranges: &[(u64, u64)]) -> bool {
    compares(ranges.iter().copied()) > LEAF_COMPARES
}
