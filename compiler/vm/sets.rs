//! The set maps' model (`skp_set_<k>` and their flag `skp_sets`, see `lower::sets`), as
//! the runtime fills them: an LPM_TRIE answers the longest prefix that holds the key, a
//! HASH its keys, an ARRAY every slot below `max_entries` (members hold
//! `SET_MEMBER`, the others 0). A hit is a pointer to a one-byte value, or for a map
//! with larger values (the IPv4 block hashes' bitmaps, the rule numbers of the index's
//! text groups) to its value: a trie's, the longest prefix's.

use std::collections::{HashMap, HashSet};

use skpc_abi::SETS_NAME;

use crate::bpf::uapi::{BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE};
use crate::lower::{MapKind, MapSpec, SetKeys};

use super::maps::MapModelError;

/// What a lookup in a set map finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SetHit {
    /// NULL.
    Miss,
    /// A value that is 0 (an ARRAY slot of a non-member).
    Zero,
    /// A value that is `SET_MEMBER`.
    Member,
    /// A larger value (a block hash's bitmap): at this offset of `SetModel::values`.
    Value(usize),
}

#[derive(Debug)]
enum Contents {
    Hash(HashSet<Vec<u8>>),
    /// A HASH with values larger than a byte: each key's value at an offset of
    /// `SetModel::values`.
    Valued(HashMap<Vec<u8>, usize>),
    /// Per prefix length, the data bytes (masked) of the keys of that length.
    Trie {
        data_len: usize,
        by_len: HashMap<u32, HashSet<Vec<u8>>>,
    },
    /// An LPM_TRIE with values larger than a byte: per prefix length, the data bytes
    /// (masked) of its keys, each with its value's offset in `SetModel::values`.
    ValuedTrie {
        data_len: usize,
        by_len: HashMap<u32, HashMap<Vec<u8>, usize>>,
    },
    Array {
        slots: u32,
        members: HashSet<u32>,
    },
}

/// The set maps of one program, filled.
#[derive(Debug, Default)]
pub(super) struct SetModel {
    /// By map number in `Lowered::maps`: key size and contents.
    maps: HashMap<u32, (usize, Contents)>,
    /// `max_entries` of `skp_sets` (0: the object has none).
    pub(super) ready_slots: u32,
    /// The values of every `Contents::Valued` map, back to back (a run gets a copy the
    /// program may read, and must not write).
    pub(super) values: Vec<u8>,
}

/// The set maps of an object and their keys.
pub(super) fn set_model(maps: &[MapSpec], sets: &[SetKeys]) -> Result<SetModel, MapModelError> {
    let mut model = SetModel::default();
    for (n, m) in maps.iter().enumerate() {
        match m.kind {
            MapKind::SetsReady => {
                if m.map_type != BPF_MAP_TYPE_ARRAY || m.key_size != 4 || m.value_size != 4 {
                    return Err(MapModelError::NotU32Array {
                        map: SETS_NAME,
                        map_type: m.map_type,
                        key_size: m.key_size,
                        value_size: m.value_size,
                    });
                }
                model.ready_slots = m.max_entries;
            }
            MapKind::Set { .. } => {
                let keys = sets
                    .iter()
                    .find(|s| s.map.number() as usize == n)
                    .map_or(&[][..], |s| &s.keys[..]);
                let key_size = m.key_size as usize;
                let value_size = m.value_size as usize;
                // A map with larger values: its keys and values apart.
                let valued = if value_size > 1 {
                    skpc_abi::set_entries(keys, key_size, value_size)
                } else {
                    None
                };
                if key_size == 0
                    || value_size == 0
                    || (value_size > 1 && valued.is_none())
                    || (value_size == 1 && keys.len() % key_size != 0)
                {
                    return Err(MapModelError::NotASet {
                        map: m.name(),
                        map_type: m.map_type,
                        key_size: m.key_size,
                        value_size: m.value_size,
                    });
                }
                let contents = match m.map_type {
                    BPF_MAP_TYPE_HASH if value_size > 1 => {
                        let (k, v) = valued.unwrap_or_default();
                        let mut at = HashMap::new();
                        for (key, value) in k.chunks_exact(key_size).zip(v.chunks_exact(value_size))
                        {
                            at.insert(key.to_vec(), model.values.len());
                            model.values.extend_from_slice(value);
                        }
                        Contents::Valued(at)
                    }
                    BPF_MAP_TYPE_LPM_TRIE if value_size > 1 && key_size > 4 => {
                        let (k, v) = valued.unwrap_or_default();
                        let mut by_len: HashMap<u32, HashMap<Vec<u8>, usize>> = HashMap::new();
                        for (key, value) in k.chunks_exact(key_size).zip(v.chunks_exact(value_size))
                        {
                            let len = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
                            by_len
                                .entry(len)
                                .or_default()
                                .insert(masked(&key[4..], len), model.values.len());
                            model.values.extend_from_slice(value);
                        }
                        Contents::ValuedTrie {
                            data_len: key_size - 4,
                            by_len,
                        }
                    }
                    _ if value_size != 1 => {
                        return Err(MapModelError::NotASet {
                            map: m.name(),
                            map_type: m.map_type,
                            key_size: m.key_size,
                            value_size: m.value_size,
                        })
                    }
                    BPF_MAP_TYPE_HASH => {
                        Contents::Hash(keys.chunks_exact(key_size).map(<[u8]>::to_vec).collect())
                    }
                    BPF_MAP_TYPE_ARRAY if key_size == 4 => Contents::Array {
                        slots: m.max_entries,
                        members: keys
                            .chunks_exact(4)
                            .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]))
                            .collect(),
                    },
                    BPF_MAP_TYPE_LPM_TRIE if key_size > 4 => {
                        let mut by_len: HashMap<u32, HashSet<Vec<u8>>> = HashMap::new();
                        for k in keys.chunks_exact(key_size) {
                            let len = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
                            by_len.entry(len).or_default().insert(masked(&k[4..], len));
                        }
                        Contents::Trie {
                            data_len: key_size - 4,
                            by_len,
                        }
                    }
                    _ => {
                        return Err(MapModelError::NotASet {
                            map: m.name(),
                            map_type: m.map_type,
                            key_size: m.key_size,
                            value_size: m.value_size,
                        })
                    }
                };
                model.maps.insert(n as u32, (key_size, contents));
            }
            _ => {}
        }
    }
    Ok(model)
}

/// `data` with every bit past the first `bits` cleared.
fn masked(data: &[u8], bits: u32) -> Vec<u8> {
    data.iter()
        .enumerate()
        .map(|(i, b)| {
            let from = i as u32 * 8;
            if bits >= from + 8 {
                *b
            } else if bits <= from {
                0
            } else {
                b & (0xffu8 << (8 - (bits - from)))
            }
        })
        .collect()
}

impl SetModel {
    /// The key size of set map `map`, if it is one.
    pub(super) fn key_size(&self, map: u32) -> Option<usize> {
        self.maps.get(&map).map(|(k, _)| *k)
    }

    /// A lookup of `key` (the map's key size) in set map `map`, filled or not.
    pub(super) fn lookup(&self, map: u32, key: &[u8], filled: bool) -> SetHit {
        let Some((_, contents)) = self.maps.get(&map) else {
            return SetHit::Miss;
        };
        match contents {
            Contents::Array { slots, members } => {
                let slot = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
                if slot >= *slots {
                    SetHit::Miss
                } else if filled && members.contains(&slot) {
                    SetHit::Member
                } else {
                    SetHit::Zero
                }
            }
            _ if !filled => SetHit::Miss,
            Contents::Valued(at) => at.get(key).map_or(SetHit::Miss, |&o| SetHit::Value(o)),
            Contents::ValuedTrie { data_len, by_len } => {
                let want =
                    u32::from_ne_bytes([key[0], key[1], key[2], key[3]]).min(*data_len as u32 * 8);
                let data = &key[4..];
                // The longest prefix that holds the key.
                by_len
                    .iter()
                    .filter(|(&len, _)| len <= want)
                    .filter_map(|(&len, keys)| Some((len, *keys.get(&masked(data, len))?)))
                    .max_by_key(|&(len, _)| len)
                    .map_or(SetHit::Miss, |(_, o)| SetHit::Value(o))
            }
            Contents::Hash(keys) => {
                if keys.contains(key) {
                    SetHit::Member
                } else {
                    SetHit::Miss
                }
            }
            Contents::Trie { data_len, by_len } => {
                let want =
                    u32::from_ne_bytes([key[0], key[1], key[2], key[3]]).min(*data_len as u32 * 8);
                let data = &key[4..];
                let hit = by_len
                    .iter()
                    .any(|(&len, keys)| len <= want && keys.contains(&masked(data, len)));
                if hit {
                    SetHit::Member
                } else {
                    SetHit::Miss
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_prefix_bits_only() {
        assert_eq!(masked(&[10, 1, 2, 3], 8), vec![10, 0, 0, 0]);
        assert_eq!(masked(&[10, 0xff, 2, 3], 12), vec![10, 0xf0, 0, 0]);
        assert_eq!(masked(&[1, 2], 0), vec![0, 0]);
        assert_eq!(masked(&[1, 2], 16), vec![1, 2]);
    }
}
