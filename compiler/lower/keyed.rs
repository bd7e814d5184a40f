//! Keyed searches of a rule run (see `runs::Keyed`): one search over a run's values that
//! finds both whether and which rule matched, without branching on the rule index.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::Decision;

use super::addr::addr_words;
use super::lir::Label;
use super::runs;
use super::{Gen, NO_RULE, SLOT, STACK_KEYED};

impl Gen {
    /// A run as keyed searches (see `runs::Keyed`): each search leaves the index of the
    /// first matching rule in its stack word (NONE if none) and 1 in its flag word; the
    /// smallest index wins. The verifier only branches on the flags, never on an index,
    /// so it keeps the indices imprecise and verifies the rest of the program once, not
    /// once per value.
    pub(super) fn keyed_run(&mut self, keys: &[runs::Keyed], d: &Decision) {
        const NONE: u32 = NO_RULE;
        let index_at = |k: usize| STACK_KEYED + 8 * k as i16;
        let flag_at = |k: usize| STACK_KEYED + 8 * k as i16 + 4;
        for k in 0..keys.len() {
            self.st(Size::W, Reg::R10, index_at(k), NONE as i32);
            self.st(Size::W, Reg::R10, flag_at(k), 0);
        }
        for (k, keyed) in keys.iter().enumerate() {
            let done = self.label();
            // One label per rule (a rule may own several intervals), in first-use order.
            let mut rule_labels: Vec<(usize, Label)> = Vec::new();
            let mut label_of: std::collections::HashMap<usize, Label> =
                std::collections::HashMap::new();
            let mut items = Vec::with_capacity(keyed.intervals.len());
            for &(lo, hi, rule) in &keyed.intervals {
                let l = match label_of.get(&rule) {
                    Some(l) => *l,
                    None => {
                        let l = self.label();
                        label_of.insert(rule, l);
                        rule_labels.push((rule, l));
                        l
                    }
                };
                items.push((lo, hi, l));
            }
            match keyed.key {
                runs::Key::Int(field) => {
                    let reg = match self.cached.iter().find(|(c, _)| *c == field) {
                        Some((_, r)) => *r,
                        None => {
                            let (off, swap) = field.ctx_word().unwrap_or((SK_MSG_MD_SIZE, false));
                            self.load_ctx_field(off, swap, Reg::R2);
                            Reg::R2
                        }
                    };
                    self.ranges_to(reg, &items, field.max_value(), false, done);
                }
                runs::Key::Addr4 { end, mapped } => {
                    let (ip4, ip6) = addr_words(end);
                    let (v4, v6) = (self.label(), self.label());
                    self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
                    self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, v4);
                    if mapped {
                        self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6);
                    }
                    self.goto(done);
                    self.place(v4);
                    self.ctx_ld(Reg::R2, ip4);
                    self.emit(Insn::End {
                        dst: Reg::R2,
                        endian: Endian::ToBe,
                        bits: 32,
                    });
                    self.ranges_to(Reg::R2, &items, u32::MAX as u64, false, done);
                    if mapped {
                        self.place(v6);
                        self.unless_mapped(ip6, done);
                        self.ctx_ld(Reg::R2, ip6 + 12);
                        self.emit(Insn::End {
                            dst: Reg::R2,
                            endian: Endian::ToBe,
                            bits: 32,
                        });
                        self.ranges_to(Reg::R2, &items, u32::MAX as u64, false, done);
                    }
                }
            }
            for (rule, l) in rule_labels {
                self.place(l);
                self.st(Size::W, Reg::R10, index_at(k), rule as i32);
                self.st(Size::W, Reg::R10, flag_at(k), 1);
                self.goto(done);
            }
            self.place(done);
        }
        // r5 = any flag; r4 = the smallest index, without a branch:
        // r4 += (r3 - r4) & ((r3 - r4) >> 63).
        let miss = self.label();
        self.ldx(Size::W, Reg::R5, Reg::R10, flag_at(0));
        self.ldx(Size::W, Reg::R4, Reg::R10, index_at(0));
        for k in 1..keys.len() {
            self.ldx(Size::W, Reg::R0, Reg::R10, flag_at(k));
            self.alu64(AluOp::Or, Reg::R5, Src::Reg(Reg::R0));
            self.ldx(Size::W, Reg::R3, Reg::R10, index_at(k));
            self.mov64(Reg::R1, Src::Reg(Reg::R3));
            self.alu64(AluOp::Sub, Reg::R1, Src::Reg(Reg::R4));
            self.mov64(Reg::R2, Src::Reg(Reg::R1));
            self.alu64(AluOp::Arsh, Reg::R2, Src::Imm(63));
            self.alu64(AluOp::And, Reg::R1, Src::Reg(Reg::R2));
            self.alu64(AluOp::Add, Reg::R4, Src::Reg(Reg::R1));
        }
        self.jmp64(JmpOp::Jeq, Reg::R5, Src::Imm(0), miss);
        self.alu32(AluOp::Mov, SLOT, Src::Reg(Reg::R4));
        // Unknown to the verifier: the count block checks its bound.
        self.slot_unbounded = true;
        let tail = self.tail(d);
        self.goto(tail);
        self.place(miss);
    }
}
