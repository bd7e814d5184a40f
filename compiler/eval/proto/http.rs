//! HTTP/1.x: the request line, and the `Host` header (the module doc of `proto`, HTTP).

use super::{at, find, has, run, text, Parsed};
use crate::fields::bounds::{HTTP_HOST_MAX, HTTP_METHOD_MAX, HTTP_TARGET_MAX, SPACES_MAX};
use crate::fields::Text;

pub(super) fn parse(w: &[u8]) -> Option<Parsed> {
    // 1. The method: capital letters, then a space.
    let m = run(w, 0, |b| b.is_ascii_uppercase());
    if m == 0 || m > HTTP_METHOD_MAX as usize || at(w, m)? != b' ' {
        return None;
    }
    // 2. The target, up to the first space, CR or LF; a space must end it.
    let t = find(w, m + 1, b" \r\n")?;
    let target = text(w, m + 1, t - (m + 1), HTTP_TARGET_MAX)?;
    if at(w, t)? != b' ' {
        return None;
    }
    // 3. The version.
    if !has(w, t + 1, b"HTTP/1.") || !at(w, t + 8)?.is_ascii_digit() {
        return None;
    }
    let mut parsed = Parsed::default();
    parsed.set(Text::HttpMethod, w.get(..m).map(<[u8]>::to_vec));
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    parsed.set(Text::HttpPath, (!path.is_empty()).then(|| path.to_vec()));
    parsed.set(Text::HttpHost, host(w, t + 9));
    Some(parsed)
}

/// The value of the first `Host` header (step 4), searched from `from` to the end of
/// the headers.
fn host(w: &[u8], from: usize) -> Option<Vec<u8>> {
    let mut i = from;
    while i < w.len() {
        if at(w, i) == Some(b'\n') {
            if matches!(at(w, i + 1), Some(b'\r' | b'\n')) {
                return None;
            }
            if w.get(i + 1..i + 6)
                .is_some_and(|name| name.eq_ignore_ascii_case(b"host:"))
            {
                return host_value(w, i + 6);
            }
        }
        i += 1;
    }
    None
}

/// The host in the header value at `h`: after at most SPACES_MAX spaces and tabs, up to
/// the port, a space or the end of the line.
fn host_value(w: &[u8], h: usize) -> Option<Vec<u8>> {
    let spaces = run(w, h, |b| b == b' ' || b == b'\t');
    if spaces > SPACES_MAX as usize {
        return None;
    }
    let start = h + spaces;
    let end = find(w, start, b": \t\r\n")?;
    let host = text(w, start, end - start, HTTP_HOST_MAX)?;
    if host.first() == Some(&b'[') {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::proto::tests::{field, fields, pad};
    use crate::fields::Proto;

    const CURL: &[u8] =
        b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

    fn http(m: &[u8]) -> Option<Vec<(Text, Vec<u8>)>> {
        fields(Proto::Http, m)
    }

    fn host_of(m: &[u8]) -> Option<Vec<u8>> {
        field(Proto::Http, Text::HttpHost, m)
    }

    #[test]
    fn curl_request() {
        assert_eq!(
            http(CURL),
            Some(vec![
                (Text::HttpMethod, b"GET".to_vec()),
                (Text::HttpPath, b"/x".to_vec()),
                (Text::HttpHost, b"127.0.0.1".to_vec()),
            ])
        );
    }

    #[test]
    fn every_truncation_of_curl() {
        // The version's digit is at index 14; the `:` that ends the host at 32.
        assert_eq!(&CURL[14..15], b"1");
        assert_eq!(&CURL[32..33], b":");
        for n in 0..=CURL.len() {
            let got = http(&CURL[..n]);
            assert_eq!(got.is_some(), n >= 15, "{n}");
            let host = host_of(&CURL[..n]);
            assert_eq!(host.is_some(), n >= 33, "{n}: {host:?}");
        }
    }

    #[test]
    fn method_bounds_and_case() {
        let m16 = [b'A'; 16];
        let msg = [&m16[..], b" / HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(
            field(Proto::Http, Text::HttpMethod, &msg),
            Some(m16.to_vec())
        );
        let msg = [&[b'A'; 17][..], b" / HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(http(&msg), None);
        assert_eq!(http(b"get / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(http(b"Get / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(http(b" / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(http(b"GET\t/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            http(b"GET  / HTTP/1.1\r\n\r\n"),
            None,
            "two spaces: empty target"
        );
        assert_eq!(http(b"GE1 / HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn target_bounds_and_query() {
        let max = crate::fields::bounds::HTTP_TARGET_MAX as usize;
        for (len, ok) in [(1, true), (max - 1, true), (max, true), (max + 1, false)] {
            let target = [b"/".as_slice(), &vec![b'a'; len - 1]].concat();
            let msg = [b"GET ".as_slice(), &target, b" HTTP/1.1\r\n\r\n"].concat();
            assert_eq!(http(&msg).is_some(), ok, "{len}");
            if ok {
                assert_eq!(field(Proto::Http, Text::HttpPath, &msg), Some(target));
            }
        }
        let q = |m: &[u8]| field(Proto::Http, Text::HttpPath, m);
        assert_eq!(q(b"GET /a?b=c HTTP/1.1\r\n\r\n"), Some(b"/a".to_vec()));
        assert_eq!(q(b"GET /a?b?c HTTP/1.1\r\n\r\n"), Some(b"/a".to_vec()));
        // An empty path: still HTTP, with a method, but no path.
        let m = b"GET ?x HTTP/1.1\r\n\r\n";
        assert_eq!(q(m), None);
        assert_eq!(http(m), Some(vec![(Text::HttpMethod, b"GET".to_vec())]));
        assert_eq!(q(b"GET * HTTP/1.1\r\n\r\n"), Some(b"*".to_vec()));
        assert_eq!(
            q(b"GET http://a/b HTTP/1.1\r\n\r\n"),
            Some(b"http://a/b".to_vec())
        );
        // The path keeps its case and bytes.
        assert_eq!(q(b"GET /A%20B HTTP/1.1\r\n\r\n"), Some(b"/A%20B".to_vec()));
    }

    #[test]
    fn target_ended_by_a_line_end_is_not_http() {
        assert_eq!(http(b"GET /x\r\n\r\n"), None);
        assert_eq!(http(b"GET /x\nHTTP/1.1\r\n\r\n"), None);
        assert_eq!(http(b"GET /x"), None);
    }

    #[test]
    fn version() {
        assert!(http(b"GET / HTTP/1.0\r\n\r\n").is_some());
        assert!(http(b"GET / HTTP/1.9").is_some());
        assert!(
            http(b"GET / HTTP/1.1junk").is_some(),
            "nothing checked after the digit"
        );
        assert!(http(b"GET / HTTP/1.x\r\n").is_none());
        assert!(http(b"GET / HTTP/2.0\r\n").is_none());
        assert!(http(b"GET / http/1.1\r\n").is_none());
        assert!(http(b"GET / HTTP/1.").is_none());
        assert!(http(b"GET /  HTTP/1.1\r\n").is_none());
    }

    #[test]
    fn host_not_first_and_case() {
        let m = b"GET / HTTP/1.1\r\nAccept: */*\r\nhOsT: Api.Example.COM\r\n\r\n";
        assert_eq!(host_of(m), Some(b"api.example.com".to_vec()));
        let m = b"GET / HTTP/1.1\r\nX-Host: a\r\nHost: b\r\n\r\n";
        assert_eq!(host_of(m), Some(b"b".to_vec()));
        // Only the first Host header counts, even when its value is none.
        let m = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nHost: b\r\n\r\n";
        assert_eq!(host_of(m), None);
        let m = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(host_of(m), Some(b"a".to_vec()));
    }

    #[test]
    fn host_absent_or_after_the_headers() {
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\nHost: a\r\n"),
            None
        );
        assert_eq!(host_of(b"GET / HTTP/1.1\n\nHost: a\r\n"), None);
        assert_eq!(host_of(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nAccept: */*\r\n"), None);
        // A bare LF ends lines too, and `\n` right after the digit starts the search.
        assert_eq!(host_of(b"GET / HTTP/1.1\nHost: a\n\n"), Some(b"a".to_vec()));
        // `Host :` is not the header.
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), None);
        // No line end before it: not a header.
        assert_eq!(host_of(b"GET / HTTP/1.1 Host: a\r\n\r\n"), None);
    }

    #[test]
    fn host_forms() {
        let h =
            |v: &[u8]| host_of(&[b"GET / HTTP/1.1\r\nHost:".as_slice(), v, b"\r\n\r\n"].concat());
        assert_eq!(h(b" a.b"), Some(b"a.b".to_vec()));
        assert_eq!(h(b"a.b"), Some(b"a.b".to_vec()));
        assert_eq!(h(b"\t a.b "), Some(b"a.b".to_vec()));
        assert_eq!(h(b" a.b:8080"), Some(b"a.b".to_vec()));
        assert_eq!(h(b" [::1]:8080"), None);
        assert_eq!(h(b" [::1]"), None);
        assert_eq!(h(b" :80"), None);
        assert_eq!(h(b" "), None);
        assert_eq!(h(b""), None);
        assert_eq!(h(b" a\tb"), Some(b"a".to_vec()));
        assert_eq!(h(b" A-B.Example"), Some(b"a-b.example".to_vec()));
        // Spaces and tabs before the value: 8 at most.
        for n in 0..=10 {
            let v = [vec![b' '; n], b"x".to_vec()].concat();
            assert_eq!(h(&v).is_some(), n <= 8, "{n}");
            let v = [vec![b'\t'; n], b"x".to_vec()].concat();
            assert_eq!(h(&v).is_some(), n <= 8, "{n}");
        }
        // The host: HTTP_HOST_MAX bytes at most.
        let max = crate::fields::bounds::HTTP_HOST_MAX as usize;
        for (n, ok) in [(1, true), (max - 1, true), (max, true), (max + 1, false)] {
            let v = [b" ".as_slice(), &vec![b'H'; n]].concat();
            assert_eq!(h(&v), ok.then(|| vec![b'h'; n]), "{n}");
        }
    }

    #[test]
    fn window_bounds_the_host() {
        // The host's end must be inside the window.
        let window = crate::fields::bounds::HTTP_WINDOW as usize;
        let head = b"GET / HTTP/1.1\r\nX: ";
        let line = |fill: usize, host: &[u8]| {
            [
                head.as_slice(),
                &vec![b'x'; fill],
                b"\r\nHost: ",
                host,
                b"\r\n\r\n",
            ]
            .concat()
        };
        let base = line(0, b"ab").len() - 4; // index of the `\r` after the host
        let fill = window - base - 1; // the `\r` at the last byte of the window
        assert_eq!(host_of(&line(fill, b"ab")), Some(b"ab".to_vec()));
        assert_eq!(host_of(&line(fill + 1, b"ab")), None);
        // Padding a request past the window changes nothing.
        assert_eq!(http(&pad(CURL, 5000)), http(CURL));
    }
}
