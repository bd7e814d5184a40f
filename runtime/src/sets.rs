//! The set maps: large sets of a policy (`remote.ip in blocklist` with a million
//! prefixes) are not code but keys of `skp_set_<k>` maps (LPM_TRIE, HASH or ARRAY), listed
//! in the object's `.skp.set.<map>` sections. The kernel creates the maps empty; this
//! module inserts the keys (every value [`SET_MEMBER`]) and then writes [`SETS_READY`]
//! into `skp_sets[0]`. Until then the program drops every message (it fails closed), so
//! this must run before the program sees a socket.

use std::os::fd::AsFd;

use aya::maps::{Map, MapData};
use aya::Ebpf;
use object::{Object, ObjectSection};
use skpc_abi::{SETS_NAME, SETS_READY, SET_MAP_PREFIX, SET_MEMBER, SET_SECTION_PREFIX};

use crate::error::{Error, ErrorKind, Result};
use crate::index::insert_all;
use crate::sys;

/// The keys of one set map, as the object lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSection {
    /// The map's name (`skp_set_<k>`).
    pub map: String,
    /// The keys, back to back.
    pub keys: Vec<u8>,
}

/// The `.skp.set.<map>` sections of an object, in the object's order.
pub fn set_sections(object: &[u8]) -> Result<Vec<SetSection>> {
    let file = object::File::parse(object).map_err(|e| {
        Error::caused(
            ErrorKind::BadObject,
            "the policy object is not a readable ELF file; build it with skpc",
            e,
        )
    })?;
    let mut out = Vec::new();
    for section in file.sections() {
        let Ok(name) = section.name() else { continue };
        let Some(map) = name.strip_prefix(SET_SECTION_PREFIX) else {
            continue;
        };
        let keys = section.data().map_err(|e| {
            Error::caused(
                ErrorKind::BadObject,
                format!("the section {name} of the policy object cannot be read; rebuild the object with skpc"),
                e,
            )
        })?;
        out.push(SetSection {
            map: map.to_string(),
            keys: keys.to_vec(),
        });
    }
    Ok(out)
}

/// Fills the set maps of an object that aya loaded from `object`: inserts the keys of
/// every `.skp.set.<map>` section into its map, then marks the sets ready. Returns the
/// number of keys (0 for an object without sets, which needs nothing). [`crate::Enforcement`]
/// does this itself; call it when you load an skpc object with aya yourself, before the
/// verdict program can run on a socket. On an error the ready flag is not set, so the
/// program keeps dropping every message.
pub fn fill_sets(ebpf: &Ebpf, object: &[u8]) -> Result<usize> {
    let sections = set_sections(object)?;
    let ready = ebpf.map(SETS_NAME);
    let set_maps: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with(SET_MAP_PREFIX) && !n.ends_with("_b"))
        .collect();
    if sections.is_empty() && set_maps.is_empty() && ready.is_none() {
        return Ok(0);
    }
    // Every set map has its keys and the flag exists, or nothing is written.
    if let Some(missing) = set_maps
        .iter()
        .find(|m| !sections.iter().any(|s| s.map == **m))
    {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("the policy object has the set map {missing} but no {SET_SECTION_PREFIX}{missing} section with its keys, so its rules would never match; rebuild it with skpc (and do not strip that section)"),
        ));
    }
    let Some(ready) = ready else {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("the policy object has set maps but no {SETS_NAME} map to mark them filled; rebuild it with skpc"),
        ));
    };
    let ready = match ready {
        Map::Array(d) => d,
        _ => {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the map {SETS_NAME} is not an ARRAY map; rebuild the object with skpc"),
            ))
        }
    };
    let mut total = 0;
    for s in &sections {
        let map = set_map(ebpf, &s.map)?;
        total += fill_one(map, &s.map, &s.keys)?;
    }
    sys::map_update(
        ready.fd().as_fd(),
        &0u32.to_ne_bytes(),
        &SETS_READY.to_ne_bytes(),
        sys::BPF_ANY,
    )
    .map_err(|e| Error::io(format_args!("marking the set maps ready in {SETS_NAME}"), e))?;
    Ok(total)
}

/// The map behind a set map: an LPM_TRIE, HASH or ARRAY.
fn set_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::LpmTrie(d) | Map::HashMap(d) | Map::Array(d) => Some(d),
        _ => None,
    }
}

/// The set map `name` of the object.
fn set_map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    let Some(map) = ebpf.map(name) else {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("the policy object has a {SET_SECTION_PREFIX}{name} section but no map {name}; rebuild it with skpc"),
        ));
    };
    set_data(map).ok_or_else(|| {
        Error::new(
            ErrorKind::BadObject,
            format!("the set map {name} is not an LPM_TRIE, HASH or ARRAY map; rebuild the object with skpc"),
        )
    })
}

/// Inserts the entries of a set map's section into it; returns how many. A map with
/// one-byte values lists its keys back to back (every value [`SET_MEMBER`]); a map with
/// larger values (the IPv4 block hashes, whose values are bitmaps) lists each key
/// followed by its value.
pub(crate) fn fill_one(map: &MapData, name: &str, entries: &[u8]) -> Result<usize> {
    let info = map
        .info()
        .map_err(|e| Error::from_aya(&format!("reading the definition of {name}"), e))?;
    let key_size = info.key_size() as usize;
    let value_size = info.value_size() as usize;
    let bad = || {
        Error::new(
            ErrorKind::BadObject,
            format!(
                "the set map {name} has {key_size}-byte keys and {value_size}-byte values, and its section {} bytes, not a whole number of entries; build the object with the skpc of this runtime",
                entries.len()
            ),
        )
    };
    if value_size == 0 || key_size == 0 {
        return Err(bad());
    }
    let (keys, values) = if value_size == 1 {
        if !entries.len().is_multiple_of(key_size) {
            return Err(bad());
        }
        let count = entries.len() / key_size;
        (std::borrow::Cow::Borrowed(entries), vec![SET_MEMBER; count])
    } else {
        let (keys, values) =
            skpc_abi::set_entries(entries, key_size, value_size).ok_or_else(bad)?;
        (std::borrow::Cow::Owned(keys), values)
    };
    let count = keys.len() / key_size;
    if count > info.max_entries() as usize {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the set map {name} holds at most {} keys, its section has {count}; rebuild the object with skpc",
                info.max_entries()
            ),
        ));
    }
    insert_all(
        map.fd().as_fd(),
        &format!("the set map {name}"),
        &keys,
        key_size,
        &values,
        value_size,
    )?;
    Ok(count)
}

/// New contents for a set read from a file (`set NAME = file "..."`), as a new build of
/// the same policy lists them: the slot of `skp_sets` that says which buffer is live,
/// and for each of the set's maps the names of its two buffers and the new keys (the
/// map's key size each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetReplacement {
    pub slot: u32,
    pub maps: Vec<SetBuffers>,
}

/// One map of a set read from a file: its buffers and its new keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetBuffers {
    /// `skp_set_<k>` and `skp_set_<k>_b`.
    pub names: [String; 2],
    pub keys: Vec<u8>,
}

/// How long a buffer stays untouched after it stopped being live before it is written
/// again. A program that read the old slot value finishes its run within microseconds
/// (sk_msg programs run under RCU and cannot sleep); this leaves a wide margin, so that
/// no message is ever judged by a buffer being rewritten.
pub const SET_BUFFER_QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// What the runtime knows about the buffers of the sets read from files: the sorted keys
/// each buffer map holds, and when each slot last flipped.
#[derive(Debug, Default)]
pub(crate) struct SetState {
    held: std::collections::HashMap<String, Vec<u8>>,
    flipped: std::collections::HashMap<u32, std::time::Instant>,
}

impl SetState {
    /// The state after `fill_sets`: buffer 0 of every map (of `maps`, taken from the
    /// loaded object) holds its section's keys.
    pub(crate) fn filled(maps: &[(String, Map)], object: &[u8]) -> Result<SetState> {
        let mut state = SetState::default();
        for s in set_sections(object)? {
            let Some(d) = maps
                .iter()
                .find(|(n, _)| *n == s.map)
                .and_then(|(_, m)| set_data(m))
            else {
                continue;
            };
            let size = d
                .info()
                .map_err(|e| Error::from_aya(&format!("reading the definition of {}", s.map), e))?
                .key_size() as usize;
            state.held.insert(s.map, sorted_keys(&s.keys, size));
        }
        Ok(state)
    }

    /// Writes `r` into the buffers that are not live, then flips the slot: from the flip
    /// on, every message sees the new contents whole. Only keys that differ from what
    /// the buffer held are written. Returns the number of keys now live.
    pub(crate) fn replace(&mut self, maps: &[(String, Map)], r: &SetReplacement) -> Result<usize> {
        let find = |name: &str| -> Result<&MapData> {
            maps.iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, m)| set_data(m))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::BadObject,
                        format!("the running policy has no set map {name}; the set's declaration changed, so reload the whole policy"),
                    )
                })
        };
        let ready = find(SETS_NAME)?;
        let slot_key = r.slot.to_ne_bytes();
        let live = sys::map_lookup_u32(ready.fd().as_fd(), &slot_key)
            .map_err(|e| Error::io(format_args!("reading slot {} of {SETS_NAME}", r.slot), e))?;
        let target = usize::from(live == 0);
        if let Some(at) = self.flipped.get(&r.slot) {
            let quiet = at.elapsed();
            if quiet < SET_BUFFER_QUIET {
                std::thread::sleep(SET_BUFFER_QUIET - quiet);
            }
        }
        let mut total = 0;
        for m in &r.maps {
            let name = &m.names[target];
            let map = find(name)?;
            let info = map
                .info()
                .map_err(|e| Error::from_aya(&format!("reading the definition of {name}"), e))?;
            let size = info.key_size() as usize;
            // A set read from a file is a trie or the port array (one-byte values): its
            // shape never depends on its contents.
            if size == 0 || info.value_size() != 1 || !m.keys.len().is_multiple_of(size) {
                return Err(Error::new(
                    ErrorKind::BadObject,
                    format!("the new keys of {name} are not whole {size}-byte keys; rebuild with the skpc of this runtime"),
                ));
            }
            let new = sorted_keys(&m.keys, size);
            let old = self.held.remove(name).unwrap_or_default();
            let (gone, added) = diff(&old, &new, size);
            let is_array = matches!(info.map_type(), Ok(aya::maps::MapType::Array));
            for key in gone.chunks_exact(size) {
                let result = if is_array {
                    sys::map_update(map.fd().as_fd(), key, &[0], sys::BPF_ANY)
                } else {
                    sys::map_delete(map.fd().as_fd(), key)
                };
                result.map_err(|e| {
                    Error::io(format_args!("removing a key from the set map {name}"), e)
                })?;
            }
            let values = vec![SET_MEMBER; added.len() / size];
            insert_all(
                map.fd().as_fd(),
                &format!("the set map {name}"),
                &added,
                size,
                &values,
                1,
            )?;
            total += new.len() / size;
            self.held.insert(name.clone(), new);
        }
        sys::map_update(
            ready.fd().as_fd(),
            &slot_key,
            &(target as u32).to_ne_bytes(),
            sys::BPF_ANY,
        )
        .map_err(|e| Error::io(format_args!("making the new set live in {SETS_NAME}"), e))?;
        self.flipped.insert(r.slot, std::time::Instant::now());
        Ok(total)
    }
}

/// `keys` (back to back, `size` bytes each) sorted and without repeats.
fn sorted_keys(keys: &[u8], size: usize) -> Vec<u8> {
    let mut chunks: Vec<&[u8]> = keys.chunks_exact(size.max(1)).collect();
    chunks.sort_unstable();
    chunks.dedup();
    chunks.concat()
}

/// The keys of `old` not in `new`, and those of `new` not in `old` (both sorted).
fn diff(old: &[u8], new: &[u8], size: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (
        old.chunks_exact(size).peekable(),
        new.chunks_exact(size).peekable(),
    );
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x == y => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x < y => {
                gone.extend_from_slice(x);
                a.next();
            }
            (Some(_), Some(y)) => {
                added.extend_from_slice(y);
                b.next();
            }
            (Some(x), None) => {
                gone.extend_from_slice(x);
                a.next();
            }
            (None, Some(y)) => {
                added.extend_from_slice(y);
                b.next();
            }
            (None, None) => return (gone, added),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_writes_only_what_changed() {
        let old = sorted_keys(&[3, 0, 1, 0, 2, 0], 2);
        assert_eq!(old, vec![1, 0, 2, 0, 3, 0]);
        let new = sorted_keys(&[2, 0, 4, 0, 1, 0, 4, 0], 2);
        let (gone, added) = diff(&old, &new, 2);
        assert_eq!(gone, vec![3, 0]);
        assert_eq!(added, vec![4, 0]);
        assert_eq!(diff(&[], &new, 2), (Vec::new(), new.clone()));
    }
}
