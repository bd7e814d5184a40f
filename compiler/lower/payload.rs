//! Payload and comm bytes: making the first bytes of a message readable (pulling them in
//! when the window is too small) and comparing bytes at a base register.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Insn, JmpOp, Reg, Size, Src};

use super::lir::Label;
use super::Gen;

impl Gen {
    /// Makes the first `need` payload bytes readable: on return r2 = data with at least
    /// `need` bytes before data_end (the verifier knows it). Jumps to `short` when the
    /// message has fewer bytes. Pulls (`bpf_msg_pull_data(msg, 0, need, 0)`) only when
    /// the current window is too small; the pull invalidates the old pointers, so both
    /// are reloaded and checked again.
    pub(super) fn ensure_payload(&mut self, need: u32, short: Label) {
        let ok = self.label();
        self.window_check(need);
        self.jmp64(JmpOp::Jle, Reg::R4, Src::Reg(Reg::R3), ok);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov64(Reg::R2, Src::Imm(0));
        self.mov32(Reg::R3, need);
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_pull_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), short);
        self.window_check(need);
        self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R3), short);
        self.place(ok);
    }

    /// r2 = data, r3 = data_end, r4 = data + need.
    pub(super) fn window_check(&mut self, need: u32) {
        self.ldx(Size::DW, Reg::R2, self.ctx(), SK_MSG_MD_DATA);
        self.ldx(Size::DW, Reg::R3, self.ctx(), SK_MSG_MD_DATA_END);
        self.mov64(Reg::R4, Src::Reg(Reg::R2));
        self.alu64(AluOp::Add, Reg::R4, Src::Imm(need as i32));
    }

    /// Jumps to `ne` unless the bytes at `base + off` equal `want` (under `mask`, if
    /// given). Uses 8-, 4-, 2- and 1-byte loads into r4 (r5 for 8-byte constants).
    pub(super) fn compare_bytes(
        &mut self,
        base: Reg,
        off: i16,
        want: &[u8],
        mask: Option<&[u8]>,
        ne: Label,
    ) {
        for (at, size, value) in words(want) {
            let n = size.bytes();
            self.ldx(size, Reg::R4, base, off + at as i16);
            if let Some(m) = mask {
                let mv = le_word(&m[at..at + n]);
                self.emit(Insn::LdImm64 {
                    dst: Reg::R5,
                    imm: mv,
                });
                self.alu64(AluOp::And, Reg::R4, Src::Reg(Reg::R5));
            }
            if size == Size::DW {
                self.emit(Insn::LdImm64 {
                    dst: Reg::R5,
                    imm: value,
                });
                self.jmp64(JmpOp::Jne, Reg::R4, Src::Reg(Reg::R5), ne);
            } else {
                self.jmp32(JmpOp::Jne, Reg::R4, value as u32 as i32, ne);
            }
        }
    }
}

/// `bytes` as the loads or stores that cover it, widest first: (offset, size, the
/// little-endian value of those bytes). 8 bytes at a time, then 4, 2 and 1.
pub(super) fn words(bytes: &[u8]) -> impl Iterator<Item = (usize, Size, u64)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let size = match bytes.len().checked_sub(at)? {
            0 => return None,
            8.. => Size::DW,
            4..=7 => Size::W,
            2..=3 => Size::H,
            _ => Size::B,
        };
        let n = size.bytes();
        let item = (at, size, le_word(&bytes[at..at + n]));
        at += n;
        Some(item)
    })
}

/// Up to 8 bytes as a little-endian number.
fn le_word(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(le)
}
