//! The protocol parsers in BPF (`http`, `redis`, `pg`, `tls`), and the tests of their
//! fields. The grammar and bounds are docs/language.md's "Protocols" section (the
//! registry's `fields::bounds`); the reference parsers in `eval::proto` implement the
//! same text independently, and the differential tests hold the two together.
//!
//! Shape. The prologue runs the parser of every protocol the policy reads, once per
//! message, smallest window first; each first makes the message's first
//! `min(size, window)` bytes readable (a pull, unless the data window holds them), and a
//! failed pull leaves its protocol without value (the window is all or nothing). A parser
//! leaves its results on the stack (`STACK_PROTO`): a flag per protocol and an
//! `(offset, length)` pair per string field, length 0 meaning "no value". A test is then
//! a few compares against the slots and the bytes at the offset.
//!
//! Verifier. The parsers scan with bounded loops (a counter that is a constant on every
//! path, so the verifier walks each round once). A value that depends on the round it
//! was found in (an index, a length) would make every later instruction be verified once
//! per round, and a second scan after it once per pair of rounds. So such values are made
//! opaque (`opaque`: `+ size - size`, then masked to their bound) before they are kept:
//! the verifier then sees one range for them whatever the round, and the paths merge.
//! Every read checks its bytes against both the parser's window and `data_end`.

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::fields::{bounds, Case, Proto, Text};
use crate::hir::{self, Test, TextOp};

use super::lir::{Label, Lir, Mark};
use super::{Gen, STACK_PROTO};

/// Data window while parsing: start and end (r0-r5 and r7-r9 are the parsers'; nothing
/// is cached in registers yet).
const DATA: Reg = Reg::R2;
const END: Reg = Reg::R3;
/// The index a scan starts from.
const POS: Reg = Reg::R7;
/// The loop counter.
const K: Reg = Reg::R8;
/// `sk_msg_md.size`, the addend `opaque` hides values behind.
const SIZE: Reg = Reg::R9;
/// A scan's stop index (`POS + K`), and scratch.
const IDX: Reg = Reg::R4;
/// `data + index` after `at`.
const BASE: Reg = Reg::R1;

/// Masks bounding the opaque values: offsets inside the largest window, lengths up to
/// the longest field, flags.
pub(super) const OFF_MASK: i32 = 0xfff;
pub(super) const LEN_MASK: i32 = 0x1ff;
const FLAG_MASK: i32 = 1;

/// Scratch words of the parsers, after the flags and field slots.
const SCRATCH_A: i16 = STACK_PROTO + 16 + 8 * Text::ALL.len() as i16;
const SCRATCH_B: i16 = SCRATCH_A + 8;
/// Bytes of `STACK_PROTO` in use: the flags, the field slots and the two scratch words.
pub(super) const PROTO_STACK_BYTES: i16 = 16 + 8 * Text::ALL.len() as i16 + 16;

fn flag_slot(p: Proto) -> i16 {
    STACK_PROTO + 4 * p as i16
}

/// The field's offset word; its length word is 4 bytes after it.
pub(super) fn text_slot(t: Text) -> i16 {
    STACK_PROTO + 16 + 8 * t as i16
}

/// A protocol a policy reads: which of its string fields, and the first rule that
/// reads it (what the parser's listing stands under).
pub(super) struct Used {
    proto: Proto,
    fields: Vec<Text>,
    first_rule: usize,
}

/// The protocols a policy reads.
pub(super) fn used(policy: &hir::Policy) -> Vec<Used> {
    let mut out: Vec<(Proto, Vec<Text>, usize)> = Vec::new();
    let mut add = |p: Proto, t: Option<Text>, rule: usize| {
        let i = match out.iter().position(|(q, _, _)| *q == p) {
            Some(i) => i,
            None => {
                out.push((p, Vec::new(), rule));
                out.len() - 1
            }
        };
        if let Some(t) = t {
            if !out[i].1.contains(&t) {
                out[i].1.push(t);
            }
        }
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        for test in rule.cond.tests() {
            match test {
                Test::Proto(p) => add(*p, None, i),
                Test::Text { field, .. } => add(field.proto(), Some(*field), i),
                _ => {}
            }
        }
    }
    // Smallest window first: one pull of the whole message (the usual case, a message
    // shorter than every window) serves every parser after it.
    out.sort_by_key(|(p, _, _)| (p.window(), *p));
    out.into_iter()
        .map(|(proto, fields, first_rule)| Used {
            proto,
            fields,
            first_rule,
        })
        .collect()
}

impl Gen {
    /// The prologue: pulls the window the parsers need and runs each used parser. Uses
    /// r0-r5 and r7-r9 (nothing is cached yet).
    pub(super) fn parse_protocols(&mut self, used: &[Used]) {
        if used.is_empty() {
            return;
        }
        self.ldx(Size::W, SIZE, self.ctx(), SK_MSG_MD_SIZE);
        for u in used {
            self.st(Size::W, Reg::R10, flag_slot(u.proto), 0);
            for t in Text::ALL.iter().filter(|t| t.proto() == u.proto) {
                self.st(Size::DW, Reg::R10, text_slot(*t), 0);
            }
        }
        for Used {
            proto: p,
            fields,
            first_rule,
        } in used
        {
            self.code.push(Lir::Mark(Mark::Parser {
                proto: *p,
                rule: *first_rule,
            }));
            let (done, fail) = (self.label(), self.label());
            // The window is all or nothing: without it (the kernel could not pull), the
            // protocol has no value, as the reference parsers have it for a window
            // whose bytes are not all given. That way out is normalized too: a second
            // state after each parser would double the states after the next one (a
            // policy reading the four protocols was walked 16 times past them).
            self.pull_window(p.window(), fail);
            self.ldx(Size::DW, DATA, self.ctx(), SK_MSG_MD_DATA);
            self.ldx(Size::DW, END, self.ctx(), SK_MSG_MD_DATA_END);
            match p {
                Proto::Http => self.parse_http(fields, fail, done),
                Proto::Redis => self.parse_redis(fields, fail, done),
                Proto::Pg => self.parse_pg(fields, fail, done),
                Proto::Tls => self.parse_tls(fields, fail, done),
            }
            // Not of the protocol: forget what the parser kept on the way.
            self.place(fail);
            self.st(Size::W, Reg::R10, flag_slot(*p), 0);
            for t in Text::ALL.iter().filter(|t| t.proto() == *p) {
                self.st(Size::W, Reg::R10, text_slot(*t) + 4, 0);
            }
            self.place(done);
            // One state for the verifier, whichever way the parser ended.
            self.normalize(flag_slot(*p), FLAG_MASK);
            for t in Text::ALL.iter().filter(|t| t.proto() == *p) {
                self.normalize(text_slot(*t), OFF_MASK);
                self.normalize(text_slot(*t) + 4, LEN_MASK);
            }
        }
        self.code.push(Lir::Mark(Mark::Prologue));
    }

    /// Makes the first `min(size, window)` bytes readable (pulls them unless the data
    /// window holds them already); jumps to `fail` if the pull fails.
    fn pull_window(&mut self, window: u32, fail: Label) {
        let (short, pulled) = (self.label(), self.label());
        self.ldx(Size::W, Reg::R3, self.ctx(), SK_MSG_MD_SIZE);
        self.jmp64(JmpOp::Jle, Reg::R3, Src::Imm(window as i32), short);
        self.mov64(Reg::R3, Src::Imm(window as i32));
        self.place(short);
        self.ldx(Size::DW, Reg::R2, self.ctx(), SK_MSG_MD_DATA);
        self.ldx(Size::DW, Reg::R5, self.ctx(), SK_MSG_MD_DATA_END);
        self.mov64(Reg::R4, Src::Reg(Reg::R2));
        self.alu64(AluOp::Add, Reg::R4, Src::Reg(Reg::R3));
        self.jmp64(JmpOp::Jle, Reg::R4, Src::Reg(Reg::R5), pulled);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov64(Reg::R2, Src::Imm(0));
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_pull_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), fail);
        self.place(pulled);
    }

    /// `reg` unchanged, but opaque to the verifier and bounded by `mask`: `+ size - size`,
    /// as the counters' tail does. (Measured: a round trip through a stack word off the
    /// 8-byte grid verifies slower.)
    fn opaque(&mut self, reg: Reg, mask: i32) {
        self.alu64(AluOp::Add, reg, Src::Reg(SIZE));
        self.alu64(AluOp::Sub, reg, Src::Reg(SIZE));
        self.alu64(AluOp::And, reg, Src::Imm(mask));
    }

    /// The stack word at `slot`, made opaque.
    fn normalize(&mut self, slot: i16, mask: i32) {
        self.ldx(Size::W, Reg::R0, Reg::R10, slot);
        self.opaque(Reg::R0, mask);
        self.stx(Size::W, Reg::R10, slot, Reg::R0);
    }

    /// Jumps to `out` unless `dst op src`, with the way out as the fall-through. The
    /// verifier explores a fall-through first and keeps the jump target for later: so
    /// inside a loop every way out is finished at once and only the next round waits,
    /// instead of one waiting way out per round (which overflows the verifier's limit of
    /// 8192 pending branches in a loop of a thousand rounds).
    fn exit_unless(&mut self, op: JmpOp, wide: bool, dst: Reg, src: Src, out: Label) {
        let go_on = self.label();
        self.code.push(Lir::Jmp {
            op,
            wide,
            dst,
            src,
            target: go_on,
            keep: true,
        });
        self.goto(out);
        self.place(go_on);
    }

    /// BASE = data + `idx`, when bytes `idx..idx + need` lie inside the parser's window
    /// and before `data_end`; else jumps to `out`. Clobbers r0.
    fn at(&mut self, idx: Reg, need: u32, window: u32, out: Label) {
        self.exit_unless(JmpOp::Jle, true, idx, Src::Imm((window - need) as i32), out);
        self.mov64(BASE, Src::Reg(DATA));
        self.alu64(AluOp::Add, BASE, Src::Reg(idx));
        self.mov64(Reg::R0, Src::Reg(BASE));
        self.alu64(AluOp::Add, Reg::R0, Src::Imm(need as i32));
        self.exit_unless(JmpOp::Jle, true, Reg::R0, Src::Reg(END), out);
    }

    /// IDX = K + POS, in that order. Verifier: `IDX = POS; IDX += K` with K a known
    /// constant would make IDX a *linked* copy of POS (the kernel tracks `rX = rY + c`
    /// since 6.10), so every bounds check of IDX would narrow POS too, by a different
    /// amount in each round of a scan; the rounds' states at the loop head would then
    /// never match, and the verifier would walk the rest of the program once per way
    /// through the scan (220k processed instructions for an `http.host` test, 5k
    /// without). A constant plus an unknown is a new, unlinked value.
    fn index_at_k(&mut self) {
        self.mov64(IDX, Src::Reg(K));
        self.alu64(AluOp::Add, IDX, Src::Reg(POS));
    }

    /// `for K in 0..count { body }`; the body jumps to its `next` label to go on.
    fn counted_loop(&mut self, count: u32, body: impl FnOnce(&mut Gen, Label)) {
        let (top, next) = (self.label(), self.label());
        self.mov64(K, Src::Imm(0));
        self.place(top);
        body(self, next);
        self.place(next);
        self.alu64(AluOp::Add, K, Src::Imm(1));
        self.jmp64(JmpOp::Jlt, K, Src::Imm(count as i32), top);
    }

    /// Scans at most `count` bytes from index POS for one of `stops`: jumps to `found`
    /// with K = the distance, IDX = the index and r0 = the byte; to `out` past the window
    /// or the count. `each` adds tests of every other byte (in r0).
    fn scan(
        &mut self,
        window: u32,
        count: u32,
        stops: &[u8],
        found: Label,
        out: Label,
        each: impl FnOnce(&mut Gen, Label),
    ) {
        self.counted_loop(count, |g, next| {
            g.index_at_k();
            g.at(IDX, 1, window, out);
            g.ldx(Size::B, Reg::R0, BASE, 0);
            for &s in stops {
                g.exit_unless(JmpOp::Jne, false, Reg::R0, Src::Imm(s as i32), found);
            }
            each(g, next);
        });
        self.goto(out);
    }

    /// Jumps to `out` unless r0 (a byte) is an ASCII digit; leaves r5 = its value.
    fn digit(&mut self, out: Label) {
        self.mov64(Reg::R5, Src::Reg(Reg::R0));
        self.alu64(AluOp::Sub, Reg::R5, Src::Imm(b'0' as i32));
        self.exit_unless(JmpOp::Jle, true, Reg::R5, Src::Imm(9), out);
    }

    fn set_text(&mut self, t: Text, off: Reg, len: Reg) {
        self.stx(Size::W, Reg::R10, text_slot(t), off);
        self.stx(Size::W, Reg::R10, text_slot(t) + 4, len);
    }

    fn set_flag(&mut self, p: Proto) {
        self.st(Size::W, Reg::R10, flag_slot(p), 1);
    }

    fn be16(&mut self, reg: Reg) {
        self.emit(Insn::End {
            dst: reg,
            endian: Endian::ToBe,
            bits: 16,
        });
    }

    /// HTTP/1.x: method, target (path), version, then the Host header.
    fn parse_http(&mut self, fields: &[Text], fail: Label, done: Label) {
        let w = bounds::HTTP_WINDOW;
        // Method: 1-16 letters A-Z, then a space.
        let method = self.label();
        self.mov64(POS, Src::Imm(0));
        self.scan(
            w,
            bounds::HTTP_METHOD_MAX + 1,
            b" ",
            method,
            fail,
            |g, _| {
                g.mov64(Reg::R5, Src::Reg(Reg::R0));
                g.alu64(AluOp::Sub, Reg::R5, Src::Imm(b'A' as i32));
                g.exit_unless(JmpOp::Jle, true, Reg::R5, Src::Imm(25), fail);
            },
        );
        self.place(method);
        self.jmp64(JmpOp::Jeq, K, Src::Imm(0), fail);
        self.opaque(K, LEN_MASK);
        self.mov64(Reg::R0, Src::Imm(0));
        self.set_text(Text::HttpMethod, Reg::R0, K);
        // Target: up to the first space, CR or LF; the path ends at its first `?`.
        self.mov64(POS, Src::Reg(K));
        self.alu64(AluOp::Add, POS, Src::Imm(1));
        let (path_end, target_end, query) = (self.label(), self.label(), self.label());
        self.scan(
            w,
            bounds::HTTP_TARGET_MAX + 1,
            b"? \r\n",
            path_end,
            fail,
            |_, _| {},
        );
        self.place(path_end);
        self.opaque(K, LEN_MASK);
        self.opaque(IDX, OFF_MASK);
        self.set_text(Text::HttpPath, POS, K);
        self.jmp32(JmpOp::Jne, Reg::R0, b'?' as i32, target_end);
        // After a `?`, the target goes on to a space, CR or LF.
        self.mov64(POS, Src::Reg(IDX));
        self.scan(
            w,
            bounds::HTTP_TARGET_MAX + 1,
            b" \r\n",
            query,
            fail,
            |_, _| {},
        );
        self.place(query);
        self.opaque(IDX, OFF_MASK);
        self.place(target_end);
        self.jmp32(JmpOp::Jne, Reg::R0, b' ' as i32, fail);
        // 1 <= target length <= HTTP_TARGET_MAX.
        self.ldx(Size::W, Reg::R5, Reg::R10, text_slot(Text::HttpPath));
        self.mov64(Reg::R0, Src::Reg(IDX));
        self.alu64(AluOp::Sub, Reg::R0, Src::Reg(Reg::R5));
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), fail);
        self.jmp64(
            JmpOp::Jgt,
            Reg::R0,
            Src::Imm(bounds::HTTP_TARGET_MAX as i32),
            fail,
        );
        // " HTTP/1." and a digit.
        self.mov64(POS, Src::Reg(IDX));
        self.at(POS, 9, w, fail);
        self.compare_bytes(BASE, 1, b"HTTP/1.", None, fail);
        self.ldx(Size::B, Reg::R0, BASE, 8);
        self.alu64(AluOp::Sub, Reg::R0, Src::Imm(b'0' as i32));
        self.jmp64(JmpOp::Jgt, Reg::R0, Src::Imm(9), fail);
        self.set_flag(Proto::Http);
        if !fields.contains(&Text::HttpHost) {
            self.goto(done);
            return;
        }
        // Host: the first header line starting `host:` (any case), before an empty line.
        // Each round looks at the 6 bytes at IDX at once, branch-free but for its two
        // exits (the end of the headers, the Host line), so that the verifier walks a
        // round in a few ways only (46k processed instructions for a Host test with a
        // compare and a branch per byte, 11k this way). Fewer than 6 bytes left: no Host
        // line fits, so the search ends there.
        self.alu64(AluOp::Add, POS, Src::Imm(9));
        let header = self.label();
        self.counted_loop(w, |g, next| {
            g.index_at_k();
            g.at(IDX, 6, w, done);
            // r0 = (b1 ^ '\r') * (b1 ^ '\n') | r5, r5 = b0 ^ '\n': zero at an empty line.
            g.ldx(Size::B, Reg::R0, BASE, 1);
            g.mov64(Reg::R5, Src::Reg(Reg::R0));
            g.alu64(AluOp::Xor, Reg::R5, Src::Imm(b'\n' as i32));
            g.alu64(AluOp::Xor, Reg::R0, Src::Imm(b'\r' as i32));
            g.alu64(AluOp::Mul, Reg::R0, Src::Reg(Reg::R5));
            g.ldx(Size::B, Reg::R5, BASE, 0);
            g.alu64(AluOp::Xor, Reg::R5, Src::Imm(b'\n' as i32));
            g.alu64(AluOp::Or, Reg::R0, Src::Reg(Reg::R5));
            g.exit_unless(JmpOp::Jne, true, Reg::R0, Src::Imm(0), done);
            // r0 = (bytes 1..5 | 0x20 each) ^ "host" | (b5 ^ ':') | r5: zero at `host:`.
            g.ldx(Size::W, Reg::R0, BASE, 1);
            g.alu32(AluOp::Or, Reg::R0, Src::Imm(0x2020_2020));
            g.alu32(
                AluOp::Xor,
                Reg::R0,
                Src::Imm(u32::from_le_bytes(*b"host") as i32),
            );
            g.alu64(AluOp::Or, Reg::R0, Src::Reg(Reg::R5));
            g.ldx(Size::B, Reg::R5, BASE, 5);
            g.alu64(AluOp::Xor, Reg::R5, Src::Imm(b':' as i32));
            g.alu64(AluOp::Or, Reg::R0, Src::Reg(Reg::R5));
            g.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), next);
            g.goto(header);
        });
        self.goto(done);
        self.place(header);
        self.mov64(POS, Src::Reg(IDX));
        self.alu64(AluOp::Add, POS, Src::Imm(6));
        self.opaque(POS, OFF_MASK);
        // At most SPACES_MAX spaces or tabs before the value.
        self.skip_blanks(w, b" \t", done);
        self.take_text(Text::HttpHost, w, b": \t\r\n", done, |g, next| {
            // An IPv6 literal (`[::1]:80`) has no host here.
            g.jmp64(JmpOp::Jne, K, Src::Imm(0), next);
            g.exit_unless(JmpOp::Jne, false, Reg::R0, Src::Imm(b'[' as i32), done);
        });
    }

    /// From POS, skips at most SPACES_MAX of the `blanks` bytes: POS (opaque) is then the
    /// first other byte. More blanks, or the window's end: jumps to `out`.
    fn skip_blanks(&mut self, window: u32, blanks: &[u8], out: Label) {
        let other = self.label();
        self.counted_loop(bounds::SPACES_MAX + 1, |g, next| {
            g.index_at_k();
            g.at(IDX, 1, window, out);
            g.ldx(Size::B, Reg::R0, BASE, 0);
            for &b in blanks {
                g.jmp32(JmpOp::Jeq, Reg::R0, b as i32, next);
            }
            g.goto(other);
        });
        self.goto(out);
        self.place(other);
        self.mov64(POS, Src::Reg(IDX));
        self.opaque(POS, OFF_MASK);
    }

    /// The bytes from POS up to the first of `stops` are the value of `field` (1 to its
    /// `max_len` bytes; `each` tests every other byte); then (or on no value) jumps to
    /// `done`.
    fn take_text(
        &mut self,
        field: Text,
        window: u32,
        stops: &[u8],
        done: Label,
        each: impl FnOnce(&mut Gen, Label),
    ) {
        let end = self.label();
        self.scan(window, field.max_len() + 1, stops, end, done, each);
        self.place(end);
        self.jmp64(JmpOp::Jeq, K, Src::Imm(0), done);
        self.opaque(K, LEN_MASK);
        self.set_text(field, POS, K);
        self.goto(done);
    }

    /// Redis: a RESP array (`*N\r\n$L\r\nCOMMAND\r\n$K\r\nKEY\r\n`) or an inline command.
    fn parse_redis(&mut self, fields: &[Text], fail: Label, done: Label) {
        let w = bounds::REDIS_WINDOW;
        let resp = self.label();
        self.mov64(POS, Src::Imm(0));
        self.at(POS, 1, w, fail);
        self.ldx(Size::B, Reg::R0, BASE, 0);
        self.jmp32(JmpOp::Jeq, Reg::R0, b'*' as i32, resp);
        // Inline: a letter, then the command up to a space, CR or LF.
        self.alu32(AluOp::Or, Reg::R0, Src::Imm(0x20));
        self.alu32(AluOp::Sub, Reg::R0, Src::Imm(b'a' as i32));
        self.jmp32(JmpOp::Jgt, Reg::R0, 25, fail);
        let command = self.label();
        self.scan(
            w,
            bounds::REDIS_COMMAND_MAX + 1,
            b" \r\n",
            command,
            fail,
            |_, _| {},
        );
        self.place(command);
        self.set_flag(Proto::Redis);
        self.opaque(K, LEN_MASK);
        self.opaque(IDX, OFF_MASK);
        self.set_text(Text::RedisCommand, POS, K);
        if !fields.contains(&Text::RedisKey) {
            self.goto(done);
        } else {
            // The key: after one to SPACES_MAX spaces, up to a space, CR or LF.
            self.jmp32(JmpOp::Jne, Reg::R0, b' ' as i32, done);
            self.mov64(POS, Src::Reg(IDX));
            self.skip_blanks(w, b" ", done);
            self.take_text(Text::RedisKey, w, b" \r\n", done, |_, _| {});
        }
        // RESP: `*`, 1-10 digits, CR LF, `$`.
        self.place(resp);
        let count_end = self.label();
        self.mov64(POS, Src::Imm(1));
        self.counted_loop(bounds::REDIS_COUNT_DIGITS_MAX + 1, |g, next| {
            g.index_at_k();
            g.at(IDX, 1, w, fail);
            g.ldx(Size::B, Reg::R0, BASE, 0);
            let not_digit = g.label();
            g.digit(not_digit);
            g.goto(next);
            g.place(not_digit);
            g.jmp64(JmpOp::Jeq, K, Src::Imm(0), fail);
            g.jmp32(JmpOp::Jeq, Reg::R0, b'\r' as i32, count_end);
            g.goto(fail);
        });
        self.goto(fail);
        self.place(count_end);
        self.opaque(IDX, OFF_MASK);
        self.mov64(POS, Src::Reg(IDX));
        self.at(POS, 3, w, fail);
        self.compare_bytes(BASE, 0, b"\r\n$", None, fail);
        self.set_flag(Proto::Redis);
        if fields.is_empty() {
            self.goto(done);
            return;
        }
        // The command's length: 1 or 2 digits, CR LF.
        self.alu64(AluOp::Add, POS, Src::Imm(3));
        let (one_digit, have_len) = (self.label(), self.label());
        self.at(POS, 2, w, done);
        self.ldx(Size::B, Reg::R0, BASE, 0);
        self.digit(done);
        self.mov64(K, Src::Reg(Reg::R5));
        self.ldx(Size::B, Reg::R0, BASE, 1);
        self.jmp32(JmpOp::Jeq, Reg::R0, b'\r' as i32, one_digit);
        self.digit(done);
        self.alu64(AluOp::Mul, K, Src::Imm(10));
        self.alu64(AluOp::Add, K, Src::Reg(Reg::R5));
        self.at(POS, 4, w, done);
        self.ldx(Size::H, Reg::R0, BASE, 2);
        self.jmp32(JmpOp::Jne, Reg::R0, crlf(), done);
        self.alu64(AluOp::Add, POS, Src::Imm(4));
        self.goto(have_len);
        self.place(one_digit);
        self.at(POS, 3, w, done);
        self.ldx(Size::B, Reg::R0, BASE, 2);
        self.jmp32(JmpOp::Jne, Reg::R0, b'\n' as i32, done);
        self.alu64(AluOp::Add, POS, Src::Imm(3));
        self.place(have_len);
        // POS = the command's first byte, K = its length; then CR LF.
        self.jmp64(JmpOp::Jeq, K, Src::Imm(0), done);
        self.jmp64(
            JmpOp::Jgt,
            K,
            Src::Imm(bounds::REDIS_COMMAND_MAX as i32),
            done,
        );
        self.opaque(POS, OFF_MASK);
        self.index_at_k();
        self.at(IDX, 2, w, done);
        self.ldx(Size::H, Reg::R0, BASE, 0);
        self.jmp32(JmpOp::Jne, Reg::R0, crlf(), done);
        self.set_text(Text::RedisCommand, POS, K);
        if !fields.contains(&Text::RedisKey) {
            self.goto(done);
            return;
        }
        // The key: `$`, 1-3 digits, CR LF, the key, CR LF.
        self.mov64(POS, Src::Reg(IDX));
        self.alu64(AluOp::Add, POS, Src::Imm(2));
        self.at(POS, 1, w, done);
        self.ldx(Size::B, Reg::R0, BASE, 0);
        self.jmp32(JmpOp::Jne, Reg::R0, b'$' as i32, done);
        let digits_end = self.label();
        // The key's length accumulates in SCRATCH_A (r5 is the digit).
        self.st(Size::DW, Reg::R10, SCRATCH_A, 0);
        self.counted_loop(4, |g, next| {
            g.index_at_k();
            g.at(IDX, 2, w, done);
            g.ldx(Size::B, Reg::R0, BASE, 1);
            let not_digit = g.label();
            g.digit(not_digit);
            g.ldx(Size::DW, Reg::R0, Reg::R10, SCRATCH_A);
            g.alu64(AluOp::Mul, Reg::R0, Src::Imm(10));
            g.alu64(AluOp::Add, Reg::R0, Src::Reg(Reg::R5));
            g.stx(Size::DW, Reg::R10, SCRATCH_A, Reg::R0);
            g.goto(next);
            g.place(not_digit);
            g.jmp64(JmpOp::Jeq, K, Src::Imm(0), done);
            g.jmp32(JmpOp::Jeq, Reg::R0, b'\r' as i32, digits_end);
            g.goto(done);
        });
        self.goto(done);
        self.place(digits_end);
        // IDX + 1 is the CR; LF after it.
        self.at(IDX, 3, w, done);
        self.ldx(Size::B, Reg::R0, BASE, 2);
        self.jmp32(JmpOp::Jne, Reg::R0, b'\n' as i32, done);
        self.alu64(AluOp::Add, IDX, Src::Imm(3));
        self.opaque(IDX, OFF_MASK);
        self.mov64(POS, Src::Reg(IDX));
        self.ldx(Size::DW, K, Reg::R10, SCRATCH_A);
        self.jmp64(JmpOp::Jeq, K, Src::Imm(0), done);
        self.jmp64(JmpOp::Jgt, K, Src::Imm(bounds::REDIS_KEY_MAX as i32), done);
        self.alu64(AluOp::Add, IDX, Src::Reg(K));
        self.at(IDX, 2, w, done);
        self.ldx(Size::H, Reg::R0, BASE, 0);
        self.jmp32(JmpOp::Jne, Reg::R0, crlf(), done);
        self.set_text(Text::RedisKey, POS, K);
        self.goto(done);
    }

    /// PostgreSQL: a StartupMessage (length, protocol 3.0, then key/value C strings).
    fn parse_pg(&mut self, fields: &[Text], fail: Label, done: Label) {
        let w = bounds::PG_WINDOW;
        self.mov64(POS, Src::Imm(0));
        self.at(POS, 8, w, fail);
        self.ldx(Size::W, Reg::R0, BASE, 0);
        self.emit(Insn::End {
            dst: Reg::R0,
            endian: Endian::ToBe,
            bits: 32,
        });
        self.jmp64(JmpOp::Jlt, Reg::R0, Src::Imm(8), fail);
        self.jmp64(
            JmpOp::Jgt,
            Reg::R0,
            Src::Imm(bounds::PG_LENGTH_MAX as i32),
            fail,
        );
        // The message's end, for the parameter scan.
        self.stx(Size::DW, Reg::R10, SCRATCH_A, Reg::R0);
        self.ldx(Size::W, Reg::R0, BASE, 4);
        self.jmp32(
            JmpOp::Jne,
            Reg::R0,
            u32::from_le_bytes([0, 3, 0, 0]) as i32,
            fail,
        );
        self.set_flag(Proto::Pg);
        if fields.is_empty() {
            self.goto(done);
            return;
        }
        // One pass over the parameters: SCRATCH_B says what the string that ends at the
        // next NUL is: 0 a key, 1 `user`'s value, 2 `database`'s, 3 another value. The
        // last `user` and `database` count, as in PostgreSQL.
        const KEY: i32 = 0;
        const USER: i32 = 1;
        const DATABASE: i32 = 2;
        const OTHER: i32 = 3;
        self.st(Size::DW, Reg::R10, SCRATCH_B, KEY);
        self.mov64(POS, Src::Imm(8));
        self.counted_loop(w - 8, |g, next| {
            let (value, key_next, other, user, database) =
                (g.label(), g.label(), g.label(), g.label(), g.label());
            g.mov64(IDX, Src::Reg(K));
            g.alu64(AluOp::Add, IDX, Src::Imm(8));
            g.ldx(Size::DW, Reg::R0, Reg::R10, SCRATCH_A);
            g.exit_unless(JmpOp::Jlt, true, IDX, Src::Reg(Reg::R0), done);
            g.at(IDX, 1, w, done);
            g.ldx(Size::B, Reg::R0, BASE, 0);
            g.jmp32(JmpOp::Jne, Reg::R0, 0, next);
            // A string ends at IDX: [POS, IDX).
            g.ldx(Size::DW, Reg::R0, Reg::R10, SCRATCH_B);
            g.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(KEY), value);
            g.jmp64(JmpOp::Jeq, IDX, Src::Reg(POS), done);
            g.mov64(Reg::R5, Src::Reg(IDX));
            g.alu64(AluOp::Sub, Reg::R5, Src::Reg(POS));
            g.jmp64(JmpOp::Jeq, Reg::R5, Src::Imm(4), user);
            g.jmp64(JmpOp::Jeq, Reg::R5, Src::Imm(8), database);
            g.goto(other);
            g.place(user);
            g.at(POS, 4, w, other);
            g.compare_bytes(BASE, 0, b"user", None, other);
            g.pg_phase(USER);
            g.goto(key_next);
            g.place(database);
            g.at(POS, 8, w, other);
            g.compare_bytes(BASE, 0, b"database", None, other);
            g.pg_phase(DATABASE);
            g.goto(key_next);
            g.place(other);
            g.pg_phase(OTHER);
            g.place(key_next);
            g.pg_next_string(next);
            // A value: keep it if it is `user`'s or `database`'s (none if empty or too
            // long), then a key follows.
            g.place(value);
            g.pg_phase(KEY);
            let (keep, store, value_next) = (g.label(), g.label(), g.label());
            for (phase, field) in [(USER, Text::PgUser), (DATABASE, Text::PgDatabase)] {
                if fields.contains(&field) {
                    g.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(phase), keep);
                }
            }
            g.goto(value_next);
            // r0 = USER or DATABASE; the length is IDX - POS.
            g.place(keep);
            g.mov64(Reg::R5, Src::Reg(IDX));
            g.alu64(AluOp::Sub, Reg::R5, Src::Reg(POS));
            g.jmp64(
                JmpOp::Jle,
                Reg::R5,
                Src::Imm(bounds::PG_NAME_MAX as i32),
                store,
            );
            g.mov64(Reg::R5, Src::Imm(0));
            g.place(store);
            g.opaque(Reg::R5, LEN_MASK);
            for (phase, field) in [(USER, Text::PgUser), (DATABASE, Text::PgDatabase)] {
                if fields.contains(&field) {
                    let skip = g.label();
                    g.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(phase), skip);
                    g.set_text(field, POS, Reg::R5);
                    g.place(skip);
                }
            }
            // The same step as after a key, emitted again: a jump back to it would be a
            // backward jump that is no loop.
            g.place(value_next);
            g.pg_next_string(next);
        });
        self.goto(done);
    }

    /// SCRATCH_B = `phase` (what the next string is), opaque: as a constant, each of the
    /// four phases would be a state of its own at every round of the parameter scan, and
    /// the verifier would walk each round once per phase the earlier rounds can leave.
    fn pg_phase(&mut self, phase: i32) {
        self.mov64(Reg::R5, Src::Imm(phase));
        self.opaque(Reg::R5, 3);
        self.stx(Size::DW, Reg::R10, SCRATCH_B, Reg::R5);
    }

    /// The next PostgreSQL string starts after the NUL at IDX (= K + 8).
    fn pg_next_string(&mut self, next: Label) {
        self.mov64(POS, Src::Reg(K));
        self.alu64(AluOp::Add, POS, Src::Imm(9));
        self.opaque(POS, OFF_MASK);
        self.goto(next);
    }

    /// TLS: a handshake record holding a ClientHello, then its server_name extension.
    fn parse_tls(&mut self, fields: &[Text], fail: Label, done: Label) {
        let w = bounds::TLS_WINDOW;
        self.mov64(POS, Src::Imm(0));
        self.at(POS, 6, w, fail);
        self.ldx(Size::B, Reg::R0, BASE, 0);
        self.jmp32(JmpOp::Jne, Reg::R0, 0x16, fail);
        self.ldx(Size::B, Reg::R0, BASE, 1);
        self.jmp32(JmpOp::Jne, Reg::R0, 0x03, fail);
        self.ldx(Size::B, Reg::R0, BASE, 5);
        self.jmp32(JmpOp::Jne, Reg::R0, 0x01, fail);
        self.set_flag(Proto::Tls);
        if fields.is_empty() {
            self.goto(done);
            return;
        }
        // Session id, cipher suites, compression methods, then the extensions.
        self.at(POS, 44, w, done);
        self.ldx(Size::B, POS, BASE, 43);
        self.jmp64(JmpOp::Jgt, POS, Src::Imm(32), done);
        self.alu64(AluOp::Add, POS, Src::Imm(44));
        self.at(POS, 2, w, done);
        self.ldx(Size::H, Reg::R5, BASE, 0);
        self.be16(Reg::R5);
        self.alu64(AluOp::Add, POS, Src::Reg(Reg::R5));
        self.alu64(AluOp::Add, POS, Src::Imm(2));
        self.at(POS, 1, w, done);
        self.ldx(Size::B, Reg::R5, BASE, 0);
        self.alu64(AluOp::Add, POS, Src::Reg(Reg::R5));
        self.alu64(AluOp::Add, POS, Src::Imm(1));
        self.at(POS, 2, w, done);
        self.ldx(Size::H, Reg::R5, BASE, 0);
        self.be16(Reg::R5);
        self.alu64(AluOp::Add, POS, Src::Imm(2));
        self.alu64(AluOp::Add, Reg::R5, Src::Reg(POS));
        self.stx(Size::DW, Reg::R10, SCRATCH_A, Reg::R5);
        let sni = self.label();
        self.counted_loop(bounds::TLS_EXTENSIONS_MAX, |g, _| {
            g.mov64(IDX, Src::Imm(4));
            g.alu64(AluOp::Add, IDX, Src::Reg(POS));
            g.ldx(Size::DW, Reg::R0, Reg::R10, SCRATCH_A);
            g.exit_unless(JmpOp::Jle, true, IDX, Src::Reg(Reg::R0), done);
            g.at(POS, 4, w, done);
            g.ldx(Size::H, Reg::R0, BASE, 0);
            g.jmp32(JmpOp::Jeq, Reg::R0, 0, sni);
            g.ldx(Size::H, Reg::R5, BASE, 2);
            g.be16(Reg::R5);
            g.alu64(AluOp::Add, POS, Src::Reg(Reg::R5));
            g.alu64(AluOp::Add, POS, Src::Imm(4));
        });
        self.goto(done);
        // server_name: list length, name type 0 (host_name), name length, name.
        self.place(sni);
        self.at(POS, 9, w, done);
        self.ldx(Size::B, Reg::R0, BASE, 6);
        self.jmp32(JmpOp::Jne, Reg::R0, 0, done);
        self.ldx(Size::H, K, BASE, 7);
        self.be16(K);
        self.jmp64(JmpOp::Jeq, K, Src::Imm(0), done);
        self.jmp64(JmpOp::Jgt, K, Src::Imm(bounds::TLS_SNI_MAX as i32), done);
        self.alu64(AluOp::Add, POS, Src::Imm(9));
        // The name must end inside the window and the data.
        self.index_at_k();
        self.jmp64(JmpOp::Jgt, IDX, Src::Imm(w as i32), done);
        self.mov64(BASE, Src::Reg(DATA));
        self.alu64(AluOp::Add, BASE, Src::Reg(IDX));
        self.jmp64(JmpOp::Jgt, BASE, Src::Reg(END), done);
        self.set_text(Text::TlsSni, POS, K);
        self.goto(done);
    }

    /// Jumps to `t` if the message is of protocol `p`, else to `f`.
    pub(super) fn proto_test(&mut self, p: Proto, t: Label, f: Label) {
        self.ldx(Size::W, Reg::R0, Reg::R10, flag_slot(p));
        self.jmp32(JmpOp::Jne, Reg::R0, 0, t);
        self.goto(f);
    }

    /// Jumps to `t` if protocol field `field` has a value that `op` matches against one
    /// of `alts`, else to `f`. Case-folded fields compare letters with bit 5 masked off
    /// against the upper-cased string.
    pub(super) fn text_test(
        &mut self,
        field: Text,
        op: TextOp,
        alts: &[Vec<u8>],
        t: Label,
        f: Label,
    ) {
        let slot = text_slot(field);
        // The masks tell the verifier the bounds again, however it kept the slots.
        self.ldx(Size::W, Reg::R0, Reg::R10, slot + 4);
        self.alu64(AluOp::And, Reg::R0, Src::Imm(LEN_MASK));
        self.jmp32(JmpOp::Jeq, Reg::R0, 0, f);
        self.ldx(Size::DW, DATA, self.ctx(), SK_MSG_MD_DATA);
        self.ldx(Size::DW, END, self.ctx(), SK_MSG_MD_DATA_END);
        for alt in alts {
            let next = self.label();
            let n = alt.len() as i32;
            match op {
                TextOp::Eq => self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(n), next),
                TextOp::StartsWith | TextOp::EndsWith => {
                    self.jmp64(JmpOp::Jlt, Reg::R0, Src::Imm(n), next)
                }
            }
            self.ldx(Size::W, Reg::R4, Reg::R10, slot);
            self.alu64(AluOp::And, Reg::R4, Src::Imm(OFF_MASK));
            if op == TextOp::EndsWith {
                self.alu64(AluOp::Add, Reg::R4, Src::Reg(Reg::R0));
                self.alu64(AluOp::Sub, Reg::R4, Src::Imm(n));
            }
            self.mov64(BASE, Src::Reg(DATA));
            self.alu64(AluOp::Add, BASE, Src::Reg(Reg::R4));
            self.mov64(Reg::R4, Src::Reg(BASE));
            self.alu64(AluOp::Add, Reg::R4, Src::Imm(n));
            self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(END), next);
            match field.case() {
                Case::Exact => self.compare_bytes(BASE, 0, alt, None, next),
                Case::Upper | Case::Lower => {
                    let want = alt.to_ascii_uppercase();
                    let mask: Vec<u8> = alt
                        .iter()
                        .map(|b| if b.is_ascii_alphabetic() { 0xdf } else { 0xff })
                        .collect();
                    self.compare_bytes(BASE, 0, &want, Some(&mask), next);
                }
            }
            self.goto(t);
            self.place(next);
        }
        self.goto(f);
    }
}

/// `\r\n` as a 16-bit load sees it.
fn crlf() -> i32 {
    u16::from_le_bytes(*b"\r\n") as i32
}

// The parsers' stack region lies below every other slot and inside the 512-byte stack.
const _: () = assert!(STACK_PROTO >= -512 && STACK_PROTO + PROTO_STACK_BYTES <= -336);
