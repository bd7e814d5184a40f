//! The map models: which maps of an object the VM can stand in for, and the rule index
//! (`skp_index`, `skp_index_ports`, `skp_index_ready`) as the runtime fills it. An
//! object whose maps are not shaped as skpc makes them is refused here, before any run,
//! rather than approximated.

use std::collections::HashMap;

use skpc_abi::{IndexEntry, PortEntry, INDEX_NAME, INDEX_PORTS_NAME, INDEX_READY_NAME};

use crate::bpf::uapi::{BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH};
use crate::lower::{MapKind, MapSpec};

/// An object's maps are not what the VM's models implement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapModelError {
    #[error("the object defines {map} twice")]
    DefinedTwice { map: &'static str },
    #[error("{map} is map type {map_type} with {key_size}-byte keys and {value_size}-byte values; the VM models an ARRAY of u32")]
    NotU32Array {
        map: &'static str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
    },
    #[error(
        "{map} is map type {map_type} with {key_size}-byte keys and {value_size}-byte values; the VM models a HASH with {}-byte keys and {}-byte values",
        IndexEntry::KEY_SIZE,
        IndexEntry::VALUE_SIZE
    )]
    NotIndexHash {
        map: &'static str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
    },
    #[error("{count} port entries but no {INDEX_PORTS_NAME} map")]
    PortEntriesWithoutMap { count: usize },
    #[error("port entry slot {slot} is past the end of {INDEX_PORTS_NAME} ({slots} slots)")]
    PortSlotPastEnd { slot: u32, slots: u32 },
    #[error("two entries for slot {slot} of {INDEX_PORTS_NAME}: an array slot holds one value")]
    PortSlotTwice { slot: u32 },
    #[error(
        "{entries} entries for {map}, which holds {max_entries}: the runtime could not fill it"
    )]
    TooManyEntries {
        entries: usize,
        map: &'static str,
        max_entries: u32,
    },
    #[error("{count} index entries but no {INDEX_NAME} map")]
    EntriesWithoutMap { count: usize },
    #[error("{map} has no slot for the flag")]
    NoFlagSlot { map: &'static str },
    #[error("a rule index without {INDEX_READY_NAME}: nothing says when it is filled")]
    NoReadyFlag,
    #[error("{map} is map type {map_type} with {key_size}-byte keys and {value_size}-byte values; the VM models a set as an LPM_TRIE, HASH or ARRAY (u32 keys) of one-byte values, or an LPM_TRIE or HASH of larger ones")]
    NotASet {
        map: String,
        map_type: u32,
        key_size: u32,
        value_size: u32,
    },
    #[error(
        "two entries of {INDEX_NAME} have the key {key:?}: a HASH map keeps one value per key"
    )]
    KeyTwice { key: [u32; IndexEntry::KEY_WORDS] },
}

/// What the runtime writes into the rule index maps (`Lowered::index` and
/// `Lowered::port_index`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexData<'a> {
    pub entries: &'a [IndexEntry],
    pub ports: &'a [PortEntry],
    /// The keys of the set maps (`Lowered::sets`).
    pub sets: &'a [crate::lower::SetKeys],
}

/// The rule index maps of one program, filled.
#[derive(Debug, Default)]
pub(super) struct IndexModel {
    /// HASH key bytes to the position of the entry's value in `values`.
    pub(super) slots: HashMap<[u8; IndexEntry::KEY_SIZE], usize>,
    /// The value of every HASH entry (its `IndexEntry::SLOTS` slots, three u32 each),
    /// one after the other: entry `i` starts at word `i * VALUE_SIZE / 4`.
    pub(super) values: Vec<u32>,
    /// Port array slot to the position of its value in `port_values`.
    pub(super) port_slots: HashMap<u32, usize>,
    /// The values of the port array's non-zero slots.
    pub(super) port_values: Vec<u32>,
    /// `max_entries` of the port array (0: the object has none).
    pub(super) port_array_slots: u32,
    /// Zero cells a run may hand out for other slots of the port array: one per call
    /// instruction (no loops, so no more lookups than that).
    pub(super) zero_cells: usize,
    /// `max_entries` of the ready flag ARRAY (0: the object has none).
    pub(super) ready_slots: u32,
}

/// Refuses a map that is not an ARRAY with u32 keys and values (the port array and the
/// ready flag).
fn u32_array(m: &MapSpec) -> Result<(), MapModelError> {
    if m.map_type != BPF_MAP_TYPE_ARRAY || m.key_size != 4 || m.value_size != 4 {
        return Err(MapModelError::NotU32Array {
            map: m.kind.name(),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
        });
    }
    Ok(())
}

/// The rule index of an object: checks that its maps are what the model implements.
pub(super) fn index_model(
    maps: &[MapSpec],
    data: IndexData<'_>,
    calls: usize,
) -> Result<IndexModel, MapModelError> {
    let entries = data.entries;
    let one = |kind: MapKind| -> Result<Option<&MapSpec>, MapModelError> {
        let mut found = maps.iter().filter(|m| m.kind == kind);
        let first = found.next();
        if found.next().is_some() {
            return Err(MapModelError::DefinedTwice { map: kind.name() });
        }
        Ok(first)
    };
    let index = one(MapKind::Index)?;
    let ready = one(MapKind::IndexReady)?;
    let ports = one(MapKind::IndexPorts)?;
    let mut model = IndexModel::default();
    if let Some(m) = ports {
        u32_array(m)?;
        model.port_array_slots = m.max_entries;
        model.zero_cells = calls;
    } else if !data.ports.is_empty() {
        return Err(MapModelError::PortEntriesWithoutMap {
            count: data.ports.len(),
        });
    }
    for e in data.ports {
        if e.slot >= model.port_array_slots {
            return Err(MapModelError::PortSlotPastEnd {
                slot: e.slot,
                slots: model.port_array_slots,
            });
        }
        let at = model.port_values.len();
        if model.port_slots.insert(e.slot, at).is_some() {
            return Err(MapModelError::PortSlotTwice { slot: e.slot });
        }
        model.port_values.push(e.value);
    }
    if let Some(m) = index {
        if m.map_type != BPF_MAP_TYPE_HASH
            || m.key_size as usize != IndexEntry::KEY_SIZE
            || m.value_size as usize != IndexEntry::VALUE_SIZE
        {
            return Err(MapModelError::NotIndexHash {
                map: m.kind.name(),
                map_type: m.map_type,
                key_size: m.key_size,
                value_size: m.value_size,
            });
        }
        if entries.len() > m.max_entries as usize {
            return Err(MapModelError::TooManyEntries {
                entries: entries.len(),
                map: m.kind.name(),
                max_entries: m.max_entries,
            });
        }
    } else if !entries.is_empty() {
        return Err(MapModelError::EntriesWithoutMap {
            count: entries.len(),
        });
    }
    if let Some(m) = ready {
        u32_array(m)?;
        if m.max_entries == 0 {
            return Err(MapModelError::NoFlagSlot { map: m.kind.name() });
        }
        model.ready_slots = m.max_entries;
    } else if index.is_some() || ports.is_some() {
        return Err(MapModelError::NoReadyFlag);
    }
    model
        .values
        .reserve(entries.len() * IndexEntry::VALUE_SIZE / 4);
    for (at, e) in entries.iter().enumerate() {
        if model.slots.insert(e.key_bytes(), at).is_some() {
            return Err(MapModelError::KeyTwice { key: e.key });
        }
        let value = e.slots.iter().flat_map(skpc_abi::IndexSlot::words);
        model.values.extend(value);
    }
    Ok(model)
}
