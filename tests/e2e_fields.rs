//! End-to-end: field rules on the real values of real loopback connections: local and
//! remote port and address for IPv4, IPv6 and IPv4-mapped IPv6 sockets, and payload
//! rules for data from send(2), writev(2) with many small iovecs, and sendfile(2).

mod common;
mod e2e_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use e2e_support::*;

/// Sends `msg` on a fresh connection to `l` (client from `from`, if given) with the
/// policy `src`, and returns what the send returned and what arrived.
fn probe(
    src: &str,
    l: &std::net::TcpListener,
    from: Option<SocketAddr>,
    msg: &[u8],
) -> (Result<usize, i32>, Vec<u8>) {
    let mut g = Guard::new(src);
    let (c, mut s) = match from {
        Some(a) => connect_from(l, a),
        None => connect(l),
    };
    g.enf().insert_sock(0, fd(&c)).unwrap();
    let r = send(&c, msg);
    let got = recv_any(&mut s, SHORT);
    drop((c, s));
    g.finish();
    (r, got)
}

#[test]
fn port_rules_see_host_order_ports_of_both_ends() {
    if !common::kernel_or_skip("port_rules_see_host_order_ports_of_both_ends") {
        return;
    }
    for v6 in [false, true] {
        let l = listener(v6);
        let p = l.local_addr().unwrap().port();
        let other = if p == 65535 { p - 1 } else { p + 1 };
        for (src, dropped) in [
            (format!("drop if remote.port == {p};"), true),
            (format!("drop if remote.port == {other};"), false),
            (format!("drop if port == {p};"), true),
            (format!("drop if local.port == {p};"), false),
            (
                format!("drop if remote.port in {}..{};", p.saturating_sub(3), p),
                true,
            ),
            (format!("drop if remote.port != {p};"), false),
            (format!("drop if not (port == {p});"), false),
        ] {
            let (r, got) = probe(&src, &l, None, b"hello");
            if dropped {
                assert_eq!((r, got.len()), (Err(EACCES), 0), "{src} (v6 {v6})");
            } else {
                assert_eq!((r, &got[..]), (Ok(5), &b"hello"[..]), "{src} (v6 {v6})");
            }
        }
        // local.port: the client's own (ephemeral) port, learned after connecting.
        let mut g = Guard::new("pass;");
        let (c, _s) = connect(&l);
        let lp = c.local_addr().unwrap().port();
        drop(g.enf.take());
        g = Guard::new(&format!("drop if local.port == {lp};"));
        g.enf().insert_sock(0, fd(&c)).unwrap();
        assert_eq!(send(&c, b"x"), Err(EACCES), "local.port {lp}");
        let (c2, mut s2) = connect(&l);
        g.enf().insert_sock(1, fd(&c2)).unwrap();
        assert_eq!(send(&c2, b"y"), Ok(1));
        assert_eq!(recv_up_to(&mut s2, 1, LONG), b"y");
        g.finish();
    }
}

#[test]
fn address_rules_for_ipv4_ipv6_and_mapped_sockets() {
    if !common::kernel_or_skip("address_rules_for_ipv4_ipv6_and_mapped_sockets") {
        return;
    }
    let l4 = listener(false);
    let from2: SocketAddr = "127.0.0.2:0".parse().unwrap();
    for (src, from, dropped) in [
        ("drop if local.ip == 127.0.0.2;", Some(from2), true),
        ("drop if local.ip == 127.0.0.2;", None, false),
        (
            "drop if remote.ip == 127.0.0.1 and local.ip != 127.0.0.1;",
            Some(from2),
            true,
        ),
        ("drop if ip == 127.0.0.2;", Some(from2), true),
        (
            "drop if remote.ip in 127.0.0.0/8 and family == inet;",
            None,
            true,
        ),
        ("drop if remote.ip in 10.0.0.0/8;", None, false),
        ("drop if family == inet6;", None, false),
        ("drop if remote.ip == ::1;", None, false),
    ] {
        let (r, got) = probe(src, &l4, from, b"hello");
        assert_eq!(r.is_err(), dropped, "{src} from {from:?}: {r:?}");
        assert_eq!(got.is_empty(), dropped, "{src} from {from:?}");
    }
    let l6 = listener(true);
    for (src, dropped) in [
        ("drop if remote.ip == ::1;", true),
        ("drop if local.ip == ::1 and family == inet6;", true),
        ("drop if remote.ip in ::/0;", true),
        ("drop if remote.ip in fd00::/8;", false),
        ("drop if remote.ip == 127.0.0.1;", false),
        ("drop if family == inet;", false),
    ] {
        let (r, got) = probe(src, &l6, None, b"hello");
        assert_eq!(r.is_err(), dropped, "{src} on ::1: {r:?}");
        assert_eq!(got.is_empty(), dropped, "{src} on ::1");
    }
    // An IPv6 socket talking to an IPv4 peer through ::ffff:127.0.0.1.
    let p4 = l4.local_addr().unwrap().port();
    for (src, dropped) in [
        (
            format!("drop if remote.ip == 127.0.0.1 and remote.port == {p4};"),
            true,
        ),
        (
            format!("drop if remote.ip in 127.0.0.0/8 and remote.port == {p4};"),
            true,
        ),
        (
            format!("drop if remote.ip == 10.1.1.1 and remote.port == {p4};"),
            false,
        ),
    ] {
        let mut g = Guard::new(&src);
        let c = TcpStream::connect(format!("[::ffff:127.0.0.1]:{p4}")).unwrap();
        let (mut s, _) = l4.accept().unwrap();
        g.enf().insert_sock(0, fd(&c)).unwrap();
        let r = send(&c, b"mapped");
        let got = recv_any(&mut s, SHORT);
        assert_eq!(r.is_err(), dropped, "{src} on a mapped socket: {r:?}");
        assert_eq!(got.is_empty(), dropped, "{src} on a mapped socket");
        drop((c, s));
        g.finish();
    }
}

const PAYLOAD_POLICY: &str =
    "drop if payload starts with \"BAD\";\ndrop if payload[4..8] == \"EVIL\";";

#[test]
fn payload_rules_on_send_and_writev_with_many_small_iovecs() {
    if !common::kernel_or_skip("payload_rules_on_send_and_writev_with_many_small_iovecs") {
        return;
    }
    let l = listener(false);
    let mut g = Guard::new(PAYLOAD_POLICY);
    let mut next = 0u32;
    let mut pair = |g: &mut Guard| {
        let (c, s) = connect(&l);
        g.enf().insert_sock(next, fd(&c)).unwrap();
        next += 1;
        (c, s)
    };
    for (msg, dropped) in [
        (&b"BAD request"[..], true),
        (b"xxxxEVILxx", true),
        (b"GOOD request", false),
        (b"xxxxEVI", false),
    ] {
        let (c, mut s) = pair(&mut g);
        let r = send(&c, msg);
        assert_eq!(r.is_err(), dropped, "{:?}", String::from_utf8_lossy(msg));
        assert_eq!(recv_any(&mut s, SHORT).is_empty(), dropped);
    }
    // writev: 200 one-byte iovecs in one call are one message; the rule sees the
    // bytes across iovec boundaries.
    for (start, dropped) in [(&b"BAD"[..], true), (b"zzzzEVIL", true), (b"fine", false)] {
        let (c, mut s) = pair(&mut g);
        let mut bytes = start.to_vec();
        bytes.resize(200, b'.');
        let parts: Vec<&[u8]> = bytes.chunks(1).collect();
        let r = writev(&c, &parts);
        assert_eq!(
            r.is_err(),
            dropped,
            "writev {:?}: {r:?}",
            String::from_utf8_lossy(start)
        );
        if !dropped {
            assert_eq!(r, Ok(200));
            assert_eq!(recv_up_to(&mut s, 200, LONG), bytes);
        } else {
            assert!(recv_any(&mut s, SHORT).is_empty());
        }
    }
    let c = g.enf().counters().unwrap();
    assert_eq!((c[0].messages, c[1].messages), (2, 2), "{c:?}");
    assert_eq!(c[2].messages, 3, "{c:?}");
    g.finish();
}

#[test]
fn payload_rules_see_sendfile_data() {
    if !common::kernel_or_skip("payload_rules_see_sendfile_data") {
        return;
    }
    let l = listener(true);
    let mut g = Guard::new(PAYLOAD_POLICY);
    for (i, (start, len, dropped)) in [
        (&b"BAD"[..], 3000usize, true),
        (b"abcdEVIL", 3000, true),
        (b"GOOD", 3000, false),
        (b"GOOD", 200_000, false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut content = start.to_vec();
        content.extend((0..len - start.len()).map(|i| b'a' + (i % 26) as u8));
        let tmp = common::TempFile::with_contents("skpc_sendfile", "bin", &content);
        let mut f = std::fs::File::open(&tmp.path).unwrap();
        f.flush().unwrap();
        let (c, mut s) = connect(&l);
        g.enf().insert_sock(i as u32, fd(&c)).unwrap();
        let reader = std::thread::spawn(move || recv_up_to(&mut s, len, LONG));
        let mut sent = 0usize;
        let mut result = Ok(0);
        while sent < len {
            let mut off = sent as libc::off_t;
            // SAFETY: valid descriptors and offset pointer.
            let n = unsafe {
                libc::sendfile(
                    std::os::fd::AsRawFd::as_raw_fd(&c),
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    &mut off,
                    len - sent,
                )
            };
            if n <= 0 {
                result = Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
                break;
            }
            sent += n as usize;
        }
        let got = reader.join().unwrap();
        if dropped {
            assert_eq!(
                result,
                Err(EACCES),
                "sendfile {:?}",
                String::from_utf8_lossy(start)
            );
            assert!(got.is_empty());
        } else {
            assert_eq!(sent, len);
            assert!(
                got == content,
                "sendfile of {len} bytes arrived intact ({} bytes)",
                got.len()
            );
        }
        let _ = &mut f;
    }
    g.finish();
}
