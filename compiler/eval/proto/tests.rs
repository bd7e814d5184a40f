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
    assert_eq!(Proto::Http.window(), 1024);
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
