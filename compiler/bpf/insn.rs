//! One eBPF instruction: the enum, its operands and the field tables (opcodes, operator
//! symbols) that the encoder and decoder (`wire`) and the disassembler (`disasm`) share.

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
    /// 16-byte ld_imm64 with src_reg = BPF_PSEUDO_MAP_VALUE: `dst` = the address of byte
    /// `off` of the value of the map `map` (an ARRAY of one entry held in a `.bss`
    /// section, see `object`), with no helper call. The ELF writer emits an R_BPF_64_64
    /// relocation against the section's symbol; the wire form carries `off` in the first
    /// imm and 0 in the second, as clang emits it: the loader (aya, libbpf) moves `off`
    /// to the second imm and puts the map fd in the first.
    ///
    /// `map` is not part of the wire form: [`Insn::decode`] returns 0 for it.
    LdMapValue {
        dst: Reg,
        map: u32,
        off: u32,
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
    /// lock *(size *)(dst + off) += src (BPF_STX | BPF_ATOMIC, imm = BPF_ADD): an atomic
    /// add whose old value is not fetched. `size` is W or DW.
    AtomicAdd {
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
pub(super) const ALU_TABLE: [(AluOp, u8, &str); 13] = [
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
pub(super) const JMP_TABLE: [(JmpOp, u8, &str); 11] = [
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
