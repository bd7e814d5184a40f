//! The disassembler: readable text in the kernel verifier / bpftool style.

use std::fmt;

use super::insn::*;
use super::uapi::*;

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
            Insn::LdMapValue { dst, map, off } => {
                write!(f, "{dst} = map_value[{map}] {} ll", Signed(off as i64))
            }
            Insn::AtomicAdd {
                size,
                dst,
                src,
                off,
            } => write!(
                f,
                "lock *({} *)({dst} {}) += {src}",
                size.c_type(),
                Signed(off as i64)
            ),
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
