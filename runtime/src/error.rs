//! Errors of the runtime: one sentence that says what failed, plus the fix.
//!
//! The kernel answers most mistakes with a bare errno (EPERM, EINVAL, ...). [`Error`]
//! turns those into the cause a user can act on: not root, a kernel without sockmap,
//! cgroup v2 or bpffs not mounted, a helper this kernel does not allow.

use std::fmt;
use std::io;

/// What went wrong, for callers that want to react (tests skip on `Permission`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not root, or missing CAP_BPF / CAP_NET_ADMIN / CAP_SYS_ADMIN.
    Permission,
    /// The kernel has no sockmap / SK_MSG support.
    NoSockmap,
    /// No cgroup v2 hierarchy is mounted.
    NoCgroup2,
    /// No BPF filesystem is mounted.
    NoBpffs,
    /// The program calls a helper this kernel does not allow in its program type.
    MissingHelper,
    /// The verifier rejected a program.
    Verifier,
    /// The object is not a skpc object (a program or map is missing, or malformed).
    BadObject,
    /// A socket could not be put into or taken out of a map.
    Socket,
    /// A file system or process operation failed.
    Io,
}

/// A runtime error: [`ErrorKind`] plus a message that names the cause and the fix.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// "X needs root" with the fix, for `what` ("loading the policy", ...).
    pub(crate) fn permission(what: &str) -> Error {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let who = if euid == 0 {
            "this root process lacks CAP_BPF/CAP_NET_ADMIN (a container or a restricted user namespace?)".to_string()
        } else {
            format!("this process runs as uid {euid}, not root")
        };
        Error::new(
            ErrorKind::Permission,
            format!(
                "{what} was refused by the kernel: {who}; run skpc as root (sudo), or grant it CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN"
            ),
        )
    }

    pub(crate) fn io(what: impl fmt::Display, e: io::Error) -> Error {
        if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
            return Error::permission(&what.to_string());
        }
        Error::new(ErrorKind::Io, format!("{what} failed: {e}"))
    }

    /// Maps an aya error from `what` (e.g. "creating map skp_socks") to a cause.
    pub(crate) fn from_aya(what: &str, e: &(dyn std::error::Error + 'static)) -> Error {
        let errno = errno_of(e);
        // Verifier log, if this is a program load failure.
        let mut log = None;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) =
                err.downcast_ref::<aya::programs::ProgramError>()
            {
                log = Some(verifier_log.to_string());
            }
            if let Some(aya::EbpfError::ProgramError(aya::programs::ProgramError::LoadError {
                verifier_log,
                ..
            })) = err.downcast_ref::<aya::EbpfError>()
            {
                log = Some(verifier_log.to_string());
            }
            cur = err.source();
        }
        if let Some(log) = log {
            if errno == Some(libc::EPERM) {
                return Error::permission(what);
            }
            if let Some(helper) = unknown_helper(&log) {
                return Error::new(
                    ErrorKind::MissingHelper,
                    format!(
                        "{what}: this kernel does not allow the helper {helper} in this program type; remove the rule that needs it (uid/gid/pid/cgroup/comm need a kernel that allows process helpers in SK_MSG programs) or use a newer kernel"
                    ),
                );
            }
            return Error::new(
                ErrorKind::Verifier,
                format!(
                    "{what}: the kernel verifier rejected the program ({}); this is a compiler bug, please report it with the policy and this log:\n{}",
                    errno.map(|n| io::Error::from_raw_os_error(n).to_string()).unwrap_or_default(),
                    tail(&log, 30)
                ),
            );
        }
        match errno {
            Some(libc::EPERM) => Error::permission(what),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                if what.contains("skp_socks") || what.contains("skp_peers") || chain(e).contains("skp_socks") || chain(e).contains("skp_peers") =>
            {
                Error::new(
                    ErrorKind::NoSockmap,
                    format!(
                        "{what} failed: this kernel has no sockmap/SK_MSG support; use Linux 4.17 or later built with CONFIG_BPF_SYSCALL, CONFIG_NET_SOCK_MSG and CONFIG_BPF_STREAM_PARSER"
                    ),
                )
            }
            Some(libc::ENOSYS) => Error::new(
                ErrorKind::NoSockmap,
                format!("{what} failed: this kernel has no bpf() system call; use a kernel built with CONFIG_BPF_SYSCALL"),
            ),
            _ => Error::new(ErrorKind::Io, format!("{what} failed: {}", chain(e))),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The errno of the first `io::Error` in the chain.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        cur = err.source();
    }
    None
}

/// "a: b: c" from an error chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

/// The helper named in "unknown func bpf_get_current_uid_gid#15".
fn unknown_helper(log: &str) -> Option<String> {
    let i = log.find("unknown func ")?;
    let rest = &log[i + "unknown func ".len()..];
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unknown_helper() {
        let log =
            "0: (85) call bpf_get_current_uid_gid#15\nunknown func bpf_get_current_uid_gid#15\n";
        assert_eq!(
            unknown_helper(log).as_deref(),
            Some("bpf_get_current_uid_gid#15")
        );
    }

    #[test]
    fn permission_message_names_the_fix() {
        let e = Error::permission("loading the policy");
        assert!(e.to_string().contains("root"));
        assert_eq!(e.kind(), ErrorKind::Permission);
    }
}
