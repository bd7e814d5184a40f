//! The data layouts shared by the BPF programs skpc generates and the runtime that
//! loads them. Both sides import these definitions; nothing else may restate them.
//!
//! All multi-byte fields are in the machine's (little-endian) byte order unless the
//! field's comment says "network order".

#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

/// Name of the SOCKMAP whose slots `redirect to sock N` addresses.
pub const SOCKMAP_NAME: &str = "skp_socks";
/// Slots in the policy's sockmap: valid `redirect to sock N` targets are `0..SOCKMAP_SLOTS`.
pub const SOCKMAP_SLOTS: u32 = 64;

/// Name of the SOCKHASH that holds every socket of an enforced cgroup, keyed by
/// [`SockKey`]; `redirect to peer` looks the other end of a local connection up here.
pub const SOCKHASH_NAME: &str = "skp_peers";
/// Capacity of the sockhash.
pub const SOCKHASH_ENTRIES: u32 = 65_536;
/// Value size of the sockhash: 8 so that user space can read entries (it gets the cookie).
pub const SOCKHASH_VALUE_SIZE: u32 = 8;

/// Name of the counters map: an ARRAY of one entry whose value is the [`Counter`]s, one
/// per rule and per named `count`, one after the other (`Counter::SIZE` bytes each,
/// slot `i` at byte `i * Counter::SIZE`). Programs add to them in place with atomic
/// adds through a direct pointer to the value, so the map is a global-data section
/// (`.data.*`, how clang places a C global): its section name is its map name (aya's
/// key, libbpf's and the kernel's name: at most 15 bytes).
pub const COUNTERS_NAME: &str = ".data.counters";
/// The global object in [`COUNTERS_NAME`]'s section: the array of counters.
pub const COUNTERS_VAR: &str = "skp_counters";
/// Counter slots one counters map holds: the kernel creates an ARRAY's value of at most
/// `KMALLOC_MAX_SIZE` (4 MiB with 4 KiB pages) bytes. A policy with more counters keeps
/// slot `i` in map `i / COUNTER_CHUNK_SLOTS` ([`counters_name`]), at slot
/// `i % COUNTER_CHUNK_SLOTS` of its value.
pub const COUNTER_CHUNK_SLOTS: u32 = (4 << 20) / Counter::SIZE as u32;
/// Counters maps at most: a map's name has at most 15 bytes (`.data.counters9`).
pub const COUNTER_CHUNKS_MAX: u32 = 10;

/// The name of counters map `chunk` (see [`COUNTER_CHUNK_SLOTS`]): [`COUNTERS_NAME`],
/// then `.data.counters1` and on.
pub fn counters_name(chunk: u32) -> String {
    if chunk == 0 {
        COUNTERS_NAME.into()
    } else {
        format!("{COUNTERS_NAME}{chunk}")
    }
}

/// The global object in counters map `chunk`'s section (its pin name too).
pub fn counters_var(chunk: u32) -> String {
    if chunk == 0 {
        COUNTERS_VAR.into()
    } else {
        format!("{COUNTERS_VAR}{chunk}")
    }
}

/// Name of the one-slot per-CPU array (u64) in which the SOCK_OPS program counts the
/// established TCP sockets it left out of the sockmaps (no rule of the policy can act
/// on them): the "untouched" figure, in no rule's counter. Only objects whose SOCK_OPS
/// program leaves some connection out define it; the runtime pins it by name, so that
/// the count goes on across hot reloads.
pub const UNTOUCHED_NAME: &str = "skp_untouched";

/// Name of the ring buffer that carries [`LogRecord`]s for `log` rules.
pub const EVENTS_NAME: &str = "skp_events";
/// Ring buffer size in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Name of the one-slot PROG_ARRAY through which the entry program tail-calls the
/// policy: swapping slot 0 swaps the policy for every socket at once (hot reload).
pub const PROGS_NAME: &str = "skp_progs";
/// Slot of the policy program in [`PROGS_NAME`].
pub const PROGS_POLICY_SLOT: u32 = 0;

/// Name of the HASH map of indexed rules (see [`IndexEntry`]): large blocks of port and
/// address rules are looked up here instead of being compiled to code. The runtime fills
/// it from the object's [`INDEX_SECTION`] before the program can run.
pub const INDEX_NAME: &str = "skp_index";
/// Name of the one-slot ARRAY (u32 value) that says the index is filled: the runtime
/// writes [`INDEX_READY`] after the last entry. A program with an index drops every
/// message while it reads anything else, so that an object loaded by a tool that does
/// not fill the index fails closed instead of silently letting everything through.
pub const INDEX_READY_NAME: &str = "skp_index_ready";
/// The value of slot 0 of [`INDEX_READY_NAME`] once the index is filled.
pub const INDEX_READY: u32 = 1;
/// Non-allocated ELF section holding the entries of [`INDEX_NAME`], as consecutive
/// [`IndexEntry::SIZE`]-byte records (see [`IndexEntry::to_bytes`]).
pub const INDEX_SECTION: &str = ".skp.index";

/// Name of the ARRAY of u32 that indexes rules by a single port (`drop if port == P;`
/// and friends): slot `tuple * PORTS_PER_TUPLE + port` (host-order port) holds the first
/// matching rule plus one, 0 for none (the kernel zero-fills arrays, so only the ports
/// of rules need writing). An inlined array load is several times cheaper than a hash
/// lookup, and most messages match no rule.
pub const INDEX_PORTS_NAME: &str = "skp_index_ports";
/// Slots per port tuple in [`INDEX_PORTS_NAME`].
pub const PORTS_PER_TUPLE: u32 = 65_536;
/// Non-allocated ELF section holding the non-zero slots of [`INDEX_PORTS_NAME`], as
/// consecutive [`PortEntry::SIZE`]-byte records (see [`PortEntry::to_bytes`]).
pub const INDEX_PORTS_SECTION: &str = ".skp.index_ports";

/// Name prefix of the maps that hold large sets (`remote.ip in blocklist` with thousands
/// of prefixes, ports, integers, payload slices): the `k`-th set map of a policy is
/// `skp_set_<k>` (LPM_TRIE, HASH or ARRAY, one-byte values; an address set has a trie
/// per family), and a set read from a file (`set NAME = file "..."`) also has a second
/// buffer `skp_set_<k>_b` so that new contents can be written while the old ones keep
/// enforcing. See [`set_map_name`].
pub const SET_MAP_PREFIX: &str = "skp_set_";
/// Name of the ARRAY of u32 that guards the set maps: slot 0 holds [`SETS_READY`] once
/// every set is filled (until then the program drops every message, as with the index),
/// and slot `1 + k` says which buffer of set map `k` is live (0: `skp_set_<k>`, 1:
/// `skp_set_<k>_b`; always 0 for a set written into the policy).
pub const SETS_NAME: &str = "skp_sets";
/// The value of slot 0 of [`SETS_NAME`] once every set map is filled.
pub const SETS_READY: u32 = 1;
/// Prefix of the non-allocated ELF sections that hold a set map's keys as built:
/// `.skp.set.<map name>`, consecutive keys of the map's key size (every value is the one
/// byte [`SET_MEMBER`]); a map with larger values (the IPv4 block hashes' bitmaps)
/// lists each key followed by its value as [`push_set_value`] writes it.
pub const SET_SECTION_PREFIX: &str = ".skp.set.";
/// The value of every key of a set map with one-byte values (array slots of
/// non-members stay 0).
pub const SET_MEMBER: u8 = 1;
/// In a set section, after a key: the value has every bit set, and no bytes follow (a
/// block hash of a /24 feed is mostly such keys: a 32-byte value each would make the
/// object nine times its size).
pub const SET_VALUE_ALL_ONES: u8 = 0xff;
/// In a set section, after a key: the value's bytes follow.
pub const SET_VALUE_LISTED: u8 = 0;

/// Appends `value` to a set section, after its key.
pub fn push_set_value(section: &mut alloc::vec::Vec<u8>, value: &[u8]) {
    if value.iter().all(|&b| b == 0xff) {
        section.push(SET_VALUE_ALL_ONES);
    } else {
        section.push(SET_VALUE_LISTED);
        section.extend_from_slice(value);
    }
}

/// The keys and values (back to back, `key_size` and `value_size` bytes each) of a set
/// section whose map has values larger than a byte, or `None` when the section is not
/// whole entries.
pub fn set_entries(
    section: &[u8],
    key_size: usize,
    value_size: usize,
) -> Option<(alloc::vec::Vec<u8>, alloc::vec::Vec<u8>)> {
    let (mut keys, mut values) = (alloc::vec::Vec::new(), alloc::vec::Vec::new());
    let mut rest = section;
    while !rest.is_empty() {
        let (key, after) = rest.split_at_checked(key_size)?;
        let (&tag, after) = after.split_first()?;
        keys.extend_from_slice(key);
        rest = match tag {
            SET_VALUE_ALL_ONES => {
                values.resize(values.len() + value_size, 0xff);
                after
            }
            SET_VALUE_LISTED => {
                let (value, after) = after.split_at_checked(value_size)?;
                values.extend_from_slice(value);
                after
            }
            _ => return None,
        };
    }
    Some((keys, values))
}

/// The name of buffer `buffer` (0 or 1) of the `map`-th set map.
pub fn set_map_name(map: u32, buffer: u8) -> String {
    if buffer == 0 {
        format!("{SET_MAP_PREFIX}{map}")
    } else {
        format!("{SET_MAP_PREFIX}{map}_b")
    }
}

/// One non-zero slot of [`INDEX_PORTS_NAME`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEntry {
    /// `tuple * PORTS_PER_TUPLE + port`.
    pub slot: u32,
    /// The first matching rule's index plus one.
    pub value: u32,
}

impl PortEntry {
    /// One record of [`INDEX_PORTS_SECTION`]: slot, then value, little-endian.
    pub const SIZE: usize = 8;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..4].copy_from_slice(&self.slot.to_le_bytes());
        out[4..].copy_from_slice(&self.value.to_le_bytes());
        out
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> PortEntry {
        PortEntry {
            slot: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// One rule of an [`IndexEntry`]: it matches a message with the entry's key when the
/// value of its tuple's residual field lies in `len_min..=len_max` (its *residual*: the
/// part of the rule's condition that is checked after the lookup, not keyed). The field
/// is the message's length (`sk_msg_md.size`, hence the names), a port, or the sender's
/// uid, gid or pid; every slot of one tuple compares the same field, which the program
/// knows (the map does not say it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexSlot {
    /// Index of the rule (its counter slot); [`IndexSlot::EMPTY`]'s for none.
    pub rule: u32,
    pub len_min: u32,
    pub len_max: u32,
    /// What else the rule does when it matches, in a block of `count`/`log` rules
    /// (where every matching rule acts): the counter slot of `count NAME`, or
    /// [`IndexSlot::LOG`]; [`IndexSlot::NOTHING`] for a rule that decides, except in a
    /// block of rules of several decisions, where it is the number of the rule's
    /// decision in the block (below 8; the program keeps `rule << 3 | then`).
    pub then: u32,
}

impl IndexSlot {
    /// An unused slot: no length lies in its range, and its rule is "none".
    pub const EMPTY: IndexSlot = IndexSlot {
        rule: u32::MAX,
        len_min: 1,
        len_max: 0,
        then: IndexSlot::NOTHING,
    };
    /// `then` of a rule that does nothing more (a rule that decides).
    pub const NOTHING: u32 = u32::MAX;
    /// `then` of a `log` rule: it sends a log record.
    pub const LOG: u32 = u32::MAX - 1;
    /// A deciding rule without a residual: every length.
    pub const fn any_len(rule: u32) -> IndexSlot {
        IndexSlot {
            rule,
            len_min: 0,
            len_max: u32::MAX,
            then: IndexSlot::NOTHING,
        }
    }
    /// Byte offsets of the fields inside a slot, and a slot's size.
    pub const OFF_RULE: i16 = 0;
    pub const OFF_LEN_MIN: i16 = 4;
    pub const OFF_LEN_MAX: i16 = 8;
    pub const OFF_THEN: i16 = 12;
    pub const SIZE: usize = 16;
    /// The slot's words, in their order in the map value.
    pub fn words(&self) -> [u32; 4] {
        [self.rule, self.len_min, self.len_max, self.then]
    }
}

impl Default for IndexSlot {
    fn default() -> IndexSlot {
        IndexSlot::EMPTY
    }
}

/// One entry of the rule index: a key the program builds from the message (a tuple id,
/// then the tuple's field values, unused words zero) and the rules that have the key,
/// in rule order: the first slot whose residual holds is the first matching rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexEntry {
    pub key: [u32; IndexEntry::KEY_WORDS],
    /// The rules with this key, smallest first; unused slots are [`IndexSlot::EMPTY`].
    pub slots: [IndexSlot; IndexEntry::SLOTS],
}

impl IndexEntry {
    /// 32-bit words in a key: the tuple id and up to eight value words (an IPv6
    /// address and a port, or payload bytes with ports and addresses).
    pub const KEY_WORDS: usize = 9;
    /// Rules (with their residuals) one key holds; more rules with one key stay code.
    pub const SLOTS: usize = 4;
    /// Key size of the index map in bytes.
    pub const KEY_SIZE: usize = 4 * Self::KEY_WORDS;
    /// Value size of the index map in bytes (the slots).
    pub const VALUE_SIZE: usize = IndexSlot::SIZE * Self::SLOTS;
    /// One record of [`INDEX_SECTION`]: the key, then the value.
    pub const SIZE: usize = Self::KEY_SIZE + Self::VALUE_SIZE;

    /// An entry of one rule without a residual.
    pub fn single(key: [u32; IndexEntry::KEY_WORDS], rule: u32) -> IndexEntry {
        let mut slots = [IndexSlot::EMPTY; IndexEntry::SLOTS];
        slots[0] = IndexSlot::any_len(rule);
        IndexEntry { key, slots }
    }

    /// The slots in use.
    pub fn used(&self) -> impl Iterator<Item = &IndexSlot> {
        self.slots.iter().filter(|s| **s != IndexSlot::EMPTY)
    }

    /// The record as stored in [`INDEX_SECTION`]: every word little-endian.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let value = self.slots.iter().flat_map(IndexSlot::words);
        for (i, w) in self.key.iter().copied().chain(value).enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads a record written by [`IndexEntry::to_bytes`].
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> IndexEntry {
        let word =
            |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let mut key = [0u32; Self::KEY_WORDS];
        for (i, k) in key.iter_mut().enumerate() {
            *k = word(i);
        }
        let mut slots = [IndexSlot::EMPTY; Self::SLOTS];
        for (i, s) in slots.iter_mut().enumerate() {
            let at = Self::KEY_WORDS + 4 * i;
            *s = IndexSlot {
                rule: word(at),
                len_min: word(at + 1),
                len_max: word(at + 2),
                then: word(at + 3),
            };
        }
        IndexEntry { key, slots }
    }

    /// The map key bytes (what the program hands to `bpf_map_lookup_elem`).
    pub fn key_bytes(&self) -> [u8; Self::KEY_SIZE] {
        let mut out = [0u8; Self::KEY_SIZE];
        out.copy_from_slice(&self.to_bytes()[..Self::KEY_SIZE]);
        out
    }

    /// The map value bytes, in the machine's byte order (what the runtime inserts).
    pub fn value_bytes(&self) -> [u8; Self::VALUE_SIZE] {
        let mut out = [0u8; Self::VALUE_SIZE];
        for (i, s) in self.slots.iter().enumerate() {
            for (j, w) in s.words().into_iter().enumerate() {
                let at = i * IndexSlot::SIZE + j * 4;
                out[at..at + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        out
    }
}

/// ELF section of the verdict programs.
pub const SK_MSG_SECTION: &str = "sk_msg";
/// Symbol (program name) of the verdict program: the policy itself.
pub const SK_MSG_PROGRAM: &str = "skp_verdict";
/// Symbol of the stable entry program that is attached to the maps; it tail-calls
/// whatever policy sits in [`PROGS_NAME`] slot 0, and passes if the slot is empty.
pub const SK_MSG_ENTRY_PROGRAM: &str = "skp_entry";
/// ELF section of the SOCK_OPS program that fills the sockhash.
pub const SOCK_OPS_SECTION: &str = "sockops";
/// Symbol (program name) of the SOCK_OPS program.
pub const SOCK_OPS_PROGRAM: &str = "skp_sockops";

/// Address families as the kernel reports them in `sk_msg_md.family`.
pub const AF_INET: u32 = 2;
/// See [`AF_INET`].
pub const AF_INET6: u32 = 10;

/// `bpf_map_update_elem` flags (`BPF_ANY` and friends in `include/uapi/linux/bpf.h`):
/// create or replace, the runtime's `bpf(2)` map updates and the SOCK_OPS program's
/// sockhash insert alike.
pub const BPF_ANY: u64 = 0;
/// Create only: fail if the key exists.
pub const BPF_NOEXIST: u64 = 1;
/// Replace only: fail if the key does not exist.
pub const BPF_EXIST: u64 = 2;

/// Key of the sockhash: one established TCP socket, seen from its own side.
///
/// IPv4 sockets put their address in `[0]` and zero the rest. Addresses are in network
/// order (as the kernel stores them); ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub family: u32,
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
    pub local_port: u32,
    pub remote_port: u32,
}

impl SockKey {
    /// Size of the key in bytes.
    pub const SIZE: usize = 44;
    /// Byte offsets of the fields, for code generators that build the key on the stack.
    pub const OFF_FAMILY: i16 = 0;
    pub const OFF_LOCAL_IP: i16 = 4;
    pub const OFF_REMOTE_IP: i16 = 20;
    pub const OFF_LOCAL_PORT: i16 = 36;
    pub const OFF_REMOTE_PORT: i16 = 40;

    /// The key under which the other end of this (local) connection is stored.
    pub fn peer(&self) -> SockKey {
        SockKey {
            family: self.family,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }

    /// The key's bytes as the kernel sees them.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let words = [self.family]
            .into_iter()
            .chain(self.local_ip)
            .chain(self.remote_ip)
            .chain([self.local_port, self.remote_port]);
        for (i, w) in words.enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// One slot of the counters map (per CPU; the runtime sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Messages (verdict runs) that matched.
    pub messages: u64,
    /// Bytes of those messages (`sk_msg_md.size`).
    pub bytes: u64,
}

impl Counter {
    pub const SIZE: usize = 16;
    pub const OFF_MESSAGES: i16 = 0;
    pub const OFF_BYTES: i16 = 8;
}

/// The record a `log` rule writes to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRecord {
    /// Index of the rule that logged (its counter index).
    pub rule: u32,
    pub family: u32,
    /// Network order; IPv4 in `[0]`.
    pub local_ip: [u32; 4],
    /// Network order; IPv4 in `[0]`.
    pub remote_ip: [u32; 4],
    /// Host order.
    pub local_port: u32,
    /// Host order.
    pub remote_port: u32,
    /// `sk_msg_md.size`.
    pub size: u32,
    /// Thread-group id (the user-visible pid) of the sender.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The sender's `comm`, NUL-padded.
    pub comm: [u8; 16],
}

impl LogRecord {
    pub const SIZE: usize = 80;
    pub const OFF_RULE: i16 = 0;
    pub const OFF_FAMILY: i16 = 4;
    pub const OFF_LOCAL_IP: i16 = 8;
    pub const OFF_REMOTE_IP: i16 = 24;
    pub const OFF_LOCAL_PORT: i16 = 40;
    pub const OFF_REMOTE_PORT: i16 = 44;
    pub const OFF_SIZE: i16 = 48;
    pub const OFF_PID: i16 = 52;
    pub const OFF_UID: i16 = 56;
    pub const OFF_GID: i16 = 60;
    pub const OFF_COMM: i16 = 64;

    /// Parses a record from ring-buffer bytes; `None` if too short.
    pub fn from_bytes(b: &[u8]) -> Option<LogRecord> {
        if b.len() < Self::SIZE {
            return None;
        }
        let w = |off: i16| {
            let o = off as usize;
            u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        };
        let ip = |off: i16| [w(off), w(off + 4), w(off + 8), w(off + 12)];
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&b[Self::OFF_COMM as usize..Self::OFF_COMM as usize + 16]);
        Some(LogRecord {
            rule: w(Self::OFF_RULE),
            family: w(Self::OFF_FAMILY),
            local_ip: ip(Self::OFF_LOCAL_IP),
            remote_ip: ip(Self::OFF_REMOTE_IP),
            local_port: w(Self::OFF_LOCAL_PORT),
            remote_port: w(Self::OFF_REMOTE_PORT),
            size: w(Self::OFF_SIZE),
            pid: w(Self::OFF_PID),
            uid: w(Self::OFF_UID),
            gid: w(Self::OFF_GID),
            comm,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_values_round_trip_with_all_ones_as_one_byte() {
        let mut section = alloc::vec::Vec::new();
        section.extend_from_slice(&[10, 0, 1, 0]);
        push_set_value(&mut section, &[0xff; 32]);
        section.extend_from_slice(&[10, 0, 2, 0]);
        let mut bits = [0u8; 32];
        bits[3] = 0x10;
        push_set_value(&mut section, &bits);
        assert_eq!(section.len(), 4 + 1 + 4 + 1 + 32);
        let (keys, values) = set_entries(&section, 4, 32).expect("whole entries");
        assert_eq!(keys, [10, 0, 1, 0, 10, 0, 2, 0]);
        assert_eq!(&values[..32], &[0xff; 32]);
        assert_eq!(&values[32..], &bits);
        assert_eq!(set_entries(&section[..section.len() - 1], 4, 32), None);
        assert_eq!(set_entries(&[1, 2, 3, 4, 7], 4, 32), None);
    }

    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_their_offsets() {
        assert_eq!(size_of::<SockKey>(), SockKey::SIZE);
        assert_eq!(offset_of!(SockKey, local_ip) as i16, SockKey::OFF_LOCAL_IP);
        assert_eq!(
            offset_of!(SockKey, remote_ip) as i16,
            SockKey::OFF_REMOTE_IP
        );
        assert_eq!(
            offset_of!(SockKey, local_port) as i16,
            SockKey::OFF_LOCAL_PORT
        );
        assert_eq!(
            offset_of!(SockKey, remote_port) as i16,
            SockKey::OFF_REMOTE_PORT
        );
        assert_eq!(size_of::<Counter>(), Counter::SIZE);
        assert_eq!(size_of::<IndexSlot>(), IndexSlot::SIZE);
        assert_eq!(
            offset_of!(IndexSlot, len_max) as i16,
            IndexSlot::OFF_LEN_MAX
        );
        assert_eq!(offset_of!(IndexSlot, then) as i16, IndexSlot::OFF_THEN);
        assert_eq!(
            size_of::<[IndexSlot; IndexEntry::SLOTS]>(),
            IndexEntry::VALUE_SIZE
        );
        assert_eq!(size_of::<LogRecord>(), LogRecord::SIZE);
        assert_eq!(offset_of!(LogRecord, size) as i16, LogRecord::OFF_SIZE);
        assert_eq!(offset_of!(LogRecord, comm) as i16, LogRecord::OFF_COMM);
        assert_eq!(offset_of!(LogRecord, gid) as i16, LogRecord::OFF_GID);
    }

    #[test]
    fn index_entries_round_trip_through_bytes() {
        let mut e = IndexEntry::single([7, 1, 2, 3, 4, 5, 6, 7, 8], 3);
        e.slots[1] = IndexSlot {
            rule: 9,
            len_min: 100,
            len_max: 200,
            then: IndexSlot::LOG,
        };
        assert_eq!(IndexEntry::from_bytes(&e.to_bytes()), e);
        assert_eq!(e.used().count(), 2);
        assert_eq!(&e.value_bytes()[16..20], &9u32.to_ne_bytes());
        assert_eq!(&e.value_bytes()[28..32], &IndexSlot::LOG.to_ne_bytes());
    }

    #[test]
    fn peer_key_swaps_the_ends() {
        let k = SockKey {
            family: AF_INET,
            local_ip: [1, 0, 0, 0],
            remote_ip: [2, 0, 0, 0],
            local_port: 10,
            remote_port: 20,
        };
        let p = k.peer();
        assert_eq!(p.local_ip, [2, 0, 0, 0]);
        assert_eq!(p.remote_port, 10);
        assert_eq!(p.peer(), k);
        assert_eq!(&k.to_bytes()[36..40], &10u32.to_ne_bytes());
    }

    #[test]
    fn log_record_round_trips_through_bytes() {
        let r = LogRecord {
            rule: 3,
            size: 77,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        // SAFETY: LogRecord is repr(C) plain old data without padding.
        let bytes: [u8; LogRecord::SIZE] = unsafe { core::mem::transmute(r) };
        assert_eq!(LogRecord::from_bytes(&bytes), Some(r));
        assert_eq!(LogRecord::from_bytes(&bytes[..10]), None);
    }
}
