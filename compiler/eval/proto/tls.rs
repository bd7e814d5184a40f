//! TLS: a handshake record holding a ClientHello, and its server_name (the module doc of
//! `proto`, TLS).

use super::{at, be16, text, Parsed};
use crate::fields::bounds::{TLS_EXTENSIONS_MAX, TLS_SNI_MAX};
use crate::fields::Text;

pub(super) fn parse(w: &[u8]) -> Option<Parsed> {
    if at(w, 0)? != 0x16 || at(w, 1)? != 0x03 || at(w, 5)? != 0x01 {
        return None;
    }
    let mut parsed = Parsed::default();
    parsed.set(Text::TlsSni, sni(w));
    Some(parsed)
}

/// The host_name of the first server_name extension, among the first
/// TLS_EXTENSIONS_MAX extensions.
fn sni(w: &[u8]) -> Option<Vec<u8>> {
    let session_id = usize::from(at(w, 43)?);
    if session_id > 32 {
        return None;
    }
    let mut p = 44 + session_id;
    p += 2 + be16(w, p)?;
    p += 1 + usize::from(at(w, p)?);
    let end = p + 2 + be16(w, p)?;
    p += 2;
    for _ in 0..TLS_EXTENSIONS_MAX {
        if p + 4 > end {
            return None;
        }
        let kind = be16(w, p)?;
        let len = be16(w, p + 2)?;
        if kind == 0 {
            if at(w, p + 6)? != 0 {
                return None;
            }
            let n = be16(w, p + 7)?;
            return text(w, p + 9, n, TLS_SNI_MAX).map(|name| name.to_ascii_lowercase());
        }
        p += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::proto::tests::{field, fields, pad, CLIENT_HELLO};
    use crate::fields::bounds::TLS_WINDOW;
    use crate::fields::Proto;

    /// A server_name extension's body naming `name` (as host_name).
    fn server_name(name: &[u8]) -> Vec<u8> {
        let n = name.len() as u16;
        [&(n + 3).to_be_bytes()[..], &[0], &n.to_be_bytes(), name].concat()
    }

    /// A ClientHello record: a `session`-byte session id, two cipher suites, the null
    /// compression method, then `extensions` (type, body).
    fn hello(session: u8, extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (kind, body) in extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(body);
        }
        let mut hs = vec![0x03, 0x03];
        hs.extend_from_slice(&[0x5a; 32]);
        hs.push(session);
        hs.extend(vec![0x77; usize::from(session)]);
        hs.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02, 1, 0]);
        hs.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hs.extend_from_slice(&exts);
        let len = hs.len() as u32;
        let mut body = vec![0x01];
        body.extend_from_slice(&len.to_be_bytes()[1..]);
        body.extend_from_slice(&hs);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(body.len() as u16).to_be_bytes());
        record.extend_from_slice(&body);
        record
    }

    fn tls(m: &[u8]) -> Option<Vec<(Text, Vec<u8>)>> {
        fields(Proto::Tls, m)
    }

    fn sni(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Tls, Text::TlsSni, m)
    }

    #[test]
    fn openssl_client_hello() {
        // `openssl s_client -connect 127.0.0.1:PORT -servername Api.Example.COM`
        // (OpenSSL 3.0): a 32-byte session id, server_name the first extension.
        assert_eq!(
            tls(CLIENT_HELLO),
            Some(vec![(Text::TlsSni, b"api.example.com".to_vec())])
        );
    }

    #[test]
    fn every_truncation_of_openssl() {
        let name = CLIENT_HELLO
            .windows(15)
            .position(|w| w == b"Api.Example.COM")
            .unwrap();
        for n in 0..=CLIENT_HELLO.len() {
            let m = &CLIENT_HELLO[..n];
            assert_eq!(tls(m).is_some(), n >= 6, "{n}");
            assert_eq!(sni(m).is_some(), n >= name + 15, "{n}");
        }
    }

    #[test]
    fn built_hello_matches_the_parser() {
        let m = hello(0, &[(0, server_name(b"a.b"))]);
        assert_eq!(sni(&m), Some(b"a.b".to_vec()));
        let m = hello(32, &[(0, server_name(b"A.B"))]);
        assert_eq!(sni(&m), Some(b"a.b".to_vec()));
    }

    #[test]
    fn record_header() {
        let m = hello(0, &[(0, server_name(b"x"))]);
        for (i, b) in [(0, 0x17), (1, 0x02), (5, 0x02)] {
            let mut bad = m.clone();
            bad[i] = b;
            assert_eq!(tls(&bad), None, "{i}");
        }
        // The record version's minor byte and the lengths are not checked.
        let mut other = m.clone();
        other[2] = 0x09;
        other[3] = 0xff;
        assert_eq!(sni(&other), Some(b"x".to_vec()));
        assert_eq!(tls(b"\x16\x03\x01\x00\x00\x01"), Some(vec![]));
        assert_eq!(tls(b"\x16\x03\x01\x00\x00"), None);
    }

    #[test]
    fn session_id_bound() {
        for s in [0, 1, 31, 32] {
            assert_eq!(
                sni(&hello(s, &[(0, server_name(b"x"))])),
                Some(b"x".to_vec()),
                "{s}"
            );
        }
        let mut m = hello(33, &[(0, server_name(b"x"))]);
        assert_eq!(sni(&m), None);
        assert!(tls(&m).is_some());
        m[43] = 255;
        assert_eq!(sni(&m), None);
    }

    #[test]
    fn sni_not_first() {
        let others: Vec<(u16, Vec<u8>)> = (1..=31u16).map(|k| (k, vec![0; 3])).collect();
        let with = |n: usize| {
            let mut e = others[..n].to_vec();
            e.push((0, server_name(b"x")));
            hello(32, &e)
        };
        // The 32nd extension is looked at, the 33rd is not.
        assert_eq!(sni(&with(0)), Some(b"x".to_vec()));
        assert_eq!(sni(&with(31)), Some(b"x".to_vec()));
        let mut e = others.clone();
        e.push((0x10, vec![]));
        e.push((0, server_name(b"x")));
        assert_eq!(sni(&hello(0, &e)), None);
        // An empty extension before it.
        assert_eq!(
            sni(&hello(0, &[(23, vec![]), (0, server_name(b"y"))])),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn name_bounds_and_kind() {
        for (n, ok) in [(1, true), (254, true), (255, true), (256, false)] {
            let name = vec![b'N'; n];
            assert_eq!(
                sni(&hello(32, &[(0, server_name(&name))])),
                ok.then(|| vec![b'n'; n]),
                "{n}"
            );
        }
        assert_eq!(sni(&hello(0, &[(0, server_name(b""))])), None);
        // Not host_name: none, and the first server_name decides.
        let mut body = server_name(b"x");
        body[2] = 1;
        assert_eq!(sni(&hello(0, &[(0, body), (0, server_name(b"y"))])), None);
        assert_eq!(sni(&hello(0, &[(1, server_name(b"x"))])), None);
        // A server_name too short for its own header: read on in the window anyway.
        assert_eq!(sni(&hello(0, &[(0, vec![])])), None);
    }

    #[test]
    fn extensions_length_bounds_the_search() {
        let mut m = hello(0, &[(0, server_name(b"x"))]);
        // The extensions length is at 44 + 0 + 2 + 4 + 1 + 1.
        let at = 44 + 2 + 4 + 2;
        assert_eq!(be16(&m, at), Some(4 + 6));
        m[at + 1] = 3;
        assert_eq!(sni(&m), None, "p + 4 > end");
        m[at + 1] = 4;
        assert_eq!(
            sni(&m),
            Some(b"x".to_vec()),
            "the name is bounded by the window only"
        );
        // A cipher suites length that jumps past the message.
        let mut m = hello(0, &[(0, server_name(b"x"))]);
        m[44] = 0xff;
        assert_eq!(sni(&m), None);
        assert!(tls(&m).is_some());
    }

    #[test]
    fn window_bounds_the_name() {
        // Padding extensions so that the name ends at the window's last byte, or one
        // past it.
        let with = |fill: usize| hello(0, &[(21, vec![0; fill]), (0, server_name(b"abc"))]);
        let base = with(0).len();
        let fill = TLS_WINDOW as usize - base;
        assert_eq!(with(fill).len(), TLS_WINDOW as usize);
        assert_eq!(sni(&with(fill)), Some(b"abc".to_vec()));
        assert_eq!(sni(&with(fill + 1)), None);
        assert_eq!(sni(&pad(&with(fill), 5000)), Some(b"abc".to_vec()));
    }
}
