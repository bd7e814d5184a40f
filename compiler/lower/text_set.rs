//! A protocol field's value looked up in a set map (`sets::Shape::Text`,
//! `http.host in {...}`, `tls.sni ends with {...}` past `sets::MAP_ABOVE_TEXT`): the key
//! is built on the stack from the parser's (offset, length) slot (`proto::text_slot`)
//! and the message's bytes (reversed for `ends with`), then one HASH (LPM trie) lookup.
//! Strings the map does not key are compared by `proto`'s `text_test`.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, JmpOp, Reg, Size, Src};
use crate::fields::{Case, Text};
use crate::hir::TextOp;

use super::lir::Label;
use super::maps::MapId;
use super::proto::{text_slot, LEN_MASK, OFF_MASK};
use super::{Gen, STACK_TEXT_KEY};

impl Gen {
    /// Jumps to `t` if protocol field `field` has a value in set map `map`, else to `f`.
    /// The key (see `sets::Shape::Text`) is built at `STACK_TEXT_KEY`: the length, then
    /// `key_len` bytes copied from the message, folded to the field's case, zero past
    /// the value. A value longer than `key_len` is compared with `long` in code (the
    /// set's strings the map does not key), without a lookup.
    ///
    /// Verifier. The copy is a bounded loop of `key_len` rounds whose counter (r5) is a
    /// constant on every path, so each round is walked once per way through it (about 80
    /// processed instructions a round: 12k for the longest key, tests/kernel_budget.rs
    /// `sni_long_set`); every round takes the same steps whatever the length (a byte past the value is read, or not, and masked to
    /// 0 by an arithmetic mask of `K - len`), so its ways meet with the same stack at the
    /// next round and after the loop: the rules after it are walked once, not once per
    /// length. Every read checks its byte against `data_end` (the parser checked the
    /// value against it, but a later pull may have moved the data window: a byte of the
    /// value that is no longer there is a miss, as in `text_test`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn text_in_map(
        &mut self,
        field: Text,
        op: TextOp,
        key_len: u32,
        map: MapId,
        long: &[Vec<u8>],
        t: Label,
        f: Label,
    ) {
        let too_long = self.label();
        self.text_map_key(field, op, key_len, too_long, f);
        self.map_lookup(map, STACK_TEXT_KEY);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
        if op != TextOp::Eq {
            // A string the trie does not key may still start (end) the value.
            self.goto(too_long);
        } else {
            self.goto(f);
        }
        self.place(too_long);
        if long.is_empty() {
            self.goto(f);
        } else {
            self.text_test(field, op, long, t, f);
        }
    }

    /// Builds the key of protocol field `field`'s value at `STACK_TEXT_KEY` for a map of
    /// shape `sets::Shape::Text { field, op, key_len }` (see `text_in_map`, which also
    /// says what it costs the verifier); jumps to `no_value` when the field has no value
    /// (or a byte of it is past `data_end`), and for `op` `Eq` to `too_long` when the
    /// value is longer than `key_len` (no key of the map can match it). Uses r0-r5.
    pub(super) fn text_map_key(
        &mut self,
        field: Text,
        op: TextOp,
        key_len: u32,
        too_long: Label,
        no_value: Label,
    ) {
        const K: Reg = Reg::R5;
        let f = no_value;
        let slot = text_slot(field);
        let key = STACK_TEXT_KEY;
        let (top, have, beyond) = (self.label(), self.label(), self.label());
        self.ldx(Size::W, Reg::R0, Reg::R10, slot + 4);
        self.alu64(AluOp::And, Reg::R0, Src::Imm(LEN_MASK));
        self.jmp32(JmpOp::Jeq, Reg::R0, 0, f);
        if op == TextOp::Eq {
            self.jmp64(JmpOp::Jgt, Reg::R0, Src::Imm(key_len as i32), too_long);
            self.stx(Size::W, Reg::R10, key, Reg::R0);
        } else {
            // The trie's key: all its bits, the value's first (last) `key_len` bytes; a
            // longer value is looked up by them too.
            self.st(Size::W, Reg::R10, key, 8 * key_len as i32);
        }
        self.mov64(K, Src::Imm(0));
        self.place(top);
        // r1 = data + offset + i, checked against data_end: i = K, or for `ends with`
        // len - 1 - K, masked to the field's bound (past the value's start, K >= len,
        // the byte read is any of the window's, and masked to 0 below).
        if op == TextOp::EndsWith {
            self.ldx(Size::W, Reg::R0, Reg::R10, slot + 4);
            self.alu64(AluOp::Sub, Reg::R0, Src::Imm(1));
            self.alu64(AluOp::Sub, Reg::R0, Src::Reg(K));
            self.alu64(AluOp::And, Reg::R0, Src::Imm(LEN_MASK));
            self.ldx(Size::W, Reg::R1, Reg::R10, slot);
            self.alu64(AluOp::And, Reg::R1, Src::Imm(OFF_MASK));
            self.alu64(AluOp::Add, Reg::R0, Src::Reg(Reg::R1));
        } else {
            self.ldx(Size::W, Reg::R0, Reg::R10, slot);
            self.alu64(AluOp::And, Reg::R0, Src::Imm(OFF_MASK));
            self.alu64(AluOp::Add, Reg::R0, Src::Reg(K));
        }
        self.ldx(Size::DW, Reg::R1, self.ctx(), SK_MSG_MD_DATA);
        self.alu64(AluOp::Add, Reg::R1, Src::Reg(Reg::R0));
        self.mov64(Reg::R2, Src::Reg(Reg::R1));
        self.alu64(AluOp::Add, Reg::R2, Src::Imm(1));
        self.ldx(Size::DW, Reg::R3, self.ctx(), SK_MSG_MD_DATA_END);
        self.jmp64(JmpOp::Jgt, Reg::R2, Src::Reg(Reg::R3), beyond);
        self.ldx(Size::B, Reg::R0, Reg::R1, 0);
        // Fold an ASCII letter of the other case (the keys are in the field's case):
        // flip bit 5 when `first <= byte <= first + 25`, that is when neither
        // `byte - first` nor `first + 25 - byte` is negative. Branch-free, so that the
        // round has one way through for the verifier.
        let letters = match field.case() {
            Case::Exact => None,
            Case::Lower => Some(b'A'),
            Case::Upper => Some(b'a'),
        };
        if let Some(first) = letters {
            self.mov64(Reg::R1, Src::Reg(Reg::R0));
            self.alu64(AluOp::Sub, Reg::R1, Src::Imm(first as i32));
            self.mov64(Reg::R2, Src::Imm(first as i32 + 25));
            self.alu64(AluOp::Sub, Reg::R2, Src::Reg(Reg::R0));
            self.alu64(AluOp::Or, Reg::R1, Src::Reg(Reg::R2));
            self.alu64(AluOp::Arsh, Reg::R1, Src::Imm(63));
            self.alu64(AluOp::Xor, Reg::R1, Src::Imm(-1));
            self.alu64(AluOp::And, Reg::R1, Src::Imm(0x20));
            self.alu64(AluOp::Xor, Reg::R0, Src::Reg(Reg::R1));
        }
        self.goto(have);
        // Past data_end: a miss inside the value; past it, any byte (masked below) that
        // the verifier sees as it sees a read one.
        self.place(beyond);
        self.ldx(Size::W, Reg::R1, Reg::R10, slot + 4);
        self.alu64(AluOp::And, Reg::R1, Src::Imm(LEN_MASK));
        self.jmp64(JmpOp::Jlt, K, Src::Reg(Reg::R1), f);
        self.ctx_ld(Reg::R0, SK_MSG_MD_SIZE);
        self.alu64(AluOp::And, Reg::R0, Src::Imm(0xff));
        // key[4 + K] = K < len ? byte : 0, the mask all ones when K - len is negative.
        self.place(have);
        self.ldx(Size::W, Reg::R1, Reg::R10, slot + 4);
        self.alu64(AluOp::And, Reg::R1, Src::Imm(LEN_MASK));
        self.mov64(Reg::R2, Src::Reg(K));
        self.alu64(AluOp::Sub, Reg::R2, Src::Reg(Reg::R1));
        self.alu64(AluOp::Arsh, Reg::R2, Src::Imm(63));
        self.alu64(AluOp::And, Reg::R0, Src::Reg(Reg::R2));
        self.mov64(Reg::R1, Src::Reg(Reg::R10));
        self.alu64(AluOp::Add, Reg::R1, Src::Reg(K));
        self.stx(Size::B, Reg::R1, key + 4, Reg::R0);
        self.alu64(AluOp::Add, K, Src::Imm(1));
        self.jmp64(JmpOp::Jlt, K, Src::Imm(key_len as i32), top);
    }
}
