//! Branch-free evaluation of context-only conditions, for large policies.
//!
//! The verifier explores a program depth-first, pushing the taken side of every
//! conditional jump. A rule chain whose rules branch more than once leaves pushed
//! states behind on every rule, and past 8192 of them the load fails ("The sequence
//! of 8193 jumps is too complex"). A rule compiled here computes a *miss bit* (0 when
//! the condition holds, 1 when not) with ALU instructions only, then branches once:
//! nothing is left pending, whatever the rule count.
//!
//! "x != 0" for a 32-bit value x (zero-extended in its register) is `(-x) >> 63` in
//! 64-bit arithmetic; "v not in [lo, hi]" is `((hi - lo) - (v - lo)) >> 63` with
//! `v - lo` wrapped to 32 bits.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Insn, Reg, Src};
use crate::hir::{self, Cond, End, IntField, Net, Test};

use super::addr::{addr_words, split_nets, wire_word, word_of, MAPPED_WORD2};
use super::Gen;

/// Registers free for miss-bit evaluation (the context is in r6, r7 holds the counter
/// slot, r8/r9 cached fields).
const POOL: [Reg; 6] = [Reg::R0, Reg::R1, Reg::R2, Reg::R3, Reg::R4, Reg::R5];

/// Most ranges or prefixes a flat test handles (more: a branching search is smaller).
const MAX_ALTS: usize = 8;

/// Whether `c` can be evaluated branch-free within the register pool.
pub(super) fn flat_ok(c: &Cond, set_maps_above: Option<usize>) -> bool {
    /// Whether `and`/`or` nest at most two deep in `c` (a `not` adds no level).
    fn shallow(c: &Cond, depth: usize) -> bool {
        if depth > 2 {
            return false;
        }
        match c {
            Cond::Const(_) | Cond::Test(_) => true,
            Cond::Not(x) => shallow(x, depth),
            Cond::And(cs) | Cond::Or(cs) => cs.iter().all(|c| shallow(c, depth + 1)),
        }
    }
    let test_ok = |t: &Test| {
        super::sets::shape(t, set_maps_above).is_none()
            && match t {
                Test::Int { field, ranges } => {
                    field.ctx_word().is_some() && ranges.len() <= MAX_ALTS
                }
                Test::Addr { nets, .. } => nets.len() <= MAX_ALTS,
                Test::Payload { .. }
                | Test::Comm { .. }
                | Test::Proto(_)
                | Test::Text { .. }
                | Test::InFile { .. } => false,
            }
    };
    shallow(c, 0) && c.tests().all(test_ok) && regs_needed(c) <= POOL.len()
}

/// The most pool registers `Gen::miss` holds at once while evaluating `c` (cached
/// fields counted as loaded). Past the pool's size `Regs::take` would hand out a
/// register that is still live (its R0 fallback), so `flat_ok` refuses such conditions.
fn regs_needed(c: &Cond) -> usize {
    match c {
        Cond::Const(_) => 1,
        Cond::Not(x) => regs_needed(x),
        // The first part's miss bit is held while each later part is computed.
        Cond::And(cs) | Cond::Or(cs) => cs
            .iter()
            .enumerate()
            .map(|(i, c)| regs_needed(c) + usize::from(i > 0))
            .max()
            .unwrap_or(1),
        Cond::Test(Test::Int { field, ranges }) => {
            // The loaded value, the accumulated miss bit, the range's bit and its width.
            let max = field.max_value();
            let width = |lo: u64, hi: u64| usize::from(lo != hi && !(lo == 0 && hi >= max));
            ranges
                .iter()
                .enumerate()
                .map(|(i, &(lo, hi))| 2 + usize::from(i > 0) + width(lo, hi))
                .max()
                .unwrap_or(1)
        }
        // family, result, address, per-prefix accumulator, scratch (IPv4 prefixes);
        // family, result, accumulator, scratch (IPv6 only).
        Cond::Test(Test::Addr { nets, .. }) if nets.iter().any(|n| matches!(n, Net::V4 { .. })) => {
            5
        }
        Cond::Test(Test::Addr { nets, .. }) if nets.is_empty() => 2,
        Cond::Test(Test::Addr { .. }) => 4,
        Cond::Test(_) => 1,
    }
}

/// A tiny register allocator over [`POOL`].
struct Regs {
    free: Vec<Reg>,
}

impl Regs {
    fn new() -> Regs {
        Regs {
            free: POOL.iter().rev().copied().collect(),
        }
    }

    /// `flat_ok` bounds the depth so that the pool never runs dry; R0 is the fallback.
    fn take(&mut self) -> Reg {
        self.free.pop().unwrap_or(Reg::R0)
    }

    fn give(&mut self, r: Reg) {
        if !self.free.contains(&r) {
            self.free.push(r);
        }
    }
}

impl Gen {
    /// Emits a rule test that jumps to `f` unless `c` holds, with one branch.
    pub(super) fn flat_cond(&mut self, c: &Cond, f: super::Label) {
        let mut regs = Regs::new();
        let miss = self.miss(c, &mut regs);
        self.jmp64(crate::bpf::JmpOp::Jne, miss, Src::Imm(0), f);
    }

    /// Computes the miss bit of `c` into a register taken from `regs`.
    fn miss(&mut self, c: &Cond, regs: &mut Regs) -> Reg {
        match c {
            Cond::Const(b) => {
                let r = regs.take();
                self.mov64(r, Src::Imm(i32::from(!*b)));
                r
            }
            Cond::Not(x) => {
                let r = self.miss(x, regs);
                self.alu64(AluOp::Xor, r, Src::Imm(1));
                r
            }
            Cond::And(cs) | Cond::Or(cs) => {
                // and: missed if any part missed (OR of misses); or: if all did (AND).
                let op = if matches!(c, Cond::And(_)) {
                    AluOp::Or
                } else {
                    AluOp::And
                };
                let mut acc: Option<Reg> = None;
                for sub in cs {
                    let r = self.miss(sub, regs);
                    match acc {
                        None => acc = Some(r),
                        Some(a) => {
                            self.alu64(op, a, Src::Reg(r));
                            regs.give(r);
                        }
                    }
                }
                acc.unwrap_or_else(|| {
                    let r = regs.take();
                    self.mov64(r, Src::Imm(0));
                    r
                })
            }
            Cond::Test(Test::Int { field, ranges }) => self.int_miss(*field, ranges, regs),
            Cond::Test(Test::Addr { end, nets, mapped }) => {
                self.addr_miss(*end, nets, *mapped, regs)
            }
            // flat_ok admits no other test.
            Cond::Test(_) => {
                let r = regs.take();
                self.mov64(r, Src::Imm(1));
                r
            }
        }
    }

    /// `r = (-r) >> 63`: 1 if the zero-extended 32-bit value in r is non-zero.
    fn nonzero(&mut self, r: Reg) {
        self.emit(Insn::Alu64 {
            op: AluOp::Neg,
            dst: r,
            src: Src::Imm(0),
        });
        self.alu64(AluOp::Rsh, r, Src::Imm(63));
    }

    fn int_miss(&mut self, field: IntField, ranges: &[(u64, u64)], regs: &mut Regs) -> Reg {
        let (v, loaded) = match self.cached.iter().find(|(c, _)| *c == field) {
            Some((_, r)) => (*r, false),
            None => {
                let r = regs.take();
                let (off, swap) = field.ctx_word().unwrap_or((SK_MSG_MD_SIZE, false));
                self.load_ctx_field(off, swap, r);
                (r, true)
            }
        };
        let max = field.max_value();
        let mut acc: Option<Reg> = None;
        for &(lo, hi) in ranges {
            let m = regs.take();
            self.alu32(AluOp::Mov, m, Src::Reg(v));
            if lo == hi {
                self.alu32(AluOp::Xor, m, Src::Imm(lo as u32 as i32));
                self.nonzero(m);
            } else if lo == 0 && hi >= max {
                self.mov64(m, Src::Imm(0));
            } else {
                if lo > 0 {
                    self.alu32(AluOp::Sub, m, Src::Imm(lo as u32 as i32));
                }
                let width = regs.take();
                let span = hi.min(max) - lo;
                if span <= i32::MAX as u64 {
                    self.mov64(width, Src::Imm(span as i32));
                } else {
                    self.emit(Insn::LdImm64 {
                        dst: width,
                        imm: span,
                    });
                }
                self.alu64(AluOp::Sub, width, Src::Reg(m));
                self.alu64(AluOp::Rsh, width, Src::Imm(63));
                self.mov64(m, Src::Reg(width));
                regs.give(width);
            }
            match acc {
                None => acc = Some(m),
                Some(a) => {
                    self.alu64(AluOp::And, a, Src::Reg(m));
                    regs.give(m);
                }
            }
        }
        if loaded {
            regs.give(v);
        }
        acc.unwrap_or_else(|| {
            let r = regs.take();
            self.mov64(r, Src::Imm(1));
            r
        })
    }

    /// Miss bit of "the IPv4 address in `a` lies in none of `nets`" (AND over nets).
    fn v4_nets_miss(&mut self, a: Reg, nets: &[(u32, u8)], regs: &mut Regs) -> Reg {
        let acc = regs.take();
        self.mov64(acc, Src::Imm(1));
        for &(addr, prefix) in nets {
            let m = regs.take();
            self.alu32(AluOp::Mov, m, Src::Reg(a));
            if prefix < 32 {
                self.alu32(
                    AluOp::And,
                    m,
                    Src::Imm(wire_word(hir::mask32(prefix).to_be_bytes())),
                );
            }
            self.alu32(AluOp::Xor, m, Src::Imm(wire_word(addr.to_be_bytes())));
            self.nonzero(m);
            self.alu64(AluOp::And, acc, Src::Reg(m));
            regs.give(m);
        }
        acc
    }

    /// `r |= (family != want)`, using a scratch register.
    fn or_family_miss(&mut self, r: Reg, family: Reg, want: i32, regs: &mut Regs) {
        let t = regs.take();
        self.alu32(AluOp::Mov, t, Src::Reg(family));
        self.alu32(AluOp::Xor, t, Src::Imm(want));
        self.nonzero(t);
        self.alu64(AluOp::Or, r, Src::Reg(t));
        regs.give(t);
    }

    fn addr_miss(&mut self, end: End, nets: &[Net], mapped: bool, regs: &mut Regs) -> Reg {
        let (v4, v6) = split_nets(nets);
        let (ip4, ip6) = addr_words(end);
        let family = regs.take();
        self.ctx_ld(family, SK_MSG_MD_FAMILY);
        let acc = regs.take();
        self.mov64(acc, Src::Imm(1));
        if !v4.is_empty() {
            let a = regs.take();
            self.ctx_ld(a, ip4);
            let m = self.v4_nets_miss(a, &v4, regs);
            self.or_family_miss(m, family, AF_INET, regs);
            self.alu64(AluOp::And, acc, Src::Reg(m));
            regs.give(m);
            if mapped {
                // ::ffff:a.b.c.d on an IPv6 socket.
                self.ctx_ld(a, ip6 + 12);
                let m = self.v4_nets_miss(a, &v4, regs);
                let t = regs.take();
                for (w, want) in [(0i16, 0u32), (4, 0), (8, MAPPED_WORD2)] {
                    self.ctx_ld(t, ip6 + w);
                    if want != 0 {
                        self.alu32(AluOp::Xor, t, Src::Imm(want as i32));
                    }
                    self.nonzero(t);
                    self.alu64(AluOp::Or, m, Src::Reg(t));
                }
                regs.give(t);
                self.or_family_miss(m, family, AF_INET6, regs);
                self.alu64(AluOp::And, acc, Src::Reg(m));
                regs.give(m);
            }
            regs.give(a);
        }
        for (addr, prefix) in &v6 {
            let m = regs.take();
            self.mov64(m, Src::Imm(0));
            let t = regs.take();
            let bytes = addr.to_be_bytes();
            let mask = hir::mask128(*prefix).to_be_bytes();
            for w in 0..4usize {
                let mw = word_of(&mask, w);
                if mw == 0 {
                    continue;
                }
                let want = word_of(&bytes, w);
                self.ctx_ld(t, ip6 + (w as i16) * 4);
                if mw != -1 {
                    self.alu32(AluOp::And, t, Src::Imm(mw));
                }
                self.alu32(AluOp::Xor, t, Src::Imm(want));
                self.nonzero(t);
                self.alu64(AluOp::Or, m, Src::Reg(t));
            }
            regs.give(t);
            self.or_family_miss(m, family, AF_INET6, regs);
            self.alu64(AluOp::And, acc, Src::Reg(m));
            regs.give(m);
        }
        regs.give(family);
        acc
    }
}
