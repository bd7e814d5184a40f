//! The rule index: large blocks of port and address rules are not code but entries of
//! the HASH map `skp_index`, listed in the object's `.skp.index` section. The kernel
//! creates the map empty; this module inserts the entries and then writes
//! [`INDEX_READY`] into `skp_index_ready[0]`. Until then the program drops every
//! message (it fails closed), so this must run before the program sees a socket.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Map, MapData};
use aya::Ebpf;
use object::{Object, ObjectSection};
use skpc_abi::{
    IndexEntry, PortEntry, INDEX_NAME, INDEX_PORTS_NAME, INDEX_PORTS_SECTION, INDEX_READY,
    INDEX_READY_NAME, INDEX_SECTION,
};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The bytes of section `name` of the object, `None` without it; an error if the
/// object is not an ELF file or the length is not a whole number of `record`-byte
/// records.
fn records<'a>(object: &'a [u8], name: &str, record: usize) -> Result<Option<&'a [u8]>> {
    let file = object::File::parse(object).map_err(|e| {
        Error::caused(
            ErrorKind::BadObject,
            "the policy object is not a readable ELF file; build it with skpc",
            e,
        )
    })?;
    let Some(section) = file.section_by_name(name) else {
        return Ok(None);
    };
    let data = section.data().map_err(|e| {
        Error::caused(
            ErrorKind::BadObject,
            format!("the section {name} of the policy object cannot be read; rebuild the object with skpc"),
            e,
        )
    })?;
    if data.len() % record != 0 {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the section {name} of the policy object is {} bytes, not a whole number of {record}-byte index entries (truncated or damaged); rebuild the object with skpc",
                data.len(),
            ),
        ));
    }
    Ok(Some(data))
}

/// The entries of the object's `.skp.index` section, in the section's order; `None` if
/// the object has no such section. An error if the object is not an ELF file or the
/// section's length is not a whole number of [`IndexEntry::SIZE`]-byte records.
pub fn index_entries(object: &[u8]) -> Result<Option<Vec<IndexEntry>>> {
    Ok(
        records(object, INDEX_SECTION, IndexEntry::SIZE)?.map(|data| {
            data.chunks_exact(IndexEntry::SIZE)
                .map(|c| {
                    let mut record = [0u8; IndexEntry::SIZE];
                    record.copy_from_slice(c);
                    IndexEntry::from_bytes(&record)
                })
                .collect()
        }),
    )
}

/// The non-zero slots of the port array in the object's `.skp.index_ports` section;
/// empty if the object has none. Errors as for [`index_entries`].
pub fn port_entries(object: &[u8]) -> Result<Vec<PortEntry>> {
    Ok(port_section(object)?.unwrap_or_default())
}

fn port_section(object: &[u8]) -> Result<Option<Vec<PortEntry>>> {
    Ok(
        records(object, INDEX_PORTS_SECTION, PortEntry::SIZE)?.map(|data| {
            data.chunks_exact(PortEntry::SIZE)
                .map(|c| {
                    let mut record = [0u8; PortEntry::SIZE];
                    record.copy_from_slice(c);
                    PortEntry::from_bytes(&record)
                })
                .collect()
        }),
    )
}

/// Fills the rule index of an object that aya loaded: inserts every entry of the
/// object's `.skp.index` section into its `skp_index` map and every slot of its
/// `.skp.index_ports` section into its `skp_index_ports` array, then marks the index
/// ready. Returns the number of entries, hash map and port array together (0 for an
/// object without an index, which needs nothing). [`crate::Enforcement`] does this
/// itself; call it when you load an skpc object with aya yourself, before the verdict
/// program can run on a socket.
///
/// `object` must be the bytes `ebpf` was loaded from. On an error the ready flag is
/// not set, so the program keeps dropping every message.
pub fn fill_index(ebpf: &Ebpf, object: &[u8]) -> Result<usize> {
    let entries = index_entries(object)?;
    let index = ebpf.map(INDEX_NAME);
    let ready = ebpf.map(INDEX_READY_NAME);
    let (entries, index, ready) = match (entries, index, ready) {
        (None, None, None) => {
            if ebpf.map(INDEX_PORTS_NAME).is_some() {
                return Err(Error::new(
                    ErrorKind::BadObject,
                    format!("the policy object has the port index {INDEX_PORTS_NAME} without {INDEX_NAME} and {INDEX_READY_NAME}; rebuild it with skpc"),
                ));
            }
            return Ok(0);
        }
        (Some(e), Some(i), Some(r)) => (e, i, r),
        (None, _, _) => {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the policy object has the rule index maps {INDEX_NAME}/{INDEX_READY_NAME} but no {INDEX_SECTION} section with their entries, so it would drop every message; rebuild it with skpc (and do not strip that section)"),
            ))
        }
        (Some(_), _, _) => {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the policy object has a {INDEX_SECTION} section but not both maps {INDEX_NAME} and {INDEX_READY_NAME}; rebuild it with skpc"),
            ))
        }
    };
    let index = hash_map(index)?;
    let ready = array_map(ready, INDEX_READY_NAME)?;
    let slots = counter_slots(ebpf)?;
    check_shape(index, &entries, slots)?;
    // Both checked before anything is written.
    let ports = checked_ports(ebpf, object, slots)?;
    let mut keys = Vec::with_capacity(entries.len() * IndexEntry::KEY_SIZE);
    let mut values = Vec::with_capacity(entries.len() * IndexEntry::VALUE_SIZE);
    for e in &entries {
        keys.extend_from_slice(&e.key_bytes());
        values.extend_from_slice(&e.value_bytes());
    }
    insert_all(
        index.fd().as_fd(),
        &format!("the rule index {INDEX_NAME}"),
        &keys,
        IndexEntry::KEY_SIZE,
        &values,
        IndexEntry::VALUE_SIZE,
    )?;
    let mut n_ports = 0;
    if let Some((map, ports)) = ports {
        n_ports = ports.len();
        let mut keys = Vec::with_capacity(ports.len() * 4);
        let mut values = Vec::with_capacity(ports.len() * 4);
        for e in &ports {
            keys.extend_from_slice(&e.slot.to_ne_bytes());
            values.extend_from_slice(&e.value.to_ne_bytes());
        }
        insert_all(
            map.fd().as_fd(),
            &format!("the port index {INDEX_PORTS_NAME}"),
            &keys,
            4,
            &values,
            4,
        )?;
    }
    sys::map_update(
        ready.fd().as_fd(),
        &0u32.to_ne_bytes(),
        &INDEX_READY.to_ne_bytes(),
        sys::BPF_ANY,
    )
    .map_err(|e| {
        Error::io(
            format_args!("marking the rule index ready in {INDEX_READY_NAME}"),
            e,
        )
    })?;
    Ok(entries.len() + n_ports)
}

/// The port array and its slots from `.skp.index_ports`, checked: the map and the
/// section come together (an array without its section would never match its rules,
/// silently), every slot is inside the array and names a rule that has a counter slot,
/// and no slot comes twice. `None` when the object has neither.
fn checked_ports<'a>(
    ebpf: &'a Ebpf,
    object: &[u8],
    counter_slots: u32,
) -> Result<Option<(&'a MapData, Vec<PortEntry>)>> {
    let (map, ports) = match (ebpf.map(INDEX_PORTS_NAME), port_section(object)?) {
        (None, None) => return Ok(None),
        (None, Some(p)) if p.is_empty() => return Ok(None),
        (Some(m), Some(p)) => (array_map(m, INDEX_PORTS_NAME)?, p),
        (Some(_), None) => {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the policy object has the port index {INDEX_PORTS_NAME} but no {INDEX_PORTS_SECTION} section with its slots, so its port rules would never match; rebuild it with skpc (and do not strip that section)"),
            ))
        }
        (None, Some(_)) => {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the policy object has a {INDEX_PORTS_SECTION} section but no ARRAY map {INDEX_PORTS_NAME}; rebuild it with skpc"),
            ))
        }
    };
    let info = map.info().map_err(|e| {
        Error::from_aya(&format!("reading the definition of {INDEX_PORTS_NAME}"), e)
    })?;
    if info.key_size() != 4 || info.value_size() != 4 {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the map {INDEX_PORTS_NAME} has {}-byte keys and {}-byte values, this runtime writes 4 and 4; build the object with the skpc of this runtime",
                info.key_size(),
                info.value_size()
            ),
        ));
    }
    let slots = info.max_entries();
    for (i, e) in ports.iter().enumerate() {
        let problem = if e.slot >= slots {
            format!(
                "slot {}, but the map {INDEX_PORTS_NAME} has {slots} slots",
                e.slot
            )
        } else if e.value == 0 || e.value > counter_slots {
            format!(
                "rule {} (value {}), but the policy has {counter_slots} counter slots",
                e.value as i64 - 1,
                e.value
            )
        } else {
            continue;
        };
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("entry {i} of the section {INDEX_PORTS_SECTION} names {problem}; rebuild the object with skpc"),
        ));
    }
    if !ports.windows(2).all(|w| w[0].slot < w[1].slot) {
        let mut sorted: Vec<u32> = ports.iter().map(|e| e.slot).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::new(
                ErrorKind::BadObject,
                format!("the section {INDEX_PORTS_SECTION} has slot {} twice (which rule matches first would be ambiguous); rebuild the object with skpc", w[0]),
            ));
        }
    }
    Ok(Some((map, ports)))
}

/// The number of counter slots (every rule has one); no limit without the map.
/// The counter slots of the object's counters maps (`u32::MAX` without any: the object
/// does not count, so no index slot can be out of its range).
fn counter_slots(ebpf: &aya::Ebpf) -> Result<u32> {
    let mut slots = 0u32;
    let mut any = false;
    for chunk in 0..skpc_abi::COUNTER_CHUNKS_MAX {
        let name = skpc_abi::counters_name(chunk);
        let Some(Map::Array(d)) = ebpf.map(&name) else {
            break;
        };
        any = true;
        slots += d
            .info()
            .map(|i| i.value_size() / skpc_abi::Counter::SIZE as u32)
            .map_err(|e| Error::from_aya(&format!("reading the definition of {name}"), e))?;
    }
    Ok(if any { slots } else { u32::MAX })
}

fn hash_map(map: &Map) -> Result<&MapData> {
    match map {
        Map::HashMap(d) => Ok(d),
        _ => Err(Error::new(
            ErrorKind::BadObject,
            format!("the map {INDEX_NAME} is not a HASH map; rebuild the object with skpc"),
        )),
    }
}

fn array_map<'a>(map: &'a Map, name: &str) -> Result<&'a MapData> {
    match map {
        Map::Array(d) => Ok(d),
        _ => Err(Error::new(
            ErrorKind::BadObject,
            format!("the map {name} is not an ARRAY map; rebuild the object with skpc"),
        )),
    }
}

/// The map's key and value sizes are the ABI's, it has room for every entry, every
/// entry names a rule that has a counter slot, and no key comes twice (the kernel
/// would keep the last, which need not be the first matching rule).
fn check_shape(index: &MapData, entries: &[IndexEntry], slots: u32) -> Result<()> {
    let info = index
        .info()
        .map_err(|e| Error::from_aya(&format!("reading the definition of {INDEX_NAME}"), e))?;
    if info.key_size() as usize != IndexEntry::KEY_SIZE
        || info.value_size() as usize != IndexEntry::VALUE_SIZE
    {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the map {INDEX_NAME} has {}-byte keys and {}-byte values, this runtime writes {} and {}; build the object with the skpc of this runtime",
                info.key_size(),
                info.value_size(),
                IndexEntry::KEY_SIZE,
                IndexEntry::VALUE_SIZE
            ),
        ));
    }
    if entries.len() > info.max_entries() as usize {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "the section {INDEX_SECTION} has {} entries but the map {INDEX_NAME} holds at most {}; rebuild the object with skpc",
                entries.len(),
                info.max_entries()
            ),
        ));
    }
    let bad_rule = entries
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.used().find(|s| s.rule >= slots).map(|s| (i, s.rule)));
    if let Some((i, rule)) = bad_rule {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!(
                "entry {i} of the section {INDEX_SECTION} names rule {rule}, but the policy has {slots} counter slots; rebuild the object with skpc"
            ),
        ));
    }
    if let Some(key) = repeated_key(entries) {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("the section {INDEX_SECTION} has the key {key:?} twice (which rule matches first would be ambiguous); rebuild the object with skpc"),
        ));
    }
    Ok(())
}

/// A key that more than one entry has. skpc writes the entries sorted by key, so
/// one pass usually proves there is none.
fn repeated_key(entries: &[IndexEntry]) -> Option<[u32; IndexEntry::KEY_WORDS]> {
    if entries.windows(2).all(|w| w[0].key < w[1].key) {
        return None;
    }
    let mut keys: Vec<[u32; IndexEntry::KEY_WORDS]> = entries.iter().map(|e| e.key).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Inserts the entries: one BPF_MAP_UPDATE_BATCH (the kernel takes ~0.15 s for
/// 100,000), or one update per entry where the kernel has no batch operations (before
/// 5.6; ~3x slower). The keys are distinct ([`repeated_key`]) and the map is new, so
/// BPF_ANY (batch updates refuse BPF_NOEXIST with EINVAL) overwrites nothing. `what`
/// names the map in errors ("the rule index skp_index").
pub(crate) fn insert_all(
    map: BorrowedFd<'_>,
    what: &str,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
) -> Result<()> {
    let count = keys.len() / key_size.max(1);
    if count == 0 {
        return Ok(());
    }
    let failed_at =
        match sys::map_update_batch(map, keys, key_size, values, value_size, sys::BPF_ANY) {
            Ok(()) => return Ok(()),
            // Refused before it started (the kernel wrote no count back).
            Err((n, e)) if no_batch(&e) && (n == 0 || n as usize == count) => {
                let pairs = keys
                    .chunks_exact(key_size)
                    .zip(values.chunks_exact(value_size));
                let mut failed = None;
                for (i, (k, v)) in pairs.enumerate() {
                    if let Err(e) = sys::map_update(map, k, v, sys::BPF_ANY) {
                        failed = Some((i, e));
                        break;
                    }
                }
                match failed {
                    None => return Ok(()),
                    Some(f) => f,
                }
            }
            Err((n, e)) => (n as usize, e),
        };
    let (i, e) = failed_at;
    if matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::E2BIG)) {
        return Err(Error::caused(
            ErrorKind::Io,
            format!(
                "inserting entry {i} of {count} into {what} failed: the kernel has no memory left for BPF maps; free memory or enforce a smaller policy"
            ),
            e,
        ));
    }
    Err(Error::io(
        format_args!("inserting entry {i} of {count} into {what}"),
        e,
    ))
}

/// Whether a batch update failed because the kernel or map type has none.
fn no_batch(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(sys::ENOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_elf_object_is_an_error_not_a_panic() {
        let e = index_entries(b"not an object").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadObject);
        assert!(e.message().contains("build it with skpc"), "{e}");
    }
}
