//! Large sets as maps. A membership test with more than `MAP_ABOVE_*` elements (address
//! prefixes, integer ranges, payload strings) is one map lookup instead of a search in
//! code, so that the program has the same size whatever the size of the set: a
//! 1,000,000-prefix blocklist is a few dozen instructions for the verifier, and its
//! elements are data the runtime writes into the map. The structure follows the kind of
//! element:
//! - IPv4 prefixes of one or two lengths (a feed of /24s, or /24s and /32s): a HASH per
//!   length, keyed by the address masked to it (`V4Layout::Hashed`, an inlined lookup
//!   each); of more lengths, and IPv6 prefixes: an LPM_TRIE (key: prefix length, then
//!   the 4 or 16 address bytes), the kernel's longest-prefix match; an IPv4-mapped IPv6
//!   address (when the test takes them) looks up the IPv4 maps with its last word;
//! - ports: an ARRAY of 65,536 one-byte flags, which the verifier inlines to a load;
//! - other integers: a HASH of the values when every element is one value (also
//!   inlined), else an LPM_TRIE over the big-endian value, each range cut into at most
//!   two prefixes per bit of width;
//! - payload slices (`payload[o..o+n] in {...}`, `payload starts with {...}` with
//!   strings of one length): a HASH keyed by the `n` bytes, looked up with a pointer
//!   into the message itself (no copy).
//!
//! Every value is the one byte `skpc_abi::SET_MEMBER`. The keys travel in the object's
//! `.skp.set.<map>` sections; the runtime fills the maps, then writes `SETS_READY` into
//! slot 0 of `skp_sets`, which the program checks before anything else: an object loaded
//! by a tool that does not fill the sets drops every message (fails closed), as with the
//! rule index.
//!
//! A set read from a file (`hir::Test::InFile`) is always a map, of a shape that does
//! not depend on its contents (IPv4 and IPv6 tries, the port array, a trie of integer
//! ranges), with a second buffer: slot `1 + file` of `skp_sets` says which buffer is
//! live, the program reads it once per test, and the runtime writes new contents into
//! the other one before flipping the slot (`skpc run`, docs/operations.md).
//!
//! When a test is a map (`MAP_ABOVE_*`, measured by the kernel bench, part s1 in
//! docs/performance.md: run time per message of the same test as code and as a map, 16
//! to 4096 elements): a map where the lookup is as fast as the code, else where the code
//! would cost the verifier more than about 10,000 instructions (it visits every leaf of
//! a search, about 2 to 10 per element), so that a policy with a few such sets stays well
//! inside the verifier budget. `Options::set_maps_above` overrides them all (the bench
//! and the differential tests compile one policy both ways).

use skpc_abi::{SETS_READY, SET_MEMBER};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{self, End, IntField, Net, Test};

use super::addr::{addr_words, wire_word};
use super::lir::Label;
use super::maps::MapId;
use super::{Gen, STACK_READY_KEY, STACK_SET_KEY};

// A test with more elements than these is a map lookup (unless `Options::set_maps_above`
// says otherwise). Measured (s1: ns per 64-byte message that misses, code / map):
/// IPv4 prefixes: a binary search beats the LPM trie at every size (85-104 ns against
/// 150-175 ns at 16-4096 prefixes), but it costs the verifier ~10 instructions a prefix
/// (8,474 at 1024, 42,918 at 4096).
pub const MAP_ABOVE_V4: usize = 1024;
/// IPv6 prefixes (of a set with IPv4 ones, or alone): compared one by one, about 1.3 ns
/// a prefix (93 / 114 ns at 16, 153 / 126 at 64, 504 / 136 at 256, 14,298 / 133 at 4096).
pub const MAP_ABOVE_V6: usize = 32;
/// Ports: the ARRAY lookup is inlined and as fast as the search (87-107 against 90-94 ns
/// at 16-4096); the map keeps the program small.
pub const MAP_ABOVE_PORTS: usize = 256;
/// Other integers, values only: the search beats the HASH by 50-90 ns at every size;
/// ~2.2 verifier instructions a value (8,966 at 4096).
pub const MAP_ABOVE_POINTS: usize = 4096;
/// Other integers with ranges: the search beats the LPM trie by 95-140 ns at every size;
/// ~4.3 verifier instructions a range (8,474 at 2048 by extrapolation, 17,664 at 4096).
pub const MAP_ABOVE_RANGES: usize = 2048;
/// Payload strings of one length: compared one by one (116 / 136 ns at 64 strings of 8
/// bytes, 200 / 133 at 256).
pub const MAP_ABOVE_PAYLOAD: usize = 128;
/// The longest payload slice a set map keys (the hash key is the slice itself).
const MAX_SLICE: u32 = 64;

/// IPv4 prefixes of one or two lengths (a feed of /24s, or of /24s and /32s) are a HASH
/// per length, looked up with the address masked to it: an inlined hash lookup (about
/// 50 ns) against an LPM trie walk (85-125 ns at 10k-1M prefixes, the kernel bench's
/// part s); with three lengths or more, the trie's one walk is cheaper.
pub(super) const MAX_HASHED_LENGTHS: usize = 2;

/// How the IPv4 prefixes of an address set are looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum V4Layout {
    /// No IPv4 prefixes.
    Absent,
    /// An LPM trie.
    Trie,
    /// A HASH per prefix length (the masked address as the key), in this order.
    Hashed([Option<u8>; MAX_HASHED_LENGTHS]),
}

/// How a large test is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// Address prefixes of one end: the IPv4 ones as `v4` says, an LPM trie for the IPv6
    /// ones.
    Addr {
        end: End,
        v4: V4Layout,
        v6: bool,
        /// IPv6 sockets with an IPv4-mapped address look up the IPv4 trie.
        mapped: bool,
    },
    /// A port: an ARRAY of one-byte flags indexed by the host-order port.
    Port(IntField),
    /// Values only: a HASH keyed by the value, `width` bytes as the register stores it.
    Points { field: IntField, width: u8 },
    /// Ranges: an LPM trie keyed by the big-endian value, `width` bytes.
    Ranges { field: IntField, width: u8 },
    /// `payload[offset..offset + len]`: a HASH keyed by the bytes.
    Payload { offset: u32, len: u32 },
}

/// The most keys a map of a set read from a file holds: its contents may grow while
/// the program runs, and tries and hashes allocate per key (`BPF_F_NO_PREALLOC`).
pub const FILE_SET_MAX_KEYS: u32 = 1 << 24;

/// How `test` is looked up, if it is large enough to be a map: more elements than
/// `above`, or when that is `None`, than the `MAP_ABOVE_*` of its kind. A set read from
/// a file always is.
pub(super) fn shape(test: &Test, above: Option<usize>) -> Option<Shape> {
    let over = |n: usize, kind_default: usize| n > above.unwrap_or(kind_default);
    match test {
        Test::InFile { of, .. } => file_shape(of),
        Test::Addr { end, nets, mapped } => {
            let v6_count = nets.iter().filter(|n| matches!(n, Net::V6 { .. })).count();
            if !over(nets.len(), MAP_ABOVE_V4) && !over(v6_count, MAP_ABOVE_V6) {
                return None;
            }
            let mut lengths: Vec<u8> = nets
                .iter()
                .filter_map(|n| match n {
                    Net::V4 { prefix, .. } => Some(*prefix),
                    Net::V6 { .. } => None,
                })
                .collect();
            lengths.sort_unstable();
            lengths.dedup();
            // The longest first: the common /32 of a feed decides in one lookup.
            lengths.reverse();
            let v4 = match lengths.len() {
                0 => V4Layout::Absent,
                n if n <= MAX_HASHED_LENGTHS => {
                    let mut l = [None; MAX_HASHED_LENGTHS];
                    for (slot, len) in l.iter_mut().zip(&lengths) {
                        *slot = Some(*len);
                    }
                    V4Layout::Hashed(l)
                }
                _ => V4Layout::Trie,
            };
            Some(Shape::Addr {
                end: *end,
                v4,
                v6: v6_count > 0,
                mapped: *mapped && v4 != V4Layout::Absent,
            })
        }
        Test::Int { field, ranges } => match field {
            IntField::LocalPort | IntField::RemotePort => {
                over(ranges.len(), MAP_ABOVE_PORTS).then_some(Shape::Port(*field))
            }
            // A byte or the family never has that many ranges.
            IntField::PayloadByte(_) | IntField::Family => None,
            _ => {
                let width = if field.max_value() > u32::MAX as u64 {
                    8
                } else {
                    4
                };
                let field = *field;
                if ranges.iter().all(|(lo, hi)| lo == hi) {
                    over(ranges.len(), MAP_ABOVE_POINTS).then_some(Shape::Points { field, width })
                } else {
                    over(ranges.len(), MAP_ABOVE_RANGES).then_some(Shape::Ranges { field, width })
                }
            }
        },
        Test::Payload { offset, alts } if over(alts.len(), MAP_ABOVE_PAYLOAD) => {
            let len = alts.first().map_or(0, |a| a.len() as u32);
            (len > 0 && len <= MAX_SLICE).then_some(Shape::Payload {
                offset: *offset,
                len,
            })
        }
        _ => None,
    }
}

/// The shape of a set read from a file: never from its current elements, which the
/// runtime may replace (the program must fit any contents).
fn file_shape(of: &Test) -> Option<Shape> {
    match of {
        Test::Addr { end, mapped, .. } => Some(Shape::Addr {
            end: *end,
            v4: V4Layout::Trie,
            v6: true,
            mapped: *mapped,
        }),
        Test::Int { field, .. } => match field {
            IntField::LocalPort | IntField::RemotePort => Some(Shape::Port(*field)),
            IntField::PayloadByte(_) | IntField::Family => None,
            _ => Some(Shape::Ranges {
                field: *field,
                width: if field.max_value() > u32::MAX as u64 {
                    8
                } else {
                    4
                },
            }),
        },
        _ => None,
    }
}

/// One map of a set: its definition and its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SetMap {
    pub map_type: u32,
    pub key_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// The keys, `key_size` bytes each, sorted and distinct.
    pub keys: Vec<u8>,
}

/// The maps of one set: `[IPv4, second IPv4, IPv6]` for addresses (the IPv4 trie or the
/// hashes of `V4Layout::Hashed`, in its order), `[the map, None, None]` otherwise.
pub(super) type Parts<T> = [Option<T>; 3];

/// A large test of the policy and its maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PlannedSet {
    pub test: Test,
    pub shape: Shape,
    /// The set read from a file it is (`hir::Policy::file_sets`): its maps have a second
    /// buffer, and slot `1 + file` of `skp_sets` says which one is live.
    pub file: Option<usize>,
    pub maps: Parts<SetMap>,
}

/// The large tests of a policy, each once (a test that several rules share, such as a
/// declared set, is one set).
pub(super) fn plan(policy: &hir::Policy, above: Option<usize>) -> Vec<PlannedSet> {
    let mut sets: Vec<PlannedSet> = Vec::new();
    for rule in &policy.rules {
        for test in rule.cond.tests() {
            let Some(shape) = shape(test, above) else {
                continue;
            };
            if sets.iter().any(|s| s.shape == shape && &s.test == test) {
                continue;
            }
            let (file, elements) = match test {
                Test::InFile { set, of } => (Some(*set), &**of),
                _ => (None, test),
            };
            let mut maps = maps_of(elements, shape);
            if file.is_some() {
                for m in maps.iter_mut().flatten() {
                    if m.map_type != BPF_MAP_TYPE_ARRAY {
                        m.max_entries = FILE_SET_MAX_KEYS;
                        m.flags = BPF_F_NO_PREALLOC;
                    }
                }
            }
            sets.push(PlannedSet {
                test: test.clone(),
                shape,
                file,
                maps,
            });
        }
    }
    sets
}

fn maps_of(test: &Test, shape: Shape) -> Parts<SetMap> {
    match (test, shape) {
        (
            Test::Addr { nets, .. },
            Shape::Addr {
                v4: layout,
                v6: want6,
                ..
            },
        ) => {
            let mut v6 = Vec::new();
            for n in nets {
                if let Net::V6 { addr, prefix } = *n {
                    v6.push(lpm_key(prefix, &addr.to_be_bytes()));
                }
            }
            let v4_of_len = |len: u8| -> Vec<Vec<u8>> {
                nets.iter()
                    .filter_map(|n| match *n {
                        Net::V4 { addr, prefix } if prefix == len => {
                            Some(addr.to_be_bytes().to_vec())
                        }
                        _ => None,
                    })
                    .collect()
            };
            let v6 = trie(v6, 16, want6);
            match layout {
                V4Layout::Absent => [None, None, v6],
                V4Layout::Trie => {
                    let v4 = nets
                        .iter()
                        .filter_map(|n| match *n {
                            Net::V4 { addr, prefix } => Some(lpm_key(prefix, &addr.to_be_bytes())),
                            Net::V6 { .. } => None,
                        })
                        .collect();
                    [trie(v4, 4, true), None, v6]
                }
                V4Layout::Hashed([a, b]) => [
                    a.and_then(|l| hash(v4_of_len(l), 4)),
                    b.and_then(|l| hash(v4_of_len(l), 4)),
                    v6,
                ],
            }
        }
        (Test::Int { ranges, .. }, Shape::Port(_)) => {
            let mut keys = Vec::new();
            for &(lo, hi) in ranges {
                for p in lo..=hi.min(u16::MAX as u64) {
                    keys.push((p as u32).to_ne_bytes().to_vec());
                }
            }
            [
                Some(SetMap {
                    map_type: BPF_MAP_TYPE_ARRAY,
                    key_size: 4,
                    max_entries: u16::MAX as u32 + 1,
                    flags: 0,
                    keys: keys.concat(),
                }),
                None,
                None,
            ]
        }
        (Test::Int { ranges, .. }, Shape::Points { width, .. }) => {
            let keys: Vec<Vec<u8>> = ranges
                .iter()
                .map(|&(v, _)| v.to_ne_bytes()[..width as usize].to_vec())
                .collect();
            [hash(keys, width as u32), None, None]
        }
        (Test::Int { ranges, .. }, Shape::Ranges { width, .. }) => {
            let bits = width as u32 * 8;
            let mut keys = Vec::new();
            for &(lo, hi) in ranges {
                for (value, prefix) in range_prefixes(lo, hi, bits) {
                    let be = value.to_be_bytes();
                    keys.push(lpm_key(prefix, &be[8 - width as usize..]));
                }
            }
            [trie(keys, width as u32, true), None, None]
        }
        (Test::Payload { alts, .. }, Shape::Payload { len, .. }) => {
            [hash(alts.clone(), len), None, None]
        }
        _ => [None, None, None],
    }
}

/// An LPM trie key: the prefix length (host order, as `struct bpf_lpm_trie_key_u8`
/// has it), then the data bytes in network order.
fn lpm_key(prefix: u8, data: &[u8]) -> Vec<u8> {
    let mut k = (prefix as u32).to_ne_bytes().to_vec();
    k.extend_from_slice(data);
    k
}

/// An LPM trie of `keys`; none when empty unless `always` (a file set's trie exists
/// for contents to come).
fn trie(mut keys: Vec<Vec<u8>>, data_len: u32, always: bool) -> Option<SetMap> {
    if keys.is_empty() && !always {
        return None;
    }
    keys.sort_unstable();
    keys.dedup();
    Some(SetMap {
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: 4 + data_len,
        max_entries: keys.len().max(1) as u32,
        // The kernel refuses a trie that is not allocated on demand.
        flags: BPF_F_NO_PREALLOC,
        keys: keys.concat(),
    })
}

fn hash(mut keys: Vec<Vec<u8>>, key_size: u32) -> Option<SetMap> {
    keys.sort_unstable();
    keys.dedup();
    Some(SetMap {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        max_entries: keys.len().max(1) as u32,
        flags: 0,
        keys: keys.concat(),
    })
}

/// The prefixes `(value, length)` over `bits`-bit values whose union is `lo..=hi`: the
/// largest aligned block at `lo` that stays within the range, again and again (at most
/// `2 * bits` of them).
fn range_prefixes(lo: u64, hi: u64, bits: u32) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut at = lo as u128;
    let end = hi as u128 + 1;
    while at < end {
        // The largest power of two that `at` is aligned to and that fits before `end`.
        let mut size: u128 = if at == 0 {
            1u128 << bits
        } else {
            1u128 << at.trailing_zeros().min(bits)
        };
        while at + size > end {
            size >>= 1;
        }
        out.push((at as u64, (bits - size.trailing_zeros()) as u8));
        at += size;
    }
    out
}

/// The keys of every set map, for `Lowered::sets`.
pub(super) fn keys(
    sets: &[PlannedSet],
    ids: &[SetIds],
    specs: &[super::MapSpec],
) -> Vec<super::SetKeys> {
    let mut out = Vec::new();
    for (set, ids) in sets.iter().zip(ids) {
        for (part, (map, id)) in set.maps.iter().zip(ids.buffers[0]).enumerate() {
            let (Some(map), Some(id)) = (map, id) else {
                continue;
            };
            let name = specs
                .get(id.number() as usize)
                .map_or_else(String::new, |s| s.name());
            out.push(super::SetKeys {
                map: id,
                file: ids.slot.zip(ids.buffers[1][part]),
                keys: map.keys.clone(),
                describe: format!(
                    "{name}: {} {} keys of {} bytes for `{}`",
                    map.keys.len() / map.key_size.max(1) as usize,
                    map_type_name(map.map_type),
                    map.key_size,
                    describe(&set.test)
                ),
            });
        }
    }
    out
}

fn map_type_name(t: u32) -> &'static str {
    match t {
        BPF_MAP_TYPE_LPM_TRIE => "LPM_TRIE",
        BPF_MAP_TYPE_HASH => "HASH",
        _ => "ARRAY",
    }
}

/// What a large test reads, for listings.
fn describe(test: &Test) -> String {
    match test {
        Test::Addr { end, nets, .. } => {
            let end = if *end == End::Local {
                "local"
            } else {
                "remote"
            };
            format!("{end}.ip in {} prefixes", nets.len())
        }
        Test::Int { field, ranges } => format!("{} in {} ranges", field.name(), ranges.len()),
        Test::InFile { of, .. } => format!("{} (read from a file)", describe(of)),
        Test::Payload { offset, alts } => {
            let len = alts.first().map_or(0, Vec::len);
            format!(
                "payload[{offset}..{}] in {} strings",
                *offset as usize + len,
                alts.len()
            )
        }
        _ => String::new(),
    }
}

/// The map ids of a planned set: per buffer, in the order of `PlannedSet::maps`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SetIds {
    /// `[buffer 0, buffer 1]`; buffer 1 only for a set read from a file.
    pub buffers: [Parts<MapId>; 2],
    /// The slot of `skp_sets` that says which buffer is live (a set read from a file).
    pub slot: Option<u32>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_the_fewest_aligned_prefixes() {
        assert_eq!(range_prefixes(0, u32::MAX as u64, 32), vec![(0, 0)]);
        assert_eq!(range_prefixes(5, 5, 32), vec![(5, 32)]);
        // 1..=6: 1/32, 2/31 (2-3), 4/31 (4-5), 6/32.
        assert_eq!(
            range_prefixes(1, 6, 32),
            vec![(1, 32), (2, 31), (4, 31), (6, 32)]
        );
        assert_eq!(range_prefixes(1024, 2047, 16), vec![(1024, 6)]);
        assert_eq!(range_prefixes(0, u64::MAX, 64), vec![(0, 0)]);
        // The worst case stays within two prefixes per bit.
        let worst = range_prefixes(1, u32::MAX as u64 - 1, 32);
        assert!(worst.len() <= 64, "{}", worst.len());
        // Every value in the range is covered once, none outside.
        for (lo, hi) in [(3u64, 100u64), (7, 7), (1000, 70000)] {
            let p = range_prefixes(lo, hi, 32);
            let covers = |v: u64| {
                p.iter()
                    .filter(|&&(a, l)| {
                        let m = hir::mask32(l) as u64;
                        v & m == a
                    })
                    .count()
            };
            for v in lo.saturating_sub(3)..=hi + 3 {
                assert_eq!(covers(v), usize::from((lo..=hi).contains(&v)), "{v}");
            }
        }
    }

    #[test]
    fn only_tests_past_the_threshold_of_their_kind_are_maps() {
        let v4 = |n: usize| -> Vec<Net> {
            (0..n)
                .map(|i| Net::V4 {
                    addr: 0x0a00_0000 | ((i as u32) << 8),
                    prefix: 24,
                })
                .collect()
        };
        let v6 = |n: usize| -> Vec<Net> {
            (0..n)
                .map(|i| Net::V6 {
                    addr: (0xfd00u128 << 112) | ((i as u128) << 64),
                    prefix: 64,
                })
                .collect()
        };
        let addr = |nets: Vec<Net>| Test::Addr {
            end: End::Remote,
            nets,
            mapped: true,
        };
        let is_map = |t: &Test| shape(t, None).is_some();
        assert!(!is_map(&addr(v4(MAP_ABOVE_V4))));
        assert_eq!(
            shape(&addr(v4(MAP_ABOVE_V4 + 1)), None),
            Some(Shape::Addr {
                end: End::Remote,
                v4: V4Layout::Hashed([Some(24), None]),
                v6: false,
                mapped: true
            })
        );
        // The IPv6 prefixes of a set count on their own: a few IPv4 ones do not matter.
        assert!(!is_map(&addr(v6(MAP_ABOVE_V6))));
        let mixed = [v4(3), v6(MAP_ABOVE_V6 + 1)].concat();
        assert_eq!(
            shape(&addr(mixed), None),
            Some(Shape::Addr {
                end: End::Remote,
                v4: V4Layout::Hashed([Some(24), None]),
                v6: true,
                mapped: true
            })
        );
        // `n` elements: values 3 apart, or ranges of two values.
        let ints = |field, n: usize, width: u64| Test::Int {
            field,
            ranges: (0..n as u64).map(|i| (i * 3, i * 3 + width)).collect(),
        };
        let port = IntField::RemotePort;
        assert!(!is_map(&ints(port, MAP_ABOVE_PORTS, 0)));
        assert_eq!(
            shape(&ints(port, MAP_ABOVE_PORTS + 1, 0), None),
            Some(Shape::Port(port))
        );
        assert!(!is_map(&ints(IntField::Uid, MAP_ABOVE_POINTS, 0)));
        assert_eq!(
            shape(&ints(IntField::Uid, MAP_ABOVE_POINTS + 1, 0), None),
            Some(Shape::Points {
                field: IntField::Uid,
                width: 4
            })
        );
        assert!(!is_map(&ints(IntField::Cgroup, MAP_ABOVE_RANGES, 1)));
        assert_eq!(
            shape(&ints(IntField::Cgroup, MAP_ABOVE_RANGES + 1, 1), None),
            Some(Shape::Ranges {
                field: IntField::Cgroup,
                width: 8
            })
        );
        let payload = |n: usize| Test::Payload {
            offset: 2,
            alts: (0..n as u32).map(|i| i.to_be_bytes().to_vec()).collect(),
        };
        assert!(!is_map(&payload(MAP_ABOVE_PAYLOAD)));
        assert_eq!(
            shape(&payload(MAP_ABOVE_PAYLOAD + 1), None),
            Some(Shape::Payload { offset: 2, len: 4 })
        );
        // An explicit threshold holds for every kind.
        assert!(!is_map(&ints(IntField::Uid, 2, 0)));
        assert!(shape(&ints(IntField::Uid, 2, 0), Some(1)).is_some());
        assert!(shape(&addr(v4(5000)), Some(usize::MAX)).is_none());
    }

    #[test]
    fn ipv4_prefixes_of_one_or_two_lengths_are_a_hash_per_length_longest_first() {
        let nets: Vec<Net> = (0..300u32)
            .map(|i| Net::V4 {
                addr: 0x0a00_0000 | (i << 8),
                prefix: if i % 3 == 0 { 32 } else { 24 },
            })
            .collect();
        let test = Test::Addr {
            end: End::Local,
            nets,
            mapped: false,
        };
        let s = shape(&test, Some(0)).expect("a map");
        let Shape::Addr { v4, .. } = s else {
            panic!("{s:?}")
        };
        assert_eq!(v4, V4Layout::Hashed([Some(32), Some(24)]));
        let [Some(l32), Some(l24), None] = maps_of(&test, s) else {
            panic!("two hashes")
        };
        assert_eq!(
            (l32.map_type, l32.key_size, l32.max_entries),
            (BPF_MAP_TYPE_HASH, 4, 100)
        );
        assert_eq!(l24.max_entries, 200);
        // 10.0.1.0/24: the address in network order, the key of the /24 hash.
        assert!(l24.keys.chunks(4).any(|k| k == [10, 0, 1, 0]));
    }

    #[test]
    fn an_address_set_of_three_lengths_is_one_trie_key_per_prefix() {
        let test = Test::Addr {
            end: End::Remote,
            nets: (0..300u32)
                .map(|i| Net::V4 {
                    addr: 0x0a00_0000 | (i << 8),
                    prefix: 24,
                })
                .chain([
                    Net::V4 {
                        addr: 0x0b00_0000,
                        prefix: 8,
                    },
                    Net::V4 {
                        addr: 0x0c00_0000,
                        prefix: 16,
                    },
                ])
                .chain([Net::V6 {
                    addr: 0xfd00u128 << 112,
                    prefix: 8,
                }])
                .collect(),
            mapped: false,
        };
        let s = shape(&test, Some(0)).expect("a map");
        let [Some(v4), None, Some(v6)] = maps_of(&test, s) else {
            panic!("two tries")
        };
        assert_eq!((v4.key_size, v4.max_entries), (8, 302));
        assert_eq!(v4.flags, BPF_F_NO_PREALLOC);
        // 10.0.1.0/24: length 24, then the address in network order.
        let mut want = 24u32.to_ne_bytes().to_vec();
        want.extend([10, 0, 1, 0]);
        assert!(v4.keys.chunks(8).any(|k| k == want.as_slice()));
        assert_eq!((v6.key_size, v6.max_entries), (20, 1));
        assert_eq!(&v6.keys[4..6], &[0xfd, 0]);
    }
}
