//! The SOCK_OPS program in force and its cgroup links ([`Inserter`]), and the count of
//! the sockets it leaves out (`skp_untouched`). One program runs on every cgroup, each
//! through its own bpf_link made by the runtime (`sys::CgroupLink`), so that a reload
//! whose policy takes other connections can replace it in place (BPF_LINK_UPDATE).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use aya::maps::Map;
use aya::programs::ProgramFd;
use aya::Ebpf;
use skpc_abi::{SOCK_OPS_PROGRAM, UNTOUCHED_NAME};

use crate::enforce::{map_id, sock_ops};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// What a successful [`crate::Enforcement::reload`] did besides swapping the verdict program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The new version's SOCK_OPS program replaced the old one on every cgroup (its
    /// connection condition differs): new connections follow the new condition.
    pub sock_ops_replaced: bool,
}

/// The SOCK_OPS program in force, and its links to the cgroups: one program for every
/// cgroup, each through its own bpf_link, so that a reload replaces it with
/// BPF_LINK_UPDATE: at no moment does a cgroup run no SOCK_OPS program or two of them.
pub(crate) struct Inserter {
    /// The only user-space reference to the program (aya's copy is unloaded at once):
    /// replacing it here and in the links frees the old program.
    pub(crate) prog: ProgramFd,
    pub(crate) id: u32,
    /// Which connections it inserts ([`crate::Policy::connections`]).
    pub(crate) connections: Option<String>,
    pub(crate) links: Vec<(PathBuf, sys::CgroupLink)>,
}

/// A new SOCK_OPS program that every link runs, not yet the one in force
/// ([`Inserter::stage`], then [`Inserter::commit`] or [`Inserter::unstage`]).
pub(crate) struct Staged {
    prog: ProgramFd,
    id: u32,
    connections: Option<String>,
    /// `skp_untouched` and its id, when this object defined it first.
    untouched: Option<(Map, u32)>,
}

impl Inserter {
    /// Attaches the program to the cgroup v2 directory `cgroup` through a new link.
    pub(crate) fn attach(&mut self, cgroup: &Path) -> Result<()> {
        let dir = File::open(cgroup).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::caused(ErrorKind::Io, format!("the cgroup {} does not exist; create it with mkdir under the cgroup2 mount", cgroup.display()), e)
            } else {
                Error::io(format_args!("opening the cgroup {}", cgroup.display()), e)
            }
        })?;
        if !is_cgroup2(&dir) {
            return Err(Error::new(
                ErrorKind::NoCgroup2,
                format!(
                    "{} is not a cgroup v2 directory; pass a directory under the cgroup2 mount ({})",
                    cgroup.display(),
                    crate::fs::cgroup2_mount().map(|p| p.display().to_string()).unwrap_or_else(|_| "none mounted".into())
                ),
            ));
        }
        let link = sys::CgroupLink::sock_ops(self.prog.as_fd(), dir.as_fd()).map_err(|e| {
            link_error(
                &format!(
                    "attaching the sockops program to the cgroup {}",
                    cgroup.display()
                ),
                e,
            )
        })?;
        self.links.push((cgroup.to_path_buf(), link));
        Ok(())
    }

    /// The first half of a reload's SOCK_OPS change: when `connections` (the new
    /// policy's key) differs from the one in force, or is unknown, loads the loaded
    /// object's program (against the same pinned maps as its verdict program) and makes
    /// every link run it. `None`: the program in force stays. `untouched` is the id of
    /// the live `skp_untouched`: an object that defines it must share it, or the count
    /// would restart. On an error nothing changed.
    pub(crate) fn stage(
        &self,
        ebpf: &mut Ebpf,
        connections: &Option<String>,
        untouched: Option<u32>,
    ) -> Result<Option<Staged>> {
        if connections.is_some() && *connections == self.connections {
            return Ok(None);
        }
        let (prog, id) = load_sock_ops(ebpf)?;
        let mut new_untouched = None;
        if ebpf.map(UNTOUCHED_NAME).is_some() {
            let got = map_id(ebpf, UNTOUCHED_NAME)?;
            match untouched {
                Some(want) if want != got => {
                    return Err(Error::new(
                        ErrorKind::BadObject,
                        format!("the new object did not reuse the live map {UNTOUCHED_NAME} (its definition differs or it is not pinned by name); rebuild it with this skpc"),
                    ));
                }
                Some(_) => {}
                None => new_untouched = take_untouched(ebpf)?,
            }
        }
        self.switch_links(prog.as_fd())?;
        Ok(Some(Staged {
            prog,
            id,
            connections: connections.clone(),
            untouched: new_untouched,
        }))
    }

    /// Undoes [`Inserter::stage`] (the verdict swap failed): every link runs the program
    /// in force again.
    pub(crate) fn unstage(&self, staged: &Staged) {
        self.restore_links(staged.prog.as_fd());
    }

    /// The second half: the staged program is the one in force. Dropping the old
    /// descriptor frees the old program (no link runs it now). Returns the new
    /// program's id and `skp_untouched` if this object brought it first.
    pub(crate) fn commit(&mut self, staged: Staged) -> (u32, Option<(Map, u32)>) {
        self.prog = staged.prog;
        self.id = staged.id;
        self.connections = staged.connections;
        (staged.id, staged.untouched)
    }

    /// Makes every link run `new` instead of the program in force. All or nothing: on
    /// an error the links already switched go back to the old program.
    fn switch_links(&self, new: BorrowedFd<'_>) -> Result<()> {
        for (i, (cgroup, link)) in self.links.iter().enumerate() {
            if let Err(e) = link.replace(self.prog.as_fd(), new) {
                for (_, done) in &self.links[..i] {
                    let _ = done.replace(new, self.prog.as_fd());
                }
                return Err(link_error(
                    &format!(
                        "replacing the sockops program on the cgroup {} (BPF_LINK_UPDATE)",
                        cgroup.display()
                    ),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Makes every link run the program in force again, after [`Inserter::switch_links`]
    /// to `new` (best effort: a link that refuses keeps `new`).
    fn restore_links(&self, new: BorrowedFd<'_>) {
        for (_, link) in &self.links {
            let _ = link.replace(new, self.prog.as_fd());
        }
    }
}

fn link_error(what: &str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) => Error::permission(what, e),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => Error::caused(
            ErrorKind::Io,
            format!("{what} failed: the kernel refused the cgroup bpf link (they need Linux 5.7 or later)"),
            e,
        ),
        _ => Error::io(format_args!("{what}"), e),
    }
}

/// Loads (verifies) the SOCK_OPS program of a loaded object and hands over its only
/// descriptor and its id; aya's copy is unloaded, so that the program lives exactly
/// as long as that descriptor and the links running it.
pub(crate) fn load_sock_ops(ebpf: &mut Ebpf) -> Result<(ProgramFd, u32)> {
    let ops = sock_ops(ebpf, SOCK_OPS_PROGRAM)?;
    ops.load()
        .map_err(|e| Error::from_aya("loading the sockops program skp_sockops", e))?;
    let id = ops.info().map(|i| i.id()).unwrap_or(0);
    let fd = ops
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
        .map_err(|e| Error::from_aya("reading the sockops program", e))?;
    let _ = ops.unload();
    Ok((fd, id))
}

/// Takes `skp_untouched` (and its id) out of a loaded object, if it defines it.
pub(crate) fn take_untouched(ebpf: &mut Ebpf) -> Result<Option<(Map, u32)>> {
    if ebpf.map(UNTOUCHED_NAME).is_none() {
        return Ok(None);
    }
    let id = map_id(ebpf, UNTOUCHED_NAME)?;
    Ok(ebpf.take_map(UNTOUCHED_NAME).map(|m| (m, id)))
}

/// The sum over CPUs of `skp_untouched[0]`: the established sockets left out.
pub(crate) fn read_untouched(map: &Map) -> Result<u64> {
    let Map::PerCpuArray(data) = map else {
        return Err(Error::new(
            ErrorKind::BadObject,
            format!("{UNTOUCHED_NAME} is not a PERCPU_ARRAY map; rebuild the object with skpc"),
        ));
    };
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| Error::io(format_args!("reading the possible CPUs ({what})"), e))?;
    // One u64 per possible CPU (the value size, already 8-aligned).
    let mut per_cpu = vec![0u64; cpus];
    sys::map_lookup_into(data.fd().as_fd(), &0u32.to_ne_bytes(), &mut per_cpu)
        .map_err(|e| Error::io(format_args!("reading {UNTOUCHED_NAME}"), e))?;
    Ok(per_cpu.iter().sum())
}

/// Whether `dir` is on a cgroup2 file system.
fn is_cgroup2(dir: &File) -> bool {
    // SAFETY: fstatfs writes into the struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: dir is an open descriptor; st is valid for writes.
    let r = unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) };
    r == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC
}
