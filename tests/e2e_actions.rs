//! End-to-end: every action of the language, observed from user space on real TCP
//! sockets over 127.0.0.1 and ::1, with the policy loaded by the runtime and the
//! sockets put into `skp_socks` by index (as an embedding proxy would). Each test ends
//! with `Guard::finish`, which proves that its programs, maps and pins are gone.

mod common;
mod e2e_support;

use e2e_support::*;

#[test]
fn pass_delivers_and_drop_fails_with_eacces_for_good() {
    if !common::kernel_or_skip("pass_delivers_and_drop_fails_with_eacces_for_good") {
        return;
    }
    for v6 in [false, true] {
        let l = listener(v6);
        let port = l.local_addr().unwrap().port();
        let mut g = Guard::new(&format!("drop if remote.port == {port} and len > 100;"));
        let (c, mut s) = connect(&l);
        g.enf().insert_sock(0, fd(&c)).unwrap();
        assert_eq!(send(&c, b"small"), Ok(5));
        assert_eq!(recv_up_to(&mut s, 5, LONG), b"small");
        assert_eq!(send(&c, &[b'x'; 200]), Err(EACCES));
        // Sticky: even a small send fails now, and nothing arrived.
        assert_eq!(send(&c, b"tiny"), Err(EACCES));
        assert!(recv_any(&mut s, SHORT).is_empty());
        let counters = g.enf().counters().unwrap();
        // The program ran twice: the sticky drop does not run it again.
        assert_eq!(
            (counters[0].messages, counters[0].bytes),
            (1, 200),
            "{counters:?}"
        );
        assert_eq!(
            (counters[1].messages, counters[1].bytes),
            (1, 5),
            "{counters:?}"
        );
        // Taking the socket out forgets the drop.
        g.enf().remove_sock(0).unwrap();
        assert_eq!(send(&c, b"again"), Ok(5));
        assert_eq!(recv_up_to(&mut s, 5, LONG), b"again");
        g.finish();
    }
}

#[test]
fn counters_equal_the_traffic_sent() {
    if !common::kernel_or_skip("counters_equal_the_traffic_sent") {
        return;
    }
    let l = listener(false);
    let port = l.local_addr().unwrap().port();
    let mut g = Guard::new(&format!(
        "count small if len < 100;\ncount to_server if remote.port == {port};\npass if len >= 1000;\ndefault pass;"
    ));
    let (c, mut s) = connect(&l);
    g.enf().insert_sock(0, fd(&c)).unwrap();
    let sizes = [1usize, 10, 99, 100, 999, 1000, 5000, 16384];
    for &n in &sizes {
        assert_eq!(send(&c, &vec![b'a'; n]), Ok(n));
    }
    let total: usize = sizes.iter().sum();
    assert_eq!(recv_up_to(&mut s, total, LONG).len(), total);
    let c = g.enf().counters().unwrap();
    let get = |name: &str| counter(&c, name);
    let sum = |f: &dyn Fn(usize) -> bool| {
        let v: Vec<usize> = sizes.iter().copied().filter(|&n| f(n)).collect();
        (v.len() as u64, v.iter().sum::<usize>() as u64)
    };
    assert_eq!(get("small"), sum(&|n| n < 100), "{c:?}");
    assert_eq!(get("to_server"), sum(&|_| true), "{c:?}");
    assert_eq!(get("rule2"), sum(&|n| n >= 1000), "{c:?}");
    assert_eq!(get("default"), sum(&|n| n < 1000), "{c:?}");
    g.finish();
}

/// The counters are one value shared by every CPU, bumped with atomic adds: senders on
/// every CPU at once, each on its own connection, lose no message and no byte.
#[test]
fn counters_are_exact_with_senders_on_every_cpu() {
    if !common::kernel_or_skip("counters_are_exact_with_senders_on_every_cpu") {
        return;
    }
    const SENDERS: usize = 4;
    const MESSAGES: usize = 200_000;
    let l = listener(false);
    let port = l.local_addr().unwrap().port();
    let mut g = Guard::new(&format!(
        "pass if remote.port == {port} and len < 8;\npass if remote.port == {port};"
    ));
    let pairs: Vec<(std::net::TcpStream, std::net::TcpStream)> =
        (0..SENDERS).map(|_| connect(&l)).collect();
    for (i, (c, _)) in pairs.iter().enumerate() {
        g.enf().insert_sock(i as u32, fd(c)).unwrap();
    }
    // Sender k sends messages of 1 + k bytes (rule 0) and 8 + k bytes (rule 1) in turn,
    // all senders at once.
    let start = std::sync::Arc::new(std::sync::Barrier::new(SENDERS));
    let threads: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(k, (c, mut s))| {
            let receiver = std::thread::spawn(move || {
                let want = MESSAGES / 2 * (1 + k + 8 + k);
                recv_up_to(&mut s, want, LONG).len()
            });
            let start = std::sync::Arc::clone(&start);
            let sender = std::thread::spawn(move || {
                let (small, big) = (vec![b's'; 1 + k], vec![b'b'; 8 + k]);
                start.wait();
                for m in 0..MESSAGES {
                    let msg = if m % 2 == 0 { &small } else { &big };
                    assert_eq!(send(&c, msg), Ok(msg.len()));
                }
                c
            });
            (sender, receiver)
        })
        .collect();
    let mut received = 0;
    let mut clients = Vec::new();
    for (sender, receiver) in threads {
        clients.push(sender.join().expect("sender"));
        received += receiver.join().expect("receiver");
    }
    let half = (MESSAGES / 2) as u64;
    let bytes = |base: usize| (0..SENDERS).map(|k| half * (base + k) as u64).sum::<u64>();
    assert_eq!(received as u64, bytes(1) + bytes(8), "every byte arrived");
    let c = g.enf().counters().unwrap();
    assert_eq!(
        (c[0].messages, c[0].bytes),
        (half * SENDERS as u64, bytes(1)),
        "{c:?}"
    );
    assert_eq!(
        (c[1].messages, c[1].bytes),
        (half * SENDERS as u64, bytes(8)),
        "{c:?}"
    );
    drop(clients);
    g.finish();
}

#[test]
fn redirect_to_sock_egress_and_ingress() {
    if !common::kernel_or_skip("redirect_to_sock_egress_and_ingress") {
        return;
    }
    for v6 in [false, true] {
        let la = listener(v6);
        let lb = listener(v6);
        let pa = la.local_addr().unwrap().port();
        let mut g = Guard::new(&format!(
            "redirect ingress to sock 1 if remote.port == {pa} and payload starts with \"IN\";\n\
             redirect to sock 1 if remote.port == {pa};"
        ));
        let (a, mut a_srv) = connect(&la);
        let (mut b, mut b_srv) = connect(&lb);
        g.enf().insert_sock(0, fd(&a)).unwrap();
        g.enf().insert_sock(1, fd(&b)).unwrap();
        // Egress: out of B's socket, to B's peer; A's peer gets nothing.
        assert_eq!(send(&a, b"hello via b"), Ok(11));
        assert_eq!(recv_up_to(&mut b_srv, 11, LONG), b"hello via b");
        assert!(recv_any(&mut a_srv, SHORT).is_empty());
        // Ingress: queued on B's own receive side.
        assert_eq!(send(&a, b"IN to b"), Ok(7));
        assert_eq!(recv_up_to(&mut b, 7, LONG), b"IN to b");
        assert!(recv_any(&mut a_srv, SHORT).is_empty());
        assert!(recv_any(&mut b_srv, SHORT).is_empty());
        // B's own sends are not redirected (remote port is B's server).
        assert_eq!(send(&b, b"b's own"), Ok(7));
        assert_eq!(recv_up_to(&mut b_srv, 7, LONG), b"b's own");
        let c = g.enf().counters().unwrap();
        assert_eq!((c[0].messages, c[0].bytes), (1, 7), "{c:?}");
        assert_eq!((c[1].messages, c[1].bytes), (1, 11), "{c:?}");
        // An empty target slot is a drop (and sticks).
        g.enf().remove_sock(1).unwrap();
        assert_eq!(send(&a, b"nowhere"), Err(EACCES));
        assert_eq!(send(&a, b"x"), Err(EACCES));
        g.finish();
    }
}

#[test]
fn pass_for_n_covers_the_next_n_bytes_without_running_the_program() {
    if !common::kernel_or_skip("pass_for_n_covers_the_next_n_bytes_without_running_the_program") {
        return;
    }
    let l = listener(true);
    let mut g = Guard::new("pass for 100 if payload starts with \"P\";\ndrop;");
    let (c, mut s) = connect(&l);
    g.enf().insert_sock(0, fd(&c)).unwrap();
    let mut first = vec![b'P'];
    first.extend_from_slice(&[b'.'; 49]);
    assert_eq!(send(&c, &first), Ok(50));
    // Does not start with "P", but the verdict still covers 50 more bytes.
    assert_eq!(send(&c, &[b'x'; 50]), Ok(50));
    assert_eq!(recv_up_to(&mut s, 100, LONG).len(), 100);
    // The 100 bytes are used up: the program runs again and drops.
    assert_eq!(send(&c, b"xyz"), Err(EACCES));
    let cnt = g.enf().counters().unwrap();
    assert_eq!(
        (cnt[0].messages, cnt[0].bytes),
        (1, 50),
        "the program ran once for the first 100 bytes: {cnt:?}"
    );
    assert_eq!((cnt[1].messages, cnt[1].bytes), (1, 3), "{cnt:?}");
    g.finish();
}

#[test]
fn drop_for_n_is_sticky_like_a_drop() {
    if !common::kernel_or_skip("drop_for_n_is_sticky_like_a_drop") {
        return;
    }
    let l = listener(false);
    let mut g = Guard::new("drop for 10 if payload starts with \"D\";");
    let (c, mut s) = connect(&l);
    g.enf().insert_sock(0, fd(&c)).unwrap();
    assert_eq!(send(&c, b"ok"), Ok(2));
    assert_eq!(send(&c, b"D1234"), Err(EACCES));
    assert_eq!(send(&c, b"ok"), Err(EACCES));
    assert_eq!(recv_up_to(&mut s, 2, LONG), b"ok");
    g.finish();
}

#[test]
fn cork_holds_data_until_n_bytes_then_decides_on_all_of_them() {
    if !common::kernel_or_skip("cork_holds_data_until_n_bytes_then_decides_on_all_of_them") {
        return;
    }
    let l = listener(false);
    let mut g = Guard::new("cork 8 if len < 8;\ndrop if payload starts with \"BAD\";");
    // Passing case: 3 + 5 bytes are decided together.
    let (c, mut s) = connect(&l);
    g.enf().insert_sock(0, fd(&c)).unwrap();
    assert_eq!(send(&c, b"abc"), Ok(3));
    assert!(
        recv_any(&mut s, SHORT).is_empty(),
        "corked bytes must not leave yet"
    );
    assert_eq!(send(&c, b"defgh"), Ok(5));
    assert_eq!(recv_up_to(&mut s, 8, LONG), b"abcdefgh");
    let cnt = g.enf().counters().unwrap();
    assert_eq!(
        cnt[0].messages, 1,
        "the cork rule matched the 3-byte send: {cnt:?}"
    );
    assert_eq!(
        (cnt[2].messages, cnt[2].bytes),
        (1, 8),
        "the default decided on 8 bytes at once: {cnt:?}"
    );
    // Dropping case: the rule sees "BAD" only once the corked bytes are together.
    let (d, mut ds) = connect(&l);
    g.enf().insert_sock(1, fd(&d)).unwrap();
    assert_eq!(send(&d, b"BA"), Ok(2));
    let second = send(&d, b"D-rest");
    assert_eq!(
        second,
        Err(EACCES),
        "the send that completes the cork gets the drop"
    );
    assert_eq!(send(&d, b"later"), Err(EACCES));
    assert!(recv_any(&mut ds, SHORT).is_empty());
    g.finish();
}

#[test]
fn log_records_carry_the_message_fields() {
    if !common::kernel_or_skip("log_records_carry_the_message_fields") {
        return;
    }
    for v6 in [false, true] {
        let l = listener(v6);
        let port = l.local_addr().unwrap().port();
        let mut g = Guard::new(&format!("log if remote.port == {port} and len > 2;"));
        assert!(g.enf().has_events());
        let (c, mut s) = connect(&l);
        g.enf().insert_sock(0, fd(&c)).unwrap();
        for msg in [&b"first"[..], b"no", b"third!"] {
            assert_eq!(send(&c, msg), Ok(msg.len()));
        }
        assert_eq!(recv_up_to(&mut s, 13, LONG).len(), 13);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + LONG;
        while got.len() < 2 && std::time::Instant::now() < deadline {
            got.extend(g.enf().wait_events(std::time::Duration::from_millis(100)));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        let key = skpc_runtime::sock_key(std::os::fd::AsRawFd::as_raw_fd(&c)).unwrap();
        for (r, size) in got.iter().zip([5, 6]) {
            assert_eq!(r.rule, 0);
            assert_eq!(r.size, size);
            assert_eq!(r.family, if v6 { 10 } else { 2 });
            assert_eq!(r.local_port, key.local_port);
            assert_eq!(r.remote_port, port as u32);
            assert_eq!(r.local_ip, key.local_ip);
            assert_eq!(r.remote_ip, key.remote_ip);
            assert_eq!(r.pid, std::process::id());
            // SAFETY: getuid/getgid have no preconditions.
            assert_eq!((r.uid, r.gid), unsafe { (libc::getuid(), libc::getgid()) });
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            let n = r.comm.iter().position(|&b| b == 0).unwrap_or(16);
            assert_eq!(std::str::from_utf8(&r.comm[..n]).unwrap(), comm.trim_end());
        }
        let cnt = g.enf().counters().unwrap();
        assert_eq!((cnt[0].messages, cnt[0].bytes), (2, 11), "{cnt:?}");
        g.finish();
    }
}

#[test]
fn discard_swallows_one_message_and_the_connection_stays_usable() {
    if !common::kernel_or_skip("discard_swallows_one_message_and_the_connection_stays_usable") {
        return;
    }
    for v6 in [false, true] {
        // The listener's own ephemeral port, named in the policy: no other test's
        // traffic can match these rules.
        let l = listener(v6);
        let port = l.local_addr().unwrap().port();
        let mut g = Guard::new(&format!(
            "count to_server if remote.port == {port};\n\
             log if remote.port == {port} and payload starts with \"SECRET\";\n\
             discard if remote.port == {port} and payload starts with \"SECRET\";\n\
             default pass;"
        ));
        let (c, mut s) = connect(&l);
        g.enf().insert_sock(0, fd(&c)).unwrap();
        assert_eq!(send(&c, b"before"), Ok(6));
        assert_eq!(recv_up_to(&mut s, 6, LONG), b"before");
        // The discarded send reports every byte sent; the peer gets none of them.
        assert_eq!(send(&c, b"SECRET password"), Ok(15));
        assert!(recv_any(&mut s, SHORT).is_empty());
        // A 64 KiB write is one program run (one chunk): discarded whole.
        let mut big = b"SECRET".to_vec();
        big.resize(64 * 1024, b'z');
        assert_eq!(send(&c, &big), Ok(big.len()));
        assert!(recv_any(&mut s, SHORT).is_empty());
        // Unlike a drop nothing sticks: the next send that passes arrives intact.
        assert_eq!(send(&c, b"after"), Ok(5));
        assert_eq!(recv_up_to(&mut s, 5, LONG), b"after");
        let cnt = g.enf().counters().unwrap();
        let get = |name: &str| counter(&cnt, name);
        let discarded = (2, 15 + big.len() as u64);
        assert_eq!(get("rule2"), discarded, "{cnt:?}");
        assert_eq!(get("rule1"), discarded, "{cnt:?}");
        assert_eq!(
            get("to_server"),
            (4, 6 + 15 + big.len() as u64 + 5),
            "{cnt:?}"
        );
        assert_eq!(get("default"), (2, 11), "{cnt:?}");
        // `log` fires on the discarded messages like on any other.
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + LONG;
        while got.len() < 2 && std::time::Instant::now() < deadline {
            got.extend(g.enf().wait_events(std::time::Duration::from_millis(100)));
        }
        let sizes: Vec<u32> = got.iter().map(|r| r.size).collect();
        assert_eq!(sizes, vec![15, big.len() as u32], "{got:?}");
        g.finish();
    }
}

#[test]
fn reply_answers_the_sender_and_the_connection_stays_usable() {
    if !common::kernel_or_skip("reply_answers_the_sender_and_the_connection_stays_usable") {
        return;
    }
    let long_reply = format!("-ERR {}\r\n", "y".repeat(3000));
    let long_text = long_reply.replace("\r\n", "\\r\\n");
    for v6 in [false, true] {
        let l = listener(v6);
        let port = l.local_addr().unwrap().port();
        // A reply shorter than the message (pop), longer (push) and as long (neither).
        let mut g = Guard::new(&format!(
            "const LONG = \"{long_text}\";\n\
             reply \"-ERR denied\\r\\n\" if remote.port == {port} and payload starts with \"*1\\r\\n$8\\r\\nFLUSHALL\";\n\
             reply LONG if remote.port == {port} and payload starts with \"GROW\";\n\
             reply \"12345\" if remote.port == {port} and payload starts with \"SAME\";\n\
             default pass;"
        ));
        let (c, mut s) = connect(&l);
        // The sender must be in the sockhash under its own key: the reply's target.
        g.enf().insert_peer(fd(&c)).unwrap();
        let mut c_read = c.try_clone().unwrap();
        let cases: [(&[u8], &[u8]); 3] = [
            (b"*1\r\n$8\r\nFLUSHALL\r\n", b"-ERR denied\r\n"),
            (b"GROW", long_reply.as_bytes()),
            (b"SAME!", b"12345"),
        ];
        for (msg, reply) in cases {
            // send() reports every byte; the sender reads exactly the reply; the
            // server gets nothing.
            assert_eq!(send(&c, msg), Ok(msg.len()), "{v6} {msg:?}");
            assert_eq!(recv_up_to(&mut c_read, reply.len(), LONG), reply, "{v6}");
            assert!(recv_any(&mut c_read, SHORT).is_empty(), "{v6}");
            assert!(recv_any(&mut s, SHORT).is_empty(), "{v6}");
            // The connection works both ways afterwards.
            assert_eq!(send(&c, b"*1\r\n$4\r\nPING\r\n"), Ok(14));
            assert_eq!(recv_up_to(&mut s, 14, LONG), b"*1\r\n$4\r\nPING\r\n");
            assert_eq!(send(&s, b"+PONG\r\n"), Ok(7));
            assert_eq!(recv_up_to(&mut c_read, 7, LONG), b"+PONG\r\n");
        }
        // A 64 KiB write is one program run (one chunk): replaced whole.
        let mut big = b"*1\r\n$8\r\nFLUSHALL".to_vec();
        big.resize(64 * 1024, b'z');
        assert_eq!(send(&c, &big), Ok(big.len()), "{v6}");
        assert_eq!(recv_up_to(&mut c_read, 13, LONG), b"-ERR denied\r\n");
        assert!(recv_any(&mut c_read, SHORT).is_empty(), "{v6}");
        assert!(recv_any(&mut s, SHORT).is_empty(), "{v6}");
        assert_eq!(send(&c, b"after"), Ok(5));
        assert_eq!(recv_up_to(&mut s, 5, LONG), b"after");
        let cnt = g.enf().counters().unwrap();
        let get = |name: &str| counter(&cnt, name);
        assert_eq!(get("rule0"), (2, 18 + big.len() as u64), "{cnt:?}");
        assert_eq!(get("default"), (4, 3 * 14 + 5), "{cnt:?}");
        assert_eq!(get("rule1"), (1, 4), "{cnt:?}");
        assert_eq!(get("rule2"), (1, 5), "{cnt:?}");
        drop((c, c_read, s));
        g.finish();
    }
}
