//! [`KernelIds`]: the kernel ids of every program and map an enforcement created, and
//! which of them still exist (walked with `BPF_*_GET_NEXT_ID`), so that tests can prove
//! that a drop or a reload left nothing behind.

use crate::sys;

/// Kernel ids of everything an [`crate::Enforcement`] created, to prove after the drop that
/// nothing is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelIds {
    pub programs: Vec<u32>,
    pub maps: Vec<u32>,
}

impl KernelIds {
    /// The ids that still exist in the kernel.
    pub fn still_alive(&self) -> KernelIds {
        KernelIds {
            programs: self
                .programs
                .iter()
                .copied()
                .filter(|&id| sys::prog_exists(id))
                .collect(),
            maps: self
                .maps
                .iter()
                .copied()
                .filter(|&id| sys::map_exists(id))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty()
    }
}
