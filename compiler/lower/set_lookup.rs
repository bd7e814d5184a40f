//! The code of a large set's test (planned in `sets`): the ready check of the set
//! maps, which buffer of a set read from a file is live, and the lookup of each shape
//! (the IPv4 hashes, block hashes or trie, the IPv6 trie, the port array, values,
//! ranges, payload slices, comm names; protocol fields in `text_set`).

use skpc_abi::{SETS_READY, SET_MEMBER};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{self, End, IntField, Test};

use super::addr::{addr_words, wire_word};
use super::lir::Label;
use super::maps::MapId;
use super::sets::{long_strings, shape, Parts, Shape, V4Layout, COMM_KEY};
use super::{Gen, STACK_COMM, STACK_COMM_TRIE_KEY, STACK_READY_KEY, STACK_SET_KEY};

impl Gen {
    /// The ready check of the set maps: unless the runtime has filled them (slot 0 of
    /// `skp_sets` is `SETS_READY`), every message is dropped.
    pub(super) fn sets_ready_check(&mut self) {
        let Some(ready) = self.maps.sets else { return };
        let not_ready = self.label();
        self.sets_not_ready = Some(not_ready);
        self.st(Size::W, Reg::R10, STACK_READY_KEY, 0);
        self.map_lookup(ready, STACK_READY_KEY);
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), not_ready);
        self.ldx(Size::W, Reg::R1, Reg::R0, 0);
        self.jmp32(JmpOp::Jne, Reg::R1, SETS_READY as i32, not_ready);
    }

    /// The set map planned for `test`, if it is one.
    pub(super) fn set_of(&self, test: &Test) -> Option<usize> {
        let shape = shape(test, self.options.set_maps_above)?;
        self.sets
            .iter()
            .position(|(s, _)| s.shape == shape && &s.test == test)
    }

    /// Jumps to `t` when the value the test reads is in set `k`, else to `f`. A set read
    /// from a file reads which buffer is live first, once: the runtime fills the other
    /// one and then flips the slot, so a message sees one whole version of the set.
    pub(super) fn set_test(&mut self, k: usize, t: Label, f: Label) {
        let (shape, ids) = (self.sets[k].0.shape, self.sets[k].1);
        if let (Shape::Text { field, key_len, op }, [Some(map), ..]) = (shape, ids.buffers[0]) {
            let long = long_strings(&self.sets[k].0.test, shape);
            return self.text_in_map(field, op, key_len, map, &long, t, f);
        }
        let (Some(slot), Some(ready)) = (ids.slot, self.maps.sets) else {
            return self.set_lookup(shape, ids.buffers[0], t, f);
        };
        let second = self.label();
        self.st(Size::W, Reg::R10, STACK_READY_KEY, slot as i32);
        self.map_lookup(ready, STACK_READY_KEY);
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), f);
        self.ldx(Size::W, Reg::R1, Reg::R0, 0);
        self.jmp32(JmpOp::Jne, Reg::R1, 0, second);
        self.set_lookup(shape, ids.buffers[0], t, f);
        self.place(second);
        self.set_lookup(shape, ids.buffers[1], t, f);
    }

    /// The lookup of `shape` in `maps` (one buffer).
    fn set_lookup(&mut self, shape: Shape, maps: Parts<MapId>, t: Label, f: Label) {
        let [first, second, third] = maps;
        match shape {
            Shape::Addr {
                end, v4, mapped, ..
            } => self.addr_set(end, v4, [first, second], third, mapped, t, f),
            Shape::Port(field) => {
                let Some(map) = first else {
                    return self.goto(f);
                };
                let reg = self.int_value(field, f);
                self.stx(Size::W, Reg::R10, STACK_SET_KEY, reg);
                self.map_lookup(map, STACK_SET_KEY);
                self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), f);
                self.ldx(Size::B, Reg::R1, Reg::R0, 0);
                self.jmp32(JmpOp::Jeq, Reg::R1, SET_MEMBER as i32, t);
                self.goto(f);
            }
            Shape::Points { field, width } => {
                let Some(map) = first else {
                    return self.goto(f);
                };
                let reg = self.int_value(field, f);
                let size = if width == 8 { Size::DW } else { Size::W };
                self.stx(size, Reg::R10, STACK_SET_KEY, reg);
                self.member(map, t, f);
            }
            Shape::Ranges { field, width } => {
                let Some(map) = first else {
                    return self.goto(f);
                };
                let reg = self.int_value(field, f);
                self.st(Size::W, Reg::R10, STACK_SET_KEY, width as i32 * 8);
                self.mov64(Reg::R3, Src::Reg(reg));
                self.emit(Insn::End {
                    dst: Reg::R3,
                    endian: Endian::ToBe,
                    bits: width * 8,
                });
                // Two word stores: the stack takes only aligned accesses, and the
                // value starts 4 bytes into the key.
                self.stx(Size::W, Reg::R10, STACK_SET_KEY + 4, Reg::R3);
                if width == 8 {
                    self.alu64(AluOp::Rsh, Reg::R3, Src::Imm(32));
                    self.stx(Size::W, Reg::R10, STACK_SET_KEY + 8, Reg::R3);
                }
                self.member(map, t, f);
            }
            Shape::Payload { offset, len } => {
                let Some(map) = first else {
                    return self.goto(f);
                };
                self.ensure_payload(offset + len, f);
                // The key is the slice itself: the verifier has checked `len` bytes.
                if offset > 0 {
                    self.alu64(AluOp::Add, Reg::R2, Src::Imm(offset as i32));
                }
                self.ld_map(Reg::R1, map);
                self.call(BPF_FUNC_map_lookup_elem);
                self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
                self.goto(f);
            }
            // `set_test` looks these up with the strings its map does not key.
            Shape::Text { .. } => self.goto(f),
            // No test has this shape: `text_index` looks the rules up.
            Shape::TextRules { .. } => self.goto(f),
            Shape::Comm { prefix } => {
                let Some(map) = first else {
                    return self.goto(f);
                };
                // The buffer the helper fills is the key: the name, NUL-padded; for the
                // trie after a prefix length of all its bits.
                self.current_comm(STACK_COMM);
                let key = if prefix {
                    self.st(Size::W, Reg::R10, STACK_COMM_TRIE_KEY, 8 * COMM_KEY as i32);
                    STACK_COMM_TRIE_KEY
                } else {
                    STACK_COMM
                };
                self.map_lookup(map, key);
                self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
                self.goto(f);
            }
        }
    }

    /// `r0 = lookup(map, STACK_SET_KEY)`, to `t` when found.
    fn member(&mut self, map: MapId, t: Label, f: Label) {
        self.map_lookup(map, STACK_SET_KEY);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
        self.goto(f);
    }

    /// The register holding an integer field: its cache register, or r2 after a load.
    fn int_value(&mut self, field: IntField, short: Label) -> Reg {
        match self.cached.iter().find(|(c, _)| *c == field) {
            Some((_, r)) => *r,
            None => {
                self.load_int(field, short);
                Reg::R2
            }
        }
    }

    /// An address in the IPv4 maps (trie or hashes, `layout`) and/or the IPv6 trie of
    /// a set.
    #[allow(clippy::too_many_arguments)]
    fn addr_set(
        &mut self,
        end: End,
        layout: V4Layout,
        v4: [Option<MapId>; 2],
        v6: Option<MapId>,
        mapped: bool,
        t: Label,
        f: Label,
    ) {
        let (ip4, ip6) = addr_words(end);
        let (l4, l6) = (self.label(), self.label());
        let has_v4 = v4[0].is_some();
        self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
        if has_v4 {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, l4);
        }
        if v6.is_some() || mapped {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, l6);
        }
        self.goto(f);
        if has_v4 {
            self.place(l4);
            self.v4_lookup(layout, v4, ip4, t, f);
        }
        if v6.is_none() && !mapped {
            return;
        }
        self.place(l6);
        if let Some(map) = v6 {
            self.st(Size::W, Reg::R10, STACK_SET_KEY, 128);
            for w in 0..4 {
                self.ctx_ld(Reg::R2, ip6 + w * 4);
                self.stx(Size::W, Reg::R10, STACK_SET_KEY + 4 + w * 4, Reg::R2);
            }
            // A miss goes on to the IPv4 maps for a mapped address.
            self.map_lookup(map, STACK_SET_KEY);
            self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
        }
        if mapped && has_v4 {
            // `::ffff:a.b.c.d`: the IPv4 maps, with the last word.
            self.unless_mapped(ip6, f);
            self.v4_lookup(layout, v4, ip6 + 12, t, f);
        } else {
            self.goto(f);
        }
    }

    /// The IPv4 address in context word `word` in the set's IPv4 maps.
    fn v4_lookup(
        &mut self,
        layout: V4Layout,
        maps: [Option<MapId>; 2],
        word: i16,
        t: Label,
        f: Label,
    ) {
        match layout {
            V4Layout::Hashed(lengths) => {
                for (len, map) in lengths.into_iter().zip(maps) {
                    let (Some(len), Some(map)) = (len, map) else {
                        continue;
                    };
                    // Reloaded each time: the lookup's call clobbers r2.
                    self.ctx_ld(Reg::R2, word);
                    if len < 32 {
                        let mask = wire_word(hir::mask32(len).to_be_bytes());
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(mask));
                    }
                    self.stx(Size::W, Reg::R10, STACK_SET_KEY, Reg::R2);
                    self.map_lookup(map, STACK_SET_KEY);
                    self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), t);
                }
                self.goto(f);
            }
            V4Layout::Blocks(widths) => {
                for (width, map) in widths.into_iter().zip(maps) {
                    let (Some(k), Some(map)) = (width, map) else {
                        continue;
                    };
                    let next = self.label();
                    if k == 0 {
                        self.mov32(Reg::R2, 0);
                    } else {
                        self.ctx_ld(Reg::R2, word);
                        let mask = wire_word(hir::mask32(k).to_be_bytes());
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(mask));
                    }
                    self.stx(Size::W, Reg::R10, STACK_SET_KEY, Reg::R2);
                    self.map_lookup(map, STACK_SET_KEY);
                    self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), next);
                    // The bit of the address's next byte: the word holds the address in
                    // network order, so byte k / 8 is bits k..k + 8 of the register.
                    self.ctx_ld(Reg::R1, word);
                    if k > 0 {
                        self.alu32(AluOp::Rsh, Reg::R1, Src::Imm(k as i32));
                    }
                    if k < 24 {
                        self.alu32(AluOp::And, Reg::R1, Src::Imm(0xff));
                    }
                    self.mov64(Reg::R2, Src::Reg(Reg::R1));
                    self.alu64(AluOp::Rsh, Reg::R2, Src::Imm(3));
                    self.alu64(AluOp::Add, Reg::R0, Src::Reg(Reg::R2));
                    self.ldx(Size::B, Reg::R0, Reg::R0, 0);
                    self.alu32(AluOp::And, Reg::R1, Src::Imm(7));
                    self.alu32(AluOp::Rsh, Reg::R0, Src::Reg(Reg::R1));
                    self.jmp32(JmpOp::Jset, Reg::R0, 1, t);
                    self.place(next);
                }
                self.goto(f);
            }
            V4Layout::Trie | V4Layout::Absent => {
                let Some(map) = maps[0] else {
                    return self.goto(f);
                };
                self.st(Size::W, Reg::R10, STACK_SET_KEY, 32);
                self.ctx_ld(Reg::R2, word);
                self.stx(Size::W, Reg::R10, STACK_SET_KEY + 4, Reg::R2);
                self.member(map, t, f);
            }
        }
    }
}
