//! [`Policy`] (what to enforce) and [`Enforcement`] (a policy live in the kernel).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Map, MapData, ProgramArray, RingBuf};
use aya::programs::{SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use skpc_abi::{
    LogRecord, SockKey, COUNTERS_NAME, EVENTS_NAME, INDEX_NAME, INDEX_PORTS_NAME, INDEX_READY_NAME,
    PROGS_NAME, PROGS_POLICY_SLOT, SETS_NAME, SET_MAP_PREFIX, SK_MSG_ENTRY_PROGRAM, SK_MSG_PROGRAM,
    SOCKHASH_NAME, SOCKMAP_NAME, SOCKMAP_SLOTS, SOCK_OPS_PROGRAM, UNTOUCHED_NAME,
};

use crate::error::{Error, ErrorKind, Result};
use crate::fs::PinDir;
use crate::ids::KernelIds;
use crate::sockops::{load_sock_ops, Inserter, Reloaded};
use crate::sys;

/// A compiled policy as the runtime needs it: the object bytes (`skpc build` output)
/// and the names of its counters, in slot order (the compiler's `policy.counters`).
/// The runtime does not depend on the compiler; the caller passes both.
#[derive(Clone, Debug)]
pub struct Policy {
    pub object: Vec<u8>,
    pub counter_names: Vec<String>,
    /// Which connections the object's SOCK_OPS program inserts, as an exact key (the
    /// compiler's `Lowered::connections`, e.g. its `Debug` text): a reload keeps the
    /// SOCK_OPS program in force when old and new keys are equal, and replaces it
    /// otherwise. `None` (unknown) always replaces it.
    pub connections: Option<String>,
}

impl Policy {
    pub fn new(object: Vec<u8>, counter_names: Vec<String>) -> Policy {
        Policy {
            object,
            counter_names,
            connections: None,
        }
    }

    /// The policy with its connection key (see [`Policy::connections`]).
    pub fn with_connections(mut self, key: impl Into<String>) -> Policy {
        self.connections = Some(key.into());
        self
    }
}

/// One counter: a rule's, a named `count`'s, or the default's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub name: String,
    /// Messages (verdict runs) that matched.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
}

/// The counters of one policy version (1 for the first, +1 per reload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionCounters {
    pub version: u32,
    pub counters: Vec<CounterValue>,
}

/// The parts that live as long as the enforcement: the shared maps (pinned in the
/// private pin directory, so a reloaded object reuses them) and the attached entry
/// program. The first version's verdict program lives here too until a reload unloads
/// it. (The SOCK_OPS program in force is held by [`Inserter`].)
struct Base {
    /// Detached first (fields drop in order); held for its Drop.
    #[allow(dead_code)]
    attachments: Vec<sys::SkMsgAttachment>,
    ebpf: Ebpf,
    shared_pinned: bool,
    socks_id: u32,
    peers_id: u32,
    progs_id: u32,
}

/// One policy version: its verdict program (in its own `Ebpf`, except version 1),
/// its counters, its ring buffer and its rule index.
struct Version {
    number: u32,
    /// `None` for version 1, whose programs live in [`Base`].
    ebpf: Option<Ebpf>,
    /// The counters maps, in chunk order (`skpc_abi::counters_name`).
    counters: Vec<Map>,
    events: Option<RingBuf<MapData>>,
    /// `skp_index`, `skp_index_ready` and `skp_index_ports`, filled (none without an
    /// index); held so that they go when the version goes, also version 1's.
    index: Vec<(&'static str, Map)>,
    /// Entries in `skp_index`.
    index_entries: usize,
    /// The set maps (`skp_set_<k>`, `skp_set_<k>_b`) and `skp_sets`, filled, by name.
    sets: Vec<(String, Map)>,
    /// What the buffers of the sets read from files hold.
    set_state: crate::sets::SetState,
    names: Vec<String>,
}

/// What [`load_version`] hands over.
struct Loaded {
    counters: Vec<Map>,
    events: Option<RingBuf<MapData>>,
    index: Vec<(&'static str, Map)>,
    index_entries: usize,
    sets: Vec<(String, Map)>,
    set_state: crate::sets::SetState,
    ids: KernelIds,
}

/// A policy enforced in the kernel: maps created, programs loaded and verified, the
/// entry program attached to `skp_socks` and `skp_peers`, the policy in
/// `skp_progs[0]`. Sockets enter by index ([`Enforcement::insert_sock`]), by their
/// 4-tuple ([`Enforcement::insert_peer`]) or automatically from a cgroup
/// ([`Enforcement::attach_cgroup`]). Dropping it detaches and frees everything.
pub struct Enforcement {
    current: Version,
    retired: Vec<VersionCounters>,
    pending_events: VecDeque<LogRecord>,
    inserter: Inserter,
    /// `skp_untouched` and its id, once an object defined it (pinned: every later
    /// object that defines it shares it, so the count spans reloads).
    untouched: Option<(Map, u32)>,
    user_pins: Option<PathBuf>,
    all_ids: KernelIds,
    base: Base,
    pins: PinDir,
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::SockMap(d)
        | Map::SockHash(d)
        | Map::ProgramArray(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d) => Some(d),
        _ => None,
    }
}

pub(crate) fn map_id(ebpf: &Ebpf, name: &str) -> Result<u32> {
    let map = ebpf.map(name).ok_or_else(|| {
        Error::new(
            ErrorKind::BadObject,
            format!("the object has no map {name}; build it with skpc"),
        )
    })?;
    let data = map_data(map).ok_or_else(|| {
        Error::new(
            ErrorKind::BadObject,
            format!("map {name} has an unexpected type"),
        )
    })?;
    data.info()
        .map(|i| i.id())
        .map_err(|e| Error::from_aya(&format!("reading the id of map {name}"), e))
}

fn sk_msg<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SkMsg> {
    ebpf.program_mut(name)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadObject,
                format!("the object has no program {name}; build it with skpc"),
            )
        })?
        .try_into()
        .map_err(|e| {
            Error::caused(
                ErrorKind::BadObject,
                format!("program {name} is not an sk_msg program"),
                e,
            )
        })
}

pub(crate) fn sock_ops<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SockOps> {
    ebpf.program_mut(name)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadObject,
                format!("the object has no program {name}; build it with skpc"),
            )
        })?
        .try_into()
        .map_err(|e| {
            Error::caused(
                ErrorKind::BadObject,
                format!("program {name} is not a sockops program"),
                e,
            )
        })
}

fn prog_id_sk_msg(p: &SkMsg) -> u32 {
    p.info().map(|i| i.id()).unwrap_or(0)
}

/// Loads an object against the pin directory: maps with `pinning` are reused from
/// there if pinned (a reload), else created and pinned (the first load).
fn load_object(object: &[u8], pins: &Path) -> Result<Ebpf> {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it (best effort).
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    EbpfLoader::new()
        // STATS: the verifier still reports why it rejects a program, but does not log
        // every instruction (aya's default), which takes minutes for 10k-rule policies.
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .map_pin_path(pins)
        .load(object)
        .map_err(|e| Error::from_aya("loading the policy object", e))
}

/// Loads (verifies) the verdict program of a loaded object, fills its rule index (if it
/// has one) and collects its version. Nothing runs the program yet: the caller puts it
/// into `skp_progs` afterwards, so it never sees a message with the index unfilled.
fn load_version(ebpf: &mut Ebpf, object: &[u8]) -> Result<Loaded> {
    let verdict = sk_msg(ebpf, SK_MSG_PROGRAM)?;
    verdict
        .load()
        .map_err(|e| Error::from_aya("loading the policy program skp_verdict", e))?;
    let mut ids = KernelIds {
        programs: vec![prog_id_sk_msg(verdict)],
        maps: Vec::new(),
    };
    if ebpf.map(COUNTERS_NAME).is_none() && ebpf.map(crate::counters::OLD_COUNTERS_NAME).is_some() {
        return Err(crate::counters::old_layout());
    }
    let chunks: Vec<String> = (0..skpc_abi::COUNTER_CHUNKS_MAX)
        .map(skpc_abi::counters_name)
        .take_while(|name| ebpf.map(name).is_some())
        .collect();
    if chunks.is_empty() {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("the object has no map {COUNTERS_NAME}; build it with skpc"),
        ));
    }
    for name in &chunks {
        ids.maps.push(map_id(ebpf, name)?);
    }
    if ebpf.map(EVENTS_NAME).is_some() {
        ids.maps.push(map_id(ebpf, EVENTS_NAME)?);
    }
    crate::sets::fill_sets(ebpf, object)?;
    let index_entries = crate::index::fill_index(ebpf, object)?;
    let mut index = Vec::new();
    for name in [INDEX_NAME, INDEX_READY_NAME, INDEX_PORTS_NAME] {
        if ebpf.map(name).is_some() {
            ids.maps.push(map_id(ebpf, name)?);
            index.extend(ebpf.take_map(name).map(|m| (name, m)));
        }
    }
    let set_names: Vec<String> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with(SET_MAP_PREFIX) || *n == SETS_NAME)
        .map(str::to_string)
        .collect();
    let mut sets = Vec::with_capacity(set_names.len());
    for name in set_names {
        ids.maps.push(map_id(ebpf, &name)?);
        if let Some(m) = ebpf.take_map(&name) {
            sets.push((name, m));
        }
    }
    let set_state = crate::sets::SetState::filled(&sets, object)?;
    let counters = chunks.iter().filter_map(|n| ebpf.take_map(n)).collect();
    let events = match ebpf.take_map(EVENTS_NAME) {
        Some(m) => Some(
            RingBuf::try_from(m)
                .map_err(|e| Error::from_aya("opening the log ring buffer skp_events", e))?,
        ),
        None => None,
    };
    Ok(Loaded {
        counters,
        events,
        index,
        index_entries,
        sets,
        set_state,
        ids,
    })
}

impl Enforcement {
    /// Loads `policy` and makes it ready to filter sockets: creates its maps (the
    /// shared ones pinned in a private directory `<bpffs>/skpc-<pid>-<n>`), loads the
    /// programs, puts the policy into `skp_progs[0]`, and attaches the entry program
    /// to `skp_socks` and `skp_peers`. No socket is filtered yet.
    pub fn new(policy: &Policy) -> Result<Enforcement> {
        let pins = PinDir::create()?;
        let mut ebpf = load_object(&policy.object, &pins.path)?;
        let shared_pinned = [SOCKMAP_NAME, SOCKHASH_NAME, PROGS_NAME]
            .iter()
            .all(|n| pins.path.join(n).exists());
        let socks_id = map_id(&ebpf, SOCKMAP_NAME)?;
        let peers_id = map_id(&ebpf, SOCKHASH_NAME)?;
        let progs_id = map_id(&ebpf, PROGS_NAME)?;
        let Loaded {
            counters,
            events,
            index,
            index_entries,
            sets,
            set_state,
            mut ids,
        } = load_version(&mut ebpf, &policy.object)?;
        ids.maps.extend([socks_id, peers_id, progs_id]);

        let entry = sk_msg(&mut ebpf, SK_MSG_ENTRY_PROGRAM)?;
        entry
            .load()
            .map_err(|e| Error::from_aya("loading the entry program skp_entry", e))?;
        ids.programs.push(prog_id_sk_msg(entry));
        let (ops_fd, ops_id) = load_sock_ops(&mut ebpf)?;
        ids.programs.push(ops_id);
        let untouched = crate::sockops::take_untouched(&mut ebpf)?;
        ids.maps.extend(untouched.as_ref().map(|(_, id)| *id));

        // The policy into skp_progs[0].
        let verdict_fd = sk_msg(&mut ebpf, SK_MSG_PROGRAM)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
            .map_err(|e| Error::from_aya("reading the policy program", e))?;
        {
            let mut progs: ProgramArray<&mut MapData> =
                ProgramArray::try_from(ebpf.map_mut(PROGS_NAME).expect("checked"))
                    .map_err(|e| Error::from_aya("opening skp_progs", e))?;
            progs
                .set(PROGS_POLICY_SLOT, &verdict_fd, 0)
                .map_err(|e| Error::from_aya("putting the policy into skp_progs", e))?;
        }
        // The entry program onto both socket maps; before any socket enters them.
        let entry_fd = sk_msg(&mut ebpf, SK_MSG_ENTRY_PROGRAM)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
            .map_err(|e| Error::from_aya("reading the entry program", e))?;
        let mut attachments = Vec::new();
        for name in [SOCKMAP_NAME, SOCKHASH_NAME] {
            let map = map_data(ebpf.map(name).expect("checked"))
                .expect("socket map")
                .fd()
                .as_fd();
            let a = sys::SkMsgAttachment::attach(entry_fd.as_fd(), map).map_err(|e| {
                Error::from_aya(&format!("attaching the verdict program to {name}"), e)
            })?;
            attachments.push(a);
        }

        let all_ids = ids.clone();
        Ok(Enforcement {
            current: Version {
                number: 1,
                ebpf: None,
                counters,
                events,
                index,
                index_entries,
                sets,
                set_state,
                names: policy.counter_names.clone(),
            },
            retired: Vec::new(),
            pending_events: VecDeque::new(),
            inserter: Inserter {
                prog: ops_fd,
                id: ops_id,
                connections: policy.connections.clone(),
                links: Vec::new(),
            },
            untouched,
            user_pins: None,
            all_ids,
            base: Base {
                attachments,
                ebpf,
                shared_pinned,
                socks_id,
                peers_id,
                progs_id,
            },
            pins,
        })
    }

    /// The private pin directory of the shared maps (`<bpffs>/skpc-<pid>-<n>`).
    pub fn pin_dir(&self) -> &Path {
        &self.pins.path
    }

    /// The policy version now in `skp_progs[0]` (1, then +1 per reload).
    pub fn version(&self) -> u32 {
        self.current.number
    }

    /// Entries of the current version's rule index (`skp_index`), all in the kernel
    /// before the version took its first message; 0 for a policy without one.
    pub fn index_entries(&self) -> usize {
        self.current.index_entries
    }

    /// Kernel ids of every program and map this enforcement created so far.
    pub fn kernel_ids(&self) -> KernelIds {
        self.all_ids.clone()
    }

    fn map(&self, name: &str) -> &MapData {
        map_data(
            self.base
                .ebpf
                .map(name)
                .expect("shared maps stay in the base object"),
        )
        .expect("known map type")
    }

    /// Puts `sock` (an established TCP socket) into `skp_socks[index]`: a
    /// `redirect to sock index` target, and filtered by the policy from now on.
    /// Replaces a socket already at that index.
    pub fn insert_sock(&mut self, index: u32, sock: BorrowedFd<'_>) -> Result<()> {
        if index >= SOCKMAP_SLOTS {
            return Err(Error::new(
                ErrorKind::Socket,
                format!(
                    "socket index {index} is out of range; skp_socks has slots 0..{}",
                    SOCKMAP_SLOTS - 1
                ),
            ));
        }
        sys::sockmap_update(
            self.map(SOCKMAP_NAME).fd().as_fd(),
            &index.to_ne_bytes(),
            sock,
            sys::BPF_ANY,
        )
        .map_err(|e| sock_error(&format!("putting the socket into skp_socks[{index}]"), e))
    }

    /// Takes the socket out of `skp_socks[index]` (no error if the slot is empty).
    /// The socket is no longer filtered (a sticky drop is forgotten too).
    pub fn remove_sock(&mut self, index: u32) -> Result<()> {
        match sys::map_delete(self.map(SOCKMAP_NAME).fd().as_fd(), &index.to_ne_bytes()) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(sock_error(
                &format!("removing the socket from skp_socks[{index}]"),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Puts `sock` into `skp_peers` under its own 4-tuple, as the SOCK_OPS program
    /// does for a cgroup's sockets: filtered from now on, and the `redirect to peer`
    /// target of the other end of its connection. Returns the key used.
    pub fn insert_peer(&mut self, sock: BorrowedFd<'_>) -> Result<SockKey> {
        let key = sock_key(sock.as_raw_fd())
            .map_err(|e| Error::io("reading the socket's addresses", e))?;
        sys::sockmap_update(
            self.map(SOCKHASH_NAME).fd().as_fd(),
            &key.to_bytes(),
            sock,
            sys::BPF_ANY,
        )
        .map_err(|e| sock_error("putting the socket into skp_peers", e))?;
        Ok(key)
    }

    /// Takes the socket with this key out of `skp_peers` (no error if absent).
    pub fn remove_peer(&mut self, key: &SockKey) -> Result<()> {
        match sys::map_delete(self.map(SOCKHASH_NAME).fd().as_fd(), &key.to_bytes()) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                Err(sock_error("removing the socket from skp_peers", e))
            }
            _ => Ok(()),
        }
    }

    /// The verdict program in force: its accumulated run time and run count from the
    /// kernel's BPF stats. Both stay 0 unless the stats are on (`sysctl
    /// kernel.bpf_stats_enabled=1`, or an fd from BPF_ENABLE_STATS held open).
    pub fn program_stats(&self) -> Option<(Duration, u64)> {
        let ebpf = self.current.ebpf.as_ref().unwrap_or(&self.base.ebpf);
        let prog: &SkMsg = ebpf.program(SK_MSG_PROGRAM)?.try_into().ok()?;
        let info = prog.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }

    /// How many sockets `skp_peers` holds: the sockets under the policy.
    pub fn sockets(&self) -> usize {
        sys::map_count(self.map(SOCKHASH_NAME).fd().as_fd(), SockKey::SIZE)
    }

    /// Whether `skp_peers` holds a socket under `key`.
    pub fn has_peer(&self, key: &SockKey) -> bool {
        sys::map_has(self.map(SOCKHASH_NAME).fd().as_fd(), &key.to_bytes())
    }

    /// Attaches the SOCK_OPS program to the cgroup v2 directory `cgroup` (a bpf_link,
    /// which coexists with other programs attached there): from now on every TCP
    /// socket of its processes that becomes established (connect or accept, IPv4 or
    /// IPv6) and that the policy takes (some rule can act on it; every socket for a
    /// policy built without selective insertion) enters `skp_peers` and is filtered;
    /// the others are counted in `skp_untouched` ([`Enforcement::untouched_sockets`]).
    /// Sockets established before are not.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        self.inserter.attach(cgroup)
    }

    /// Detaches the SOCK_OPS program from `cgroup` (sockets already in `skp_peers`
    /// stay there and stay filtered).
    pub fn detach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        // Closing the link's descriptor detaches it.
        self.inserter.links.retain(|(p, _)| p != cgroup);
        Ok(())
    }

    /// Established sockets the SOCK_OPS program left out of the sockmaps since the
    /// enforcement started, over every version (no rule could act on them, so they are
    /// in no counter): per socket, so a connection between two processes of the cgroup
    /// counts twice. 0 while every version took every connection.
    pub fn untouched_sockets(&self) -> Result<u64> {
        match &self.untouched {
            Some((map, _)) => crate::sockops::read_untouched(map),
            None => Ok(0),
        }
    }

    /// The kernel id of the SOCK_OPS program in force (a reload that replaces it frees
    /// the old one).
    pub fn sock_ops_id(&self) -> u32 {
        self.inserter.id
    }

    /// Which connections the SOCK_OPS program in force inserts ([`Policy::connections`]).
    pub fn connections(&self) -> Option<&str> {
        self.inserter.connections.as_deref()
    }

    /// The current version's counters, summed over CPUs, named by the policy's
    /// counter names (extra slots are named `#N`).
    pub fn counters(&self) -> Result<Vec<CounterValue>> {
        read_counters(&self.current)
    }

    /// Counters of every version: the retired ones as they were when replaced, then
    /// the current one.
    pub fn all_counters(&self) -> Result<Vec<VersionCounters>> {
        let mut out = self.retired.clone();
        out.push(VersionCounters {
            version: self.current.number,
            counters: self.counters()?,
        });
        Ok(out)
    }

    /// Whether the current policy has a `log` rule (and so a ring buffer).
    pub fn has_events(&self) -> bool {
        self.current.events.is_some()
    }

    /// The ring buffer's descriptor, to poll (readable when records are waiting).
    pub fn events_fd(&self) -> Option<RawFd> {
        self.current.events.as_ref().map(|r| r.as_raw_fd())
    }

    /// Every `log` record waiting now (never blocks).
    pub fn drain_events(&mut self) -> Vec<LogRecord> {
        let mut out: Vec<LogRecord> = self.pending_events.drain(..).collect();
        if let Some(rb) = self.current.events.as_mut() {
            drain_ring(rb, &mut out);
        }
        out
    }

    /// Waits up to `timeout` for `log` records and returns what arrived.
    pub fn wait_events(&mut self, timeout: Duration) -> Vec<LogRecord> {
        if self.pending_events.is_empty() {
            match self.events_fd() {
                Some(fd) => {
                    crate::process::poll_readable(&[fd], timeout);
                }
                None => std::thread::sleep(timeout),
            }
        }
        self.drain_events()
    }

    /// Hot reload: loads `policy` against the same shared maps and swaps its verdict
    /// into `skp_progs[0]` in one map update. Sockets already in the maps get the new
    /// policy on their next message, without being re-inserted. When the new policy
    /// takes other connections ([`Policy::connections`] differs), its SOCK_OPS program
    /// replaces the one in force on every cgroup first (BPF_LINK_UPDATE), so new
    /// connections follow the new condition; sockets already in the maps stay in, and
    /// sockets established before that the old program left out stay out (only their
    /// owner has their descriptors). On any error the old policy and the old SOCK_OPS
    /// program stay in force.
    pub fn reload(&mut self, policy: &Policy) -> Result<Reloaded> {
        if !self.base.shared_pinned {
            return Err(Error::new(
                ErrorKind::BadObject,
                "this policy object does not mark skp_socks/skp_peers/skp_progs as pinned by name, so a new object cannot share them; rebuild the object with this skpc",
            ));
        }
        let mut ebpf = load_object(&policy.object, &self.pins.path)?;
        for (name, want) in [
            (SOCKMAP_NAME, self.base.socks_id),
            (SOCKHASH_NAME, self.base.peers_id),
            (PROGS_NAME, self.base.progs_id),
        ] {
            let got = map_id(&ebpf, name)?;
            if got != want {
                return Err(Error::new(
                    ErrorKind::BadObject,
                    format!("the new object did not reuse the live map {name} (its definition differs or it is not pinned by name); rebuild it with this skpc"),
                ));
            }
        }
        let number = self.current.number + 1;
        let Loaded {
            counters,
            events,
            index,
            index_entries,
            sets,
            set_state,
            ids,
        } = load_version(&mut ebpf, &policy.object)?;
        let fd = sk_msg(&mut ebpf, SK_MSG_PROGRAM)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
            .map_err(|e| Error::from_aya("reading the new policy program", e))?;
        // The SOCK_OPS program first (when the connections differ), then the verdict:
        // in between, the old verdict judges sockets the new condition inserts (as it
        // would have, had the old condition taken them). The other order would let a
        // connection that only the new policy acts on be established, and left out for
        // good, after the new verdict is in force.
        let untouched_id = self.untouched.as_ref().map(|(_, id)| *id);
        let staged = self
            .inserter
            .stage(&mut ebpf, &policy.connections, untouched_id)?;
        {
            let map = self.base.ebpf.map_mut(PROGS_NAME).expect("shared");
            let swapped = ProgramArray::try_from(map)
                .map_err(|e| Error::from_aya("opening skp_progs", e))
                .and_then(|mut progs: ProgramArray<&mut MapData>| {
                    // The swap: one BPF_MAP_UPDATE_ELEM, atomic for every socket.
                    progs
                        .set(PROGS_POLICY_SLOT, &fd, 0)
                        .map_err(|e| Error::from_aya("swapping the policy in skp_progs", e))
                });
            if let Err(e) = swapped {
                if let Some(st) = &staged {
                    self.inserter.unstage(st);
                }
                return Err(e);
            }
        }
        self.all_ids.programs.extend(&ids.programs);
        self.all_ids.maps.extend(&ids.maps);
        let sock_ops_replaced = staged.is_some();
        if let Some(st) = staged {
            let (ops_id, untouched) = self.inserter.commit(st);
            self.all_ids.programs.push(ops_id);
            if let Some((m, id)) = untouched {
                self.all_ids.maps.push(id);
                self.untouched = Some((m, id));
            }
        }
        let new = Version {
            number,
            ebpf: Some(ebpf),
            counters,
            events,
            index,
            index_entries,
            sets,
            set_state,
            names: policy.counter_names.clone(),
        };
        let mut old = std::mem::replace(&mut self.current, new);
        // Keep the old version's final counters and its unread log records.
        if let Ok(c) = read_counters(&old) {
            self.retired.push(VersionCounters {
                version: old.number,
                counters: c,
            });
        }
        if let Some(rb) = old.events.as_mut() {
            let mut v = Vec::new();
            drain_ring(rb, &mut v);
            self.pending_events.extend(v);
        }
        if old.ebpf.is_none() {
            // Version 1's verdict lives in the base object: unload it there.
            let _ = sk_msg(&mut self.base.ebpf, SK_MSG_PROGRAM).map(|p| p.unload());
        }
        drop(old);
        Ok(Reloaded { sock_ops_replaced })
    }

    /// Replaces the contents of a set read from a file in the running version: writes
    /// the new keys into the buffers that are not live, then makes them live in one map
    /// update. No program is loaded and no socket is touched; a message is judged by the
    /// old contents or the new, never by a half-written set. Returns the keys now live.
    pub fn replace_set(&mut self, r: &crate::sets::SetReplacement) -> Result<usize> {
        let v = &mut self.current;
        v.set_state.replace(&v.sets, r)
    }

    /// Pins the programs and maps under `dir` (created if missing) so bpftool and
    /// other tools can inspect them while this enforcement runs. Pins keep objects
    /// alive: [`Enforcement::unpin`] (or the drop) removes them.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format_args!("creating {}", dir.display()), e))?;
        self.user_pins = Some(dir.to_path_buf());
        let pin_err = |what: &str, e: aya::pin::PinError| {
            Error::from_aya(&format!("pinning {what} under {}", dir.display()), e)
        };
        for name in [SK_MSG_ENTRY_PROGRAM, SK_MSG_PROGRAM] {
            let ebpf = match (&mut self.current.ebpf, name) {
                (Some(e), SK_MSG_PROGRAM) => e,
                _ => &mut self.base.ebpf,
            };
            sk_msg(ebpf, name)?
                .pin(dir.join(name))
                .map_err(|e| pin_err(name, e))?;
        }
        let ops = dir.join(SOCK_OPS_PROGRAM);
        sys::obj_pin(self.inserter.prog.as_fd(), &ops)
            .map_err(|e| Error::io(format_args!("pinning {}", ops.display()), e))?;
        if let Some((m, _)) = &self.untouched {
            m.pin(dir.join(UNTOUCHED_NAME))
                .map_err(|e| pin_err(UNTOUCHED_NAME, e))?;
        }
        for name in [SOCKMAP_NAME, SOCKHASH_NAME, PROGS_NAME] {
            self.base
                .ebpf
                .map(name)
                .expect("shared")
                .pin(dir.join(name))
                .map_err(|e| pin_err(name, e))?;
        }
        for (chunk, map) in self.current.counters.iter().enumerate() {
            // bpffs refuses names with a dot: the map's variable names the pin.
            let var = skpc_abi::counters_var(chunk as u32);
            map.pin(dir.join(&var)).map_err(|e| pin_err(&var, e))?;
        }
        let index = self.current.index.iter().map(|(n, m)| (*n, m));
        let sets = self.current.sets.iter().map(|(n, m)| (n.as_str(), m));
        for (name, map) in index.chain(sets) {
            map.pin(dir.join(name)).map_err(|e| pin_err(name, e))?;
        }
        Ok(())
    }

    /// Removes the pins made by [`Enforcement::pin`].
    pub fn unpin(&mut self) {
        if let Some(dir) = self.user_pins.take() {
            crate::fs::remove_pins(&dir);
        }
    }
}

impl Drop for Enforcement {
    fn drop(&mut self) {
        // No new sockets: detach from the cgroups first (closing the links).
        self.inserter.links.clear();
        // Remove the pins; the fields' own drops then close every descriptor, which
        // frees the maps (taking the sockets out) and the programs. skp_progs is not
        // cleared here: the kernel empties a PROG_ARRAY itself when its last user
        // reference goes, and an explicit delete of the slot before that was seen to
        // leave the PROG_ARRAY behind in the kernel (6.18, with the entry program's
        // tail call patched in by the JIT).
        self.unpin();
        crate::fs::remove_pins(&self.pins.path);
    }
}

fn read_counters(v: &Version) -> Result<Vec<CounterValue>> {
    crate::counters::read(&v.counters, &v.names)
}

fn drain_ring(rb: &mut RingBuf<MapData>, out: &mut Vec<LogRecord>) {
    while let Some(item) = rb.next() {
        if let Some(r) = LogRecord::from_bytes(&item) {
            out.push(r);
        }
    }
}

fn sock_error(what: &str, e: std::io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "only established TCP sockets can enter a socket map (not listening, UDP or unconnected ones)",
        Some(libc::EBUSY) => "the socket is already in a socket map with other programs (another skpc?); take it out there first",
        Some(libc::EBADF) => "the file descriptor is not open",
        Some(libc::EINVAL) => "the descriptor is not a socket this kernel can put into a sockmap",
        Some(libc::ENOSPC) | Some(libc::E2BIG) => "the map is full",
        Some(libc::EPERM) => return Error::permission(what, e),
        _ => "",
    };
    // The errno's text is the source; the hint says what it means here.
    let message = if hint.is_empty() {
        format!("{what} failed")
    } else {
        format!("{what} failed: {hint}")
    };
    Error::caused(ErrorKind::Socket, message, e)
}

/// The [`SockKey`] of a connected TCP socket, as the SOCK_OPS program would build it
/// (IPv4-mapped IPv6 addresses are stored as IPv4, like the kernel reports them).
pub fn sock_key(fd: RawFd) -> std::io::Result<SockKey> {
    let local = sockaddr(fd, false)?;
    let remote = sockaddr(fd, true)?;
    let (family, lip, lport) = local;
    let (_, rip, rport) = remote;
    Ok(SockKey {
        family,
        local_ip: lip,
        remote_ip: rip,
        local_port: lport,
        remote_port: rport,
    })
}

fn sockaddr(fd: RawFd, peer: bool) -> std::io::Result<(u32, [u32; 4], u32)> {
    // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut ss as *mut _ as *mut libc::sockaddr;
    // SAFETY: ss/len describe a writable buffer of the right size.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(p as *const libc::sockaddr_in) };
            Ok((
                skpc_abi::AF_INET,
                [sin.sin_addr.s_addr, 0, 0, 0],
                u16::from_be(sin.sin_port) as u32,
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(p as *const libc::sockaddr_in6) };
            let b = sin6.sin6_addr.s6_addr;
            let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let words = [w(0), w(4), w(8), w(12)];
            let port = u16::from_be(sin6.sin6_port) as u32;
            if b[..10].iter().all(|&x| x == 0) && b[10] == 0xff && b[11] == 0xff {
                Ok((skpc_abi::AF_INET, [words[3], 0, 0, 0], port))
            } else {
                Ok((skpc_abi::AF_INET6, words, port))
            }
        }
        f => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address family {f} is not IPv4 or IPv6"),
        )),
    }
}
