//! Errors of the runtime: one sentence that says what failed, plus the fix.
//!
//! The kernel answers most mistakes with a bare errno (EPERM, EINVAL, ...). [`Error`]
//! turns those into the cause a user can act on: not root, a kernel without sockmap,
//! cgroup v2 or bpffs not mounted, a helper this kernel does not allow; the errno (or
//! the aya or object error) it comes from stays its `source()`.

use std::fmt;
use std::io;

/// What went wrong, for callers that want to react (tests skip on `Permission`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not root, or missing CAP_BPF / CAP_NET_ADMIN / CAP_PERFMON.
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

/// The cause of an [`Error`]: the io, aya or object-file error it comes from.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A runtime error: one variant per [`ErrorKind`], each a message that names what
/// failed and the fix, and the cause it comes from ([`std::error::Error::source`]: the
/// io error with its errno, the aya error with its own chain, the object parse error).
///
/// The message does not repeat the cause's text: an error either shows its cause or
/// returns it as its source, never both, so a chain printer (anyhow's `{:#}`, which the
/// skpc CLI uses) prints every cause once, as "message: cause: its cause".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Permission {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{message}")]
    NoSockmap {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{message}")]
    NoCgroup2 {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{message}")]
    NoBpffs {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// The verifier log names the helper; it is the cause, in the message.
    #[error("{message}")]
    MissingHelper { message: String },
    /// The last lines of the verifier log and the errno are the cause, in the message
    /// (aya's error would repeat the whole log).
    #[error("{message}")]
    Verifier { message: String },
    #[error("{message}")]
    BadObject {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{message}")]
    Socket {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{message}")]
    Io {
        message: String,
        #[source]
        source: Option<Cause>,
    },
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error without an underlying cause (the runtime's own checks).
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::build(kind, message.into(), None)
    }

    /// An error that `cause` (an io, aya or object error) led to.
    pub(crate) fn caused(
        kind: ErrorKind,
        message: impl Into<String>,
        cause: impl Into<Cause>,
    ) -> Error {
        Error::build(kind, message.into(), Some(cause.into()))
    }

    fn build(kind: ErrorKind, message: String, source: Option<Cause>) -> Error {
        match kind {
            ErrorKind::Permission => Error::Permission { message, source },
            ErrorKind::NoSockmap => Error::NoSockmap { message, source },
            ErrorKind::NoCgroup2 => Error::NoCgroup2 { message, source },
            ErrorKind::NoBpffs => Error::NoBpffs { message, source },
            ErrorKind::MissingHelper => Error::MissingHelper { message },
            ErrorKind::Verifier => Error::Verifier { message },
            ErrorKind::BadObject => Error::BadObject { message, source },
            ErrorKind::Socket => Error::Socket { message, source },
            ErrorKind::Io => Error::Io { message, source },
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Permission { .. } => ErrorKind::Permission,
            Error::NoSockmap { .. } => ErrorKind::NoSockmap,
            Error::NoCgroup2 { .. } => ErrorKind::NoCgroup2,
            Error::NoBpffs { .. } => ErrorKind::NoBpffs,
            Error::MissingHelper { .. } => ErrorKind::MissingHelper,
            Error::Verifier { .. } => ErrorKind::Verifier,
            Error::BadObject { .. } => ErrorKind::BadObject,
            Error::Socket { .. } => ErrorKind::Socket,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// The sentence: what failed and the fix (without the cause's own text).
    pub fn message(&self) -> &str {
        match self {
            Error::Permission { message, .. }
            | Error::NoSockmap { message, .. }
            | Error::NoCgroup2 { message, .. }
            | Error::NoBpffs { message, .. }
            | Error::MissingHelper { message }
            | Error::Verifier { message }
            | Error::BadObject { message, .. }
            | Error::Socket { message, .. }
            | Error::Io { message, .. } => message,
        }
    }

    /// "X needs root" with the fix, for `what` ("loading the policy", ...), caused by
    /// the kernel's EPERM/EACCES in `cause`.
    pub(crate) fn permission(what: &str, cause: impl Into<Cause>) -> Error {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let who = if euid == 0 {
            "this root process lacks CAP_BPF/CAP_NET_ADMIN (a container or a restricted user namespace?)".to_string()
        } else {
            format!("this process runs as uid {euid}, not root")
        };
        Error::caused(
            ErrorKind::Permission,
            format!(
                "{what} was refused by the kernel: {who}; run skpc as root (sudo), or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (docs/runtime.md, What needs root)"
            ),
            cause,
        )
    }

    /// "{what} failed", caused by `e` (a permission error for EPERM/EACCES).
    pub(crate) fn io(what: impl fmt::Display, e: io::Error) -> Error {
        if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
            return Error::permission(&what.to_string(), e);
        }
        Error::caused(ErrorKind::Io, format!("{what} failed"), e)
    }

    /// Maps an aya error from `what` (e.g. "creating map skp_socks") to a cause.
    pub(crate) fn from_aya<E>(what: &str, e: E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let errno = errno_of(&e);
        // Verifier log, if this is a program load failure.
        let mut log = None;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
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
                // The errno alone: aya's error would repeat the verifier log.
                return Error::permission(what, io::Error::from_raw_os_error(libc::EPERM));
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
        let text = chain(&e);
        // Where the errno alone says what went wrong, it is the cause: aya's errors
        // repeat their source in their own text ("map error: X" over X), which a chain
        // printer would show twice after the fix.
        let errno_cause = |n: i32| io::Error::from_raw_os_error(n);
        match errno {
            Some(libc::EPERM) => Error::permission(what, errno_cause(libc::EPERM)),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                if what.contains("skp_socks") || what.contains("skp_peers") || text.contains("skp_socks") || text.contains("skp_peers") =>
            {
                Error::caused(
                    ErrorKind::NoSockmap,
                    format!(
                        "{what} failed: this kernel has no sockmap/SK_MSG support; use Linux 4.17 or later built with CONFIG_BPF_SYSCALL, CONFIG_NET_SOCK_MSG and CONFIG_BPF_STREAM_PARSER"
                    ),
                    errno_cause(errno.unwrap_or(libc::EINVAL)),
                )
            }
            Some(libc::ENOSYS) => Error::caused(
                ErrorKind::NoSockmap,
                format!("{what} failed: this kernel has no bpf() system call; use a kernel built with CONFIG_BPF_SYSCALL"),
                errno_cause(libc::ENOSYS),
            ),
            // Anything else: aya's error with its whole chain.
            _ => Error::caused(ErrorKind::Io, format!("{what} failed"), unwrapped(e)),
        }
    }
}

/// `e` as a cause, without the wrapper of aya's load errors that shows its source's text
/// in its own ("map error: {0}") and returns it as source too, which a chain printer
/// would print twice. (Before causes were kept, the message deduplicated the chain.)
fn unwrapped<E>(e: E) -> Cause
where
    E: std::error::Error + Send + Sync + 'static,
{
    let cause: Cause = Box::new(e);
    match cause.downcast::<aya::EbpfError>() {
        Ok(ebpf) => match *ebpf {
            aya::EbpfError::MapError(e) => Box::new(e),
            aya::EbpfError::ProgramError(e) => Box::new(e),
            aya::EbpfError::ParseError(e) => Box::new(e),
            aya::EbpfError::BtfError(e) => Box::new(e),
            other => Box::new(other),
        },
        Err(other) => other,
    }
}

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
    fn io_errors_keep_their_cause_once() {
        let e = Error::io("creating /x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.to_string(), "creating /x failed");
        let cause = std::error::Error::source(&e).expect("the io error is the source");
        let io = cause.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
        assert!(std::error::Error::source(&Error::new(ErrorKind::BadObject, "x")).is_none());
    }

    #[test]
    fn permission_message_names_the_fix() {
        let e = Error::permission(
            "loading the policy",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(e.to_string().contains("root"));
        assert_eq!(e.kind(), ErrorKind::Permission);
    }
}
