//! The fields a policy can read, each described once: its name, its type and range, what
//! a `test` case may set and how, its one-line doc, and where the BPF program finds it.
//!
//! Everyone who needs to know the fields reads this table: the lexer (its interned
//! names), the checker (resolution, reserved names, did-you-mean lists, test-case
//! settings and their help texts), `hir::IntField` (names and ranges), the reference
//! evaluator (which `hir::Message` member holds a field) and the lowering (the context
//! word of a field). docs/language.md's field table is held to it by a test. Adding a
//! field is adding a row (and, for a new kind of value, the code that compares it).
//!
//! A leaf module: it depends on nothing of the compiler but the UAPI constants, so that
//! every pass can use it without depending on a later one.

use crate::bpf::uapi::{
    BPF_FUNC_get_current_cgroup_id, BPF_FUNC_get_current_comm, BPF_FUNC_get_current_pid_tgid,
    BPF_FUNC_get_current_uid_gid, SK_MSG_MD_FAMILY, SK_MSG_MD_LOCAL_IP4, SK_MSG_MD_LOCAL_IP6,
    SK_MSG_MD_LOCAL_PORT, SK_MSG_MD_REMOTE_IP4, SK_MSG_MD_REMOTE_IP6, SK_MSG_MD_REMOTE_PORT,
    SK_MSG_MD_SIZE,
};

/// A field, by identity (one per row of [`FIELDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    Len,
    Family,
    Port,
    Ip,
    Uid,
    Gid,
    Pid,
    Cgroup,
    Comm,
    Payload,
    LocalIp,
    LocalPort,
    LocalIp4,
    LocalIp6,
    RemoteIp,
    RemotePort,
    RemoteIp4,
    RemoteIp6,
    Http,
    HttpMethod,
    HttpPath,
    HttpHost,
    Redis,
    RedisCommand,
    RedisKey,
    Pg,
    PgUser,
    PgDatabase,
    Tls,
    TlsSni,
}

/// An application protocol the program parses in the kernel, from the start of the
/// message. Its fields are in [`Text`]; how far each parser reads is in [`bounds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// An HTTP/1.x request line.
    Http,
    /// A RESP array of bulk strings, or an inline command.
    Redis,
    /// A PostgreSQL StartupMessage, protocol 3.0.
    Pg,
    /// A TLS record holding a ClientHello.
    Tls,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Http, Proto::Redis, Proto::Pg, Proto::Tls];

    /// The field name (`http`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Redis => "redis",
            Proto::Pg => "pg",
            Proto::Tls => "tls",
        }
    }

    /// How many bytes from the start of the message the parser reads at most.
    pub fn window(self) -> u32 {
        match self {
            Proto::Http => bounds::HTTP_WINDOW,
            Proto::Redis => bounds::REDIS_WINDOW,
            Proto::Pg => bounds::PG_WINDOW,
            Proto::Tls => bounds::TLS_WINDOW,
        }
    }
}

/// A string field of a protocol. A message that is not of the protocol, or whose field
/// is empty or lies beyond the parser's bounds, has no value for it: every comparison
/// with it is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Text {
    HttpMethod,
    HttpPath,
    HttpHost,
    RedisCommand,
    RedisKey,
    PgUser,
    PgDatabase,
    TlsSni,
}

/// How a protocol field's letters are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Byte for byte.
    Exact,
    /// Upper-cased ASCII letters (`redis.command`: `flushall` is `FLUSHALL`).
    Upper,
    /// Lower-cased ASCII letters (host names).
    Lower,
}

impl Text {
    pub const ALL: [Text; 8] = [
        Text::HttpMethod,
        Text::HttpPath,
        Text::HttpHost,
        Text::RedisCommand,
        Text::RedisKey,
        Text::PgUser,
        Text::PgDatabase,
        Text::TlsSni,
    ];

    pub fn proto(self) -> Proto {
        match self {
            Text::HttpMethod | Text::HttpPath | Text::HttpHost => Proto::Http,
            Text::RedisCommand | Text::RedisKey => Proto::Redis,
            Text::PgUser | Text::PgDatabase => Proto::Pg,
            Text::TlsSni => Proto::Tls,
        }
    }

    /// The longest value the parser gives the field; a longer one is no value.
    pub fn max_len(self) -> u32 {
        match self {
            Text::HttpMethod => bounds::HTTP_METHOD_MAX,
            Text::HttpPath => bounds::HTTP_TARGET_MAX,
            Text::HttpHost => bounds::HTTP_HOST_MAX,
            Text::RedisCommand => bounds::REDIS_COMMAND_MAX,
            Text::RedisKey => bounds::REDIS_KEY_MAX,
            Text::PgUser | Text::PgDatabase => bounds::PG_NAME_MAX,
            Text::TlsSni => bounds::TLS_SNI_MAX,
        }
    }

    pub fn case(self) -> Case {
        match self {
            Text::RedisCommand => Case::Upper,
            Text::HttpHost | Text::TlsSni => Case::Lower,
            _ => Case::Exact,
        }
    }

    /// The field's name (`http.method`).
    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|f| f.ty == Type::Text(self))
            .map_or("", |f| f.name)
    }
}

/// How far the protocol parsers read: the contract of docs/language.md's "Protocols"
/// section, shared by the kernel parsers (`lower`) and the reference parsers (`eval`).
/// Each parser sees the first `*_WINDOW` bytes of the message (fewer if the message is
/// shorter); a field that does not end inside them has no value.
pub mod bounds {
    /// HTTP: the request line and the headers searched for `Host`.
    pub const HTTP_WINDOW: u32 = 256;
    /// The method: 1 to 16 letters `A`-`Z`.
    pub const HTTP_METHOD_MAX: u32 = 16;
    /// The request target: 1 to 128 bytes (the path is the target up to `?`).
    pub const HTTP_TARGET_MAX: u32 = 128;
    /// The Host header's value, without the port.
    pub const HTTP_HOST_MAX: u32 = 128;
    /// Spaces and tabs skipped before a header value or an inline argument.
    pub const SPACES_MAX: u32 = 8;
    /// Redis: the first two elements of the command.
    pub const REDIS_WINDOW: u32 = 512;
    /// Digits of the array length in `*N\r\n`.
    pub const REDIS_COUNT_DIGITS_MAX: u32 = 10;
    pub const REDIS_COMMAND_MAX: u32 = 32;
    pub const REDIS_KEY_MAX: u32 = 255;
    /// PostgreSQL: the StartupMessage's parameters.
    pub const PG_WINDOW: u32 = 256;
    /// The largest StartupMessage length word the parser accepts.
    pub const PG_LENGTH_MAX: u32 = 10000;
    /// NAMEDATALEN - 1: the longest role or database name PostgreSQL keeps.
    pub const PG_NAME_MAX: u32 = 63;
    /// TLS: the ClientHello up to its server_name extension.
    pub const TLS_WINDOW: u32 = 2048;
    /// Extensions looked at before server_name; a later one is not found.
    pub const TLS_EXTENSIONS_MAX: u32 = 32;
    pub const TLS_SNI_MAX: u32 = 255;
}

/// Which end(s) of the connection a port or address field looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    Local,
    Remote,
    /// Either end: `port == 80` is `local.port == 80 or remote.port == 80`.
    Both,
}

impl Ends {
    pub fn local(self) -> bool {
        matches!(self, Ends::Local | Ends::Both)
    }

    pub fn remote(self) -> bool {
        matches!(self, Ends::Remote | Ends::Both)
    }
}

/// What values a field holds, which decides how the checker types comparisons with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// An integer `0..=max`.
    Int { max: u64 },
    /// A port, 0..=65535.
    Port { ends: Ends },
    /// An address family: `inet` or `inet6`.
    Family,
    /// An address. `v4`/`v6`: which literal families the field takes; `mapped`: whether
    /// an IPv4 literal also matches the IPv4-mapped address of an IPv6 socket.
    Addr {
        ends: Ends,
        v4: bool,
        v6: bool,
        mapped: bool,
    },
    /// The message's bytes: indexed (`payload[i]`), sliced or prefix-tested.
    Payload,
    /// The sender's process name, at most 15 bytes.
    Comm,
    /// Whether the message is of a protocol (`http`).
    Proto(Proto),
    /// A string field of a protocol (`http.host`).
    Text(Text),
}

/// The `hir::Message` member that holds a field's value (in test cases, the
/// evaluator and the VM's context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    Family,
    LocalIp,
    RemoteIp,
    LocalPort,
    RemotePort,
    Len,
    Payload,
    Uid,
    Gid,
    Pid,
    Cgroup,
    Comm,
}

/// What a test case may assign to a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestValue {
    /// `inet` or `inet6`.
    Family,
    /// One address (no prefix).
    Addr,
    /// An integer `0..=max`.
    Int { max: u64 },
    /// A string of any length.
    Bytes,
    /// A string of at most 15 bytes without a NUL.
    Comm,
}

impl TestValue {
    /// "`field` takes ..." in a help text.
    pub fn takes(self) -> String {
        match self {
            TestValue::Family => "`inet` or `inet6`".into(),
            TestValue::Addr => "one address".into(),
            TestValue::Int { max } => format!("an integer up to {max}"),
            TestValue::Bytes => "a string".into(),
            TestValue::Comm => "a string of at most 15 bytes".into(),
        }
    }
}

/// How a test case sets a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub value: TestValue,
    /// A value for "write e.g. `remote.port = 80;`".
    pub example: &'static str,
    /// Where the field comes in the list of settable fields that help texts print.
    pub rank: u8,
}

/// Where the SK_MSG program finds a field's value. Data only: the lowering turns it
/// into instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// A 32-bit word of `struct sk_msg_md` at `offset`; `be32` when the word holds a
    /// network-order value the program byte-swaps (`remote_port`: the port in the upper
    /// half of the word).
    Ctx { offset: i16, be32: bool },
    /// An address in `struct sk_msg_md`, network order: the IPv4 word and the first of
    /// the four IPv6 words.
    CtxAddr { ip4: i16, ip6: i16 },
    /// A helper's 64-bit result, shifted right by `shift` and truncated to `bits`.
    Helper { id: i32, shift: u8, bits: u8 },
    /// A helper that fills a buffer (`bpf_get_current_comm`).
    HelperBuffer { id: i32 },
    /// The message's data window, pulled with `bpf_msg_pull_data` when needed.
    Data,
    /// Both ends: the two fields' reads.
    Either(Id, Id),
    /// A protocol parser run on the data window, once per message.
    Parsed(Proto),
}

/// One field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub id: Id,
    /// The name as a policy writes it (`remote.port`).
    pub name: &'static str,
    pub ty: Type,
    /// The member of `hir::Message` holding the value; none for `port` and `ip`
    /// (either end).
    pub member: Option<Member>,
    /// What a test case may set; none for the fields a message has two of.
    pub test: Option<Setting>,
    pub read: Read,
    /// One line for the docs and help texts.
    pub doc: &'static str,
}

impl Field {
    /// The largest value of an integer field (ports, `family` and integers).
    pub fn max_value(&self) -> Option<u64> {
        match self.ty {
            Type::Int { max } => Some(max),
            Type::Port { .. } => Some(u16::MAX as u64),
            // `sa_family_t` is 16 bits wide.
            Type::Family => Some(u16::MAX as u64),
            Type::Addr { .. } | Type::Payload | Type::Comm | Type::Proto(_) | Type::Text(_) => None,
        }
    }
}

const U32_MAX: u64 = u32::MAX as u64;

/// Every field, in the order help texts list them ("the fields are: len, family, ...").
pub const FIELDS: &[Field] = &[
    Field {
        id: Id::Len,
        name: "len",
        ty: Type::Int { max: U32_MAX },
        member: Some(Member::Len),
        test: Some(Setting {
            value: TestValue::Int { max: U32_MAX },
            example: "80",
            rank: 5,
        }),
        read: Read::Ctx {
            offset: SK_MSG_MD_SIZE,
            be32: false,
        },
        doc: "bytes in this send call",
    },
    Field {
        id: Id::Family,
        name: "family",
        ty: Type::Family,
        member: Some(Member::Family),
        test: Some(Setting {
            value: TestValue::Family,
            example: "inet6",
            rank: 0,
        }),
        read: Read::Ctx {
            offset: SK_MSG_MD_FAMILY,
            be32: false,
        },
        doc: "the socket's address family",
    },
    Field {
        id: Id::Port,
        name: "port",
        ty: Type::Port { ends: Ends::Both },
        member: None,
        test: None,
        read: Read::Either(Id::LocalPort, Id::RemotePort),
        doc: "either end's port",
    },
    Field {
        id: Id::Ip,
        name: "ip",
        ty: Type::Addr {
            ends: Ends::Both,
            v4: true,
            v6: true,
            mapped: true,
        },
        member: None,
        test: None,
        read: Read::Either(Id::LocalIp, Id::RemoteIp),
        doc: "either end's address",
    },
    Field {
        id: Id::Uid,
        name: "uid",
        ty: Type::Int { max: U32_MAX },
        member: Some(Member::Uid),
        test: Some(Setting {
            value: TestValue::Int { max: U32_MAX },
            example: "80",
            rank: 7,
        }),
        read: Read::Helper {
            id: BPF_FUNC_get_current_uid_gid,
            shift: 0,
            bits: 32,
        },
        doc: "the sending thread's uid",
    },
    Field {
        id: Id::Gid,
        name: "gid",
        ty: Type::Int { max: U32_MAX },
        member: Some(Member::Gid),
        test: Some(Setting {
            value: TestValue::Int { max: U32_MAX },
            example: "80",
            rank: 8,
        }),
        read: Read::Helper {
            id: BPF_FUNC_get_current_uid_gid,
            shift: 32,
            bits: 32,
        },
        doc: "the sending thread's gid",
    },
    Field {
        id: Id::Pid,
        name: "pid",
        ty: Type::Int { max: U32_MAX },
        member: Some(Member::Pid),
        test: Some(Setting {
            value: TestValue::Int { max: U32_MAX },
            example: "80",
            rank: 9,
        }),
        read: Read::Helper {
            id: BPF_FUNC_get_current_pid_tgid,
            shift: 32,
            bits: 32,
        },
        doc: "the sender's thread-group id",
    },
    Field {
        id: Id::Cgroup,
        name: "cgroup",
        ty: Type::Int { max: u64::MAX },
        member: Some(Member::Cgroup),
        test: Some(Setting {
            value: TestValue::Int { max: u64::MAX },
            example: "80",
            rank: 10,
        }),
        read: Read::Helper {
            id: BPF_FUNC_get_current_cgroup_id,
            shift: 0,
            bits: 64,
        },
        doc: "the sender's cgroup v2 id",
    },
    Field {
        id: Id::Comm,
        name: "comm",
        ty: Type::Comm,
        member: Some(Member::Comm),
        test: Some(Setting {
            value: TestValue::Comm,
            example: "\"curl\"",
            rank: 11,
        }),
        read: Read::HelperBuffer {
            id: BPF_FUNC_get_current_comm,
        },
        doc: "the sending thread's name",
    },
    Field {
        id: Id::Payload,
        name: "payload",
        ty: Type::Payload,
        member: Some(Member::Payload),
        test: Some(Setting {
            value: TestValue::Bytes,
            example: "\"GET / HTTP/1.1\\r\\n\"",
            rank: 6,
        }),
        read: Read::Data,
        doc: "the message's bytes",
    },
    Field {
        id: Id::LocalIp,
        name: "local.ip",
        ty: Type::Addr {
            ends: Ends::Local,
            v4: true,
            v6: true,
            mapped: true,
        },
        member: Some(Member::LocalIp),
        test: Some(Setting {
            value: TestValue::Addr,
            example: "10.0.0.1",
            rank: 1,
        }),
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_LOCAL_IP4,
            ip6: SK_MSG_MD_LOCAL_IP6,
        },
        doc: "the socket's own address",
    },
    Field {
        id: Id::LocalPort,
        name: "local.port",
        ty: Type::Port { ends: Ends::Local },
        member: Some(Member::LocalPort),
        test: Some(Setting {
            value: TestValue::Int { max: 65535 },
            example: "80",
            rank: 3,
        }),
        read: Read::Ctx {
            offset: SK_MSG_MD_LOCAL_PORT,
            be32: false,
        },
        doc: "the socket's own port",
    },
    Field {
        id: Id::LocalIp4,
        name: "local.ip4",
        ty: Type::Addr {
            ends: Ends::Local,
            v4: true,
            v6: false,
            mapped: false,
        },
        member: Some(Member::LocalIp),
        test: None,
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_LOCAL_IP4,
            ip6: SK_MSG_MD_LOCAL_IP6,
        },
        doc: "the socket's own address, AF_INET sockets only",
    },
    Field {
        id: Id::LocalIp6,
        name: "local.ip6",
        ty: Type::Addr {
            ends: Ends::Local,
            v4: false,
            v6: true,
            mapped: false,
        },
        member: Some(Member::LocalIp),
        test: None,
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_LOCAL_IP4,
            ip6: SK_MSG_MD_LOCAL_IP6,
        },
        doc: "the socket's own address, AF_INET6 sockets only",
    },
    Field {
        id: Id::RemoteIp,
        name: "remote.ip",
        ty: Type::Addr {
            ends: Ends::Remote,
            v4: true,
            v6: true,
            mapped: true,
        },
        member: Some(Member::RemoteIp),
        test: Some(Setting {
            value: TestValue::Addr,
            example: "10.0.0.1",
            rank: 2,
        }),
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_REMOTE_IP4,
            ip6: SK_MSG_MD_REMOTE_IP6,
        },
        doc: "the peer's address",
    },
    Field {
        id: Id::RemotePort,
        name: "remote.port",
        ty: Type::Port { ends: Ends::Remote },
        member: Some(Member::RemotePort),
        test: Some(Setting {
            value: TestValue::Int { max: 65535 },
            example: "80",
            rank: 4,
        }),
        read: Read::Ctx {
            offset: SK_MSG_MD_REMOTE_PORT,
            be32: true,
        },
        doc: "the peer's port",
    },
    Field {
        id: Id::RemoteIp4,
        name: "remote.ip4",
        ty: Type::Addr {
            ends: Ends::Remote,
            v4: true,
            v6: false,
            mapped: false,
        },
        member: Some(Member::RemoteIp),
        test: None,
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_REMOTE_IP4,
            ip6: SK_MSG_MD_REMOTE_IP6,
        },
        doc: "the peer's address, AF_INET sockets only",
    },
    Field {
        id: Id::RemoteIp6,
        name: "remote.ip6",
        ty: Type::Addr {
            ends: Ends::Remote,
            v4: false,
            v6: true,
            mapped: false,
        },
        member: Some(Member::RemoteIp),
        test: None,
        read: Read::CtxAddr {
            ip4: SK_MSG_MD_REMOTE_IP4,
            ip6: SK_MSG_MD_REMOTE_IP6,
        },
        doc: "the peer's address, AF_INET6 sockets only",
    },
    Field {
        id: Id::Http,
        name: "http",
        ty: Type::Proto(Proto::Http),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Http),
        doc: "the message starts an HTTP/1.x request",
    },
    Field {
        id: Id::HttpMethod,
        name: "http.method",
        ty: Type::Text(Text::HttpMethod),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Http),
        doc: "the request's method",
    },
    Field {
        id: Id::HttpPath,
        name: "http.path",
        ty: Type::Text(Text::HttpPath),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Http),
        doc: "the request target up to `?`",
    },
    Field {
        id: Id::HttpHost,
        name: "http.host",
        ty: Type::Text(Text::HttpHost),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Http),
        doc: "the Host header, lower-cased, without the port",
    },
    Field {
        id: Id::Redis,
        name: "redis",
        ty: Type::Proto(Proto::Redis),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Redis),
        doc: "the message is a Redis command (RESP or inline)",
    },
    Field {
        id: Id::RedisCommand,
        name: "redis.command",
        ty: Type::Text(Text::RedisCommand),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Redis),
        doc: "the command's name, upper-cased",
    },
    Field {
        id: Id::RedisKey,
        name: "redis.key",
        ty: Type::Text(Text::RedisKey),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Redis),
        doc: "the command's first argument",
    },
    Field {
        id: Id::Pg,
        name: "pg",
        ty: Type::Proto(Proto::Pg),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Pg),
        doc: "the message is a PostgreSQL StartupMessage (protocol 3.0)",
    },
    Field {
        id: Id::PgUser,
        name: "pg.user",
        ty: Type::Text(Text::PgUser),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Pg),
        doc: "the startup message's `user`",
    },
    Field {
        id: Id::PgDatabase,
        name: "pg.database",
        ty: Type::Text(Text::PgDatabase),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Pg),
        doc: "the startup message's `database`",
    },
    Field {
        id: Id::Tls,
        name: "tls",
        ty: Type::Proto(Proto::Tls),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Tls),
        doc: "the message is a TLS record holding a ClientHello",
    },
    Field {
        id: Id::TlsSni,
        name: "tls.sni",
        ty: Type::Text(Text::TlsSni),
        member: None,
        test: None,
        read: Read::Parsed(Proto::Tls),
        doc: "the ClientHello's server_name, lower-cased",
    },
];

/// The predeclared constants of the family field.
pub const FAMILIES: &[(&str, u32)] = &[("inet", skpc_abi::AF_INET), ("inet6", skpc_abi::AF_INET6)];

/// The row of `id`.
pub fn get(id: Id) -> &'static Field {
    // The rows are in the order of `Id` (see the tests), so this is an index; the
    // search and `Len`'s row only stand in for a panic.
    match FIELDS.get(id as usize) {
        Some(f) if f.id == id => f,
        _ => FIELDS.iter().find(|f| f.id == id).unwrap_or(&FIELDS[0]),
    }
}

/// The field named `name` (`remote.port`).
pub fn by_name(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The field a path of names spells (`["remote", "port"]`), without joining them.
pub fn by_path(path: &[&str]) -> Option<&'static Field> {
    // Runs for every name in a policy: the usual one- and two-part paths are compared
    // byte-wise.
    match path {
        [one] => by_name(one),
        [a, b] => FIELDS.iter().find(|f| {
            let name = f.name.as_bytes();
            name.len() == a.len() + 1 + b.len()
                && name[a.len()] == b'.'
                && f.name.starts_with(a)
                && f.name.ends_with(b)
        }),
        _ => FIELDS
            .iter()
            .find(|f| f.name.split('.').eq(path.iter().copied())),
    }
}

/// Every field's name, in the table's order.
pub fn names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}

/// The fields a test case may set, in the order help texts list them.
pub fn settable() -> Vec<&'static Field> {
    let mut out: Vec<&'static Field> = FIELDS.iter().filter(|f| f.test.is_some()).collect();
    out.sort_by_key(|f| f.test.map(|s| s.rank));
    out
}

/// Whether `name` is taken by the fields: a field's name, the first part of a dotted
/// one (`local`), or a family constant. Declarations cannot use these.
pub fn is_reserved(name: &str) -> bool {
    FIELDS
        .iter()
        .any(|f| f.name == name || f.name.split('.').next() == Some(name))
        || FAMILIES.iter().any(|(n, _)| *n == name)
}

/// The shortest and longest part of a field's name or family constant, so that the
/// lexer rejects most other names by their length alone.
const PART_LENGTHS: (usize, usize) = part_lengths();

const fn part_lengths() -> (usize, usize) {
    let (mut min, mut max) = (usize::MAX, 0);
    let mut i = 0;
    while i < FIELDS.len() + FAMILIES.len() {
        let name = if i < FIELDS.len() {
            FIELDS[i].name.as_bytes()
        } else {
            FAMILIES[i - FIELDS.len()].0.as_bytes()
        };
        let (mut start, mut j) = (0, 0);
        while j <= name.len() {
            if j == name.len() || name[j] == b'.' {
                let len = j - start;
                if len < min {
                    min = len;
                }
                if len > max {
                    max = len;
                }
                start = j + 1;
            }
            j += 1;
        }
        i += 1;
    }
    (min, max)
}

/// `text` as a static string if it is a part of a field's name or a family constant:
/// the lexer keeps these names without allocating.
pub fn interned(text: &str) -> Option<&'static str> {
    // Runs for every name the lexer sees (millions in a big input): plain byte
    // comparisons against each name's parts, which have at most one dot.
    let n = text.len();
    if n < PART_LENGTHS.0 || n > PART_LENGTHS.1 {
        return None;
    }
    for f in FIELDS {
        let name = f.name;
        let bytes = name.as_bytes();
        if name == text {
            return Some(name);
        }
        if bytes.len() > n {
            if bytes[n] == b'.' && name.starts_with(text) {
                return Some(&name[..n]);
            }
            if bytes[bytes.len() - n - 1] == b'.' && name.ends_with(text) {
                return Some(&name[bytes.len() - n..]);
            }
        }
    }
    FAMILIES.iter().map(|(n, _)| *n).find(|n| *n == text)
}

/// The `struct sk_msg_md` word of a field the program loads straight from the context,
/// and whether it needs a `be32` byte swap.
pub fn ctx_word(id: Id) -> Option<(i16, bool)> {
    match get(id).read {
        Read::Ctx { offset, be32 } => Some((offset, be32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_row() {
        for (i, f) in FIELDS.iter().enumerate() {
            assert_eq!(f.id as usize, i, "{}: rows are in the order of Id", f.name);
            assert_eq!(get(f.id).name, f.name);
            assert!(FIELDS[i + 1..]
                .iter()
                .all(|g| g.id != f.id && g.name != f.name));
        }
        assert_eq!(FIELDS.len(), 30);
    }

    #[test]
    fn settable_fields_have_distinct_ranks_and_a_member() {
        let settable = settable();
        for (i, f) in settable.iter().enumerate() {
            assert!(f.member.is_some(), "{}", f.name);
            assert_eq!(f.test.map(|s| s.rank), Some(i as u8), "{}", f.name);
        }
    }

    #[test]
    fn context_words() {
        assert_eq!(ctx_word(Id::Len), Some((SK_MSG_MD_SIZE, false)));
        assert_eq!(
            ctx_word(Id::RemotePort),
            Some((SK_MSG_MD_REMOTE_PORT, true))
        );
        assert_eq!(ctx_word(Id::Uid), None);
    }

    #[test]
    fn names_and_parts() {
        assert_eq!(
            by_path(&["remote", "port"]).map(|f| f.id),
            Some(Id::RemotePort)
        );
        assert_eq!(by_path(&["remote"]), None);
        assert!(is_reserved("local") && is_reserved("inet6") && is_reserved("len"));
        assert!(!is_reserved("ip4") && !is_reserved("web"));
        assert_eq!(interned("ip4"), Some("ip4"));
        assert_eq!(interned("web"), None);
        assert_eq!(PART_LENGTHS, (2, 8));
        assert_eq!(interned("remote"), Some("remote"));
        assert_eq!(interned("inet6"), Some("inet6"));
        assert_eq!(interned("ote.port"), None);
        for f in FIELDS {
            for part in f.name.split('.') {
                assert_eq!(interned(part), Some(part));
            }
        }
    }

    /// The field names in docs/language.md's field table: the backquoted names of each
    /// row's first cell, `payload[i]`, `payload[i..j]` and `payload starts with S` read
    /// as `payload`.
    fn documented_fields() -> Vec<String> {
        let docs = include_str!("../docs/language.md");
        let section = docs.split("\n## Fields\n").nth(1).unwrap_or("");
        let section = section.split("\n## ").next().unwrap_or("");
        let mut names = Vec::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split(" | ").next().unwrap_or("");
            for quoted in first.split('`').skip(1).step_by(2) {
                let name = quoted.split(['[', ' ']).next().unwrap_or(quoted);
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names
    }

    #[test]
    fn the_docs_field_table_lists_exactly_the_registry() {
        let mut documented = documented_fields();
        let mut registry: Vec<String> = names().map(String::from).collect();
        documented.sort();
        registry.sort();
        assert_eq!(documented, registry, "docs/language.md's field table");
    }

    #[test]
    fn the_docs_test_case_table_lists_exactly_the_settable_fields() {
        let docs = include_str!("../docs/language.md");
        let section = docs.split("\n## Test cases\n").nth(1).unwrap_or("");
        let section = section.split("\n## ").next().unwrap_or("");
        let mut documented: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let first = l.split(" | ").next().unwrap_or("");
                first.split('`').skip(1).step_by(2)
            })
            .collect();
        let mut settable: Vec<&str> = settable().iter().map(|f| f.name).collect();
        documented.sort();
        settable.sort();
        assert_eq!(
            documented, settable,
            "docs/language.md's test-case settings"
        );
    }
}
