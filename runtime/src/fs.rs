//! Mount points (cgroup v2, bpffs), temporary cgroups, private pin directories, and
//! the removal of what a killed skpc left behind.
//!
//! Everything skpc creates is named `skpc-<pid>-<n>` (cgroups directly under the cgroup2
//! mount, pin directories directly under the bpffs mount), so a later run can tell
//! whose it is and remove it once that pid is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Prefix of every cgroup and pin directory the runtime creates.
pub const NAME_PREFIX: &str = "skpc-";

/// The first mount of `fstype` in /proc/mounts.
fn mount_of(fstype: &str) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == fstype).then(|| PathBuf::from(unescape_mount(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mount_of("cgroup2").ok_or_else(|| {
        Error::new(
            ErrorKind::NoCgroup2,
            "cgroup v2 is not mounted (no cgroup2 line in /proc/mounts); mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with systemd.unified_cgroup_hierarchy=1)",
        )
    })
}

/// Where the BPF filesystem is mounted (normally `/sys/fs/bpf`).
pub fn bpffs_mount() -> Result<PathBuf> {
    mount_of("bpf").ok_or_else(|| {
        Error::new(
            ErrorKind::NoBpffs,
            "the BPF filesystem is not mounted (no bpf line in /proc/mounts), and hot reload shares maps through it; mount it with `mount -t bpf bpf /sys/fs/bpf`",
        )
    })
}

/// `skpc-<pid>-<n>`, unique in this process.
pub(crate) fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{NAME_PREFIX}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner pid of a `skpc-<pid>-<n>` name.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A cgroup v2 directory created by skpc and removed on drop. Processes still in it
/// when it is dropped (daemons a command left running) are moved to the parent cgroup
/// first, so the directory can go.
#[derive(Debug)]
pub struct TempCgroup {
    path: PathBuf,
}

impl TempCgroup {
    /// Creates `<cgroup2 mount>/skpc-<pid>-<n>`.
    pub fn create() -> Result<TempCgroup> {
        let root = cgroup2_mount()?;
        let path = root.join(unique_name());
        fs::create_dir(&path)
            .map_err(|e| Error::io(format_args!("creating the cgroup {}", path.display()), e))?;
        Ok(TempCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pids in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        read_pids(&self.path)
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

fn read_pids(cg: &Path) -> Vec<i32> {
    fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Moves what is left to the parent cgroup and removes the directory, retrying while
/// exiting processes leave it.
fn remove_cgroup(path: &Path) {
    let parent = path.parent().map(Path::to_path_buf);
    for attempt in 0..100 {
        if let Some(parent) = &parent {
            for pid in read_pids(path) {
                let _ = fs::write(parent.join("cgroup.procs"), pid.to_string());
            }
        }
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) if attempt < 99 => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => eprintln!(
                "skpc: could not remove the cgroup {}: {e}; remove it with `rmdir {}`",
                path.display(),
                path.display()
            ),
        }
    }
}

/// A private directory of pins under bpffs, removed (with its pins) on drop.
#[derive(Debug)]
pub(crate) struct PinDir {
    pub(crate) path: PathBuf,
}

impl PinDir {
    pub(crate) fn create() -> Result<PinDir> {
        let root = bpffs_mount()?;
        let path = root.join(unique_name());
        fs::create_dir(&path).map_err(|e| {
            Error::io(
                format_args!("creating the pin directory {}", path.display()),
                e,
            )
        })?;
        Ok(PinDir { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        remove_pins(&self.path);
    }
}

/// Unlinks every pin below `dir` (bpffs allows unlink and rmdir) and the directory.
pub(crate) fn remove_pins(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_pins(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// What [`cleanup_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stale {
    pub cgroups: Vec<PathBuf>,
    pub pin_dirs: Vec<PathBuf>,
}

/// Removes the cgroups and pin directories named `skpc-<pid>-<n>` whose owner pid is
/// dead: what a SIGKILLed skpc left behind. Pins keep maps (and so the policy on the
/// sockets in them) alive; removing them frees the maps. Processes still in a stale
/// cgroup are moved to its parent.
pub fn cleanup_stale() -> Stale {
    let mut out = Stale::default();
    let scan = |root: Option<PathBuf>| -> Vec<PathBuf> {
        let Some(root) = root else { return Vec::new() };
        let Ok(entries) = fs::read_dir(&root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(owner_pid)
                    .is_some_and(|pid| !pid_alive(pid))
                    && e.path().is_dir()
            })
            .map(|e| e.path())
            .collect()
    };
    for dir in scan(bpffs_mount().ok()) {
        remove_pins(&dir);
        out.pin_dirs.push(dir);
    }
    for dir in scan(cgroup2_mount().ok()) {
        remove_cgroup(&dir);
        out.cgroups.push(dir);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid() {
        let n = unique_name();
        assert_eq!(owner_pid(&n), Some(std::process::id() as i32));
        assert_eq!(owner_pid("skpc-12-3"), Some(12));
        assert_eq!(owner_pid("skpc-x-3"), None);
        assert_eq!(owner_pid("skpc-12"), None);
        assert_eq!(owner_pid("other-12-3"), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(
            unescape_mount("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
    }
}
