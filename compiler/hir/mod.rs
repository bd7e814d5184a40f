//! The typed, resolved policy (HIR): what the backend, the reference evaluator and the
//! test runner consume. Names are gone, `port`/`ip` are expanded to both ends, every
//! integer comparison is a membership test in a set of inclusive ranges, every address
//! test a list of prefixes. Spans stay on rules and tests for listings and reports.
//!
//! What every HIR the checker returns promises, so that no later pass reaches back into
//! the checker: names are resolved and every value has its field's type; each rule's
//! condition is folded (`fold::simplify` leaves it unchanged: no constant inside an
//! `and`/`or`, no nested `and` in an `and`, no double `not`); integer ranges are sorted,
//! disjoint and not adjacent (`ranges::normalize`); address prefixes have no host bits.

pub mod conn;
pub mod fold;
pub mod ranges;
pub mod visit;

use std::net::IpAddr;

use crate::fields;
use crate::syntax::Span;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Rules in source order. Rule `i` owns counter slot `i`.
    pub rules: Vec<Rule>,
    /// What happens when no terminal rule matches.
    pub default: DefaultRule,
    /// Every counter slot: one per rule, then one per distinct `count NAME`.
    pub counters: Vec<CounterInfo>,
    pub tests: Vec<TestCase>,
    /// The sets read from files (`set NAME = file "...";`), which `Test::InFile` refers to
    /// by index.
    pub file_sets: Vec<FileSet>,
}

/// A set read from a file: its contents when the policy was checked are in the
/// `Test::InFile`s that use it; the runtime may replace them while the program runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSet {
    pub name: String,
    /// The file as read (relative paths resolved against the policy's directory).
    pub path: std::path::PathBuf,
    /// The `file "..."` of the declaration.
    pub span: Span,
    /// Elements in the file when checked.
    pub elements: usize,
}

impl Policy {
    /// Whether a rule or the default replies: the program then redirects to the sender's
    /// own sockhash entry, which whoever loads the object must fill.
    pub fn replies(&self) -> bool {
        let reply = |d: &Decision| matches!(d.verdict, Verdict::Reply(_));
        reply(&self.default.decision)
            || self.rules.iter().any(|r| match &r.action {
                Action::Decide(d) => reply(d),
                Action::Count { .. } | Action::Log => false,
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRule {
    pub decision: Decision,
    /// The `default` item, if the policy has one (else the implicit `default pass`).
    pub span: Option<Span>,
    /// Counter slot of the default (after the rules' and named counters).
    pub counter: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterInfo {
    pub name: String,
    pub kind: CounterKind,
    /// 1-based source line (0 for the implicit default).
    pub line: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Rule,
    Named,
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule's counter slot (== its index in `Policy::rules`).
    pub counter: usize,
    pub action: Action,
    pub cond: Cond,
    pub span: Span,
    /// 1-based source line of the rule's first token.
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A terminal verdict: the first matching one decides.
    Decide(Decision),
    /// Non-terminal: bump a named counter and go on.
    Count { counter: usize },
    /// Non-terminal: send a `LogRecord` to user space and go on.
    Log,
}

impl Action {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Action::Decide(_))
    }
}

/// What the program does with a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub verdict: Verdict,
    /// `for N`: `bpf_msg_apply_bytes(N)` before returning.
    pub apply_bytes: Option<u32>,
}

/// The longest `reply STRING` the checker accepts, in bytes.
pub const MAX_REPLY: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass,
    Drop,
    /// `bpf_msg_pop_data(msg, 0, size, 0)` then SK_PASS: the message is swallowed, the
    /// send succeeds and the socket stays usable (unlike a drop, which sticks).
    Discard,
    /// The message is replaced by these bytes and redirected to the sender's own receive
    /// queue (`bpf_msg_redirect_hash` with its own 4-tuple and BPF_F_INGRESS): the sender
    /// reads them as if the peer had answered; the peer gets nothing.
    Reply(Vec<u8>),
    Redirect {
        ingress: bool,
        target: Target,
    },
    /// `bpf_msg_cork_bytes(N)` then SK_PASS: hold the data until N bytes are there.
    Cork(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A sockmap slot; a constant or an integer field of the message.
    Sock(SockSlot),
    /// The other end of a local connection, looked up in the sockhash.
    Peer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockSlot {
    Const(u32),
    Field(IntField),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    Const(bool),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Test(Test),
}

/// One primitive test of one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// `field ∈ ranges`; the ranges are inclusive, sorted, disjoint and not adjacent.
    Int {
        field: IntField,
        ranges: Vec<(u64, u64)>,
    },
    /// The address of `end` lies in one of the prefixes.
    Addr {
        end: End,
        nets: Vec<Net>,
        mapped: bool,
    },
    /// Bytes of the payload at `offset` equal one of `alts` (all of the same length).
    /// A message shorter than `offset + len` does not match.
    Payload { offset: u32, alts: Vec<Vec<u8>> },
    /// The sender's comm equals (or, with `prefix`, starts with) one of `alts`.
    Comm { alts: Vec<Vec<u8>>, prefix: bool },
    /// The message is of the protocol (its parser accepted the start of the message).
    Proto(fields::Proto),
    /// The value `of` tests is in the set read from file `set` (`Policy::file_sets`).
    /// `of` is an `Int` or `Addr` test holding the file's elements when the policy was
    /// checked; the runtime may replace them while the program runs, so no pass may
    /// simplify by them (an empty set is not `false`): they only fill the set's map.
    InFile { set: usize, of: Box<Test> },
    /// A protocol field has a value and it equals (starts with, ends with) one of `alts`.
    /// The alternatives are sorted, distinct, non-empty, no longer than the field's
    /// `max_len`, and in the field's case (`Case::Upper`: no lower-case letters).
    Text {
        field: fields::Text,
        op: TextOp,
        alts: Vec<Vec<u8>>,
    },
}

/// How a protocol field is compared with a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextOp {
    Eq,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Local,
    Remote,
}

/// An address prefix. IPv4 prefixes match IPv4 sockets and, when the test's `mapped` is
/// set, IPv4-mapped addresses (`::ffff:a.b.c.d`) of IPv6 sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Net {
    /// Host-order address (host bits zero) and prefix length 0..=32.
    V4 { addr: u32, prefix: u8 },
    /// Host-order address (host bits zero) and prefix length 0..=128.
    V6 { addr: u128, prefix: u8 },
}

impl Net {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self, ip) {
            (Net::V4 { addr, prefix }, IpAddr::V4(a)) => mask32(*prefix) & u32::from(*a) == *addr,
            (Net::V6 { addr, prefix }, IpAddr::V6(a)) => mask128(*prefix) & u128::from(*a) == *addr,
            _ => false,
        }
    }
}

pub fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

pub fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IntField {
    /// `sk_msg_md.size`: bytes in this send call.
    Len,
    /// `sk_msg_md.family`: AF_INET 2, AF_INET6 10.
    Family,
    LocalPort,
    RemotePort,
    Uid,
    Gid,
    /// Thread-group id of the sender (what user space calls the pid).
    Pid,
    /// cgroup v2 id of the sender.
    Cgroup,
    /// `payload[i]`; a message shorter than `i + 1` does not match.
    PayloadByte(u32),
}

impl IntField {
    /// The field's row in the registry; none for `payload[i]` (a view of `payload`).
    pub fn id(self) -> Option<fields::Id> {
        Some(match self {
            IntField::Len => fields::Id::Len,
            IntField::Family => fields::Id::Family,
            IntField::LocalPort => fields::Id::LocalPort,
            IntField::RemotePort => fields::Id::RemotePort,
            IntField::Uid => fields::Id::Uid,
            IntField::Gid => fields::Id::Gid,
            IntField::Pid => fields::Id::Pid,
            IntField::Cgroup => fields::Id::Cgroup,
            IntField::PayloadByte(_) => return None,
        })
    }

    /// The integer field a registry row is, if it is one.
    pub fn of(id: fields::Id) -> Option<IntField> {
        [
            IntField::Len,
            IntField::Family,
            IntField::LocalPort,
            IntField::RemotePort,
            IntField::Uid,
            IntField::Gid,
            IntField::Pid,
            IntField::Cgroup,
        ]
        .into_iter()
        .find(|f| f.id() == Some(id))
    }

    /// The largest value the field can hold.
    pub fn max_value(self) -> u64 {
        match self.id() {
            Some(id) => fields::get(id).max_value().unwrap_or(u64::MAX),
            None => u8::MAX as u64,
        }
    }

    pub fn name(self) -> String {
        match (self, self.id()) {
            (IntField::PayloadByte(i), _) => format!("payload[{i}]"),
            (_, Some(id)) => fields::get(id).name.into(),
            (_, None) => String::new(),
        }
    }

    /// The `struct sk_msg_md` word the program loads the field from, and whether it
    /// needs a `be32` byte swap; none for fields read through helpers or the data.
    pub fn ctx_word(self) -> Option<(i16, bool)> {
        self.id().and_then(fields::ctx_word)
    }
}

impl Message {
    /// The value of an integer member; none for the addresses, payload and comm.
    pub fn int(&self, member: fields::Member) -> Option<u64> {
        use fields::Member as M;
        Some(match member {
            M::Family => self.family as u64,
            M::LocalPort => self.local_port as u64,
            M::RemotePort => self.remote_port as u64,
            M::Len => self.len as u64,
            M::Uid => self.uid as u64,
            M::Gid => self.gid as u64,
            M::Pid => self.pid as u64,
            M::Cgroup => self.cgroup,
            M::LocalIp | M::RemoteIp | M::Payload | M::Comm => return None,
        })
    }
}

/// A message as a test case (or the differential tester) describes it: everything the
/// policy can look at. Addresses and ports are plain values; byte orders are the
/// backend's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub family: u32,
    pub local_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    /// `sk_msg_md.size`; at least `payload.len()` (the rest is unseen bytes).
    pub len: u32,
    pub payload: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub cgroup: u64,
    /// At most 15 bytes (the kernel's TASK_COMM_LEN is 16 with the NUL).
    pub comm: Vec<u8>,
}

impl Default for Message {
    /// The defaults of a test case that does not mention a field (docs/language.md).
    fn default() -> Message {
        Message {
            family: skpc_abi::AF_INET,
            local_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            remote_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            local_port: 40000,
            remote_port: 8080,
            len: 0,
            payload: Vec::new(),
            uid: 1000,
            gid: 1000,
            pid: 4242,
            cgroup: 1,
            comm: b"client".to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub name: String,
    pub span: Span,
    pub line: u32,
    pub message: Message,
    pub expect: Decision,
}
