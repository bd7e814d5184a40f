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

/// The set map `name` of the object.
fn set_map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name) {
        Some(Map::LpmTrie(d) | Map::HashMap(d) | Map::Array(d)) => Ok(d),
        Some(_) => Err(Error::new(
            ErrorKind::BadObject,
            format!("the set map {name} is not an LPM_TRIE, HASH or ARRAY map; rebuild the object with skpc"),
        )),
        None => Err(Error::new(
            ErrorKind::BadObject,
            format!("the policy object has a {SET_SECTION_PREFIX}{name} section but no map {name}; rebuild it with skpc"),
        )),
    }
}

/// Inserts `keys` (back to back, the map's key size each) into a set map; returns how
/// many.
pub(crate) fn fill_one(map: &MapData, name: &str, keys: &[u8]) -> Result<usize> {
    let info = map
        .info()
        .map_err(|e| Error::from_aya(&format!("reading the definition of {name}"), e))?;
    let key_size = info.key_size() as usize;
    if info.value_size() != 1 || key_size == 0 || !keys.len().is_multiple_of(key_size) {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the set map {name} has {key_size}-byte keys and {}-byte values, and its section {} bytes; this runtime writes one-byte values and whole keys; build the object with the skpc of this runtime",
                info.value_size(),
                keys.len()
            ),
        ));
    }
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
    let values = vec![SET_MEMBER; count];
    insert_all(
        map.fd().as_fd(),
        &format!("the set map {name}"),
        keys,
        key_size,
        &values,
        1,
    )?;
    Ok(count)
}
