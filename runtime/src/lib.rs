//! The skpc runtime: load a compiled policy (an skpc ELF object) with aya, attach it to
//! the sockmap/sockhash, put sockets under it (by index, by 4-tuple, or every TCP
//! socket of a cgroup v2 through SOCK_OPS), read its counters, stream its `log`
//! records, swap it for a new version without touching the sockets (hot reload), and
//! take everything out of the kernel again on drop.
//!
//! ```no_run
//! # fn main() -> Result<(), skpc_runtime::Error> {
//! use skpc_runtime::{Enforcement, Policy};
//! let object = std::fs::read("redis_guard.o").unwrap();
//! let policy = Policy::new(object, vec!["line 17: drop".into(), "default pass".into()]);
//! let mut enf = Enforcement::new(&policy)?;
//! let cg = skpc_runtime::TempCgroup::create()?;
//! enf.attach_cgroup(cg.path())?;
//! // ... start processes in the cgroup ...
//! for c in enf.counters()? {
//!     println!("{}: {} messages, {} bytes", c.name, c.messages, c.bytes);
//! }
//! # Ok(()) }
//! ```
//!
//! How it works, and what the kernel does with each verdict: docs/runtime.md.

mod counters;
mod enforce;
mod error;
mod fs;
mod ids;
mod index;
pub mod net;
pub mod process;
mod sets;
mod sockops;
mod sys;

pub use enforce::{sock_key, CounterValue, Enforcement, Policy, VersionCounters};
pub use error::{Cause, Error, ErrorKind, Result};
pub use fs::{bpffs_mount, cgroup2_mount, cleanup_stale, Stale, TempCgroup, NAME_PREFIX};
pub use ids::KernelIds;
pub use index::{fill_index, index_entries, port_entries};
pub use sets::{fill_sets, set_sections, SetBuffers, SetReplacement, SetSection, SET_BUFFER_QUIET};
pub use skpc_abi::{IndexEntry, LogRecord, SockKey};
pub use sockops::Reloaded;
pub use sys::{link_exists, map_exists, prog_exists};
