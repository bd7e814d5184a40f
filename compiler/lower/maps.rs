//! The maps every object defines, and in which order.

/// The maps of every skpc object, in object order (`Insn::LdMap { map }` indexes this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Sockmap,
    Sockhash,
    Counters,
    Events,
    Progs,
    /// The rule index (see `index`).
    Index,
    /// Whether the runtime filled the index.
    IndexReady,
    /// The rule index of single-port tuples (see `index`).
    IndexPorts,
}

impl MapKind {
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Sockmap => skpc_abi::SOCKMAP_NAME,
            MapKind::Sockhash => skpc_abi::SOCKHASH_NAME,
            MapKind::Counters => skpc_abi::COUNTERS_NAME,
            MapKind::Events => skpc_abi::EVENTS_NAME,
            MapKind::Progs => skpc_abi::PROGS_NAME,
            MapKind::Index => skpc_abi::INDEX_NAME,
            MapKind::IndexReady => skpc_abi::INDEX_READY_NAME,
            MapKind::IndexPorts => skpc_abi::INDEX_PORTS_NAME,
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
}
