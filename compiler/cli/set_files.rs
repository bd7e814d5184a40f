//! The sets read from files (`set blocklist = file "blocklist.txt";`) under `skpc run`:
//! each file is watched like the policy (`watch`), and a change is swapped into the
//! running program's set maps without loading a program or touching a socket
//! (`Enforcement::replace_set`: the new contents go into the buffers that are not
//! live, then one map update makes them live).
//!
//! The new contents are computed by compiling the policy again, which reads the files
//! again: the same checks (a malformed line is an error with its file, line and column,
//! and the old contents stay in force) and the same keys as a fresh build. If that
//! build's program differs from the running one (it does not when only a set file
//! changed: a set read from a file is a map whatever its contents), the whole policy is
//! reloaded instead.

use std::path::PathBuf;

use skpc::bpf::Insn;
use skpc::compile::Compiled;
use skpc::lower::MapSpec;
use skpc_runtime::{Enforcement, SetBuffers, SetReplacement};

use super::watch::{Change, Watch};

/// The sets read from files of a compiled policy.
pub(crate) struct SetFiles {
    /// `(set name, file)`, in declaration order.
    pub files: Vec<(String, PathBuf)>,
    /// Their contents as the runtime takes them.
    replacements: Vec<SetReplacement>,
    /// The verdict program and its maps: a new build may only swap sets if these are
    /// the same.
    program: (Vec<Insn>, Vec<MapSpec>),
}

impl SetFiles {
    pub(crate) fn of(c: &Compiled) -> SetFiles {
        let name = |id: skpc::lower::MapId| {
            c.lowered
                .maps
                .get(id.number() as usize)
                .map_or_else(String::new, MapSpec::name)
        };
        let mut replacements: Vec<SetReplacement> = Vec::new();
        for s in &c.lowered.sets {
            let Some((slot, second)) = s.file else {
                continue;
            };
            let buffers = SetBuffers {
                names: [name(s.map), name(second)],
                keys: s.keys.clone(),
            };
            match replacements.iter_mut().find(|r| r.slot == slot) {
                Some(r) => r.maps.push(buffers),
                None => replacements.push(SetReplacement {
                    slot,
                    maps: vec![buffers],
                }),
            }
        }
        SetFiles {
            files: c
                .policy
                .file_sets
                .iter()
                .map(|f| (f.name.clone(), f.path.clone()))
                .collect(),
            replacements,
            program: (c.lowered.verdict.insns.clone(), c.lowered.maps.clone()),
        }
    }

    /// Whether `other` (a new build) can be swapped in set by set.
    pub(crate) fn same_program(&self, other: &SetFiles) -> bool {
        self.program == other.program
    }

    /// Swaps every set's new contents into the running version.
    pub(crate) fn swap_into(&self, enf: &mut Enforcement) -> anyhow::Result<usize> {
        let mut keys = 0;
        for r in &self.replacements {
            keys += enf.replace_set(r)?;
        }
        Ok(keys)
    }

    /// Watches for the files.
    pub(crate) fn watches(&self) -> Vec<Watch> {
        self.files
            .iter()
            .map(|(_, p)| Watch::new(p.clone()))
            .collect()
    }
}

/// Polls the watches of the set files; true when one has changed (each change is
/// reported once, when its file has been stable for two polls).
pub(crate) fn poll(watches: &mut [Watch]) -> bool {
    let mut changed = false;
    for w in watches {
        if w.poll() == Change::Changed {
            changed = true;
        }
    }
    changed
}
