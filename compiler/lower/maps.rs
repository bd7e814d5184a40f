//! The maps an object defines, in which order, and the ids the code refers to them by.

use skpc_abi::{Counter, IndexEntry, SockKey, PORTS_PER_TUPLE};

use crate::bpf::uapi::*;
use crate::hir::{self, Action};

use super::index::Index;
use super::sets::{PlannedSet, SetIds};

/// What a map of an skpc object is for (its name follows from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Sockmap,
    Sockhash,
    /// Counters map `chunk` (`skpc_abi::COUNTER_CHUNK_SLOTS` slots each).
    Counters {
        chunk: u32,
    },
    Events,
    Progs,
    /// The rule index (see `index`).
    Index,
    /// Whether the runtime filled the index.
    IndexReady,
    /// The rule index of single-port tuples (see `index`).
    IndexPorts,
    /// Buffer `buffer` (0, or 1 for the second buffer of a set read from a file) of the
    /// `map`-th set map (see `sets`; an address set has a trie per family).
    Set {
        map: u32,
        buffer: u8,
    },
    /// Whether the runtime filled the set maps (see `sets`).
    SetsReady,
    /// The SOCK_OPS program's count of the sockets it left out (see [`define_untouched`]).
    Untouched,
}

impl MapKind {
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Sockmap => skpc_abi::SOCKMAP_NAME,
            MapKind::Sockhash => skpc_abi::SOCKHASH_NAME,
            MapKind::Counters { .. } => skpc_abi::COUNTERS_NAME,
            MapKind::Events => skpc_abi::EVENTS_NAME,
            MapKind::Progs => skpc_abi::PROGS_NAME,
            MapKind::Index => skpc_abi::INDEX_NAME,
            MapKind::IndexReady => skpc_abi::INDEX_READY_NAME,
            MapKind::IndexPorts => skpc_abi::INDEX_PORTS_NAME,
            MapKind::Set { .. } => skpc_abi::SET_MAP_PREFIX,
            MapKind::SetsReady => skpc_abi::SETS_NAME,
            MapKind::Untouched => skpc_abi::UNTOUCHED_NAME,
        }
    }
}

/// A map the object defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub kind: MapKind,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `map_flags` of BPF_MAP_CREATE (`BPF_F_NO_PREALLOC` for tries).
    pub flags: u32,
}

impl MapSpec {
    /// The map's name in the object (and the kernel): the kind's, numbered for sets.
    pub fn name(&self) -> String {
        match self.kind {
            MapKind::Set { map, buffer } => skpc_abi::set_map_name(map, buffer),
            MapKind::Counters { chunk } => skpc_abi::counters_name(chunk),
            kind => kind.name().to_string(),
        }
    }
}

impl Maps {
    /// Counters map `chunk` (defined one after the other, from `counters`).
    pub(super) fn counters_chunk(&self, chunk: u32) -> MapId {
        MapId(self.counters.0 + chunk.min(self.counter_maps.saturating_sub(1)))
    }
}

/// A map's number in the object: its index in `Lowered::maps`, the number
/// `Insn::LdMap { map }` carries. Only [`MapList::define`] makes one, as it appends the
/// map, so a number cannot disagree with the order of the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapId(u32);

impl MapId {
    /// The number `Insn::LdMap` carries.
    pub fn number(self) -> u32 {
        self.0
    }
}

/// The maps of an object, in object order.
#[derive(Default)]
struct MapList {
    specs: Vec<MapSpec>,
}

impl MapList {
    /// Appends a map; its id is its position.
    fn define(
        &mut self,
        kind: MapKind,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> MapId {
        let id = MapId(self.specs.len() as u32);
        self.specs.push(MapSpec {
            kind,
            map_type,
            key_size,
            value_size,
            max_entries,
            flags: 0,
        });
        id
    }
}

/// The maps the programs of a policy use.
#[derive(Clone, Copy, Debug)]
pub(super) struct Maps {
    pub sockmap: MapId,
    pub sockhash: MapId,
    /// The first counters map; `counter_maps` of them follow one another.
    pub counters: MapId,
    pub counter_maps: u32,
    pub progs: MapId,
    /// The ring buffer of `log` records (when a rule logs).
    pub events: Option<MapId>,
    /// The rule index (when a block is indexed, see `index`).
    pub index: Option<IndexMaps>,
    /// The set maps' ready flag (when the policy has a large set, see `sets`).
    pub sets: Option<MapId>,
}

/// The maps of the rule index.
#[derive(Clone, Copy, Debug)]
pub(super) struct IndexMaps {
    /// The hash map of tuple keys.
    pub hash: MapId,
    /// Whether the runtime filled the index.
    pub ready: MapId,
    /// The port array (when a block has a single-port tuple).
    pub ports: Option<MapId>,
}

/// The maps of a policy's object, in object order, and their ids. The order is part of
/// the object format the runtime and `bpftool` see: the four every policy has, the ring
/// buffer, the rule index, then the set maps and their ready flag.
pub(super) fn define(
    policy: &hir::Policy,
    index: &Index,
    sets: &[PlannedSet],
    chunk_slots: u32,
) -> (Vec<MapSpec>, Maps, Vec<SetIds>) {
    let mut list = MapList::default();
    let sockmap = list.define(
        MapKind::Sockmap,
        BPF_MAP_TYPE_SOCKMAP,
        4,
        4,
        skpc_abi::SOCKMAP_SLOTS,
    );
    // Every policy has the sockhash: the SOCK_OPS program fills it, `redirect to peer`
    // looks up the swapped 4-tuple and `reply` the sender's own.
    let sockhash = list.define(
        MapKind::Sockhash,
        BPF_MAP_TYPE_SOCKHASH,
        SockKey::SIZE as u32,
        skpc_abi::SOCKHASH_VALUE_SIZE,
        skpc_abi::SOCKHASH_ENTRIES,
    );
    // One value holding every counter, addressed directly by the program (see
    // `tails`): the kernel gives a pointer to a map value without a lookup only for an
    // ARRAY of one entry.
    // More counters than one value holds (`chunk_slots`) take more maps, each its
    // share of the slots.
    let slots = policy.counters.len().max(1);
    let chunk_slots = chunk_slots.max(1) as usize;
    let counter_maps = slots.div_ceil(chunk_slots) as u32;
    let counters: Vec<MapId> = (0..counter_maps as usize)
        .map(|chunk| {
            let held = (slots - chunk * chunk_slots).min(chunk_slots);
            list.define(
                MapKind::Counters {
                    chunk: chunk as u32,
                },
                BPF_MAP_TYPE_ARRAY,
                4,
                (held * Counter::SIZE) as u32,
                1,
            )
        })
        .collect();
    let progs = list.define(MapKind::Progs, BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1);
    let events = policy
        .rules
        .iter()
        .any(|r| r.action == Action::Log)
        .then(|| {
            list.define(
                MapKind::Events,
                BPF_MAP_TYPE_RINGBUF,
                0,
                0,
                skpc_abi::EVENTS_BYTES,
            )
        });
    let index = (!index.blocks.is_empty()).then(|| IndexMaps {
        hash: list.define(
            MapKind::Index,
            BPF_MAP_TYPE_HASH,
            IndexEntry::KEY_SIZE as u32,
            IndexEntry::VALUE_SIZE as u32,
            index.entries.len().max(1) as u32,
        ),
        ready: list.define(MapKind::IndexReady, BPF_MAP_TYPE_ARRAY, 4, 4, 1),
        ports: (index.port_tuples > 0).then(|| {
            list.define(
                MapKind::IndexPorts,
                BPF_MAP_TYPE_ARRAY,
                4,
                4,
                index.port_tuples * PORTS_PER_TUPLE,
            )
        }),
    });
    let mut set_ids = Vec::with_capacity(sets.len());
    let mut set_maps = 0;
    for set in sets {
        let mut ids = SetIds {
            slot: set.file.map(|f| 1 + f as u32),
            ..SetIds::default()
        };
        for (part, map) in set.maps.iter().enumerate() {
            let Some(m) = map else { continue };
            let buffers: &[u8] = if set.file.is_some() { &[0, 1] } else { &[0] };
            for &buffer in buffers {
                let kind = MapKind::Set {
                    map: set_maps,
                    buffer,
                };
                let id = list.define(kind, m.map_type, m.key_size, m.value_size, m.max_entries);
                if let Some(spec) = list.specs.last_mut() {
                    spec.flags = m.flags;
                }
                ids.buffers[buffer as usize][part] = Some(id);
            }
            set_maps += 1;
        }
        set_ids.push(ids);
    }
    // Slot 0: filled; slot 1 + f: the live buffer of file set f.
    let sets_ready = (!sets.is_empty()).then(|| {
        let slots = 1 + policy.file_sets.len() as u32;
        list.define(MapKind::SetsReady, BPF_MAP_TYPE_ARRAY, 4, 4, slots)
    });
    let maps = Maps {
        sockmap,
        sockhash,
        counters: counters[0],
        counter_maps,
        progs,
        events,
        index,
        sets: sets_ready,
    };
    (list.specs, maps, set_ids)
}

/// Appends `skp_untouched`, the one-slot per-CPU array (u64) in which the SOCK_OPS
/// program counts the sockets it leaves out, after every map the verdict program uses:
/// only a policy that leaves some connection out has it, and the maps of the others
/// (and their numbers in the listings) stay as they were.
pub(super) fn define_untouched(specs: &mut Vec<MapSpec>) -> MapId {
    let mut list = MapList {
        specs: std::mem::take(specs),
    };
    let id = list.define(MapKind::Untouched, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1);
    *specs = list.specs;
    id
}

#[cfg(test)]
mod tests {
    use crate::lower::{lower_with, MapKind, Options};

    #[test]
    fn counters_past_one_value_take_more_maps_each_its_share() {
        let p = crate::check::check(
            "drop if port == 1;\ndrop if port == 2;\ndrop if port == 3;\ncount a if port == 4;\n",
        )
        .0
        .expect("checks");
        // Four rules, `count a` and the default: six counters, four a map.
        let l = lower_with(
            &p,
            Options {
                counter_chunk_slots: 4,
                ..Options::default()
            },
        );
        let counters: Vec<(String, u32, u32)> = l
            .maps
            .iter()
            .filter(|m| matches!(m.kind, MapKind::Counters { .. }))
            .map(|m| (m.name(), m.value_size, m.max_entries))
            .collect();
        assert_eq!(p.counters.len(), 6);
        assert_eq!(
            counters,
            [
                (".data.counters".to_string(), 64, 1),
                (".data.counters1".to_string(), 32, 1)
            ]
        );
        // One value when they fit.
        let l = lower_with(&p, Options::default());
        let one = l
            .maps
            .iter()
            .filter(|m| matches!(m.kind, MapKind::Counters { .. }))
            .count();
        assert_eq!(one, 1);
    }
}
