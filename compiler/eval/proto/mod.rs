//! The reference protocol parsers: what `http`, `redis`, `pg`, `tls` and their fields
//! mean, written straight from docs/language.md's "Protocols" section, independently of
//! the kernel parsers in `lower`. The bounds are the registry's (`fields::bounds`).
//!
//! Every parser sees the message's window: its first `Proto::window()` bytes (fewer when
//! the message is shorter). A field that is empty, longer than its `max_len`, or does not
//! end inside the window has no value (`None`).
//!
//! The grammar each parser accepts (`w` is the window, indices from 0):
//!
//! HTTP (`HTTP_WINDOW`):
//! 1. method: `w[0..m]`, 1 <= m <= HTTP_METHOD_MAX bytes, each `A`-`Z`, then `w[m] == ' '`.
//! 2. target: `w[m+1..t]`, where `t` is the first index after `m` holding ` `, `\r` or
//!    `\n`; 1 <= t-(m+1) <= HTTP_TARGET_MAX, and `w[t] == ' '`.
//! 3. `w[t+1..t+8] == "HTTP/1."` and `w[t+8]` is a digit `0`-`9`. Then the message is
//!    HTTP: `method` = `w[0..m]`, `path` = the target up to its first `?` (none if that
//!    is empty).
//! 4. host: for `i` from `t+9` while `i < w.len()`: skip unless `w[i] == '\n'`; if
//!    `w[i+1]` exists and is `\r` or `\n`, the headers end: no host; if `w[i+1..i+6]`
//!    exists and, ASCII-lower-cased, is `host:`, the value starts at `h = i+6`; stop
//!    (the first `host:` decides, even when its value is none); otherwise go on with
//!    `i+1`. At `h`: skip spaces and tabs (more than SPACES_MAX of them: no host); the
//!    host is the bytes up to (not including) the first `:`, ` `, `\t`, `\r` or `\n`,
//!    which must be inside the window; 1 to HTTP_HOST_MAX bytes, not starting with `[`
//!    (an IPv6 literal has no host here); ASCII-lower-cased.
//!
//! Redis (`REDIS_WINDOW`), RESP when `w[0] == '*'`:
//! 1. `w[1..1+a]` are 1 to REDIS_COUNT_DIGITS_MAX digits, `w[1+a..3+a] == "\r\n"`,
//!    `w[3+a] == '$'`. Then the message is Redis (whether or not the command and key
//!    below have values). Let `p = 4+a`.
//! 2. command: `w[p..p+d]` are 1 or 2 digits, read as the decimal `L`;
//!    `w[p+d..p+d+2] == "\r\n"`; `c = p+d+2`; 1 <= L <= REDIS_COMMAND_MAX;
//!    `w[c+L..c+L+2] == "\r\n"`. The command is `w[c..c+L]` (any bytes),
//!    ASCII-upper-cased.
//! 3. key (only with a command): `q = c+L+2`; `w[q] == '$'`; `w[q+1..q+1+d]` are 1 to 3
//!    digits, read as `K`; `w[q+1+d..q+3+d] == "\r\n"`; `k = q+3+d`;
//!    1 <= K <= REDIS_KEY_MAX; `w[k+K..k+K+2] == "\r\n"`. The key is `w[k..k+K]` (any
//!    bytes). The array's count is not checked against the elements present.
//!
//! Redis, inline when `w[0]` is an ASCII letter (`A`-`Z` or `a`-`z`):
//! 1. `e` is the first index holding ` `, `\r` or `\n`; it must exist with
//!    1 <= e <= REDIS_COMMAND_MAX. Then the message is Redis; the command is `w[0..e]`,
//!    ASCII-upper-cased.
//! 2. key: only if `w[e] == ' '`: skip the spaces (only ` `, not tabs) from `e` on,
//!    `w[e]` included (more than SPACES_MAX of them: no key); the key is the bytes up to
//!    the first ` `, `\r` or `\n` (which must exist), 1 to REDIS_KEY_MAX bytes.
//!
//! PostgreSQL (`PG_WINDOW`):
//! 1. `w.len() >= 8`, the big-endian `L = w[0..4]` has 8 <= L <= PG_LENGTH_MAX, and
//!    `w[4..8] == [0, 3, 0, 0]`. Then the message is a StartupMessage.
//! 2. parameters, from `i = 8`, within `end = min(L, w.len())`: stop when `i >= end` or
//!    `w[i] == 0`; the key is the NUL-terminated string at `i`, the value the one after
//!    it (each NUL must lie before `end`, else stop); then `i` moves past the value's NUL.
//!    The last key that is exactly `user` (byte for byte) gives `user`, the last
//!    `database` key `database`, as in PostgreSQL; a value that is empty or longer than
//!    PG_NAME_MAX is none (and an earlier key of the same name does not count).
//!
//! TLS (`TLS_WINDOW`):
//! 1. `w[0] == 0x16` (handshake), `w[1] == 0x03`, `w.len() >= 6`, `w[5] == 0x01`
//!    (ClientHello). Then the message is TLS.
//! 2. `s = w[43]` (session id length) must be <= 32; `p = 44 + s`; cipher suites:
//!    big-endian `w[p..p+2]`, `p += 2 + that`; compression methods: `w[p]`,
//!    `p += 1 + that`; extensions length: big-endian `w[p..p+2]`, `p += 2`,
//!    `end = p + that`.
//! 3. Up to TLS_EXTENSIONS_MAX extensions: stop if `p + 4 > end`; type and length are
//!    big-endian `w[p..p+2]` and `w[p+2..p+4]`. Type 0 (server_name): `w[p+6] == 0`
//!    (host_name), name length big-endian `n = w[p+7..p+9]`, 1 <= n <= TLS_SNI_MAX, the
//!    name `w[p+9..p+9+n]`, ASCII-lower-cased; stop (the first type 0 decides, even
//!    when it has no name). Else `p += 4 + length`. Only the window bounds the reads
//!    at `p+4` and after: they are not checked against `end` or the extension's length.
//!
//! Every read outside the window makes the step fail: the protocol or the field has no
//! value.

mod http;
mod pg;
mod redis;
mod tls;

use crate::fields::{Proto, Text};

/// What a parser found in a message of its protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The protocol's string fields that have a value, case already folded.
    pub texts: Vec<(Text, Vec<u8>)>,
}

impl Parsed {
    /// The value of `field`, if it has one.
    pub fn text(&self, field: Text) -> Option<&[u8]> {
        self.texts
            .iter()
            .find(|(t, _)| *t == field)
            .map(|(_, v)| v.as_slice())
    }

    /// Records `field`'s value, if it has one.
    fn set(&mut self, field: Text, value: Option<Vec<u8>>) {
        if let Some(v) = value {
            self.texts.push((field, v));
        }
    }
}

/// Parses a message of `len` bytes of which `payload` are given (a test case's `len`
/// may exceed its payload): none unless its whole window is given. The kernel parsers
/// pull the window first; a window with bytes nobody gave has no defined parse.
pub fn parse_message(proto: Proto, payload: &[u8], len: u32) -> Option<Parsed> {
    let window = (len as usize).min(proto.window() as usize);
    if payload.len() < window {
        return None;
    }
    parse(proto, payload)
}

/// Parses the start of `payload` as `proto`; none if it is not of that protocol.
pub fn parse(proto: Proto, payload: &[u8]) -> Option<Parsed> {
    let window = &payload[..payload.len().min(proto.window() as usize)];
    match proto {
        Proto::Http => http::parse(window),
        Proto::Redis => redis::parse(window),
        Proto::Pg => pg::parse(window),
        Proto::Tls => tls::parse(window),
    }
}

/// `w[i]`, if inside the window.
fn at(w: &[u8], i: usize) -> Option<u8> {
    w.get(i).copied()
}

/// Whether `w[i..i+s.len()]` is inside the window and equals `s`.
fn has(w: &[u8], i: usize, s: &[u8]) -> bool {
    w.get(i..).is_some_and(|rest| rest.starts_with(s))
}

/// How many bytes from `i` on satisfy `pred` (0 when `i` is outside the window).
fn run(w: &[u8], i: usize, pred: impl Fn(u8) -> bool) -> usize {
    w.get(i..)
        .map_or(0, |rest| rest.iter().take_while(|&&b| pred(b)).count())
}

/// The first index from `i` on holding one of `stops`, if the window has one.
fn find(w: &[u8], i: usize, stops: &[u8]) -> Option<usize> {
    let rest = w.get(i..)?;
    rest.iter().position(|b| stops.contains(b)).map(|n| i + n)
}

/// The decimal number in the 1 to `max_digits` digits at `i` (the whole run of digits
/// there), with the number of digits.
fn number(w: &[u8], i: usize, max_digits: usize) -> Option<(usize, usize)> {
    let d = run(w, i, |b| b.is_ascii_digit());
    if d == 0 || d > max_digits {
        return None;
    }
    let value = w
        .get(i..i + d)?
        .iter()
        .fold(0usize, |n, b| n * 10 + usize::from(b - b'0'));
    Some((value, d))
}

/// The big-endian 16-bit word at `i`.
fn be16(w: &[u8], i: usize) -> Option<usize> {
    match w.get(i..i.checked_add(2)?)? {
        &[hi, lo] => Some(usize::from(hi) << 8 | usize::from(lo)),
        _ => None,
    }
}

/// `w[i..i+n]`, if `n` is 1 to `max` and the bytes are inside the window.
fn text(w: &[u8], i: usize, n: usize, max: u32) -> Option<Vec<u8>> {
    if n == 0 || n > max as usize {
        return None;
    }
    w.get(i..i.checked_add(n)?).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests;
