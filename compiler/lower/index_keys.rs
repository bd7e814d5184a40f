//! The keys of a rule's condition for the rule index (`index`): its `or` of `and`s of
//! port, address, payload, sender and `comm ==` tests as key words per tuple (the
//! components of each `and`, in key order), and the rest of each `and` as its
//! *residual*: range tests of one integer field that fits a u32 and the program reads
//! cheaply (`len`, `uid`, `gid`, `pid`, `local.port`, `remote.port`), one range checked
//! after the lookup. A test that can be keyed is keyed (`uid == 5`, `uid in 1..10`); one
//! that cannot (`uid > 1000`: too many keys) is the residual. An `and` whose residual
//! would need two fields (`len > 5 and uid > 3`) leaves the rule code.
//!
//! The fields a key can hold (`Component`), their words and masks, and which of them
//! gates a hash tuple (`gate_rank`, `gate_value`) are here too: what a key is.

use skpc_abi::IndexEntry;

use crate::hir::{self, Cond, End, IntField, Net, Test};

/// Entries one rule may add (a port set is one entry per port): more and it stays code.
const MAX_RULE_ENTRIES: usize = 256;
/// DNF terms one rule may have.
const MAX_TERMS: usize = 32;

/// One key of a rule: its tuple (components in key order), value words, and the
/// residual: the field and its range (inclusive) the rule needs besides the key.
pub(super) type RuleKey = (Vec<Component>, Vec<u32>, Residual);
/// A residual field and the range of its values (inclusive) a rule needs.
pub(super) type Residual = (IntField, (u32, u32));
/// The whole range of a u32: no residual.
pub(super) const ANY_LEN: (u32, u32) = (0, u32::MAX);

/// Whether `field` can be a residual: its value fits a u32 and the lookup can load it
/// (a context word, or a helper's value `Gen::load_index_fields` keeps on the stack).
pub(super) fn residual_field(field: IntField) -> bool {
    matches!(
        field,
        IntField::Len
            | IntField::Uid
            | IntField::Gid
            | IntField::Pid
            | IntField::LocalPort
            | IntField::RemotePort
    )
}

/// Gives the keys of a rule without residual a field, so that they join a tuple: that
/// of the rule's key with a residual and the same components if there is one, else that
/// of the first existing tuple with their components (`existing`), else `len`. A tuple
/// (components, field) with a field other than `len` thus always has a key with a
/// residual on it (`index::Tuple::residual`).
pub(super) fn settle(keys: &mut [RuleKey], existing: impl Fn(&[Component]) -> Option<IntField>) {
    for i in 0..keys.len() {
        if keys[i].2 .1 != ANY_LEN {
            continue;
        }
        let own = keys
            .iter()
            .find(|k| k.2 .1 != ANY_LEN && k.0 == keys[i].0)
            .map(|k| k.2 .0);
        keys[i].2 .0 = own
            .or_else(|| existing(&keys[i].0))
            .unwrap_or(IntField::Len);
    }
}

/// The keys of a rule's condition, if it is an `or` of `and`s of port, address,
/// payload-slice and byte, `uid`/`gid`/`pid`/`cgroup` and `comm ==` tests (and range
/// tests of one residual field per `and`) that gives a bounded number of keys. Terms that
/// can never hold give no key. Keys without residual have the field `len` (see `settle`).
pub(super) fn rule_keys(cond: &Cond) -> Option<Vec<RuleKey>> {
    let terms = dnf(cond)?;
    let mut keys = Vec::new();
    for term in terms {
        // Per test: the alternatives, each a (component, words) pair.
        let mut per_test: Vec<Vec<(Component, Vec<u32>)>> = Vec::new();
        // The residual field (None: none yet) and the range all of the term's tests
        // of it allow (None: nothing).
        let mut field: Option<IntField> = None;
        let mut len = Some(ANY_LEN);
        for t in &term {
            let keys = match t {
                Test::Int {
                    field: IntField::Len,
                    ..
                } => None,
                _ => alternatives(t),
            };
            match (keys, t) {
                (Some(keys), _) => per_test.push(keys),
                (None, Test::Int { field: f, ranges }) if residual_field(*f) => {
                    if ranges.len() != 1 || field.is_some_and(|x| x != *f) {
                        return None; // a set of ranges, or a second field: code
                    }
                    field = Some(*f);
                    len = len.and_then(|l| narrow_len(l, ranges));
                }
                (None, _) => return None,
            }
        }
        if per_test.is_empty() {
            // `true` or only residual tests: code (an unconditional rule ends the block).
            return None;
        }
        let Some(len) = len else {
            continue; // the term's residual tests exclude each other: it never holds
        };
        let residual = match field {
            Some(f) if len != ANY_LEN => (f, len),
            _ => (IntField::Len, ANY_LEN),
        };
        let mut combos: Vec<Vec<(Component, Vec<u32>)>> = vec![Vec::new()];
        for alts in per_test {
            let mut next = Vec::with_capacity(combos.len() * alts.len());
            for c in &combos {
                for a in &alts {
                    let mut c = c.clone();
                    c.push(a.clone());
                    next.push(c);
                }
            }
            if next.len() + keys.len() > MAX_RULE_ENTRIES {
                return None;
            }
            combos = next;
        }
        for mut combo in combos {
            combo.sort_by_key(|(c, _)| c.slot());
            if combo.windows(2).any(|w| w[0].0.slot() == w[1].0.slot()) {
                // Two tests of one field in one term: rare, and code handles it.
                return None;
            }
            let v6_only = combo
                .iter()
                .any(|(c, _)| matches!(c, Component::Ip6 { .. }));
            let v4_only = combo
                .iter()
                .any(|(c, _)| matches!(c, Component::Ip4 { mapped: false, .. }));
            if v6_only && v4_only {
                continue; // needs an IPv4 and an IPv6 socket at once: never holds
            }
            let words: Vec<u32> = combo.iter().flat_map(|(_, w)| w.clone()).collect();
            if words.len() > IndexEntry::KEY_WORDS - 1 {
                return None;
            }
            keys.push((combo.into_iter().map(|(c, _)| c).collect(), words, residual));
        }
    }
    Some(keys)
}

/// A residual range narrowed by one range test of its field (`ranges` of one range);
/// `None` if nothing is left or the test is not one range. Every residual field is a
/// u32 (`sk_msg_md.size`, the ids, the ports).
fn narrow_len(len: (u32, u32), ranges: &[(u64, u64)]) -> Option<(u32, u32)> {
    let [(lo, hi)] = ranges else {
        return None;
    };
    let lo = (*lo).max(len.0 as u64);
    let hi = (*hi).min(len.1 as u64);
    (lo <= hi).then_some((lo as u32, hi as u32))
}

/// `c` as an `or` of `and`s of tests, if it has no `not` and few terms.
fn dnf(c: &Cond) -> Option<Vec<Vec<&Test>>> {
    match c {
        Cond::Const(false) => Some(Vec::new()),
        Cond::Const(true) => Some(vec![Vec::new()]),
        Cond::Test(t) => Some(vec![vec![t]]),
        Cond::Or(cs) => {
            let mut out = Vec::new();
            for c in cs {
                out.extend(dnf(c)?);
                if out.len() > MAX_TERMS {
                    return None;
                }
            }
            Some(out)
        }
        Cond::And(cs) => {
            let mut out: Vec<Vec<&Test>> = vec![Vec::new()];
            for c in cs {
                let terms = dnf(c)?;
                let mut next = Vec::new();
                for a in &out {
                    for b in &terms {
                        next.push(a.iter().chain(b.iter()).copied().collect());
                    }
                }
                if next.len() > MAX_TERMS {
                    return None;
                }
                out = next;
            }
            Some(out)
        }
        Cond::Not(_) => None,
    }
}

/// The ways one test can hold, as key components and words.
fn alternatives(t: &Test) -> Option<Vec<(Component, Vec<u32>)>> {
    match t {
        Test::Int { field, ranges }
            if !matches!(field, IntField::LocalPort | IntField::RemotePort) =>
        {
            let component = match field {
                IntField::Uid => Component::Uid,
                IntField::Gid => Component::Gid,
                IntField::Pid => Component::Pid,
                IntField::Cgroup => Component::Cgroup,
                // `payload[i] == b`: the one-byte slice `payload[i..i+1]`.
                IntField::PayloadByte(offset) if (*offset as usize) + 1 < i16::MAX as usize => {
                    Component::Payload {
                        offset: *offset,
                        len: 1,
                    }
                }
                _ => return None,
            };
            let count = ranges
                .iter()
                .try_fold(0u64, |n, (lo, hi)| n.checked_add((hi - lo).checked_add(1)?))?;
            if count > MAX_RULE_ENTRIES as u64 {
                return None;
            }
            let words = |v: u64| match component {
                Component::Cgroup => vec![v as u32, (v >> 32) as u32],
                _ => vec![v as u32],
            };
            Some(
                ranges
                    .iter()
                    .flat_map(|&(lo, hi)| lo..=hi)
                    .map(|v| (component, words(v)))
                    .collect(),
            )
        }
        Test::Int { field, ranges } => {
            let (component, word): (Component, fn(u16) -> u32) = match field {
                IntField::LocalPort => (Component::LocalPort, |p| p as u32),
                IntField::RemotePort => (Component::RemotePort, |p| {
                    super::cond::raw_remote_port(p) as u32
                }),
                _ => return None,
            };
            let count: u64 = ranges.iter().map(|(lo, hi)| hi - lo + 1).sum();
            if count > MAX_RULE_ENTRIES as u64 {
                return None;
            }
            Some(
                ranges
                    .iter()
                    .flat_map(|&(lo, hi)| lo..=hi)
                    .map(|p| (component, vec![word(p as u16)]))
                    .collect(),
            )
        }
        Test::Addr { end, nets, mapped } => Some(
            nets.iter()
                .map(|n| match *n {
                    Net::V4 { addr, prefix } => (
                        Component::Ip4 {
                            end: *end,
                            mapped: *mapped,
                            prefix,
                        },
                        vec![super::addr::wire_word(addr.to_be_bytes()) as u32],
                    ),
                    Net::V6 { addr, prefix } => {
                        let bytes = addr.to_be_bytes();
                        (
                            Component::Ip6 { end: *end, prefix },
                            (0..4)
                                .map(|w| super::addr::word_of(&bytes, w) as u32)
                                .collect(),
                        )
                    }
                })
                .collect(),
        ),
        Test::Payload { offset, alts } => {
            let len = alts.first()?.len();
            // The program loads the bytes at 16-bit offsets from the data pointer.
            let fits = len > 0
                && len <= 4 * (IndexEntry::KEY_WORDS - 1)
                && (*offset as usize + len) < i16::MAX as usize;
            if !fits || alts.iter().any(|a| a.len() != len) || alts.len() > MAX_RULE_ENTRIES {
                return None;
            }
            let component = Component::Payload {
                offset: *offset,
                len: len as u8,
            };
            Some(alts.iter().map(|a| (component, payload_words(a))).collect())
        }
        Test::Comm {
            alts,
            prefix: false,
        } => {
            // The checker refuses names of 16 bytes or with a NUL; were there one, code
            // would compare it as before.
            let odd = |a: &Vec<u8>| a.len() >= COMM_BYTES || a.contains(&0);
            if alts.iter().any(odd) || alts.len() > MAX_RULE_ENTRIES {
                return None;
            }
            Some(
                alts.iter()
                    .map(|a| (Component::Comm, comm_words(a)))
                    .collect(),
            )
        }
        Test::Comm { prefix: true, .. }
        | Test::Proto(_)
        | Test::Text { .. }
        | Test::InFile { .. } => None,
    }
}

/// Payload bytes as the key words the program stores: little-endian words of four
/// bytes, the last zero-padded (what 4-, 2- and 1-byte loads give).
pub(super) fn payload_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// Bytes `bpf_get_current_comm` writes: the name (at most 15 bytes), NUL-padded.
const COMM_BYTES: usize = 16;

/// A comm as the four key words the helper's 16 bytes are (`name` shorter than 16).
pub(super) fn comm_words(name: &[u8]) -> Vec<u32> {
    let mut bytes = [0u8; COMM_BYTES];
    bytes[..name.len()].copy_from_slice(name);
    payload_words(&bytes)
}

/// One field of a tuple, and how much of it the key keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Component {
    /// `local_port`, one word, exact.
    LocalPort,
    /// `remote_port`, one word as loaded (network order, upper half), exact.
    RemotePort,
    /// The IPv4 address of `end`, one word, its first `prefix` bits. With `mapped`, IPv6
    /// sockets whose address is IPv4-mapped take part with the mapped address.
    Ip4 {
        end: End,
        mapped: bool,
        prefix: u8,
    },
    /// The IPv6 address of `end` (IPv6 sockets only), four words, first `prefix` bits.
    Ip6 {
        end: End,
        prefix: u8,
    },
    /// Payload bytes `offset..offset + len`, as little-endian words (the last one
    /// zero-padded). Messages shorter than `offset + len` skip the lookup.
    Payload {
        offset: u32,
        len: u8,
    },
    /// The sender's `uid`, `gid` or `pid`, one word; `cgroup`, two (low word first): what
    /// the helpers return, fetched once per block (`Gen::load_index_fields`).
    Uid,
    Gid,
    Pid,
    Cgroup,
    /// The sender's comm as `bpf_get_current_comm` writes it (the name, NUL-padded to
    /// 16 bytes), four little-endian words: `comm == "..."` only.
    Comm,
}

impl Component {
    pub(super) fn describe(self) -> String {
        let end = |e: End| match e {
            End::Local => "local",
            End::Remote => "remote",
        };
        match self {
            Component::LocalPort => "local.port".into(),
            Component::RemotePort => "remote.port".into(),
            Component::Ip4 {
                end: e,
                mapped,
                prefix,
            } => format!("{}.{}/{prefix}", end(e), if mapped { "ip" } else { "ip4" }),
            Component::Ip6 { end: e, prefix } => format!("{}.ip6/{prefix}", end(e)),
            Component::Payload { offset, len } => {
                format!("payload[{offset}..{}]", offset + len as u32)
            }
            Component::Uid => "uid".into(),
            Component::Gid => "gid".into(),
            Component::Pid => "pid".into(),
            Component::Cgroup => "cgroup".into(),
            Component::Comm => "comm".into(),
        }
    }

    /// The order of components in a key (prefix lengths do not matter for it).
    pub(super) fn slot(self) -> (u8, End, u32) {
        match self {
            Component::LocalPort => (0, End::Local, 0),
            Component::RemotePort => (1, End::Remote, 0),
            Component::Ip4 { end, .. } => (2, end, 0),
            Component::Ip6 { end, .. } => (3, end, 0),
            Component::Payload { offset, .. } => (4, End::Local, offset),
            Component::Uid => (5, End::Local, 0),
            Component::Gid => (6, End::Local, 0),
            Component::Pid => (7, End::Local, 0),
            Component::Cgroup => (8, End::Local, 0),
            Component::Comm => (9, End::Local, 0),
        }
    }

    /// Key words the component fills.
    pub(super) fn words(self) -> usize {
        match self {
            Component::LocalPort
            | Component::RemotePort
            | Component::Ip4 { .. }
            | Component::Uid
            | Component::Gid
            | Component::Pid => 1,
            Component::Cgroup => 2,
            Component::Ip6 { .. } | Component::Comm => 4,
            Component::Payload { len, .. } => (len as usize).div_ceil(4),
        }
    }
}

/// How good a gate component `c` is: a port (one value per rule), a payload slice,
/// an address by its prefix; 0 for none (fewer than 8 bits to tell keys apart).
pub(super) fn gate_rank(c: Component) -> u32 {
    match c {
        Component::LocalPort | Component::RemotePort => 300,
        // The low 16 bits of an id: ids of one policy mostly differ there.
        Component::Uid | Component::Gid | Component::Pid | Component::Cgroup => 250,
        Component::Payload { .. } => 200,
        // The first two bytes of a name.
        Component::Comm => 150,
        Component::Ip4 { prefix, .. } | Component::Ip6 { prefix, .. } if prefix >= 8 => {
            100 + prefix.min(16) as u32
        }
        _ => 0,
    }
}

/// The gate slot of a key whose first word of component `c` is `word`: a port (host
/// order), or the word's first 16 bits (little-endian: its first two bytes) masked to
/// the component's prefix. The program computes the same from the message.
pub(super) fn gate_value(c: Component, word: u32) -> u32 {
    match c {
        Component::LocalPort => word,
        Component::RemotePort => ((word >> 16) as u16).swap_bytes() as u32,
        _ => word & gate_mask(c),
    }
}

/// The mask the program applies to a non-port gate component's first word.
pub(super) fn gate_mask(c: Component) -> u32 {
    mask_word(c, 0) & 0xffff
}

/// The 32-bit mask of word `w` of a component's key words.
pub(super) fn mask_word(c: Component, w: usize) -> u32 {
    match c {
        Component::LocalPort
        | Component::RemotePort
        | Component::Payload { .. }
        | Component::Uid
        | Component::Gid
        | Component::Pid
        | Component::Cgroup
        | Component::Comm => u32::MAX,
        Component::Ip4 { prefix, .. } => {
            super::addr::wire_word(hir::mask32(prefix).to_be_bytes()) as u32
        }
        Component::Ip6 { prefix, .. } => {
            super::addr::word_of(&hir::mask128(prefix).to_be_bytes(), w) as u32
        }
    }
}
