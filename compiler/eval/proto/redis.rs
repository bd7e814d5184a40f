//! Redis: a RESP array of bulk strings, or an inline command (the module doc of `proto`,
//! Redis).

use super::{at, find, has, number, run, text, Parsed};
use crate::fields::bounds::{REDIS_COMMAND_MAX, REDIS_COUNT_DIGITS_MAX, REDIS_KEY_MAX, SPACES_MAX};
use crate::fields::Text;

pub(super) fn parse(w: &[u8]) -> Option<Parsed> {
    match at(w, 0)? {
        b'*' => resp(w),
        b if b.is_ascii_alphabetic() => inline(w),
        _ => None,
    }
}

/// `*N\r\n$L\r\ncommand\r\n$K\r\nkey\r\n`.
fn resp(w: &[u8]) -> Option<Parsed> {
    let a = run(w, 1, |b| b.is_ascii_digit());
    if a == 0 || a > REDIS_COUNT_DIGITS_MAX as usize || !has(w, 1 + a, b"\r\n$") {
        return None;
    }
    let mut parsed = Parsed::default();
    if let Some((command, next)) = bulk(w, 4 + a, 2, REDIS_COMMAND_MAX) {
        parsed.set(Text::RedisCommand, Some(command.to_ascii_uppercase()));
        if at(w, next) == Some(b'$') {
            parsed.set(
                Text::RedisKey,
                bulk(w, next + 1, 3, REDIS_KEY_MAX).map(|b| b.0),
            );
        }
    }
    Some(parsed)
}

/// The bulk string whose length (1 to `max_digits` digits, 1 to `max`) is at `p`, just
/// after its `$`; with the index after its closing CRLF.
fn bulk(w: &[u8], p: usize, max_digits: usize, max: u32) -> Option<(Vec<u8>, usize)> {
    let (len, d) = number(w, p, max_digits)?;
    if !has(w, p + d, b"\r\n") {
        return None;
    }
    let c = p + d + 2;
    let value = text(w, c, len, max)?;
    if !has(w, c + len, b"\r\n") {
        return None;
    }
    Some((value, c + len + 2))
}

/// `COMMAND key ...\r\n`.
fn inline(w: &[u8]) -> Option<Parsed> {
    let e = find(w, 0, b" \r\n")?;
    let command = text(w, 0, e, REDIS_COMMAND_MAX)?;
    let mut parsed = Parsed::default();
    parsed.set(Text::RedisCommand, Some(command.to_ascii_uppercase()));
    if at(w, e) == Some(b' ') {
        parsed.set(Text::RedisKey, inline_key(w, e));
    }
    Some(parsed)
}

/// The argument after the spaces at `e`.
fn inline_key(w: &[u8], e: usize) -> Option<Vec<u8>> {
    let spaces = run(w, e, |b| b == b' ');
    if spaces > SPACES_MAX as usize {
        return None;
    }
    let start = e + spaces;
    let end = find(w, start, b" \r\n")?;
    text(w, start, end - start, REDIS_KEY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::proto::tests::{field, fields, pad};
    use crate::fields::bounds::REDIS_WINDOW;
    use crate::fields::Proto;

    fn redis(m: &[u8]) -> Option<Vec<(Text, Vec<u8>)>> {
        fields(Proto::Redis, m)
    }

    fn command(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Redis, Text::RedisCommand, m)
    }

    fn key(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Redis, Text::RedisKey, m)
    }

    /// `*n\r\n` then each element as a bulk string.
    fn resp(n: usize, elems: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{n}\r\n").into_bytes();
        for e in elems {
            out.extend_from_slice(format!("${}\r\n", e.len()).as_bytes());
            out.extend_from_slice(e);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn redis_cli_messages() {
        assert_eq!(
            redis(b"*1\r\n$8\r\nflushall\r\n"),
            Some(vec![(Text::RedisCommand, b"FLUSHALL".to_vec())])
        );
        assert_eq!(
            redis(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"),
            Some(vec![
                (Text::RedisCommand, b"SET".to_vec()),
                (Text::RedisKey, b"k".to_vec()),
            ])
        );
        assert_eq!(
            redis(b"PING\r\n"),
            Some(vec![(Text::RedisCommand, b"PING".to_vec())])
        );
        assert_eq!(
            redis(b"get  Session:1\r\n"),
            Some(vec![
                (Text::RedisCommand, b"GET".to_vec()),
                (Text::RedisKey, b"Session:1".to_vec()),
            ])
        );
    }

    #[test]
    fn every_truncation_of_set() {
        let m = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        for n in 0..=m.len() {
            let m = &m[..n];
            assert_eq!(redis(m).is_some(), n >= 5, "{n}");
            assert_eq!(command(m).is_some(), n >= 13, "{n}");
            assert_eq!(key(m).is_some(), n >= 20, "{n}");
        }
        let m = b"PING key\r\n";
        for n in 0..=m.len() {
            let m = &m[..n];
            assert_eq!(redis(m).is_some(), n >= 5, "{n}");
            assert_eq!(key(m).is_some(), n >= 9, "{n}");
        }
    }

    #[test]
    fn resp_count() {
        let tail = b"\r\n$4\r\nPING\r\n";
        for (digits, ok) in [(1, true), (10, true), (11, false)] {
            let m = [b"*".as_slice(), &vec![b'9'; digits], tail].concat();
            assert_eq!(command(&m).is_some(), ok, "{digits}");
            assert_eq!(redis(&m).is_some(), ok, "{digits}");
        }
        assert_eq!(redis(b"*\r\n$4\r\nPING\r\n"), None);
        assert_eq!(redis(b"*1\n$4\r\nPING\r\n"), None);
        assert_eq!(redis(b"*1\r\n:4\r\n"), None);
        assert_eq!(redis(b"*-1\r\n"), None);
        assert_eq!(redis(b"*x\r\n$4\r\nPING\r\n"), None);
        // The count is not checked against the elements.
        assert_eq!(command(b"*0\r\n$4\r\nPING\r\n"), Some(b"PING".to_vec()));
    }

    #[test]
    fn resp_command_bounds() {
        for (len, ok) in [
            (1, true),
            (9, true),
            (10, true),
            (31, true),
            (32, true),
            (33, false),
        ] {
            let c = vec![b'c'; len];
            let m = resp(2, &[&c, b"key"]);
            assert_eq!(command(&m), ok.then(|| vec![b'C'; len]), "{len}");
            assert_eq!(key(&m).is_some(), ok, "{len}");
            assert!(redis(&m).is_some(), "{len}: still Redis");
        }
        // One or two digits; leading zeros are fine.
        assert_eq!(command(b"*1\r\n$04\r\nPING\r\n"), Some(b"PING".to_vec()));
        assert_eq!(command(b"*1\r\n$004\r\nPING\r\n"), None);
        assert_eq!(command(b"*1\r\n$0\r\n\r\n"), None);
        assert_eq!(command(b"*1\r\n$\r\nPING\r\n"), None);
        // The length must match the CRLF after it.
        assert_eq!(command(b"*1\r\n$3\r\nPING\r\n"), None);
        assert_eq!(command(b"*1\r\n$5\r\nPING\r\n"), None);
        assert_eq!(command(b"*1\r\n$4\r\nPING\n"), None);
        // Any bytes, upper-cased ASCII only.
        assert_eq!(command(b"*1\r\n$4\r\na\r\nb\r\n"), Some(b"A\r\nB".to_vec()));
        assert_eq!(command(b"*1\r\n$3\r\n\xe9x1\r\n"), Some(b"\xe9X1".to_vec()));
    }

    #[test]
    fn resp_key_bounds() {
        for (len, ok) in [
            (1, true),
            (99, true),
            (100, true),
            (254, true),
            (255, true),
            (256, false),
        ] {
            let k = vec![b'k'; len];
            let m = resp(2, &[b"GET", &k]);
            assert_eq!(key(&m), ok.then(|| k.clone()), "{len}");
            assert_eq!(command(&m), Some(b"GET".to_vec()));
        }
        assert_eq!(key(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"), None);
        assert_eq!(key(b"*2\r\n$3\r\nGET\r\n$0001\r\nk\r\n"), None);
        assert_eq!(
            key(b"*2\r\n$3\r\nGET\r\n$001\r\nk\r\n"),
            Some(b"k".to_vec())
        );
        assert_eq!(key(b"*2\r\n$3\r\nGET\r\n:1\r\n"), None);
        assert_eq!(key(b"*2\r\n$3\r\nGET\r\n$2\r\nk\r\n"), None);
        // The key keeps its case.
        assert_eq!(key(&resp(2, &[b"get", b"Ab"])), Some(b"Ab".to_vec()));
        // No key without a command.
        assert_eq!(
            key(b"*2\r\n$33\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n$1\r\nk\r\n"),
            None
        );
    }

    #[test]
    fn the_longest_fields_end_inside_the_window() {
        // RESP: 10 count digits, the longest command and key (with leading zeros).
        let c = vec![b'C'; 32];
        let k = vec![b'k'; 255];
        let m = [
            b"*0000000001\r\n$32\r\n".as_slice(),
            &c,
            b"\r\n$255\r\n",
            &k,
            b"\r\n",
        ]
        .concat();
        assert!(m.len() <= REDIS_WINDOW as usize);
        assert_eq!(key(&pad(&m, 4096)), Some(k.clone()));
        assert_eq!(command(&pad(&m, 4096)), Some(c.clone()));
        // Inline: the longest command, 8 spaces, the longest key.
        let m = [c.as_slice(), &[b' '; 8], &k, b"\r\n"].concat();
        assert!(m.len() <= REDIS_WINDOW as usize);
        assert_eq!(key(&pad(&m, 4096)), Some(k));
    }

    #[test]
    fn inline_command_bounds() {
        for (len, ok) in [(1, true), (31, true), (32, true), (33, false)] {
            let m = [vec![b'a'; len], b"\r\n".to_vec()].concat();
            assert_eq!(command(&m), ok.then(|| vec![b'A'; len]), "{len}");
            assert_eq!(redis(&m).is_some(), ok, "{len}");
        }
        assert_eq!(command(b"PING"), None, "no end");
        assert_eq!(command(b"PING\n"), Some(b"PING".to_vec()));
        assert_eq!(command(b"1PING\r\n"), None);
        assert_eq!(command(b" PING\r\n"), None);
        assert_eq!(command(b"Ping\tx\r\n"), Some(b"PING\tX".to_vec()));
        assert_eq!(command(b"zz-1\r\n"), Some(b"ZZ-1".to_vec()));
    }

    #[test]
    fn inline_key() {
        assert_eq!(key(b"GET k\r\n"), Some(b"k".to_vec()));
        assert_eq!(key(b"GET k v\r\n"), Some(b"k".to_vec()));
        assert_eq!(key(b"GET k\n"), Some(b"k".to_vec()));
        assert_eq!(key(b"GET k"), None, "no end");
        assert_eq!(key(b"GET \r\n"), None);
        assert_eq!(key(b"GET\r\nk\r\n"), None);
        assert_eq!(
            key(b"GET \tk\r\n"),
            Some(b"\tk".to_vec()),
            "only spaces are skipped"
        );
        // The spaces between the command and the key: 8 at most, the first included.
        for n in 1..=10 {
            let m = [b"GET".as_slice(), &vec![b' '; n], b"k\r\n"].concat();
            assert_eq!(key(&m).is_some(), n <= 8, "{n}");
            assert_eq!(command(&m), Some(b"GET".to_vec()));
        }
        for (len, ok) in [(1, true), (255, true), (256, false)] {
            let m = [b"GET ".as_slice(), &vec![b'K'; len], b"\r\n"].concat();
            assert_eq!(key(&m), ok.then(|| vec![b'K'; len]), "{len}");
        }
    }

    #[test]
    fn an_http_request_is_also_an_inline_command() {
        assert_eq!(
            redis(b"GET /x HTTP/1.1\r\n"),
            Some(vec![
                (Text::RedisCommand, b"GET".to_vec()),
                (Text::RedisKey, b"/x".to_vec()),
            ])
        );
    }
}
