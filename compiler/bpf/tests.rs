//! The instruction set against known encodings: encode, decode and disassemble agree
//! with clang, llvm-mc and the kernel verifier's text, and decoding is canonical.

use super::insn::{ALU_TABLE, JMP_TABLE};
use super::uapi::*;
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

/// Real encodings: clang -O2's object of the anchor C program (an SK_MSG policy and a
/// SOCK_OPS program), disassembled with llvm-objdump, and, marked `mc`, `llvm-mc -triple
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
        // LLVM 14's assembler (`llvm-mc -triple bpfel -mcpu=v3 -show-encoding`)
        ("db 21 00 00 00 00 00 00", Insn::AtomicAdd { size: DW, dst: R1, src: R2, off: 0 }, "lock *(u64 *)(r1 +0) += r2"),
        ("c3 43 08 00 00 00 00 00", Insn::AtomicAdd { size: W, dst: R3, src: R4, off: 8 }, "lock *(u32 *)(r3 +8) += r4"),
        // a `.data` global's address as clang leaves it for the loader (offset in the first
        // imm), with src_reg = BPF_PSEUDO_MAP_VALUE as the loaders set it
        ("18 23 00 00 10 00 00 00 00 00 00 00 00 00 00 00", Insn::LdMapValue { dst: R3, map: 0, off: 16 }, "r3 = map_value[0] +16 ll"),
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
    // BPF_PSEUDO_MAP_VALUE: the offset in the first imm, the map in the relocation
    patched[1] = 0x21;
    patched[4] = 32;
    assert_eq!(
        Insn::decode(&patched),
        Ok((
            Insn::LdMapValue {
                dst: R1,
                map: 0,
                off: 32
            },
            16
        ))
    );
    // ... and nothing in the second (where the loader moves it)
    patched[12] = 1;
    assert!(matches!(
        Insn::decode(&patched),
        Err(DecodeError::NonZeroField { .. })
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
    // atomic fetch-add (`r1 = atomic_fetch_add((u64 *)(r0 + 0), r1)`), atomic or,
    // and an atomic add of one byte
    for bytes in [
        "db 10 00 00 01 00 00 00",
        "db 10 00 00 40 00 00 00",
        "d3 10 00 00 00 00 00 00",
    ] {
        assert!(
            matches!(Insn::decode(&hex(bytes)), Err(Unsupported { .. })),
            "{bytes}"
        );
    }
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
