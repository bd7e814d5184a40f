//! One eBPF instruction: the enum, its wire encoding (`struct bpf_insn`), a strict
//! decoder and a kernel-verifier-style disassembler.
//!
//! Wire form, little-endian, 8 bytes per slot:
//! `code: u8, dst_reg:4 (low nibble) | src_reg:4 (high nibble), off: i16, imm: i32`.
//! `ld_imm64` takes two slots; the second has code 0 and carries the upper 32 bits in imm.
//!
//! The decoder is the exact inverse of the encoder: it accepts only the canonical
//! encoding of some [`Insn`] (unused fields zero) and returns a [`DecodeError`] for
//! everything else, including valid-but-unsupported kernel instructions (atomics,
//! cpu-v4 sign-extending loads, bpf-to-bpf calls, legacy packet loads).

use std::fmt;

use thiserror::Error;

use super::uapi::*;

/// An eBPF register. R0 = return value, R1-R5 = arguments (clobbered by calls),
/// R6-R9 = callee-saved, R10 = read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reg {
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// Memory access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte
    B,
    /// 2 bytes
    H,
    /// 4 bytes
    W,
    /// 8 bytes
    DW,
}

/// ALU operation (`BPF_OP` of a BPF_ALU / BPF_ALU64 instruction, minus BPF_END).
/// `Neg` ignores its source; the verifier wants `Src::Imm(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Div,
    Or,
    And,
    Lsh,
    Rsh,
    Neg,
    Mod,
    Xor,
    Mov,
    Arsh,
}

/// Conditional jump operation (`s` = signed compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JmpOp {
    Jeq,
    Jgt,
    Jge,
    Jset,
    Jne,
    Jsgt,
    Jsge,
    Jlt,
    Jle,
    Jslt,
    Jsle,
}

/// Second operand: a sign-extended 32-bit immediate (BPF_K) or a register (BPF_X).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    Imm(i32),
    Reg(Reg),
}

/// Target byte order of a BPF_END instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endian {
    ToLe,
    ToBe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    Alu64 {
        op: AluOp,
        dst: Reg,
        src: Src,
    },
    Alu32 {
        op: AluOp,
        dst: Reg,
        src: Src,
    },
    /// BPF_ALU | BPF_END: byte swap `dst` to/from `endian`, `bits` is 16, 32 or 64.
    End {
        dst: Reg,
        endian: Endian,
        bits: u8,
    },
    /// 16-byte ld_imm64 with a plain 64-bit constant.
    LdImm64 {
        dst: Reg,
        imm: u64,
    },
    /// 16-byte ld_imm64 with src_reg = BPF_PSEUDO_MAP_FD and imm 0: the map is named by
    /// `map` (an index into the object's map list); the ELF writer emits an R_BPF_64_64 relocation.
    ///
    /// `map` is not part of the wire form: [`Insn::encode`] writes imm 0, and
    /// [`Insn::decode`] returns the raw imm as `map` (0 in a relocatable object; the
    /// map fd in a program already processed by libbpf).
    LdMap {
        dst: Reg,
        map: u32,
    },
    /// dst = *(size *)(src + off)
    Ldx {
        size: Size,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// *(size *)(dst + off) = imm
    St {
        size: Size,
        dst: Reg,
        off: i16,
        imm: i32,
    },
    /// *(size *)(dst + off) = src
    Stx {
        size: Size,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// goto +off (BPF_JMP | BPF_JA)
    Ja {
        off: i16,
    },
    /// gotol +imm (BPF_JMP32 | BPF_JA, 32-bit offset in imm)
    Gotol {
        imm: i32,
    },
    /// 64-bit compare-and-jump
    Jmp {
        op: JmpOp,
        dst: Reg,
        src: Src,
        off: i16,
    },
    /// 32-bit compare-and-jump (BPF_JMP32)
    Jmp32 {
        op: JmpOp,
        dst: Reg,
        src: Src,
        off: i16,
    },
    /// call helper (BPF_JMP | BPF_CALL, imm = helper id)
    Call {
        helper: i32,
    },
    Exit,
}

/// Why bytes are not an instruction [`Insn::decode`] accepts.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated instruction: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode { opcode: u8 },
    #[error("opcode {opcode:#04x}: no register r{reg}")]
    BadRegister { opcode: u8, reg: u8 },
    #[error("opcode {opcode:#04x}: unused field `{field}` is not zero")]
    NonZeroField { opcode: u8, field: &'static str },
    #[error("opcode {opcode:#04x}: {what} is not supported")]
    Unsupported { opcode: u8, what: &'static str },
    #[error("opcode {opcode:#04x}: byte swap width {bits} is not 16, 32 or 64")]
    BadSwapWidth { opcode: u8, bits: i32 },
    /// From [`decode_all`]: `error` occurred in the instruction starting at `slot`.
    #[error("instruction {slot}: {error}")]
    At {
        slot: usize,
        error: Box<DecodeError>,
    },
}

// ---------------------------------------------------------------------------
// Field tables
// ---------------------------------------------------------------------------

impl Reg {
    pub const ALL: [Reg; 11] = [
        Reg::R0,
        Reg::R1,
        Reg::R2,
        Reg::R3,
        Reg::R4,
        Reg::R5,
        Reg::R6,
        Reg::R7,
        Reg::R8,
        Reg::R9,
        Reg::R10,
    ];

    /// Register number, 0..=10.
    pub const fn num(self) -> u8 {
        self as u8
    }

    pub fn from_num(n: u8) -> Option<Reg> {
        Reg::ALL.get(n as usize).copied()
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.num())
    }
}

impl Size {
    pub const ALL: [Size; 4] = [Size::B, Size::H, Size::W, Size::DW];

    pub const fn bytes(self) -> usize {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }

    /// The BPF_SIZE bits of the opcode.
    pub const fn code(self) -> u8 {
        match self {
            Size::B => BPF_B,
            Size::H => BPF_H,
            Size::W => BPF_W,
            Size::DW => BPF_DW,
        }
    }

    pub fn from_code(code: u8) -> Size {
        match code & 0x18 {
            BPF_B => Size::B,
            BPF_H => Size::H,
            BPF_W => Size::W,
            _ => Size::DW,
        }
    }

    /// C type name used by the disassembler: `u8`, `u16`, `u32`, `u64`.
    pub const fn c_type(self) -> &'static str {
        match self {
            Size::B => "u8",
            Size::H => "u16",
            Size::W => "u32",
            Size::DW => "u64",
        }
    }
}

/// (op, BPF_OP code, disassembly operator)
const ALU_TABLE: [(AluOp, u8, &str); 13] = [
    (AluOp::Add, BPF_ADD, "+="),
    (AluOp::Sub, BPF_SUB, "-="),
    (AluOp::Mul, BPF_MUL, "*="),
    (AluOp::Div, BPF_DIV, "/="),
    (AluOp::Or, BPF_OR, "|="),
    (AluOp::And, BPF_AND, "&="),
    (AluOp::Lsh, BPF_LSH, "<<="),
    (AluOp::Rsh, BPF_RSH, ">>="),
    (AluOp::Neg, BPF_NEG, "neg"),
    (AluOp::Mod, BPF_MOD, "%="),
    (AluOp::Xor, BPF_XOR, "^="),
    (AluOp::Mov, BPF_MOV, "="),
    (AluOp::Arsh, BPF_ARSH, "s>>="),
];

impl AluOp {
    pub const ALL: [AluOp; 13] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::Or,
        AluOp::And,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Neg,
        AluOp::Mod,
        AluOp::Xor,
        AluOp::Mov,
        AluOp::Arsh,
    ];

    /// The BPF_OP bits of the opcode.
    pub const fn code(self) -> u8 {
        ALU_TABLE[self as usize].1
    }

    pub fn from_code(op: u8) -> Option<AluOp> {
        ALU_TABLE.iter().find(|e| e.1 == op).map(|e| e.0)
    }

    /// Compound-assignment operator as printed by the verifier (`+=`, `s>>=`, `=` ...).
    pub const fn symbol(self) -> &'static str {
        ALU_TABLE[self as usize].2
    }
}

/// (op, BPF_OP code, disassembly operator)
const JMP_TABLE: [(JmpOp, u8, &str); 11] = [
    (JmpOp::Jeq, BPF_JEQ, "=="),
    (JmpOp::Jgt, BPF_JGT, ">"),
    (JmpOp::Jge, BPF_JGE, ">="),
    (JmpOp::Jset, BPF_JSET, "&"),
    (JmpOp::Jne, BPF_JNE, "!="),
    (JmpOp::Jsgt, BPF_JSGT, "s>"),
    (JmpOp::Jsge, BPF_JSGE, "s>="),
    (JmpOp::Jlt, BPF_JLT, "<"),
    (JmpOp::Jle, BPF_JLE, "<="),
    (JmpOp::Jslt, BPF_JSLT, "s<"),
    (JmpOp::Jsle, BPF_JSLE, "s<="),
];

impl JmpOp {
    pub const ALL: [JmpOp; 11] = [
        JmpOp::Jeq,
        JmpOp::Jgt,
        JmpOp::Jge,
        JmpOp::Jset,
        JmpOp::Jne,
        JmpOp::Jsgt,
        JmpOp::Jsge,
        JmpOp::Jlt,
        JmpOp::Jle,
        JmpOp::Jslt,
        JmpOp::Jsle,
    ];

    /// The BPF_OP bits of the opcode.
    pub const fn code(self) -> u8 {
        JMP_TABLE[self as usize].1
    }

    pub fn from_code(op: u8) -> Option<JmpOp> {
        JMP_TABLE.iter().find(|e| e.1 == op).map(|e| e.0)
    }

    /// Comparison operator as printed by the verifier (`==`, `s<=`, `&` ...).
    pub const fn symbol(self) -> &'static str {
        JMP_TABLE[self as usize].2
    }

    /// The condition with its outcome inverted (`a == b` <-> `a != b`); `None` for
    /// `Jset`, which has no inverse opcode.
    pub const fn negate(self) -> Option<JmpOp> {
        Some(match self {
            JmpOp::Jeq => JmpOp::Jne,
            JmpOp::Jne => JmpOp::Jeq,
            JmpOp::Jgt => JmpOp::Jle,
            JmpOp::Jle => JmpOp::Jgt,
            JmpOp::Jge => JmpOp::Jlt,
            JmpOp::Jlt => JmpOp::Jge,
            JmpOp::Jsgt => JmpOp::Jsle,
            JmpOp::Jsle => JmpOp::Jsgt,
            JmpOp::Jsge => JmpOp::Jslt,
            JmpOp::Jslt => JmpOp::Jsge,
            JmpOp::Jset => return None,
        })
    }
}

impl From<Reg> for Src {
    fn from(r: Reg) -> Src {
        Src::Reg(r)
    }
}

impl From<i32> for Src {
    fn from(imm: i32) -> Src {
        Src::Imm(imm)
    }
}

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
            Insn::LdImm64 { .. } | Insn::LdMap { .. } => 2,
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
            Insn::LdImm64 { .. } | Insn::LdMap { .. } => BPF_LD | BPF_IMM | BPF_DW,
            Insn::Ldx { size, .. } => BPF_LDX | BPF_MEM | size.code(),
            Insn::St { size, .. } => BPF_ST | BPF_MEM | size.code(),
            Insn::Stx { size, .. } => BPF_STX | BPF_MEM | size.code(),
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
            Insn::Ldx { dst, src, off, .. } | Insn::Stx { dst, src, off, .. } => {
                put(out, code, dst.num(), src.num(), off, 0)
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
                        return Err(r.unsupported("ld_imm64 BPF_PSEUDO_MAP_VALUE"))
                    }
                    _ => return Err(r.unsupported("ld_imm64 pseudo source")),
                };
                return Ok((insn, 16));
            }
            BPF_LDX | BPF_ST | BPF_STX => {
                let mode = r.code & 0xe0;
                if mode != BPF_MEM {
                    return Err(match (class, mode) {
                        (BPF_LDX, 0x80) => r.unsupported("sign-extending load (BPF_MEMSX)"),
                        (BPF_STX, BPF_ATOMIC) => r.unsupported("atomic operation"),
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

// ---------------------------------------------------------------------------
// Disassembly
// ---------------------------------------------------------------------------

/// Signed number with explicit sign: `+3`, `-4`, `+0`.
struct Signed(i64);

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+}", self.0)
    }
}

/// Immediate in a comparison: hex, with a sign for negative values (`0x18eb`, `-0x4`).
struct CmpImm(i32);

impl fmt::Display for CmpImm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "-{:#x}", (self.0 as i64).unsigned_abs())
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

fn fmt_alu(f: &mut fmt::Formatter<'_>, p: char, op: AluOp, dst: Reg, src: Src) -> fmt::Result {
    let d = dst.num();
    if op == AluOp::Neg {
        return write!(f, "{p}{d} = -{p}{d}");
    }
    let sym = op.symbol();
    match src {
        Src::Imm(imm) => write!(f, "{p}{d} {sym} {imm}"),
        Src::Reg(s) => write!(f, "{p}{d} {sym} {p}{}", s.num()),
    }
}

fn fmt_jmp(
    f: &mut fmt::Formatter<'_>,
    p: char,
    op: JmpOp,
    dst: Reg,
    src: Src,
    off: i16,
) -> fmt::Result {
    write!(f, "if {p}{} {} ", dst.num(), op.symbol())?;
    match src {
        // A 32-bit compare sees the immediate as 32 bits: show it unsigned unless the
        // operator is signed.
        Src::Imm(imm) if p == 'w' && !op.symbol().starts_with('s') => {
            write!(f, "{:#x}", imm as u32)?
        }
        Src::Imm(imm) => write!(f, "{}", CmpImm(imm))?,
        Src::Reg(s) => write!(f, "{p}{}", s.num())?,
    }
    write!(f, " goto {}", Signed(off as i64))
}

/// Readable text in the kernel verifier / bpftool style: `r1 = *(u32 *)(r6 +68)`,
/// `if r2 > 0x1000 goto +3`, `call bpf_msg_pull_data#63`, `r0 = 1`, `exit`,
/// `r2 = be32 r2`. Jump targets are relative (`+off`); see [`disassemble_at`].
impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Insn::Alu64 { op, dst, src } => fmt_alu(f, 'r', op, dst, src),
            Insn::Alu32 { op, dst, src } => fmt_alu(f, 'w', op, dst, src),
            Insn::End { dst, endian, bits } => {
                let e = match endian {
                    Endian::ToLe => "le",
                    Endian::ToBe => "be",
                };
                write!(f, "{dst} = {e}{bits} {dst}")
            }
            Insn::LdImm64 { dst, imm } => write!(f, "{dst} = {imm:#x} ll"),
            Insn::LdMap { dst, map } => write!(f, "{dst} = map[{map}] ll"),
            Insn::Ldx {
                size,
                dst,
                src,
                off,
            } => write!(
                f,
                "{dst} = *({} *)({src} {})",
                size.c_type(),
                Signed(off as i64)
            ),
            Insn::St {
                size,
                dst,
                off,
                imm,
            } => write!(
                f,
                "*({} *)({dst} {}) = {imm}",
                size.c_type(),
                Signed(off as i64)
            ),
            Insn::Stx {
                size,
                dst,
                src,
                off,
            } => write!(
                f,
                "*({} *)({dst} {}) = {src}",
                size.c_type(),
                Signed(off as i64)
            ),
            Insn::Ja { off } => write!(f, "goto {}", Signed(off as i64)),
            Insn::Gotol { imm } => write!(f, "gotol {}", Signed(imm as i64)),
            Insn::Jmp { op, dst, src, off } => fmt_jmp(f, 'r', op, dst, src, off),
            Insn::Jmp32 { op, dst, src, off } => fmt_jmp(f, 'w', op, dst, src, off),
            Insn::Call { helper } => match helper_name(helper) {
                Some(name) => write!(f, "call bpf_{name}#{helper}"),
                None => write!(f, "call unknown#{helper}"),
            },
            Insn::Exit => f.write_str("exit"),
        }
    }
}

/// Like `insn.to_string()`, plus the absolute target slot of a branch at slot `pc`:
/// `if r2 > 0x1000 goto +3 -> 17` for pc 13.
pub fn disassemble_at(insn: &Insn, pc: usize) -> String {
    match insn.jump_off() {
        Some(off) => format!("{insn} -> {}", pc as i64 + 1 + off as i64),
        None => insn.to_string(),
    }
}

/// One numbered line per instruction, `   13: (2d) if r2 > r1 goto +1 -> 15`,
/// numbered by slot index like bpftool (ld_imm64 takes two numbers).
pub fn disassemble(code: &[Insn]) -> String {
    let mut out = String::new();
    let mut pc = 0;
    for insn in code {
        out.push_str(&format!(
            "{pc:5}: ({:02x}) {}\n",
            insn.opcode(),
            disassemble_at(insn, pc)
        ));
        pc += insn.slots();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use AluOp::*;
    use JmpOp::*;
    use Reg::*;

    /// Parses `"b7 00 00 00 01 00 00 00"`.
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn enc(i: Insn) -> Vec<u8> {
        let mut v = Vec::new();
        i.encode(&mut v);
        v
    }

    /// Real encodings: `llvm-objdump -d /work/shared/anchors/sk_msg_c/policy.bpf.o`
    /// (clang output, sections sk_msg and sockops) and, marked `mc`, `llvm-mc -triple
    /// bpfel -mattr=+alu32 -show-encoding` (LLVM 14) for forms clang did not emit there.
    /// (bytes, insn, our disassembly)
    #[rustfmt::skip]
    fn known() -> Vec<(&'static str, Insn, &'static str)> {
        use Size::*;
        let imm = Src::Imm;
        let reg = Src::Reg;
        vec![
            // policy.bpf.o
            ("b7 00 00 00 01 00 00 00", Insn::Alu64 { op: Mov, dst: R0, src: imm(1) }, "r0 = 1"),
            ("95 00 00 00 00 00 00 00", Insn::Exit, "exit"),
            ("61 12 40 00 00 00 00 00", Insn::Ldx { size: W, dst: R2, src: R1, off: 64 }, "r2 = *(u32 *)(r1 +64)"),
            ("15 02 05 00 eb 18 00 00", Insn::Jmp { op: Jeq, dst: R2, src: imm(6379), off: 5 }, "if r2 == 0x18eb goto +5"),
            ("18 03 00 00 00 00 18 eb 00 00 00 00 00 00 00 00", Insn::LdImm64 { dst: R3, imm: 0xeb18_0000 }, "r3 = 0xeb180000 ll"),
            ("18 02 00 00 fe ff ff ff 00 00 00 00 00 00 00 00", Insn::LdImm64 { dst: R2, imm: 4294967294 }, "r2 = 0xfffffffe ll"),
            ("5d 32 05 00 00 00 00 00", Insn::Jmp { op: Jne, dst: R2, src: reg(R3), off: 5 }, "if r2 != r3 goto +5"),
            ("2d 12 01 00 00 00 00 00", Insn::Jmp { op: Jgt, dst: R2, src: reg(R1), off: 1 }, "if r2 > r1 goto +1"),
            ("b7 02 00 00 01 10 00 00", Insn::Alu64 { op: Mov, dst: R2, src: imm(4097) }, "r2 = 4097"),
            ("85 00 00 00 3c 00 00 00", Insn::Call { helper: BPF_FUNC_msg_redirect_map }, "call bpf_msg_redirect_map#60"),
            ("85 00 00 00 3f 00 00 00", Insn::Call { helper: BPF_FUNC_msg_pull_data }, "call bpf_msg_pull_data#63"),
            ("85 00 00 00 46 00 00 00", Insn::Call { helper: BPF_FUNC_sock_hash_update }, "call bpf_sock_hash_update#70"),
            ("85 00 00 00 01 00 00 00", Insn::Call { helper: BPF_FUNC_map_lookup_elem }, "call bpf_map_lookup_elem#1"),
            ("bf 16 00 00 00 00 00 00", Insn::Alu64 { op: Mov, dst: R6, src: reg(R1) }, "r6 = r1"),
            ("bf a2 00 00 00 00 00 00", Insn::Alu64 { op: Mov, dst: R2, src: reg(R10) }, "r2 = r10"),
            ("79 62 08 00 00 00 00 00", Insn::Ldx { size: DW, dst: R2, src: R6, off: 8 }, "r2 = *(u64 *)(r6 +8)"),
            ("71 12 01 00 00 00 00 00", Insn::Ldx { size: B, dst: R2, src: R1, off: 1 }, "r2 = *(u8 *)(r1 +1)"),
            ("61 12 14 00 00 00 00 00", Insn::Ldx { size: W, dst: R2, src: R1, off: BPF_SOCK_OPS_FAMILY }, "r2 = *(u32 *)(r1 +20)"),
            ("07 03 00 00 04 00 00 00", Insn::Alu64 { op: Add, dst: R3, src: imm(4) }, "r3 += 4"),
            ("07 02 00 00 fc ff ff ff", Insn::Alu64 { op: Add, dst: R2, src: imm(-4) }, "r2 += -4"),
            ("1f 12 00 00 00 00 00 00", Insn::Alu64 { op: Sub, dst: R2, src: reg(R1) }, "r2 -= r1"),
            ("5f 30 00 00 00 00 00 00", Insn::Alu64 { op: And, dst: R0, src: reg(R3) }, "r0 &= r3"),
            ("63 1a fc ff 00 00 00 00", Insn::Stx { size: W, dst: R10, src: R1, off: -4 }, "*(u32 *)(r10 -4) = r1"),
            ("63 07 14 00 00 00 00 00", Insn::Stx { size: W, dst: R7, src: R0, off: 20 }, "*(u32 *)(r7 +20) = r0"),
            ("dc 02 00 00 20 00 00 00", Insn::End { dst: R2, endian: Endian::ToBe, bits: 32 }, "r2 = be32 r2"),
            ("05 00 10 00 00 00 00 00", Insn::Ja { off: 16 }, "goto +16"),
            ("15 03 10 00 00 00 29 7b", Insn::Jmp { op: Jeq, dst: R3, src: imm(0x7b29_0000), off: 16 }, "if r3 == 0x7b290000 goto +16"),
            ("55 01 0f 00 00 00 00 00", Insn::Jmp { op: Jne, dst: R1, src: imm(0), off: 15 }, "if r1 != 0x0 goto +15"),
            ("1d 43 22 00 00 00 00 00", Insn::Jmp { op: Jeq, dst: R3, src: reg(R4), off: 34 }, "if r3 == r4 goto +34"),
            // mc
            ("b4 00 00 00 01 00 00 00", Insn::Alu32 { op: Mov, dst: R0, src: imm(1) }, "w0 = 1"),
            ("0c 32 00 00 00 00 00 00", Insn::Alu32 { op: Add, dst: R2, src: reg(R3) }, "w2 += w3"),
            ("84 01 00 00 00 00 00 00", Insn::Alu32 { op: Neg, dst: R1, src: imm(0) }, "w1 = -w1"),
            ("87 01 00 00 00 00 00 00", Insn::Alu64 { op: Neg, dst: R1, src: imm(0) }, "r1 = -r1"),
            ("c7 04 00 00 03 00 00 00", Insn::Alu64 { op: Arsh, dst: R4, src: imm(3) }, "r4 s>>= 3"),
            ("c4 01 00 00 18 00 00 00", Insn::Alu32 { op: Arsh, dst: R1, src: imm(24) }, "w1 s>>= 24"),
            ("74 01 00 00 18 00 00 00", Insn::Alu32 { op: Rsh, dst: R1, src: imm(24) }, "w1 >>= 24"),
            ("54 01 00 00 ff 00 00 00", Insn::Alu32 { op: And, dst: R1, src: imm(255) }, "w1 &= 255"),
            ("1c 21 00 00 00 00 00 00", Insn::Alu32 { op: Sub, dst: R1, src: reg(R2) }, "w1 -= w2"),
            ("bc 21 00 00 00 00 00 00", Insn::Alu32 { op: Mov, dst: R1, src: reg(R2) }, "w1 = w2"),
            ("af 00 00 00 00 00 00 00", Insn::Alu64 { op: Xor, dst: R0, src: reg(R0) }, "r0 ^= r0"),
            ("67 01 00 00 20 00 00 00", Insn::Alu64 { op: Lsh, dst: R1, src: imm(32) }, "r1 <<= 32"),
            ("77 01 00 00 20 00 00 00", Insn::Alu64 { op: Rsh, dst: R1, src: imm(32) }, "r1 >>= 32"),
            ("3f 87 00 00 00 00 00 00", Insn::Alu64 { op: Div, dst: R7, src: reg(R8) }, "r7 /= r8"),
            ("27 09 00 00 0a 00 00 00", Insn::Alu64 { op: Mul, dst: R9, src: imm(10) }, "r9 *= 10"),
            ("47 01 00 00 00 01 00 00", Insn::Alu64 { op: Or, dst: R1, src: imm(256) }, "r1 |= 256"),
            ("26 01 02 00 05 00 00 00", Insn::Jmp32 { op: Jgt, dst: R1, src: imm(5), off: 2 }, "if w1 > 0x5 goto +2"),
            ("ce 32 fc ff 00 00 00 00", Insn::Jmp32 { op: Jslt, dst: R2, src: reg(R3), off: -4 }, "if w2 s< w3 goto -4"),
            ("16 01 01 00 ff ff ff ff", Insn::Jmp32 { op: Jeq, dst: R1, src: imm(-1), off: 1 }, "if w1 == 0xffffffff goto +1"),
            ("d5 01 01 00 fc ff ff ff", Insn::Jmp { op: Jsle, dst: R1, src: imm(-4), off: 1 }, "if r1 s<= -0x4 goto +1"),
            ("35 01 07 00 00 01 00 00", Insn::Jmp { op: Jge, dst: R1, src: imm(256), off: 7 }, "if r1 >= 0x100 goto +7"),
            ("ad 21 07 00 00 00 00 00", Insn::Jmp { op: Jlt, dst: R1, src: reg(R2), off: 7 }, "if r1 < r2 goto +7"),
            ("b5 01 07 00 03 00 00 00", Insn::Jmp { op: Jle, dst: R1, src: imm(3), off: 7 }, "if r1 <= 0x3 goto +7"),
            ("7d 21 07 00 00 00 00 00", Insn::Jmp { op: Jsge, dst: R1, src: reg(R2), off: 7 }, "if r1 s>= r2 goto +7"),
            ("65 01 07 00 00 00 00 00", Insn::Jmp { op: Jsgt, dst: R1, src: imm(0), off: 7 }, "if r1 s> 0x0 goto +7"),
            ("5d 21 ff ff 00 00 00 00", Insn::Jmp { op: Jne, dst: R1, src: reg(R2), off: -1 }, "if r1 != r2 goto -1"),
            ("69 23 02 00 00 00 00 00", Insn::Ldx { size: H, dst: R3, src: R2, off: 2 }, "r3 = *(u16 *)(r2 +2)"),
            ("7b 1a f0 ff 00 00 00 00", Insn::Stx { size: DW, dst: R10, src: R1, off: -16 }, "*(u64 *)(r10 -16) = r1"),
            ("d4 02 00 00 10 00 00 00", Insn::End { dst: R2, endian: Endian::ToLe, bits: 16 }, "r2 = le16 r2"),
            ("dc 02 00 00 40 00 00 00", Insn::End { dst: R2, endian: Endian::ToBe, bits: 64 }, "r2 = be64 r2"),
            ("dc 02 00 00 10 00 00 00", Insn::End { dst: R2, endian: Endian::ToBe, bits: 16 }, "r2 = be16 r2"),
            ("18 01 00 00 ff ff ff ff 00 00 00 00 ff ff ff ff", Insn::LdImm64 { dst: R1, imm: u64::MAX }, "r1 = 0xffffffffffffffff ll"),
        ]
    }

    #[test]
    fn known_encodings_byte_for_byte() {
        for (bytes, insn, text) in known() {
            let bytes = hex(bytes);
            assert_eq!(enc(insn), bytes, "encode {insn:?}");
            assert_eq!(
                Insn::decode(&bytes),
                Ok((insn, bytes.len())),
                "decode {bytes:02x?}"
            );
            assert_eq!(insn.to_string(), text);
            assert_eq!(insn.opcode(), bytes[0]);
            assert_eq!(insn.slots() * 8, bytes.len());
        }
    }

    /// Opcodes per the ISA table for forms neither clang nor LLVM 14's assembler
    /// produced (store-immediate, jset, mod, gotol).
    #[test]
    fn isa_table_opcodes() {
        let cases = [
            (
                Insn::St {
                    size: Size::W,
                    dst: R10,
                    off: -4,
                    imm: 7,
                },
                0x62,
            ),
            (
                Insn::St {
                    size: Size::H,
                    dst: R10,
                    off: -4,
                    imm: 7,
                },
                0x6a,
            ),
            (
                Insn::St {
                    size: Size::B,
                    dst: R10,
                    off: -4,
                    imm: 7,
                },
                0x72,
            ),
            (
                Insn::St {
                    size: Size::DW,
                    dst: R10,
                    off: -4,
                    imm: 7,
                },
                0x7a,
            ),
            (
                Insn::Stx {
                    size: Size::B,
                    dst: R10,
                    src: R1,
                    off: -4,
                },
                0x73,
            ),
            (
                Insn::Stx {
                    size: Size::H,
                    dst: R10,
                    src: R1,
                    off: -4,
                },
                0x6b,
            ),
            (
                Insn::Jmp {
                    op: Jset,
                    dst: R1,
                    src: Src::Imm(16),
                    off: 1,
                },
                0x45,
            ),
            (
                Insn::Jmp {
                    op: Jset,
                    dst: R1,
                    src: Src::Reg(R2),
                    off: 1,
                },
                0x4d,
            ),
            (
                Insn::Jmp32 {
                    op: Jset,
                    dst: R1,
                    src: Src::Imm(16),
                    off: 1,
                },
                0x46,
            ),
            (
                Insn::Alu64 {
                    op: Mod,
                    dst: R1,
                    src: Src::Imm(7),
                },
                0x97,
            ),
            (
                Insn::Alu64 {
                    op: Mod,
                    dst: R1,
                    src: Src::Reg(R2),
                },
                0x9f,
            ),
            (
                Insn::Alu32 {
                    op: Mod,
                    dst: R1,
                    src: Src::Reg(R2),
                },
                0x9c,
            ),
            (
                Insn::Alu32 {
                    op: Xor,
                    dst: R1,
                    src: Src::Imm(1),
                },
                0xa4,
            ),
            (Insn::Gotol { imm: 100_000 }, 0x06),
        ];
        for (insn, code) in cases {
            assert_eq!(enc(insn)[0], code, "{insn:?}");
        }
        assert_eq!(
            enc(Insn::St {
                size: Size::H,
                dst: R10,
                off: -2,
                imm: 7
            }),
            hex("6a 0a fe ff 07 00 00 00")
        );
        assert_eq!(enc(Insn::Gotol { imm: -2 }), hex("06 00 00 00 fe ff ff ff"));
        assert_eq!(Insn::Gotol { imm: 70000 }.to_string(), "gotol +70000");
        assert_eq!(
            Insn::St {
                size: Size::DW,
                dst: R10,
                off: -8,
                imm: -1
            }
            .to_string(),
            "*(u64 *)(r10 -8) = -1"
        );
        assert_eq!(
            Insn::Jmp {
                op: Jset,
                dst: R1,
                src: Src::Imm(16),
                off: 1
            }
            .to_string(),
            "if r1 & 0x10 goto +1"
        );
        assert_eq!(Insn::Call { helper: 9999 }.to_string(), "call unknown#9999");
    }

    /// clang leaves src_reg 0 in a map load (`r1 = 0 ll` + R_BPF_64_64) and libbpf
    /// sets BPF_PSEUDO_MAP_FD at load time; we emit BPF_PSEUDO_MAP_FD directly.
    #[test]
    fn map_load() {
        let clang = hex("18 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        let ours = enc(Insn::LdMap { dst: R1, map: 3 });
        assert_eq!(ours.len(), 16);
        assert_eq!(
            ours[1],
            0x10 | 1,
            "src_reg = BPF_PSEUDO_MAP_FD, dst_reg = r1"
        );
        let mut patched = clang.clone();
        patched[1] |= BPF_PSEUDO_MAP_FD << 4;
        assert_eq!(ours, patched);
        // the map index lives in the relocation, not in the bytes
        assert_eq!(
            Insn::decode(&ours),
            Ok((Insn::LdMap { dst: R1, map: 0 }, 16))
        );
        assert_eq!(
            Insn::decode(&clang),
            Ok((Insn::LdImm64 { dst: R1, imm: 0 }, 16))
        );
        // after libbpf: imm = map fd
        let mut loaded = ours.clone();
        loaded[4] = 7;
        assert_eq!(
            Insn::decode(&loaded),
            Ok((Insn::LdMap { dst: R1, map: 7 }, 16))
        );
        assert_eq!(
            Insn::LdMap { dst: R1, map: 3 }.to_string(),
            "r1 = map[3] ll"
        );
        // BPF_PSEUDO_MAP_VALUE is recognised but not supported
        patched[1] = 0x21;
        assert!(matches!(
            Insn::decode(&patched),
            Err(DecodeError::Unsupported { .. })
        ));
    }

    /// `redis_guard` from policy.bpf.o, section sk_msg, slots 2..=14.
    const REDIS_GUARD: &str = "
        61 12 40 00 00 00 00 00  15 02 05 00 eb 18 00 00  b7 00 00 00 01 00 00 00
        61 12 3c 00 00 00 00 00  18 03 00 00 00 00 18 eb  00 00 00 00 00 00 00 00
        5d 32 05 00 00 00 00 00  61 11 44 00 00 00 00 00  b7 00 00 00 01 00 00 00
        b7 02 00 00 01 10 00 00  2d 12 01 00 00 00 00 00  b7 00 00 00 00 00 00 00
        95 00 00 00 00 00 00 00";

    #[test]
    fn whole_function_decode_disassemble_reencode() {
        let bytes = hex(REDIS_GUARD);
        let code = decode_all(&bytes).unwrap();
        assert_eq!(code.len(), 12);
        assert_eq!(encode_all(&code), bytes);
        let expected = "    0: (61) r2 = *(u32 *)(r1 +64)
    1: (15) if r2 == 0x18eb goto +5 -> 7
    2: (b7) r0 = 1
    3: (61) r2 = *(u32 *)(r1 +60)
    4: (18) r3 = 0xeb180000 ll
    6: (5d) if r2 != r3 goto +5 -> 12
    7: (61) r1 = *(u32 *)(r1 +68)
    8: (b7) r0 = 1
    9: (b7) r2 = 4097
   10: (2d) if r2 > r1 goto +1 -> 12
   11: (b7) r0 = 0
   12: (95) exit
";
        assert_eq!(disassemble(&code), expected);
    }

    #[test]
    fn disassemble_numbers_by_slot() {
        let code = [
            Insn::LdMap { dst: R1, map: 0 },
            Insn::Ja { off: -3 },
            Insn::Gotol { imm: 1 },
            Insn::Exit,
        ];
        let text = disassemble(&code);
        let nums: Vec<&str> = text
            .lines()
            .map(|l| l.split(':').next().unwrap().trim())
            .collect();
        assert_eq!(nums, ["0", "2", "3", "4"]);
        assert!(text.contains("goto -3 -> 0"));
        assert!(text.contains("gotol +1 -> 5"));
        assert_eq!(disassemble_at(&Insn::Exit, 9), "exit");
    }

    fn srcs() -> Vec<Src> {
        let mut v: Vec<Src> = [0, 1, -1, 6379, i32::MIN, i32::MAX].map(Src::Imm).to_vec();
        v.extend(Reg::ALL.map(Src::Reg));
        v
    }

    const OFFS: [i16; 5] = [0, 1, -1, i16::MIN, i16::MAX];

    /// Every variant, every op/size/register combination.
    fn every_insn() -> Vec<Insn> {
        let mut all = Vec::new();
        for dst in Reg::ALL {
            for op in AluOp::ALL {
                for src in srcs() {
                    all.push(Insn::Alu64 { op, dst, src });
                    all.push(Insn::Alu32 { op, dst, src });
                }
            }
            for endian in [Endian::ToLe, Endian::ToBe] {
                for bits in [16, 32, 64] {
                    all.push(Insn::End { dst, endian, bits });
                }
            }
            for imm in [0, 1, u64::MAX, 0xeb18_0000, 1 << 63, 0x1234_5678_9abc_def0] {
                all.push(Insn::LdImm64 { dst, imm });
            }
            all.push(Insn::LdMap { dst, map: 0 });
            for size in Size::ALL {
                for off in OFFS {
                    for src in Reg::ALL {
                        all.push(Insn::Ldx {
                            size,
                            dst,
                            src,
                            off,
                        });
                        all.push(Insn::Stx {
                            size,
                            dst,
                            src,
                            off,
                        });
                    }
                    for imm in [0, -1, i32::MAX] {
                        all.push(Insn::St {
                            size,
                            dst,
                            off,
                            imm,
                        });
                    }
                }
            }
            for op in JmpOp::ALL {
                for src in srcs() {
                    for off in OFFS {
                        all.push(Insn::Jmp { op, dst, src, off });
                        all.push(Insn::Jmp32 { op, dst, src, off });
                    }
                }
            }
        }
        for off in OFFS {
            all.push(Insn::Ja { off });
        }
        for imm in [0, 1, -1, i32::MIN, i32::MAX] {
            all.push(Insn::Gotol { imm });
        }
        for (helper, _) in HELPERS {
            all.push(Insn::Call { helper: *helper });
        }
        all.push(Insn::Call { helper: -1 });
        all.push(Insn::Exit);
        all
    }

    #[test]
    fn round_trip_every_combination() {
        let all = every_insn();
        assert!(all.len() > 20_000);
        for insn in &all {
            let bytes = enc(*insn);
            assert_eq!(bytes.len(), insn.slots() * 8);
            assert_eq!(bytes[0], insn.opcode());
            assert_eq!(Insn::decode(&bytes), Ok((*insn, bytes.len())), "{insn:?}");
            // trailing bytes are left alone
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0xff; 9]);
            assert_eq!(Insn::decode(&longer), Ok((*insn, bytes.len())));
            assert!(!insn.to_string().is_empty());
            let _ = disassemble_at(insn, 5);
        }
        let bytes = encode_all(&all);
        assert_eq!(decode_all(&bytes).unwrap(), all);
    }

    #[test]
    fn op_tables_are_consistent() {
        for (i, op) in AluOp::ALL.iter().enumerate() {
            assert_eq!(AluOp::from_code(op.code()), Some(*op));
            assert_eq!(ALU_TABLE[i].0, *op);
        }
        for (i, op) in JmpOp::ALL.iter().enumerate() {
            assert_eq!(JmpOp::from_code(op.code()), Some(*op));
            assert_eq!(JMP_TABLE[i].0, *op);
            if let Some(n) = op.negate() {
                assert_eq!(n.negate(), Some(*op));
            }
        }
        for size in Size::ALL {
            assert_eq!(Size::from_code(size.code()), size);
        }
        for r in Reg::ALL {
            assert_eq!(Reg::from_num(r.num()), Some(r));
        }
        assert_eq!(Reg::from_num(11), None);
    }

    /// Tiny deterministic PRNG (xorshift64*), so the test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// All 256 opcodes with many register/off/imm fields: no panic, and whatever
    /// decodes re-encodes to the same bytes (the decoder accepts only canonical forms).
    #[test]
    fn decode_never_panics_and_is_canonical() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut ok = 0;
        for code in 0..=255u8 {
            for round in 0..400 {
                let mut b = [0u8; 16];
                for x in b.iter_mut() {
                    *x = rng.next() as u8;
                }
                b[0] = code;
                // bias towards plausible fields so the success paths get exercised
                match round % 4 {
                    0 => b[2..8].fill(0),
                    1 => {
                        b[1] &= 0x9a;
                        b[8..12].fill(0);
                    }
                    2 => b[4..8].fill(0),
                    _ => {}
                }
                if round % 2 == 0 {
                    b[8..12].fill(0);
                }
                if let Ok((insn, n)) = Insn::decode(&b) {
                    ok += 1;
                    assert!(n == 8 || n == 16);
                    let mut re = enc(insn);
                    if let Insn::LdMap { map, .. } = insn {
                        re[4..8].copy_from_slice(&map.to_le_bytes());
                    }
                    assert_eq!(re, b[..n], "{code:#04x} -> {insn:?}");
                }
                for len in 0..16 {
                    let _ = Insn::decode(&b[..len]);
                }
                let _ = decode_all(&b);
                let _ = decode_all(&b[..13]);
            }
        }
        assert!(ok > 4_000, "only {ok} decoded");
    }

    #[test]
    fn decode_errors() {
        use DecodeError::*;
        assert_eq!(Insn::decode(&[]), Err(Truncated { need: 8, have: 0 }));
        assert_eq!(
            Insn::decode(&[0x95; 7]),
            Err(Truncated { need: 8, have: 7 })
        );
        let ld = hex("18 03 00 00 00 00 18 eb 00 00 00 00 00 00 00 00");
        for len in 8..16 {
            assert_eq!(
                Insn::decode(&ld[..len]),
                Err(Truncated {
                    need: 16,
                    have: len
                })
            );
        }
        assert_eq!(
            decode_all(&ld[..12]),
            Err(At {
                slot: 0,
                error: Box::new(Truncated { need: 16, have: 12 })
            })
        );
        let mut prog = hex(REDIS_GUARD);
        prog.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode_all(&prog).unwrap_err();
        assert_eq!(
            err,
            At {
                slot: 13,
                error: Box::new(UnknownOpcode { opcode: 0xff })
            }
        );
        assert_eq!(err.to_string(), "instruction 13: unknown opcode 0xff");
        // register 11..15
        assert_eq!(
            Insn::decode(&hex("b7 0b 00 00 01 00 00 00")),
            Err(BadRegister {
                opcode: 0xb7,
                reg: 11
            })
        );
        assert_eq!(
            Insn::decode(&hex("bf f1 00 00 00 00 00 00")),
            Err(BadRegister {
                opcode: 0xbf,
                reg: 15
            })
        );
        // exit with garbage
        assert!(matches!(
            Insn::decode(&hex("95 00 00 00 01 00 00 00")),
            Err(NonZeroField { .. })
        ));
        // atomic add from sockops_insert (`lock *(u64 *)(r0 + 0) += r1`)
        assert!(matches!(
            Insn::decode(&hex("db 10 00 00 00 00 00 00")),
            Err(Unsupported { .. })
        ));
        // bpf-to-bpf call
        assert!(matches!(
            Insn::decode(&hex("85 10 00 00 05 00 00 00")),
            Err(Unsupported { .. })
        ));
        // bswap width
        assert_eq!(
            Insn::decode(&hex("dc 02 00 00 08 00 00 00")),
            Err(BadSwapWidth {
                opcode: 0xdc,
                bits: 8
            })
        );
        // cpu v4 sdiv (off = 1)
        assert!(matches!(
            Insn::decode(&hex("3f 12 01 00 00 00 00 00")),
            Err(Unsupported { .. })
        ));
        // ld_imm64 second slot must have code 0
        assert!(matches!(
            Insn::decode(&hex("18 01 00 00 00 00 00 00 95 00 00 00 00 00 00 00")),
            Err(NonZeroField { .. })
        ));
        // jmp32 has no call/exit
        assert_eq!(
            Insn::decode(&hex("96 00 00 00 00 00 00 00")),
            Err(UnknownOpcode { opcode: 0x96 })
        );
    }
}
