//! Shared helpers for the kernel tests (`mod common;` in each test file).
//!
//! A kernel test starts with `if !common::kernel_or_skip("name") { return; }`.
//! Without root/CAP_BPF it is skipped with a note on stderr, unless
//! `SKP_REQUIRE_KERNEL=1` is set (CI on a BPF-capable machine), where it fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Why this process cannot use BPF, or None if it can (checked once).
fn bpf_unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe_bpf).clone()
}

/// Try to create a 1-entry BPF array map through the bpf(2) syscall.
fn probe_bpf() -> Option<String> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, map_flags, ... (the rest zero).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        return Some(format!(
            "creating a BPF array map failed: {err} (euid {euid})"
        ));
    }
    // SAFETY: fd is a file descriptor we own.
    unsafe { libc::close(fd as i32) };
    None
}

/// True when this process can load BPF programs and create maps. Otherwise:
/// panics if `SKP_REQUIRE_KERNEL=1`, else prints "skipping TEST: reason" to
/// stderr and returns false.
pub fn kernel_or_skip(test: &str) -> bool {
    let Some(reason) = bpf_unavailable() else {
        return true;
    };
    if std::env::var("SKP_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("kernel test {test} needs root/CAP_BPF: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// A name unique to this process and call: `{prefix}_{pid}_{n}`. Use it for
/// pin paths under /sys/fs/bpf so parallel tests and runs do not collide.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// A path under /sys/fs/bpf that is removed (recursively) when dropped,
/// whatever happens in the test. The path itself is not created.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(prefix: &str) -> PinDir {
        PinDir {
            path: Path::new("/sys/fs/bpf").join(unique_name(prefix)),
        }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.is_dir() {
            let _ = std::fs::remove_dir_all(&self.path);
        } else if self.path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file in the temp dir removed when dropped.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn with_contents(prefix: &str, ext: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}.{ext}", unique_name(prefix)));
        std::fs::write(&path, bytes).expect("writing a temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A directory in the temp dir, removed with everything in it when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir(&path).expect("creating a temp dir");
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A program a test runs (`tool`, from the Debian package `package`), if installed in
/// /usr/bin, /usr/local/bin or /usr/sbin. Otherwise: panics if `SKP_REQUIRE_KERNEL=1`
/// (CI installs it: .ci/setup), else prints "skipping TEST: ..." and returns None.
pub fn tool_or_skip(test: &str, tool: &str, package: &str) -> Option<PathBuf> {
    let dirs = ["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from);
    tool_in_or_skip(test, &dirs, tool, package)
}

/// [`tool_or_skip`] looking in `dirs`, in order.
pub fn tool_in_or_skip(test: &str, dirs: &[PathBuf], tool: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = dirs.iter().map(|d| d.join(tool)).find(|p| p.exists()) {
        return Some(p);
    }
    if std::env::var("SKP_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("{test} needs {tool} (apt-get install {package})");
    }
    eprintln!("skipping {test}: {tool} is not installed (apt-get install {package})");
    None
}

/// The bpftool binary, if installed (Debian package `bpftool`): `$BPFTOOL`,
/// else `bpftool` on PATH or in /usr/sbin, /sbin.
pub fn bpftool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BPFTOOL") {
        return Some(PathBuf::from(p));
    }
    let on_path = Command::new("bpftool")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if on_path {
        return Some(PathBuf::from("bpftool"));
    }
    [
        "/usr/sbin/bpftool",
        "/sbin/bpftool",
        "/usr/local/sbin/bpftool",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Like [`kernel_or_skip`] for tests that also need bpftool.
pub fn bpftool_or_skip(test: &str) -> Option<PathBuf> {
    if !kernel_or_skip(test) {
        return None;
    }
    match bpftool() {
        Some(p) => Some(p),
        None => {
            let reason = "bpftool is not installed (apt-get install bpftool)";
            if std::env::var("SKP_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("kernel test {test} needs bpftool: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}

/// Run a command; return stdout, or panic with the command, status and stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
