//! Processes and signals for `skpc exec`/`skpc run` and embedders: start a command
//! inside a cgroup, catch signals through a self-pipe, wait on several descriptors.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// Polls `fds` for readability for up to `timeout`; returns the readable ones.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> Vec<RawFd> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: p is a valid array of pollfd of the length we pass.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Vec::new();
    }
    p.iter().filter(|x| x.revents != 0).map(|x| x.fd).collect()
}

/// Starts `cmd` inside the cgroup v2 directory `cgroup`: the child writes its own pid
/// to `cgroup.procs` between fork and exec, so every socket it (and its children)
/// opens is already under the cgroup's programs.
pub fn spawn_in_cgroup(cmd: &mut Command, cgroup: &Path) -> Result<Child> {
    join_cgroup_on_exec(cmd, cgroup)?;
    cmd.spawn().map_err(|e| {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        if e.kind() == io::ErrorKind::NotFound {
            Error::caused(
                crate::ErrorKind::Io,
                format!("cannot run {prog}: command not found; check the name and PATH"),
                e,
            )
        } else {
            Error::io(
                format_args!("starting {prog} in the cgroup {}", cgroup.display()),
                e,
            )
        }
    })
}

/// Registers the `pre_exec` hook of [`spawn_in_cgroup`] without spawning: hooks
/// registered after it (e.g. a setuid) run after the child joined the cgroup.
pub fn join_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|_| Error::new(crate::ErrorKind::Io, "the cgroup path contains a NUL byte"))?;
    // SAFETY: the hook only calls async-signal-safe functions (open, write, close)
    // on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" means the writing process itself.
            let r = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if r != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// The exit status as a shell reports it: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        _ => 1,
    }
}

/// A signal caught by [`Signals`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caught {
    pub signal: i32,
    /// Sent by a process with kill(2) (not by the terminal or the kernel): such a
    /// signal reached only us, so `skpc exec` forwards it to the command.
    pub from_process: bool,
}

static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    // SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6): a process sent it.
    let from_process = code <= 0;
    let msg = [sig as u8, from_process as u8];
    let fd = PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; a full pipe just loses the signal.
        unsafe { libc::write(fd, msg.as_ptr() as *const libc::c_void, 2) };
    }
}

/// Catches signals through a self-pipe until dropped (then restores the default
/// action). One instance per process.
pub struct Signals {
    rd: RawFd,
    wr: RawFd,
    signals: Vec<i32>,
}

impl Signals {
    /// Installs handlers for `signals` (e.g. SIGINT, SIGTERM, SIGHUP).
    pub fn install(signals: &[i32]) -> Result<Signals> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(Error::io(
                "creating the signal pipe",
                io::Error::last_os_error(),
            ));
        }
        PIPE_WR.store(fds[1], Ordering::Relaxed);
        for &s in signals {
            // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO is valid.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(s, &sa, std::ptr::null_mut());
            }
        }
        Ok(Signals {
            rd: fds[0],
            wr: fds[1],
            signals: signals.to_vec(),
        })
    }

    /// The descriptor that becomes readable when a signal arrives.
    pub fn fd(&self) -> RawFd {
        self.rd
    }

    /// The signals caught since the last call.
    pub fn pending(&self) -> Vec<Caught> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::read(self.rd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
            for pair in buf[..n as usize].chunks(2) {
                if pair.len() == 2 {
                    out.push(Caught {
                        signal: pair[0] as i32,
                        from_process: pair[1] != 0,
                    });
                }
            }
        }
        out
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for &s in &self.signals {
            // SAFETY: restoring the default action.
            unsafe { libc::signal(s, libc::SIG_DFL) };
        }
        PIPE_WR.store(-1, Ordering::Relaxed);
        // SAFETY: we own both ends.
        unsafe {
            libc::close(self.rd);
            libc::close(self.wr);
        }
    }
}

/// Sends `signal` to `pid` (errors ignored: the process may be gone).
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Whether stdout/stderr is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty has no memory preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

/// Signal numbers, re-exported so the CLI needs no libc of its own.
pub mod sig {
    pub const SIGHUP: i32 = libc::SIGHUP;
    pub const SIGINT: i32 = libc::SIGINT;
    pub const SIGQUIT: i32 = libc::SIGQUIT;
    pub const SIGTERM: i32 = libc::SIGTERM;
    pub const SIGKILL: i32 = libc::SIGKILL;
}
