//! Helpers for the parsers' tests, and the properties every parser has.

use super::parse;
use crate::fields::{Case, Proto, Text};

/// A ClientHello captured from `openssl s_client -connect 127.0.0.1:PORT -servername
/// Api.Example.COM </dev/null` (OpenSSL 3.0.19).
pub(super) const CLIENT_HELLO: &[u8] =
    include_bytes!("../../../tests/fixtures/clienthello_api_example_com.bin");

/// The fields `proto`'s parser finds in `m`, none if it is not of the protocol.
pub(super) fn fields(proto: Proto, m: &[u8]) -> Option<Vec<(Text, Vec<u8>)>> {
    parse(proto, m).map(|p| p.texts)
}

/// One field's value.
pub(super) fn field(proto: Proto, text: Text, m: &[u8]) -> Option<Vec<u8>> {
    parse(proto, m).and_then(|p| p.text(text).map(<[u8]>::to_vec))
}

/// `m` followed by `z`s up to `n` bytes.
pub(super) fn pad(m: &[u8], n: usize) -> Vec<u8> {
    let mut out = m.to_vec();
    out.resize(n.max(m.len()), b'z');
    out
}

/// Every field found is of its parser's protocol, once, non-empty, within its bound and
/// in its case.
fn well_formed(m: &[u8]) {
    for proto in Proto::ALL {
        let Some(parsed) = parse(proto, m) else {
            continue;
        };
        for (i, (text, value)) in parsed.texts.iter().enumerate() {
            assert_eq!(text.proto(), proto);
            assert!(parsed.texts[..i].iter().all(|(t, _)| t != text));
            assert!(!value.is_empty() && value.len() <= text.max_len() as usize);
            match text.case() {
                Case::Exact => {}
                Case::Upper => assert!(!value.iter().any(u8::is_ascii_lowercase)),
                Case::Lower => assert!(!value.iter().any(u8::is_ascii_uppercase)),
            }
        }
    }
}

#[test]
fn mutations_of_real_messages_never_panic() {
    let messages: [&[u8]; 5] = [
        b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
        b"PING\r\n",
        b"\x00\x00\x00\x1f\x00\x03\x00\x00user\x00u\x00database\x00d\x00\x00",
        CLIENT_HELLO,
    ];
    for m in messages {
        for n in 0..=m.len() {
            well_formed(&m[..n]);
        }
        for i in 0..m.len() {
            for b in [0u8, 1, 0x7f, 0xff, b'\n', b' ', b'?', b':'] {
                let mut bad = m.to_vec();
                bad[i] = b;
                well_formed(&bad);
                bad[i] = m[i] ^ 0x20;
                well_formed(&bad);
            }
        }
    }
}

#[test]
fn the_windows_are_the_bounds() {
    assert_eq!(Proto::Http.window(), crate::fields::bounds::HTTP_WINDOW);
    for proto in Proto::ALL {
        // Bytes past the window never change the result.
        let head = vec![b'A'; proto.window() as usize];
        assert_eq!(
            parse(proto, &head),
            parse(proto, &[head.as_slice(), b" / HTTP/1.1"].concat())
        );
    }
    assert_eq!(parse(Proto::Http, b""), None);
    assert_eq!(parse(Proto::Redis, b""), None);
    assert_eq!(parse(Proto::Pg, b""), None);
    assert_eq!(parse(Proto::Tls, b""), None);
}

#[test]
fn the_docs_bounds_table_lists_exactly_fields_bounds() {
    use crate::fields::bounds::*;
    let docs = include_str!("../../../docs/language.md");
    let section = docs.split("\n### Bounds\n").nth(1).unwrap_or("");
    let section = section.split("\n### ").next().unwrap_or("");
    let mut documented: Vec<(String, u32)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let name = cells.first()?.trim_start_matches("| ").trim_matches('`');
            Some((name.to_string(), cells.get(1)?.parse().ok()?))
        })
        .collect();
    let mut bounds: Vec<(String, u32)> = [
        ("HTTP_WINDOW", HTTP_WINDOW),
        ("HTTP_METHOD_MAX", HTTP_METHOD_MAX),
        ("HTTP_TARGET_MAX", HTTP_TARGET_MAX),
        ("HTTP_HOST_MAX", HTTP_HOST_MAX),
        ("SPACES_MAX", SPACES_MAX),
        ("REDIS_WINDOW", REDIS_WINDOW),
        ("REDIS_COUNT_DIGITS_MAX", REDIS_COUNT_DIGITS_MAX),
        ("REDIS_COMMAND_MAX", REDIS_COMMAND_MAX),
        ("REDIS_KEY_MAX", REDIS_KEY_MAX),
        ("PG_WINDOW", PG_WINDOW),
        ("PG_LENGTH_MAX", PG_LENGTH_MAX),
        ("PG_NAME_MAX", PG_NAME_MAX),
        ("TLS_WINDOW", TLS_WINDOW),
        ("TLS_EXTENSIONS_MAX", TLS_EXTENSIONS_MAX),
        ("TLS_SNI_MAX", TLS_SNI_MAX),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect();
    documented.sort();
    bounds.sort();
    assert_eq!(documented, bounds, "docs/language.md's Protocols bounds");
}

/// The examples of docs/language.md's Protocols section check cleanly and mean what the
/// section says, on real messages.
#[test]
fn the_docs_examples_mean_what_they_say() {
    use crate::hir::Message;
    let src = r#"
        const r = 1;
        drop if redis.command in {"FLUSHALL", "FLUSHDB", "CONFIG"};
        drop if http.method == "DELETE" and http.path starts with "/admin";
        pass if tls.sni ends with {".example.com", ".example.org"};
        drop if pg and pg.user == "postgres" and not remote.ip in 10.0.0.0/8;
        cork 1 if http and http.host != "a";
        redirect to sock r if not tls.sni ends with ".internal";
        default pass;
    "#;
    let (policy, diags) = crate::check::check(src);
    assert!(diags.is_empty(), "{diags:?}");
    let policy = policy.expect("checks");
    let rule = |payload: &[u8]| {
        let msg = Message {
            len: payload.len() as u32,
            payload: payload.to_vec(),
            ..Message::default()
        };
        match crate::eval::eval(&policy, &msg).fired {
            crate::eval::Fired::Rule(i) => Some(i),
            crate::eval::Fired::Default => None,
        }
    };
    assert_eq!(rule(b"*1\r\n$8\r\nflushall\r\n"), Some(0));
    assert_eq!(rule(b"config get *\r\n"), Some(0));
    assert_eq!(
        rule(b"DELETE /admin/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(1)
    );
    assert_eq!(rule(CLIENT_HELLO), Some(2));
    assert_eq!(
        rule(b"\x00\x00\x00\x22\x00\x03\x00\x00user\x00postgres\x00database\x00d\x00\x00"),
        Some(3)
    );
    assert_eq!(rule(b"GET / HTTP/1.1\r\nHost: B\r\n\r\n"), Some(4));
    // `!=` is `not ==`: a message that is not HTTP has no host, so `http.host != "a"`
    // holds for it; `not ... ends with` holds for a message that is not TLS.
    assert_eq!(rule(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(5));
    assert_eq!(rule(b"hello"), Some(5));
    let (policy, _) = crate::check::check("drop if http.host != \"a\";");
    let policy = policy.expect("checks");
    let hello = Message {
        len: 5,
        payload: b"hello".to_vec(),
        ..Message::default()
    };
    assert_eq!(
        crate::eval::eval(&policy, &hello).fired,
        crate::eval::Fired::Rule(0)
    );
}
