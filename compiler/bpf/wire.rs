//! The wire form of an instruction (`struct bpf_insn`): the encoder and its exact inverse,
//! a strict decoder.
//!
//! Wire form, little-endian, 8 bytes per slot:
//! `code: u8, dst_reg:4 (low nibble) | src_reg:4 (high nibble), off: i16, imm: i32`.
//! `ld_imm64` takes two slots; the second has code 0 and carries the upper 32 bits in imm.
//!
//! The decoder is the exact inverse of the encoder: it accepts only the canonical
//! encoding of some [`Insn`] (unused fields zero) and returns a [`DecodeError`] for
//! everything else, including valid-but-unsupported kernel instructions (atomics other than add,
//! cpu-v4 sign-extending loads, bpf-to-bpf calls, legacy packet loads).

use super::insn::*;
use super::uapi::*;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

#[inline]
fn put(out: &mut Vec<u8>, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
    let [o0, o1] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    out.extend_from_slice(&[code, (src << 4) | (dst & 0x0f), o0, o1, i0, i1, i2, i3]);
}

/// (BPF_K/BPF_X bit, src_reg, imm) of a second operand.
fn src_fields(src: Src) -> (u8, u8, i32) {
    match src {
        Src::Imm(imm) => (BPF_K, 0, imm),
        Src::Reg(r) => (BPF_X, r.num(), 0),
    }
}

impl Insn {
    /// Number of 8-byte slots (2 for LdImm64/LdMap, else 1).
    pub fn slots(&self) -> usize {
        match self {
            Insn::LdImm64 { .. } | Insn::LdMap { .. } | Insn::LdMapValue { .. } => 2,
            _ => 1,
        }
    }

    /// The first byte of the wire form.
    #[inline]
    pub fn opcode(&self) -> u8 {
        match *self {
            Insn::Alu64 { op, src, .. } => BPF_ALU64 | op.code() | src_fields(src).0,
            Insn::Alu32 { op, src, .. } => BPF_ALU | op.code() | src_fields(src).0,
            Insn::End { endian, .. } => {
                BPF_ALU
                    | BPF_END
                    | match endian {
                        Endian::ToLe => BPF_TO_LE,
                        Endian::ToBe => BPF_TO_BE,
                    }
            }
            Insn::LdImm64 { .. } | Insn::LdMap { .. } | Insn::LdMapValue { .. } => {
                BPF_LD | BPF_IMM | BPF_DW
            }
            Insn::Ldx { size, .. } => BPF_LDX | BPF_MEM | size.code(),
            Insn::St { size, .. } => BPF_ST | BPF_MEM | size.code(),
            Insn::Stx { size, .. } => BPF_STX | BPF_MEM | size.code(),
            Insn::AtomicAdd { size, .. } => BPF_STX | BPF_ATOMIC | size.code(),
            Insn::Ja { .. } => BPF_JMP | BPF_JA,
            Insn::Gotol { .. } => BPF_JMP32 | BPF_JA,
            Insn::Jmp { op, src, .. } => BPF_JMP | op.code() | src_fields(src).0,
            Insn::Jmp32 { op, src, .. } => BPF_JMP32 | op.code() | src_fields(src).0,
            Insn::Call { .. } => BPF_JMP | BPF_CALL,
            Insn::Exit => BPF_JMP | BPF_EXIT,
        }
    }

    /// Appends the wire form (little-endian, as the kernel's struct bpf_insn: code u8,
    /// dst_reg:4 | src_reg:4 (dst in the low nibble), off i16, imm i32) to `out`.
    // Inlined with `opcode` into `encode_all`: one dispatch on the instruction's kind per
    // instruction (a policy of 100k rules has over a million).
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        let code = self.opcode();
        match *self {
            Insn::Alu64 { dst, src, .. } | Insn::Alu32 { dst, src, .. } => {
                let (_, s, imm) = src_fields(src);
                put(out, code, dst.num(), s, 0, imm);
            }
            Insn::End { dst, bits, .. } => put(out, code, dst.num(), 0, 0, bits as i32),
            Insn::LdImm64 { dst, imm } => {
                put(out, code, dst.num(), 0, 0, imm as u32 as i32);
                put(out, 0, 0, 0, 0, (imm >> 32) as u32 as i32);
            }
            Insn::LdMap { dst, .. } => {
                put(out, code, dst.num(), BPF_PSEUDO_MAP_FD, 0, 0);
                put(out, 0, 0, 0, 0, 0);
            }
            Insn::LdMapValue { dst, off, .. } => {
                put(out, code, dst.num(), BPF_PSEUDO_MAP_VALUE, 0, off as i32);
                put(out, 0, 0, 0, 0, 0);
            }
            Insn::Ldx { dst, src, off, .. } | Insn::Stx { dst, src, off, .. } => {
                put(out, code, dst.num(), src.num(), off, 0)
            }
            Insn::AtomicAdd { dst, src, off, .. } => {
                put(out, code, dst.num(), src.num(), off, BPF_ADD as i32)
            }
            Insn::St { dst, off, imm, .. } => put(out, code, dst.num(), 0, off, imm),
            Insn::Ja { off } => put(out, code, 0, 0, off, 0),
            Insn::Gotol { imm } => put(out, code, 0, 0, 0, imm),
            Insn::Jmp { dst, src, off, .. } | Insn::Jmp32 { dst, src, off, .. } => {
                let (_, s, imm) = src_fields(src);
                put(out, code, dst.num(), s, off, imm);
            }
            Insn::Call { helper } => put(out, code, 0, 0, 0, helper),
            Insn::Exit => put(out, code, 0, 0, 0, 0),
        }
    }

    /// The branch displacement in slots, relative to the next slot: `off` of
    /// Ja/Jmp/Jmp32, `imm` of Gotol; `None` for non-branches.
    pub fn jump_off(&self) -> Option<i32> {
        match *self {
            Insn::Ja { off } | Insn::Jmp { off, .. } | Insn::Jmp32 { off, .. } => Some(off as i32),
            Insn::Gotol { imm } => Some(imm),
            _ => None,
        }
    }
}

/// Encodes a whole program.
pub fn encode_all(code: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(code.iter().map(|i| i.slots() * 8).sum());
    for insn in code {
        insn.encode(&mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// One raw 8-byte slot.
struct Raw {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Raw {
    fn read(b: &[u8]) -> Raw {
        Raw {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    fn reg(&self, n: u8) -> Result<Reg, DecodeError> {
        Reg::from_num(n).ok_or(DecodeError::BadRegister {
            opcode: self.code,
            reg: n,
        })
    }

    fn dst_reg(&self) -> Result<Reg, DecodeError> {
        self.reg(self.dst)
    }

    fn src_reg(&self) -> Result<Reg, DecodeError> {
        self.reg(self.src)
    }

    fn zero(&self, field: &'static str, value: i32) -> Result<(), DecodeError> {
        if value == 0 {
            Ok(())
        } else {
            Err(DecodeError::NonZeroField {
                opcode: self.code,
                field,
            })
        }
    }

    fn no_dst(&self) -> Result<(), DecodeError> {
        self.zero("dst_reg", self.dst as i32)
    }
    fn no_src(&self) -> Result<(), DecodeError> {
        self.zero("src_reg", self.src as i32)
    }
    fn no_off(&self) -> Result<(), DecodeError> {
        self.zero("off", self.off as i32)
    }
    fn no_imm(&self) -> Result<(), DecodeError> {
        self.zero("imm", self.imm)
    }

    /// Second operand of an ALU or conditional-jump instruction.
    fn operand(&self) -> Result<Src, DecodeError> {
        if self.code & BPF_X != 0 {
            self.no_imm()?;
            Ok(Src::Reg(self.src_reg()?))
        } else {
            self.no_src()?;
            Ok(Src::Imm(self.imm))
        }
    }

    fn unknown(&self) -> DecodeError {
        DecodeError::UnknownOpcode { opcode: self.code }
    }

    fn unsupported(&self, what: &'static str) -> DecodeError {
        DecodeError::Unsupported {
            opcode: self.code,
            what,
        }
    }
}

impl Insn {
    /// Decodes one instruction from the start of `bytes`; returns it and the bytes
    /// consumed (8 or 16). Accepts exactly the encodings [`Insn::encode`] produces
    /// (LdMap with any imm, see [`Insn::LdMap`]); never panics.
    pub fn decode(bytes: &[u8]) -> Result<(Insn, usize), DecodeError> {
        if bytes.len() < 8 {
            return Err(DecodeError::Truncated {
                need: 8,
                have: bytes.len(),
            });
        }
        let r = Raw::read(&bytes[..8]);
        let class = r.code & 0x07;
        let insn = match class {
            BPF_ALU | BPF_ALU64 => {
                let op = r.code & 0xf0;
                if op == BPF_END {
                    if class == BPF_ALU64 {
                        return Err(r.unsupported("unconditional bswap (BPF_ALU64 | BPF_END)"));
                    }
                    r.no_src()?;
                    r.no_off()?;
                    let bits = match r.imm {
                        16 | 32 | 64 => r.imm as u8,
                        bits => {
                            return Err(DecodeError::BadSwapWidth {
                                opcode: r.code,
                                bits,
                            })
                        }
                    };
                    let endian = if r.code & BPF_TO_BE != 0 {
                        Endian::ToBe
                    } else {
                        Endian::ToLe
                    };
                    Insn::End {
                        dst: r.dst_reg()?,
                        endian,
                        bits,
                    }
                } else {
                    let op = AluOp::from_code(op).ok_or_else(|| r.unknown())?;
                    if r.off != 0 {
                        return Err(
                            r.unsupported("signed div/mod or sign-extending mov (off != 0)")
                        );
                    }
                    let dst = r.dst_reg()?;
                    let src = r.operand()?;
                    if class == BPF_ALU64 {
                        Insn::Alu64 { op, dst, src }
                    } else {
                        Insn::Alu32 { op, dst, src }
                    }
                }
            }
            BPF_LD => {
                if r.code != BPF_LD | BPF_IMM | BPF_DW {
                    return Err(match r.code & 0xe0 {
                        0x20 | 0x40 => r.unsupported("legacy packet access (BPF_ABS/BPF_IND)"),
                        _ => r.unknown(),
                    });
                }
                if bytes.len() < 16 {
                    return Err(DecodeError::Truncated {
                        need: 16,
                        have: bytes.len(),
                    });
                }
                let hi = Raw::read(&bytes[8..16]);
                if hi.code != 0 {
                    return Err(DecodeError::NonZeroField {
                        opcode: r.code,
                        field: "ld_imm64 second slot code",
                    });
                }
                let tail = |field, v: i32| {
                    if v == 0 {
                        Ok(())
                    } else {
                        Err(DecodeError::NonZeroField {
                            opcode: r.code,
                            field,
                        })
                    }
                };
                tail("ld_imm64 second slot dst_reg", hi.dst as i32)?;
                tail("ld_imm64 second slot src_reg", hi.src as i32)?;
                tail("ld_imm64 second slot off", hi.off as i32)?;
                r.no_off()?;
                let dst = r.dst_reg()?;
                let insn = match r.src {
                    0 => Insn::LdImm64 {
                        dst,
                        imm: (r.imm as u32 as u64) | ((hi.imm as u32 as u64) << 32),
                    },
                    BPF_PSEUDO_MAP_FD => {
                        tail("ld_imm64 second slot imm", hi.imm)?;
                        Insn::LdMap {
                            dst,
                            map: r.imm as u32,
                        }
                    }
                    BPF_PSEUDO_MAP_VALUE => {
                        tail("ld_imm64 second slot imm", hi.imm)?;
                        Insn::LdMapValue {
                            dst,
                            map: 0,
                            off: r.imm as u32,
                        }
                    }
                    _ => return Err(r.unsupported("ld_imm64 pseudo source")),
                };
                return Ok((insn, 16));
            }
            BPF_LDX | BPF_ST | BPF_STX => {
                let mode = r.code & 0xe0;
                if (class, mode) == (BPF_STX, BPF_ATOMIC) {
                    let size = Size::from_code(r.code);
                    if !matches!(size, Size::W | Size::DW) {
                        return Err(r.unsupported("atomic operation on 1 or 2 bytes"));
                    }
                    if r.imm != BPF_ADD as i32 {
                        return Err(r.unsupported("atomic operation other than add"));
                    }
                    return Ok((
                        Insn::AtomicAdd {
                            size,
                            dst: r.dst_reg()?,
                            src: r.src_reg()?,
                            off: r.off,
                        },
                        8,
                    ));
                }
                if mode != BPF_MEM {
                    return Err(match (class, mode) {
                        (BPF_LDX, 0x80) => r.unsupported("sign-extending load (BPF_MEMSX)"),
                        _ => r.unknown(),
                    });
                }
                let size = Size::from_code(r.code);
                let dst = r.dst_reg()?;
                let off = r.off;
                match class {
                    BPF_LDX => {
                        r.no_imm()?;
                        Insn::Ldx {
                            size,
                            dst,
                            src: r.src_reg()?,
                            off,
                        }
                    }
                    BPF_ST => {
                        r.no_src()?;
                        Insn::St {
                            size,
                            dst,
                            off,
                            imm: r.imm,
                        }
                    }
                    _ => {
                        r.no_imm()?;
                        Insn::Stx {
                            size,
                            dst,
                            src: r.src_reg()?,
                            off,
                        }
                    }
                }
            }
            // BPF_JMP | BPF_JMP32
            _ => {
                let op = r.code & 0xf0;
                let is64 = class == BPF_JMP;
                match op {
                    BPF_JA | BPF_CALL | BPF_EXIT if r.code & BPF_X != 0 => {
                        return Err(if op == BPF_CALL && is64 {
                            r.unsupported("indirect call (callx)")
                        } else {
                            r.unknown()
                        })
                    }
                    BPF_JA => {
                        r.no_dst()?;
                        r.no_src()?;
                        if is64 {
                            r.no_imm()?;
                            Insn::Ja { off: r.off }
                        } else {
                            r.no_off()?;
                            Insn::Gotol { imm: r.imm }
                        }
                    }
                    BPF_CALL | BPF_EXIT if !is64 => return Err(r.unknown()),
                    BPF_CALL => {
                        match r.src {
                            0 => {}
                            BPF_PSEUDO_CALL => return Err(r.unsupported("bpf-to-bpf call")),
                            2 => return Err(r.unsupported("kfunc call")),
                            _ => r.no_src()?,
                        }
                        r.no_dst()?;
                        r.no_off()?;
                        Insn::Call { helper: r.imm }
                    }
                    BPF_EXIT => {
                        r.no_dst()?;
                        r.no_src()?;
                        r.no_off()?;
                        r.no_imm()?;
                        Insn::Exit
                    }
                    _ => {
                        let op = JmpOp::from_code(op).ok_or_else(|| r.unknown())?;
                        let dst = r.dst_reg()?;
                        let src = r.operand()?;
                        let off = r.off;
                        if is64 {
                            Insn::Jmp { op, dst, src, off }
                        } else {
                            Insn::Jmp32 { op, dst, src, off }
                        }
                    }
                }
            }
        };
        Ok((insn, 8))
    }
}

/// Decodes a whole program; errors are wrapped in [`DecodeError::At`] with the slot index.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Insn>, DecodeError> {
    let mut out = Vec::with_capacity(bytes.len() / 8);
    let mut pos = 0;
    while pos < bytes.len() {
        let (insn, n) = Insn::decode(&bytes[pos..]).map_err(|e| DecodeError::At {
            slot: pos / 8,
            error: Box::new(e),
        })?;
        out.push(insn);
        pos += n;
    }
    Ok(out)
}
