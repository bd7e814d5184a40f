//! Large sets as maps. A membership test with more than `MAP_ABOVE_*` elements (address
//! prefixes, integer ranges, payload strings) is one map lookup instead of a search in
//! code, so that the program has the same size whatever the size of the set: a
//! 1,000,000-prefix blocklist is a few dozen instructions for the verifier, and its
//! elements are data the runtime writes into the map. The structure follows the kind of
//! element:
//! - IPv4 prefixes, whichever takes the fewest lookups, at most two: a HASH per length,
//!   keyed by the address masked to it (`V4Layout::Hashed`: one length, or two a byte
//!   band apart); a *block hash* per byte band (`V4Layout::Blocks`: keyed by the address
//!   masked to 0, 8, 16 or 24 bits, its value a 256-bit bitmap over the next byte, so one
//!   lookup and a bit test hold every length from /24 to /32, say a feed of /24s with
//!   single /32s); else an LPM_TRIE (key: prefix length, then the address bytes), the
//!   kernel's longest-prefix match. IPv6 prefixes: an LPM_TRIE. An IPv4-mapped IPv6
//!   address (when the test takes them) looks up the IPv4 maps with its last word;
//! - ports: an ARRAY of 65,536 one-byte flags, which the verifier inlines to a load;
//! - other integers: a HASH of the values when every element is one value (also
//!   inlined), else an LPM_TRIE over the big-endian value, each range cut into at most
//!   two prefixes per bit of width;
//! - payload slices (`payload[o..o+n] in {...}`, `payload starts with {...}` with
//!   strings of one length): a HASH keyed by the `n` bytes, looked up with a pointer
//!   into the message itself (no copy);
//! - a protocol field equal to one of its strings (`http.host in {...}`): a HASH keyed
//!   by the value's length (u32) and its first `L` bytes, zero-padded and in the field's
//!   case, `L` the longest string rounded up to 8; the program copies the value onto
//!   the stack (`Gen::text_in_map`). Strings longer than `TEXT_KEY_MAX` (the stack the
//!   key may take) stay code, compared after the lookup for a value that long;
//! - `comm in {...}`: a HASH keyed by the 16-byte NUL-padded name, the buffer
//!   `bpf_get_current_comm` fills.
//!
//! Every value is the one byte `skpc_abi::SET_MEMBER`, but a block hash's bitmap. The
//! keys (and a block hash's values, each after its key) travel in the object's
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

use crate::bpf::uapi::*;
use crate::fields::{Case, Text};
use crate::hir::{self, End, IntField, Net, Test, TextOp};

use super::maps::MapId;

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
/// Protocol field strings (`http.host in {...}`, equality): compared in code, each costs
/// a compare of its length and, when that matches, of its words; as a map, the copy of
/// the value onto the stack (about 30 instructions a byte of the key) and a HASH lookup
/// (`http.host` of 6-28 bytes, 64-byte requests: 143 / 170 ns at 64 strings, 218 / 177
/// at 256, 643 / 186 at 1024). Code also costs the verifier ~120 instructions a string
/// on top of the HTTP parser's ~223k (255k at 256, 302k at 1024; refused at 4096).
pub const MAP_ABOVE_TEXT: usize = 128;
/// Process names (`comm in {...}`): compared in code 8 bytes at a time (111 / 117 ns
/// at 64 names, 199 / 117 at 256; 14 verifier instructions a name).
pub const MAP_ABOVE_COMM: usize = 64;
/// The longest protocol field value a set map keys: the key is copied onto the stack
/// (`STACK_TEXT_KEY`, 4 + this many bytes); longer strings of the set stay code.
pub(super) const TEXT_KEY_MAX: u32 = 152;
/// The size of the buffer `bpf_get_current_comm` fills (`TASK_COMM_LEN`).
pub(super) const COMM_KEY: u32 = super::COMM_BYTES as u32;

/// IPv4 prefixes are looked up in at most this many hashes (a hash per length or a block
/// hash per byte band): an inlined hash lookup (about 50 ns) against an LPM trie walk
/// (85-125 ns at 10k-1M prefixes, the kernel bench's part s); with more, the trie's one
/// walk is cheaper.
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
    /// Block hashes, in this order: the hash of width `k` (0, 8, 16 or 24) is keyed by
    /// the address masked to `k` bits, and its value is a 256-bit bitmap over the next
    /// byte, so that it holds the prefixes of every length from `k` to `k + 8` (a feed
    /// of /24s and /32s is one lookup and one bit test).
    Blocks([Option<u8>; MAX_HASHED_LENGTHS]),
}

/// The bytes of a block hash's value: one bit for each value of the byte after the key.
pub(super) const BLOCK_BYTES: u32 = 32;

/// The widths of the fewest block hashes (`V4Layout::Blocks`) that hold prefixes of
/// `lengths` (ascending): each covers the lengths `k..=k + 8`, so the smallest length
/// not yet covered starts a block as wide as it can (at most 24).
fn block_cover(lengths: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for &l in lengths {
        if out.last().is_some_and(|&k| l <= k + 8) {
            continue;
        }
        out.push((l / 8 * 8).min(24));
    }
    out
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
    /// A protocol field and a string: `op` `Eq`, a HASH keyed by the value's length (u32)
    /// and its first `key_len` bytes (a multiple of 8), zero-padded, in the field's case;
    /// `StartsWith` (`EndsWith`), an LPM trie keyed by `8 * key_len` and the value's
    /// first (last, reversed) `key_len` bytes, whose keys are the strings (reversed) with
    /// their length in bits as the prefix: the trie finds the strings the value starts
    /// (ends) with in one lookup, a domain-suffix blocklist included.
    Text {
        field: Text,
        key_len: u32,
        op: TextOp,
    },
    /// The protocol-field rules of an indexed block (`text_index::TextGroup`): the map
    /// of `Text`'s shape, whose value is the first rule (a u32 counter slot) that a
    /// message with the key matches. Never the shape of a test (`shape`); `group` tells
    /// the groups apart.
    TextRules {
        field: Text,
        key_len: u32,
        op: TextOp,
        group: u32,
    },
    /// `comm` equal to a name: a HASH keyed by the NUL-padded 16-byte name; with
    /// `prefix` (`comm starts with`), an LPM trie of the names with their length in bits
    /// as the prefix, looked up with the whole 16 bytes (a name longer than the
    /// process's meets a NUL byte there and misses, as it should).
    Comm { prefix: bool },
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
            let mut blocks = block_cover(&lengths);
            // The longest first: the common /32 of a feed decides in one lookup.
            lengths.reverse();
            blocks.reverse();
            let first_two = |v: &[u8]| {
                let mut l = [None; MAX_HASHED_LENGTHS];
                for (slot, len) in l.iter_mut().zip(v) {
                    *slot = Some(*len);
                }
                l
            };
            // The fewest lookups; a hash per length on a tie (a one-byte value, no bit
            // test); the trie's one walk when both would take more than two.
            let v4 = if lengths.is_empty() {
                V4Layout::Absent
            } else if lengths.len() <= MAX_HASHED_LENGTHS && lengths.len() <= blocks.len() {
                V4Layout::Hashed(first_two(&lengths))
            } else if blocks.len() <= MAX_HASHED_LENGTHS {
                V4Layout::Blocks(first_two(&blocks))
            } else {
                V4Layout::Trie
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
        Test::Text { field, op, alts } => {
            let keyed = alts.iter().filter(|a| text_keyed(*op, a));
            if !over(keyed.clone().count(), MAP_ABOVE_TEXT) {
                return None;
            }
            let longest = keyed.map(|a| a.len() as u32).max()?;
            Some(Shape::Text {
                field: *field,
                key_len: longest.div_ceil(8).max(1) * 8,
                op: *op,
            })
        }
        Test::Comm { alts, prefix } if over(alts.len(), MAP_ABOVE_COMM) => {
            // A NUL inside a prefix would match the padding of a shorter name.
            (!*prefix || alts.iter().all(|a| !a.contains(&0)))
                .then_some(Shape::Comm { prefix: *prefix })
        }
        _ => None,
    }
}

/// Whether a protocol field's set map keys string `a`: one of at most `TEXT_KEY_MAX`
/// bytes, and for a trie (`starts with`, `ends with`) without a NUL byte, which would
/// match the zero padding past a shorter value.
pub(super) fn text_keyed(op: TextOp, a: &[u8]) -> bool {
    a.len() as u32 <= TEXT_KEY_MAX && (op == TextOp::Eq || !a.contains(&0))
}

/// The strings of a protocol field's set that its map does not key (`text_keyed`):
/// compared in code.
pub(super) fn long_strings(test: &Test, shape: Shape) -> Vec<Vec<u8>> {
    match (test, shape) {
        (Test::Text { alts, op, .. }, Shape::Text { key_len, .. }) => alts
            .iter()
            .filter(|a| a.len() as u32 > key_len || !text_keyed(*op, a))
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// The key of string `s` in the set map of protocol field `field`: its length, then
/// its bytes in the field's case (as the program folds the message's), zero-padded to
/// `key_len`.
pub(super) fn text_key(field: Text, s: &[u8], key_len: u32) -> Vec<u8> {
    let mut k = (s.len() as u32).to_ne_bytes().to_vec();
    k.extend(match field.case() {
        Case::Exact => s.to_vec(),
        Case::Upper => s.to_ascii_uppercase(),
        Case::Lower => s.to_ascii_lowercase(),
    });
    k.resize(4 + key_len as usize, 0);
    k
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
    /// 1 (every value `SET_MEMBER`), or `BLOCK_BYTES` for a block hash, whose entries
    /// carry their values.
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// The keys, `key_size` bytes each, sorted and distinct; when `value_size` is not 1,
    /// each followed by its value (`skpc_abi::push_set_value`).
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
/// `indexed`: whether a rule is in the rule index as data (`Index::indexed`): its tests
/// need no map.
pub(super) fn plan(
    policy: &hir::Policy,
    above: Option<usize>,
    indexed: impl Fn(usize) -> bool,
) -> Vec<PlannedSet> {
    let mut sets: Vec<PlannedSet> = Vec::new();
    for (r, rule) in policy.rules.iter().enumerate() {
        if indexed(r) {
            continue;
        }
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
                V4Layout::Blocks(widths) => {
                    let v4: Vec<(u32, u8)> = nets
                        .iter()
                        .filter_map(|n| match *n {
                            Net::V4 { addr, prefix } => Some((addr, prefix)),
                            Net::V6 { .. } => None,
                        })
                        .collect();
                    let [a, b] = block_hashes(&v4, widths);
                    [a, b, v6]
                }
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
                    value_size: 1,
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
        (
            Test::Text { field, alts, .. },
            Shape::Text {
                key_len,
                op: TextOp::Eq,
                ..
            },
        ) => {
            let keys = alts
                .iter()
                .filter(|a| a.len() as u32 <= key_len)
                .map(|a| text_key(*field, a, key_len))
                .collect();
            [hash(keys, 4 + key_len), None, None]
        }
        (Test::Text { field, alts, .. }, Shape::Text { key_len, op, .. }) => {
            let keys = alts
                .iter()
                .filter(|a| a.len() as u32 <= key_len && text_keyed(op, a))
                .map(|a| {
                    let mut k = text_key(*field, a, key_len);
                    if op == TextOp::EndsWith {
                        k[4..4 + a.len()].reverse();
                    }
                    k[..4].copy_from_slice(&(8 * a.len() as u32).to_ne_bytes());
                    k
                })
                .collect();
            [trie(keys, key_len, true), None, None]
        }
        (Test::Comm { alts, .. }, Shape::Comm { prefix }) => {
            let keys = alts
                .iter()
                .filter(|a| a.len() < COMM_KEY as usize)
                .map(|a| {
                    let mut k = a.clone();
                    k.resize(COMM_KEY as usize, 0);
                    if prefix {
                        k.splice(0..0, (8 * a.len() as u32).to_ne_bytes());
                    }
                    k
                })
                .collect();
            if prefix {
                [trie(keys, COMM_KEY, true), None, None]
            } else {
                [hash(keys, COMM_KEY), None, None]
            }
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
        value_size: 1,
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
        value_size: 1,
        max_entries: keys.len().max(1) as u32,
        flags: 0,
        keys: keys.concat(),
    })
}

/// The block hashes of `V4Layout::Blocks` for the IPv4 prefixes `(address, length)`:
/// each prefix goes into the widest block `k` with `k <= length <= k + 8` and sets the
/// `2^(k + 8 - length)` bits of the byte values it covers in the bitmap of its key.
fn block_hashes(
    prefixes: &[(u32, u8)],
    widths: [Option<u8>; MAX_HASHED_LENGTHS],
) -> [Option<SetMap>; 2] {
    let mut blocks: [std::collections::BTreeMap<u32, [u8; BLOCK_BYTES as usize]>; 2] =
        Default::default();
    for &(addr, len) in prefixes {
        let Some((slot, k)) = widths
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|k| (i, k)))
            .filter(|&(_, k)| k <= len && len <= k + 8)
            .max_by_key(|&(_, k)| k)
        else {
            continue;
        };
        let key = addr & hir::mask32(k);
        let byte = (addr >> (24 - k as u32)) & 0xff;
        let span = 1u32 << (k as u32 + 8 - len as u32);
        let bits = blocks[slot].entry(key).or_insert([0; BLOCK_BYTES as usize]);
        for b in (byte & !(span - 1))..(byte & !(span - 1)) + span {
            bits[(b >> 3) as usize] |= 1 << (b & 7);
        }
    }
    blocks.map(|entries| {
        (!entries.is_empty()).then(|| SetMap {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: BLOCK_BYTES,
            max_entries: entries.len() as u32,
            flags: 0,
            keys: {
                let mut section = Vec::with_capacity(entries.len() * 5);
                for (key, bits) in &entries {
                    section.extend_from_slice(&key.to_be_bytes());
                    skpc_abi::push_set_value(&mut section, bits);
                }
                section
            },
        })
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
                describe: if let Shape::TextRules { field, op, .. } = set.shape {
                    format!(
                        "{name}: {} {} keys of {} bytes to the first rule of each, for the indexed `{} {}` rules",
                        entry_count(map),
                        map_type_name(map.map_type),
                        map.key_size,
                        field.name(),
                        op_word(op, "==")
                    )
                } else {
                    format!(
                    "{name}: {} {} keys of {} bytes{} for `{}`",
                    entry_count(map),
                    map_type_name(map.map_type),
                    map.key_size,
                    if map.value_size == 1 {
                        String::new()
                    } else {
                        format!(" to {}-byte bitmaps", map.value_size)
                    },
                    describe(&set.test)
                )
                },
            });
        }
    }
    out
}

/// The entries of a set map as built: its keys (a block hash, whose entries carry their
/// values, is never empty and holds exactly them).
fn entry_count(map: &SetMap) -> usize {
    if map.value_size == 1 {
        map.keys.len() / map.key_size.max(1) as usize
    } else {
        map.max_entries as usize
    }
}

fn map_type_name(t: u32) -> &'static str {
    match t {
        BPF_MAP_TYPE_LPM_TRIE => "LPM_TRIE",
        BPF_MAP_TYPE_HASH => "HASH",
        _ => "ARRAY",
    }
}

/// How a listing says `op`, with `eq` for `TextOp::Eq`.
pub(super) fn op_word(op: TextOp, eq: &'static str) -> &'static str {
    match op {
        TextOp::Eq => eq,
        TextOp::StartsWith => "starts with",
        TextOp::EndsWith => "ends with",
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
        Test::Text { field, op, alts } => format!(
            "{} {} {} strings",
            field.name(),
            op_word(*op, "in"),
            alts.len()
        ),
        Test::Comm { alts, prefix } => format!(
            "comm {} {} names",
            if *prefix { "starts with" } else { "in" },
            alts.len()
        ),
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
    fn protocol_field_strings_are_a_hash_of_length_and_bytes_in_the_fields_case() {
        let hosts = |n: usize, extra: &[Vec<u8>]| Test::Text {
            field: Text::HttpHost,
            op: TextOp::Eq,
            alts: (0..n)
                .map(|i| format!("h{i}.example.com").into_bytes())
                .chain(extra.iter().cloned())
                .collect(),
        };
        assert!(shape(&hosts(MAP_ABOVE_TEXT, &[]), None).is_none());
        // A string longer than a key holds does not count, and stays code.
        let long = vec![b'x'; TEXT_KEY_MAX as usize + 1];
        assert!(shape(&hosts(MAP_ABOVE_TEXT, std::slice::from_ref(&long)), None).is_none());
        let test = hosts(MAP_ABOVE_TEXT + 1, std::slice::from_ref(&long));
        let s = shape(&test, None).expect("a map");
        // The longest keyed host, `h128.example.com`, is 16 bytes.
        assert_eq!(
            s,
            Shape::Text {
                field: Text::HttpHost,
                key_len: 16,
                op: TextOp::Eq
            }
        );
        assert_eq!(long_strings(&test, s), vec![long]);
        let [Some(m), None, None] = maps_of(&test, s) else {
            panic!("one hash")
        };
        assert_eq!(
            (m.map_type, m.key_size, m.max_entries),
            (BPF_MAP_TYPE_HASH, 20, MAP_ABOVE_TEXT as u32 + 1)
        );
        let mut want = 14u32.to_ne_bytes().to_vec();
        want.extend(b"h0.example.com\0\0");
        assert!(m.keys.chunks(20).any(|k| k == want.as_slice()));
        // Keys are in the field's case, as the program folds the message's bytes.
        assert_eq!(&text_key(Text::HttpHost, b"Ab.C", 8)[4..], b"ab.c\0\0\0\0");
        assert_eq!(
            &text_key(Text::RedisCommand, b"get", 8)[4..],
            b"GET\0\0\0\0\0"
        );
        assert_eq!(&text_key(Text::RedisKey, b"Ab", 8)[..6], b"\x02\0\0\0Ab");
    }

    #[test]
    fn suffixes_and_prefixes_of_a_field_are_a_trie_of_the_strings_bits() {
        let sni = |op, extra: &[&[u8]]| Test::Text {
            field: Text::TlsSni,
            op,
            alts: [&b".Evil.example"[..], b"ads.example"]
                .iter()
                .chain(extra)
                .map(|s| s.to_vec())
                .collect(),
        };
        let test = sni(TextOp::EndsWith, &[b"x\0y"]);
        let s = shape(&test, Some(0)).expect("a map");
        assert_eq!(
            s,
            Shape::Text {
                field: Text::TlsSni,
                key_len: 16,
                op: TextOp::EndsWith
            }
        );
        // A NUL would match a shorter value's padding: that string stays code.
        assert_eq!(long_strings(&test, s), vec![b"x\0y".to_vec()]);
        let [Some(m), None, None] = maps_of(&test, s) else {
            panic!("one trie")
        };
        assert_eq!((m.map_type, m.key_size), (BPF_MAP_TYPE_LPM_TRIE, 20));
        // 13 bytes, 104 bits, reversed and lower-cased (server names fold to lower).
        let mut want = 104u32.to_ne_bytes().to_vec();
        want.extend(b"elpmaxe.live.\0\0\0");
        assert!(
            m.keys.chunks(20).any(|k| k == want.as_slice()),
            "{:?}",
            m.keys
        );
        let starts = sni(TextOp::StartsWith, &[]);
        let s = shape(&starts, Some(0)).expect("a map");
        let [Some(m), None, None] = maps_of(&starts, s) else {
            panic!("one trie")
        };
        let mut want = 88u32.to_ne_bytes().to_vec();
        want.extend(b"ads.example\0\0\0\0\0");
        assert!(m.keys.chunks(20).any(|k| k == want.as_slice()));
    }

    #[test]
    fn comm_names_are_a_hash_of_the_nul_padded_16_bytes() {
        let comm = |n: usize, prefix: bool| Test::Comm {
            alts: (0..n).map(|i| format!("proc{i}").into_bytes()).collect(),
            prefix,
        };
        assert!(shape(&comm(MAP_ABOVE_COMM, false), None).is_none());
        let test = comm(MAP_ABOVE_COMM + 1, false);
        assert_eq!(shape(&test, None), Some(Shape::Comm { prefix: false }));
        let [Some(m), None, None] = maps_of(&test, Shape::Comm { prefix: false }) else {
            panic!("one hash")
        };
        assert_eq!((m.map_type, m.key_size), (BPF_MAP_TYPE_HASH, 16));
        assert!(m
            .keys
            .chunks(16)
            .any(|k| k == b"proc7\0\0\0\0\0\0\0\0\0\0\0"));
        // `comm starts with`: a trie of the names' bits.
        let prefixes = comm(MAP_ABOVE_COMM + 1, true);
        let s = shape(&prefixes, None).expect("a map");
        assert_eq!(s, Shape::Comm { prefix: true });
        let [Some(m), None, None] = maps_of(&prefixes, s) else {
            panic!("one trie")
        };
        assert_eq!((m.map_type, m.key_size), (BPF_MAP_TYPE_LPM_TRIE, 20));
        assert!(m
            .keys
            .chunks(20)
            .any(|k| k == b"\x28\0\0\0proc7\0\0\0\0\0\0\0\0\0\0\0"));
    }

    #[test]
    fn ipv4_prefixes_of_two_lengths_bands_apart_are_a_hash_per_length_longest_first() {
        // /32s and /16s: two bands of the block hashes too, so a hash per length (a
        // one-byte value, no bit test).
        let nets: Vec<Net> = (0..300u32)
            .map(|i| Net::V4 {
                addr: 0x0a00_0000 | (i << 16),
                prefix: if i % 3 == 0 { 32 } else { 16 },
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
        assert_eq!(v4, V4Layout::Hashed([Some(32), Some(16)]));
        let [Some(l32), Some(l16), None] = maps_of(&test, s) else {
            panic!("two hashes")
        };
        assert_eq!(
            (l32.map_type, l32.key_size, l32.value_size, l32.max_entries),
            (BPF_MAP_TYPE_HASH, 4, 1, 100)
        );
        assert_eq!(l16.max_entries, 200);
        // 10.1.0.0/16: the address in network order, the key of the /16 hash.
        assert!(l16.keys.chunks(4).any(|k| k == [10, 1, 0, 0]));
        // /24s and /32s (a feed and its single addresses) share one band: one lookup.
        let feed = Test::Addr {
            end: End::Local,
            nets: (0..300u32)
                .map(|i| Net::V4 {
                    addr: 0x0a00_0000 | (i << 8),
                    prefix: if i % 3 == 0 { 32 } else { 24 },
                })
                .collect(),
            mapped: false,
        };
        assert!(matches!(
            shape(&feed, Some(0)),
            Some(Shape::Addr {
                v4: V4Layout::Blocks([Some(24), None]),
                ..
            })
        ));
    }

    #[test]
    fn blocks_cover_lengths_with_the_fewest_byte_wide_bands() {
        assert_eq!(block_cover(&[24, 32]), vec![24]);
        assert_eq!(block_cover(&[16, 24, 32]), vec![16, 24]);
        assert_eq!(block_cover(&[11, 13, 16, 19, 24]), vec![8, 16]);
        assert_eq!(block_cover(&[0, 8]), vec![0]);
        assert_eq!(block_cover(&[4, 12, 20, 28]), vec![0, 8, 16, 24]);
    }

    #[test]
    fn ipv4_prefixes_of_three_lengths_in_two_bands_are_block_hashes_of_bitmaps() {
        // /24s and /32s of 10.0.x, /26s of 10.1.x (one band: /24 keys), /16s (another).
        let mut nets: Vec<Net> = (0..100u32)
            .map(|i| Net::V4 {
                addr: 0x0a00_0000 | (i << 8),
                prefix: 24,
            })
            .collect();
        nets.push(Net::V4 {
            addr: 0x0a00_6405, // 10.0.100.5/32
            prefix: 32,
        });
        nets.push(Net::V4 {
            addr: 0x0a01_0240, // 10.1.2.64/26
            prefix: 26,
        });
        nets.push(Net::V4 {
            addr: 0x0b05_0000, // 11.5.0.0/16
            prefix: 16,
        });
        let test = Test::Addr {
            end: End::Remote,
            nets,
            mapped: false,
        };
        let s = shape(&test, Some(0)).expect("a map");
        let Shape::Addr { v4, .. } = s else {
            panic!("{s:?}")
        };
        assert_eq!(v4, V4Layout::Blocks([Some(24), Some(16)]));
        let [Some(b24), Some(b16), None] = maps_of(&test, s) else {
            panic!("two block hashes")
        };
        assert_eq!((b24.key_size, b24.value_size), (4, BLOCK_BYTES));
        let entries = |m: &SetMap| -> Vec<(Vec<u8>, Vec<u8>)> {
            let (keys, values) =
                skpc_abi::set_entries(&m.keys, 4, BLOCK_BYTES as usize).expect("whole entries");
            keys.chunks(4)
                .zip(values.chunks(BLOCK_BYTES as usize))
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()
        };
        let b24 = entries(&b24);
        // 100 /24s, 10.0.100.0 (the /32), 10.1.2.0 (the /26).
        assert_eq!(b24.len(), 102);
        let of = |k: [u8; 4]| {
            b24.iter()
                .find(|(key, _)| key == &k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(of([10, 0, 7, 0]), Some(vec![0xff; 32]));
        let mut bits = vec![0u8; 32];
        bits[0] = 1 << 5; // 10.0.100.5: byte 5
        assert_eq!(of([10, 0, 100, 0]), Some(bits));
        let mut bits = vec![0u8; 32];
        bits[8..16].copy_from_slice(&[0xff; 8]); // 10.1.2.64/26: byte values 64..128
        assert_eq!(of([10, 1, 2, 0]), Some(bits));
        // 11.5.0.0/16 in the /16 band: the key 11.5.0.0, every third byte.
        assert_eq!(entries(&b16), vec![(vec![11, 5, 0, 0], vec![0xff; 32])]);
    }

    #[test]
    fn an_address_set_of_lengths_three_blocks_apart_is_one_trie_key_per_prefix() {
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
                        prefix: 4,
                    },
                    Net::V4 {
                        addr: 0x0c00_0000,
                        prefix: 12,
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
