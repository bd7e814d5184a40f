//! Address tests as jumping code: IPv4 prefixes (a binary search over host-order ranges
//! when there are many), IPv6 prefixes word by word, and IPv4-mapped IPv6 addresses; and
//! the byte-order helpers for address words as a 32-bit load sees them.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Src};
use crate::hir::{self, End, Net};

use super::lir::Label;
use super::Gen;

/// Word `w` (0..4) of a 16-byte IPv6 address or mask, as a 32-bit load of it sees it.
pub(super) fn word_of(bytes: &[u8; 16], w: usize) -> i32 {
    wire_word([
        bytes[w * 4],
        bytes[w * 4 + 1],
        bytes[w * 4 + 2],
        bytes[w * 4 + 3],
    ])
}

/// The IPv4-mapped prefix word 2 (`0000:ffff`) as a little-endian load sees it.
pub(super) const MAPPED_WORD2: u32 = u32::from_le_bytes([0, 0, 0xff, 0xff]);

/// A network-order 4-byte group as a little-endian 32-bit load sees it.
pub(super) fn wire_word(bytes: [u8; 4]) -> i32 {
    u32::from_le_bytes(bytes) as i32
}

impl Gen {
    /// Jumps to `f` unless the IPv6 address at context word `ip6` is IPv4-mapped
    /// (`::ffff:a.b.c.d`, whose last word is then the IPv4 address). Clobbers r2.
    pub(super) fn unless_mapped(&mut self, ip6: i16, f: Label) {
        for (w, want) in [(0i16, 0u32), (4, 0), (8, MAPPED_WORD2)] {
            self.ctx_ld(Reg::R2, ip6 + w);
            self.jmp32(JmpOp::Jne, Reg::R2, want as i32, f);
        }
    }

    pub(super) fn addr(&mut self, end: End, nets: &[Net], mapped: bool, t: Label, f: Label) {
        let (v4, v6) = split_nets(nets);
        let (ip4, ip6) = addr_words(end);
        let (v4_path, v6_path) = (self.label(), self.label());
        self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
        if !v4.is_empty() {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, v4_path);
        }
        let v4_mapped = mapped && !v4.is_empty();
        if !v6.is_empty() || v4_mapped {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6_path);
        }
        self.goto(f);
        if !v4.is_empty() {
            self.place(v4_path);
            self.ctx_ld(Reg::R2, ip4);
            self.v4_nets(&v4, t, f);
        }
        if !v6.is_empty() || v4_mapped {
            self.place(v6_path);
            for (addr, prefix) in &v6 {
                let next = self.label();
                let bytes = addr.to_be_bytes();
                let mask = hir::mask128(*prefix).to_be_bytes();
                for w in 0..4usize {
                    let m = word_of(&mask, w);
                    if m == 0 {
                        continue;
                    }
                    let want = word_of(&bytes, w);
                    self.ctx_ld(Reg::R2, ip6 + (w as i16) * 4);
                    if m != -1 {
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(m));
                    }
                    self.jmp32(JmpOp::Jne, Reg::R2, want, next);
                }
                self.goto(t);
                self.place(next);
            }
            if v4_mapped {
                self.unless_mapped(ip6, f);
                self.ctx_ld(Reg::R2, ip6 + 12);
                self.v4_nets(&v4, t, f);
            } else {
                self.goto(f);
            }
        }
    }

    /// r2 holds an IPv4 address as loaded (network order bytes).
    pub(super) fn v4_nets(&mut self, nets: &[(u32, u8)], t: Label, f: Label) {
        if nets.len() > 4 {
            // Many prefixes: in host order each is a range; binary search over them.
            let ranges = crate::hir::ranges::normalize(
                nets.iter()
                    .map(|&(a, p)| (a as u64, (a | !hir::mask32(p)) as u64))
                    .collect(),
            );
            self.emit(Insn::End {
                dst: Reg::R2,
                endian: Endian::ToBe,
                bits: 32,
            });
            self.ranges(Reg::R2, &ranges, u32::MAX as u64, false, t, f);
            return;
        }
        for &(addr, prefix) in nets {
            let want = wire_word(addr.to_be_bytes());
            if prefix == 32 {
                self.jmp32(JmpOp::Jeq, Reg::R2, want, t);
            } else if prefix == 0 {
                self.goto(t);
                return;
            } else {
                let m = wire_word(hir::mask32(prefix).to_be_bytes());
                self.alu32(AluOp::Mov, Reg::R3, Src::Reg(Reg::R2));
                self.alu32(AluOp::And, Reg::R3, Src::Imm(m));
                self.jmp32(JmpOp::Jeq, Reg::R3, want, t);
            }
        }
        self.goto(f);
    }
}

/// IPv4 prefixes as (host-order address, length).
pub(super) type Nets4 = Vec<(u32, u8)>;

/// IPv6 prefixes as (host-order address, length).
pub(super) type Nets6 = Vec<(u128, u8)>;

/// The IPv4 and IPv6 prefixes of an address test, apart.
pub(super) fn split_nets(nets: &[Net]) -> (Nets4, Nets6) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in nets {
        match *n {
            Net::V4 { addr, prefix } => v4.push((addr, prefix)),
            Net::V6 { addr, prefix } => v6.push((addr, prefix)),
        }
    }
    (v4, v6)
}

/// The `sk_msg_md` offsets of one end's IPv4 address and IPv6 address.
pub(super) fn addr_words(end: End) -> (i16, i16) {
    match end {
        End::Local => (SK_MSG_MD_LOCAL_IP4, SK_MSG_MD_LOCAL_IP6),
        End::Remote => (SK_MSG_MD_REMOTE_IP4, SK_MSG_MD_REMOTE_IP6),
    }
}
