//! Protocol messages and protocol conditions (docs/language.md, "Protocols"): HTTP
//! requests, RESP and inline Redis commands, PostgreSQL StartupMessages and TLS
//! ClientHellos with random field values (around every bound of `fields::bounds`, in
//! mixed case), their mutations (truncation, a flipped byte, a changed length byte), and
//! conditions on them whose literals mostly come from a message's own parsed fields
//! (`skpc::eval::proto::parse`), so that a good share of them match.

use skpc::eval::proto::parse;
use skpc::fields::{bounds, Case, Proto, Text};
use skpc::hir::TextOp;

use super::{quote, Gen, Rng, Sem};

/// A length around `max`: small, just below, at, or one past it.
fn len_near(rng: &mut Rng, max: u32) -> usize {
    let max = max as usize;
    match rng.below(10) {
        0 => 1,
        1 => max - 1,
        2 => max,
        3 => max + 1,
        4 => rng.range(1, max as u64 + 1) as usize,
        _ => rng.range(1, 12) as usize,
    }
}

/// `n` bytes from `alphabet`.
fn word(rng: &mut Rng, n: usize, alphabet: &[u8]) -> Vec<u8> {
    (0..n).map(|_| rng.pick(alphabet)).collect()
}

/// `s` with its ASCII letters in random case (or all upper, all lower).
fn mixed_case(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    match rng.below(4) {
        0 => s.to_ascii_uppercase(),
        1 => s.to_ascii_lowercase(),
        2 => s.to_vec(),
        _ => s
            .iter()
            .map(|b| {
                if rng.pct(50) {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect(),
    }
}

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.";
const PATH: &[u8] = b"abcxyz0189-_./%~=&AZ";
const KEY: &[u8] = b"abcXYZ019:_-{}.*";

/// A host name of about `n` bytes: labels of letters and digits joined by dots.
fn host_name(rng: &mut Rng, n: usize) -> Vec<u8> {
    let named: &[&[u8]] = &[
        b"api.example.com",
        b"Api.Example.COM",
        b"localhost",
        b"db.internal",
        b"127.0.0.1",
        b"example.org",
        b"a",
    ];
    if rng.pct(40) {
        return rng.pick(named).to_vec();
    }
    let mut out = word(rng, n, NAME);
    for i in (0..n).step_by(7).skip(1) {
        out[i] = b'.';
    }
    mixed_case(rng, &out)
}

/// A random message of `proto`, valid for its parser most of the time.
pub fn message(rng: &mut Rng, proto: Proto) -> Vec<u8> {
    match proto {
        Proto::Http => http(rng),
        Proto::Redis => redis(rng),
        Proto::Pg => pg(rng),
        Proto::Tls => tls(rng),
    }
}

fn http(rng: &mut Rng) -> Vec<u8> {
    let method = if rng.pct(75) {
        rng.pick(&[
            &b"GET"[..],
            b"POST",
            b"PUT",
            b"DELETE",
            b"HEAD",
            b"OPTIONS",
            b"PATCH",
            b"CONNECT",
        ])
        .to_vec()
    } else if rng.pct(90) {
        let n = len_near(rng, bounds::HTTP_METHOD_MAX);
        word(rng, n, b"ABCXYZ")
    } else {
        b"get".to_vec()
    };
    let mut target = match rng.below(6) {
        0 => b"/".to_vec(),
        1 => b"*".to_vec(),
        _ => {
            let n = len_near(rng, bounds::HTTP_TARGET_MAX);
            let mut t = word(rng, n, PATH);
            t[0] = b'/';
            t
        }
    };
    if rng.pct(20) {
        // A query: the path ends before it (empty when the target starts with it).
        let at = rng.below(target.len() as u64) as usize;
        target[at] = b'?';
    }
    let nl: &[u8] = if rng.pct(90) { b"\r\n" } else { b"\n" };
    let mut m = [
        method.as_slice(),
        b" ",
        &target,
        b" HTTP/1.",
        rng.pick(&[&b"1"[..], b"0"]),
        nl,
    ]
    .concat();
    let mut headers: Vec<Vec<u8>> = Vec::new();
    for _ in 0..rng.below(4) {
        headers.push(
            rng.pick(&[
                &b"User-Agent: curl/7.88.1"[..],
                b"Accept: */*",
                b"X-Host: evil.example",
                b"Connection: keep-alive",
            ])
            .to_vec(),
        );
    }
    if rng.pct(15) {
        // A long header that pushes Host towards the end of the 1024-byte window.
        let n = rng.range(700, 1000) as usize;
        headers.push([b"X-Pad: ".as_slice(), &vec![b'p'; n]].concat());
    }
    if rng.pct(85) {
        let name = rng.pick(&[&b"Host"[..], b"host", b"HOST", b"hOsT"]);
        let spaces = if rng.pct(70) {
            vec![b' ']
        } else {
            let n = rng.range(0, bounds::SPACES_MAX as u64 + 2) as usize;
            word(rng, n, b" \t")
        };
        let value = match rng.below(8) {
            0 => b"[::1]:8080".to_vec(),
            1 => b"127.0.0.1:8080".to_vec(),
            _ => {
                let n = len_near(rng, bounds::HTTP_HOST_MAX);
                host_name(rng, n)
            }
        };
        let port: &[u8] = if rng.pct(30) { b":443" } else { b"" };
        let at = rng.below(headers.len() as u64 + 1) as usize;
        headers.insert(at, [name, b":", &spaces, &value, port].concat());
    }
    for h in headers {
        m.extend_from_slice(&h);
        m.extend_from_slice(nl);
    }
    m.extend_from_slice(nl);
    if rng.pct(20) {
        m.extend_from_slice(b"{\"a\":1}");
    }
    m
}

const COMMANDS: &[&[u8]] = &[
    b"GET",
    b"SET",
    b"DEL",
    b"FLUSHALL",
    b"FLUSHDB",
    b"CONFIG",
    b"KEYS",
    b"PING",
    b"AUTH",
    b"EVAL",
    b"HGETALL",
    b"SCRIPT",
];

fn redis(rng: &mut Rng) -> Vec<u8> {
    let command = if rng.pct(75) {
        let c = rng.pick(COMMANDS);
        mixed_case(rng, c)
    } else {
        let n = len_near(rng, bounds::REDIS_COMMAND_MAX);
        word(rng, n, b"abcXYZ")
    };
    let key = if rng.pct(80) {
        let n = len_near(rng, bounds::REDIS_KEY_MAX);
        Some(word(rng, n, KEY))
    } else {
        None
    };
    if rng.pct(30) {
        // Inline.
        let mut m = command;
        if let Some(k) = key {
            let n = if rng.pct(70) {
                1
            } else {
                rng.range(1, bounds::SPACES_MAX as u64 + 2) as usize
            };
            m.extend(vec![b' '; n]);
            m.extend_from_slice(&k);
        }
        m.extend_from_slice(if rng.pct(90) { b"\r\n" } else { b"\n" });
        return m;
    }
    let mut elems = vec![command];
    elems.extend(key);
    if rng.pct(40) {
        elems.push(b"value".to_vec());
    }
    let count = if rng.pct(90) {
        elems.len().to_string()
    } else {
        // Leading zeros: 10 digits (the most taken) or 11.
        format!("{:0w$}", elems.len(), w = rng.range(10, 11) as usize)
    };
    let mut m = format!("*{count}\r\n").into_bytes();
    for e in &elems {
        let zeros = if rng.pct(5) { "0" } else { "" };
        m.extend_from_slice(format!("${zeros}{}\r\n", e.len()).as_bytes());
        m.extend_from_slice(e);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn pg(rng: &mut Rng) -> Vec<u8> {
    let mut params: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let name = |rng: &mut Rng| {
        if rng.pct(40) {
            rng.pick(&[&b"postgres"[..], b"alice", b"billing", b"App_User"])
                .to_vec()
        } else {
            let n = len_near(rng, bounds::PG_NAME_MAX);
            word(rng, n, NAME)
        }
    };
    if rng.pct(85) {
        params.push((b"user".to_vec(), name(rng)));
    }
    if rng.pct(70) {
        params.push((b"database".to_vec(), name(rng)));
    }
    if rng.pct(40) {
        params.push((b"application_name".to_vec(), b"psql".to_vec()));
    }
    if rng.pct(20) {
        params.push((b"client_encoding".to_vec(), b"UTF8".to_vec()));
    }
    if rng.pct(10) {
        params.push((b"user".to_vec(), name(rng)));
    }
    if rng.pct(10) {
        params.push((b"User".to_vec(), name(rng)));
    }
    if rng.pct(10) {
        // Pushes the parameters after it towards the end of the 512-byte window.
        let n = rng.range(300, 500) as usize;
        params.insert(0, (b"options".to_vec(), vec![b'o'; n]));
    }
    if rng.pct(50) {
        // The order of the parameters is free.
        let i = rng.below(params.len() as u64 + 1) as usize;
        let i = i.min(params.len());
        params.rotate_left(i);
    }
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(&k);
        body.push(0);
        body.extend_from_slice(&v);
        body.push(0);
    }
    body.push(0);
    let len = (body.len() + 4) as u32;
    [len.to_be_bytes().to_vec(), body].concat()
}

fn tls(rng: &mut Rng) -> Vec<u8> {
    let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
    let before = match rng.below(10) {
        0..=5 => rng.below(4),
        6..=7 => rng.range(4, 12),
        _ => rng.range(30, 34),
    };
    for _ in 0..before {
        let kind = rng.pick(&[10u16, 11, 13, 16, 23, 35, 43, 45, 51, 0xff01]);
        let n = rng.below(12) as usize;
        exts.push((kind, word(rng, n, b"\x00\x01\x17\xff")));
    }
    if rng.pct(10) {
        // Padding (type 21) towards the end of the 2048-byte window.
        let n = rng.range(1500, 1900) as usize;
        exts.push((21, vec![0; n]));
    }
    if rng.pct(85) {
        let n = len_near(rng, bounds::TLS_SNI_MAX);
        let name = host_name(rng, n);
        let n = name.len() as u16;
        let kind = if rng.pct(95) { 0u8 } else { 1 };
        let body = [&(n + 3).to_be_bytes()[..], &[kind], &n.to_be_bytes(), &name].concat();
        exts.push((0, body));
    }
    for _ in 0..rng.below(3) {
        exts.push((43, vec![2, 3, 4]));
    }
    let session = match rng.below(6) {
        0 => 0,
        1 => 33,
        _ => 32,
    };
    let mut hs = vec![0x03, 0x03];
    hs.extend(word(rng, 32, b"\x00\x5a\xff"));
    hs.push(session);
    hs.extend(vec![0x77; session as usize]);
    let suites = rng.range(1, 40) as usize;
    hs.extend_from_slice(&((suites * 2) as u16).to_be_bytes());
    hs.extend(word(rng, suites * 2, b"\x13\x01\xc0\x2c"));
    hs.extend_from_slice(&[1, 0]);
    let mut ext_bytes = Vec::new();
    for (kind, body) in &exts {
        ext_bytes.extend_from_slice(&kind.to_be_bytes());
        ext_bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext_bytes.extend_from_slice(body);
    }
    hs.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
    hs.extend_from_slice(&ext_bytes);
    let mut body = vec![0x01];
    body.extend_from_slice(&(hs.len() as u32).to_be_bytes()[1..]);
    body.extend_from_slice(&hs);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(body.len() as u16).to_be_bytes());
    record.extend_from_slice(&body);
    record
}

/// One random mutation: a truncation, a flipped byte, or a changed byte where the
/// protocol keeps a length or a delimiter.
pub fn mutate(rng: &mut Rng, m: &mut Vec<u8>) {
    if m.is_empty() {
        return;
    }
    match rng.below(3) {
        0 => {
            let cut = rng.below(m.len() as u64) as usize;
            m.truncate(cut);
        }
        1 => {
            let i = rng.below(m.len() as u64) as usize;
            m[i] ^= 1 << rng.below(8);
        }
        _ => {
            // Lengths and delimiters: digits, `$`, `*`, spaces, CR/LF, `:`, NULs, and
            // the TLS/PG header and session id length.
            let mut at: Vec<usize> = m
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_digit() || b" $*:\r\n\0".contains(b))
                .map(|(i, _)| i)
                .collect();
            at.extend([0, 1, 2, 3, 5, 43].iter().filter(|&&i| i < m.len()));
            let i = rng.pick(&at);
            m[i] = match rng.below(4) {
                0 => m[i].wrapping_add(1),
                1 => m[i].wrapping_sub(1),
                2 => rng.pick(b"09 \r\n:\0\xff"),
                _ => rng.next() as u8,
            };
        }
    }
}

/// A literal for `field` from a value it may hold: folded to the field's case, cut to
/// its bound, never empty.
fn literal(field: Text, value: &[u8]) -> Vec<u8> {
    let mut v = match field.case() {
        Case::Exact => value.to_vec(),
        Case::Upper => value.to_ascii_uppercase(),
        Case::Lower => value.to_ascii_lowercase(),
    };
    v.truncate(field.max_len() as usize);
    if v.is_empty() {
        v.push(b'x');
    }
    v
}

/// The fields of a protocol.
fn texts_of(proto: Proto) -> Vec<Text> {
    Text::ALL
        .iter()
        .copied()
        .filter(|t| t.proto() == proto)
        .collect()
}

impl Gen<'_> {
    /// A value for `field`: mostly `held` (what a message of the pool holds), else what
    /// another message holds, else a word.
    fn text_value(&mut self, field: Text, held: Option<&[u8]>) -> Vec<u8> {
        match held {
            Some(v) if self.rng.pct(90) => v.to_vec(),
            _ => {
                let other = message(self.rng, field.proto());
                match parse(field.proto(), &other).and_then(|p| p.text(field).map(<[u8]>::to_vec)) {
                    Some(v) => v,
                    None => literal(field, &word(self.rng, 5, NAME)),
                }
            }
        }
    }

    /// A protocol condition, aimed at a message of the protocol that goes into the pool
    /// (so that the messages sent at the policy often match it).
    pub(super) fn proto_atom(&mut self) -> (String, Sem) {
        let proto = self.rng.pick(&Proto::ALL);
        let field = self.rng.pick(&texts_of(proto));
        // A message of the protocol, most often one where the field has a value.
        let mut msg = message(self.rng, proto);
        for _ in 0..4 {
            if parse(proto, &msg).is_some_and(|p| p.text(field).is_some()) {
                break;
            }
            msg = message(self.rng, proto);
        }
        let parsed = parse(proto, &msg);
        self.pool.protos.push(msg);
        if self.rng.pct(20) {
            let name = proto.name();
            return match self.rng.below(5) {
                0 => (
                    format!("{name} == false"),
                    Sem::Proto {
                        proto,
                        negate: true,
                    },
                ),
                1 => (
                    format!("{name} == true"),
                    Sem::Proto {
                        proto,
                        negate: false,
                    },
                ),
                _ => (
                    name.to_string(),
                    Sem::Proto {
                        proto,
                        negate: false,
                    },
                ),
            };
        }
        let held = parsed.and_then(|p| p.text(field).map(<[u8]>::to_vec));
        let value = |g: &mut Gen<'_>| g.text_value(field, held.as_deref());
        let (op, negate, alts) = match self.rng.below(10) {
            0..=2 => (TextOp::Eq, false, vec![literal(field, &value(self))]),
            3 => (TextOp::Eq, true, vec![literal(field, &value(self))]),
            4..=5 => {
                let n = self.rng.range(1, 4);
                let alts = (0..n).map(|_| literal(field, &value(self))).collect();
                (TextOp::Eq, false, alts)
            }
            6..=7 => {
                let v = value(self);
                let cut = self.rng.range(1, v.len() as u64) as usize;
                (TextOp::StartsWith, false, vec![literal(field, &v[..cut])])
            }
            _ => {
                let v = value(self);
                let cut = self.rng.range(1, v.len() as u64) as usize;
                let suffix = &v[v.len() - cut..];
                (TextOp::EndsWith, false, vec![literal(field, suffix)])
            }
        };
        let name = field.name();
        let one = |a: &Vec<u8>| quote(a);
        let text = match (op, negate, alts.len()) {
            (TextOp::Eq, true, _) => format!("{name} != {}", one(&alts[0])),
            (TextOp::Eq, false, 1) if self.rng.pct(70) => {
                if self.rng.pct(15) {
                    let c = self.declare(false, one(&alts[0]));
                    format!("{name} == {c}")
                } else {
                    format!("{name} == {}", one(&alts[0]))
                }
            }
            (TextOp::Eq, false, _) => {
                let set = format!(
                    "{{{}}}",
                    alts.iter().map(one).collect::<Vec<_>>().join(", ")
                );
                if self.rng.pct(20) {
                    let s = self.declare(true, set);
                    format!("{name} in {s}")
                } else {
                    format!("{name} in {set}")
                }
            }
            (TextOp::StartsWith, ..) => format!("{name} starts with {}", one(&alts[0])),
            (TextOp::EndsWith, ..) => format!("{name} ends with {}", one(&alts[0])),
        };
        (
            text,
            Sem::Text {
                field,
                op,
                alts,
                negate,
            },
        )
    }
}

/// Whether a protocol atom holds on a message of `len` bytes starting with `payload`,
/// by the reference parsers.
pub fn text_holds(field: Text, op: TextOp, alts: &[Vec<u8>], payload: &[u8], len: u32) -> bool {
    let parsed = skpc::eval::proto::parse_message(field.proto(), payload, len);
    let Some(v) = parsed.as_ref().and_then(|p| p.text(field)) else {
        return false;
    };
    alts.iter().any(|a| match op {
        TextOp::Eq => v == a.as_slice(),
        TextOp::StartsWith => v.starts_with(a),
        TextOp::EndsWith => v.ends_with(a),
    })
}

/// A payload for a message sent at a policy: one of the policy's protocol messages
/// (or a fresh one), mutated now and then.
pub fn payload(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut m = if !pool.is_empty() && rng.pct(90) {
        rng.pick(pool)
    } else {
        let proto = rng.pick(&Proto::ALL);
        message(rng, proto)
    };
    if rng.pct(20) {
        mutate(rng, &mut m);
        if rng.pct(30) {
            mutate(rng, &mut m);
        }
    }
    m
}
