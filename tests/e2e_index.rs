//! End-to-end: policies whose port and address rules the compiler puts into the kernel
//! HASH map `skp_index` (compiler/lower/index.rs) instead of code. The runtime fills the
//! map from the object's `.skp.index` section before the program sees a message; these
//! tests send over real loopback TCP (IPv4, IPv6, IPv4-mapped) and check what a user
//! sees: a message that hits an indexed rule fails with EACCES, one that hits nothing
//! arrives, the first matching rule is the one counted, hot reload swaps indexes, and an
//! object whose index nobody filled drops everything (fails closed).
//!
//! Rule values are ports that no other socket can take while the test runs (listener
//! ports, or ports held by a listener on 127.0.0.200) and addresses on the loopback;
//! the filler rules use ports below 1024 and addresses off the loopback, which no test
//! socket has.

mod budget_shapes;
mod common;
mod e2e_support;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, SockMap};
use aya::programs::SkMsg;
use e2e_support::*;
use skpc_abi::{IndexEntry, PortEntry, INDEX_NAME, INDEX_READY, INDEX_READY_NAME};

/// Filler rule `i`: indexable, `drop`, and never true for a socket of these tests (ports
/// 1..1000, addresses in 10/8, 192.168/16, fd00::/8). Five kinds, so five tuples.
fn filler(i: usize) -> String {
    let port = 1 + i % 1000;
    match i % 5 {
        0 => format!("drop if port == {port};"),
        1 => format!(
            "drop if remote.ip == 10.{}.{}.{};",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        ),
        2 => format!(
            "drop if remote.ip in 192.168.{}.{}/28 and local.port == {port};",
            i / 16 % 256,
            i % 16 * 16
        ),
        3 => format!("drop if remote.port == {port};"),
        _ => format!("drop if remote.ip == fd00::{:x};", i + 1),
    }
}

fn fillers(rules: &mut Vec<String>, n: usize) {
    let start = rules.len();
    rules.extend((start..start + n).map(filler));
}

/// A port no other socket gets while the listener lives: it holds the port on
/// 127.0.0.200, and connect(2) never picks a bound port as an ephemeral one.
fn reserve_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.200:0").expect("bind 127.0.0.200");
    let p = l.local_addr().unwrap().port();
    (l, p)
}

fn listen(addr: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    let p = l.local_addr().unwrap().port();
    (l, p)
}

fn from(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// A connection from an IPv4 socket to a listener on an IPv4-mapped IPv6 address.
fn connect_v4(l: &TcpListener) -> (TcpStream, TcpStream) {
    let a = l.local_addr().unwrap();
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().expect("an IPv4-mapped address"),
        IpAddr::V4(v4) => v4,
    };
    let c = TcpStream::connect((ip, a.port())).expect("connect over IPv4");
    let (s, _) = l.accept().expect("accept");
    for x in [&c, &s] {
        x.set_nodelay(true).unwrap();
    }
    (c, s)
}

/// What the reference evaluator says the policy does with one send of `payload` on `c`.
fn evaluate(policy: &skpc::hir::Policy, c: &TcpStream, payload: &[u8]) -> skpc::eval::EvalOutcome {
    let m = loopback_message(c, payload);
    skpc::eval::eval(policy, &m)
}

/// One message on its own connection (a drop sticks to the socket) and the counter
/// slot it must bump: a rule (dropped) or the default (passed).
struct Case {
    name: &'static str,
    conn: (TcpStream, TcpStream),
    payload: &'static [u8],
    slot: usize,
    dropped: bool,
}

/// Sends every case under `g` and checks the send's result, the bytes that arrive, and
/// that exactly the expected counter moved (by one message and its bytes), in the
/// kernel and in the reference evaluator alike.
fn run_cases(g: &mut Guard, policy: &skpc::hir::Policy, cases: &mut [Case]) {
    for (i, case) in cases.iter_mut().enumerate() {
        let (c, s) = &mut case.conn;
        let mut want = vec![(0u64, 0u64); policy.counters.len()];
        want[case.slot] = (1, case.payload.len() as u64);
        let eval = evaluate(policy, c, case.payload);
        assert_eq!(
            eval.counters,
            want,
            "{}: the test's expectation differs from the reference evaluator ({:?}, {} -> {})",
            case.name,
            eval.decision,
            c.local_addr().unwrap(),
            c.peer_addr().unwrap()
        );
        let before = g.enf().counters().unwrap();
        g.enf().insert_sock(i as u32, fd(c)).unwrap();
        let r = send(c, case.payload);
        if case.dropped {
            assert_eq!(
                r,
                Err(EACCES),
                "{}: dropped by rule {}",
                case.name,
                case.slot
            );
            assert!(
                recv_any(s, SHORT).is_empty(),
                "{}: nothing arrives",
                case.name
            );
        } else {
            assert_eq!(r, Ok(case.payload.len()), "{}: passes", case.name);
            assert_eq!(
                recv_up_to(s, case.payload.len(), LONG),
                case.payload,
                "{}",
                case.name
            );
        }
        let after = g.enf().counters().unwrap();
        let delta = counter_delta(&after, &before);
        let moved: Vec<(usize, &str)> = delta
            .iter()
            .enumerate()
            .filter(|(_, d)| d.0 > 0)
            .map(|(k, _)| (k, after[k].name.as_str()))
            .collect();
        assert_eq!(delta, want, "{}: counters that moved: {moved:?}", case.name);
        g.enf().remove_sock(i as u32).unwrap();
    }
}

/// The rule indices of the policy that are in the index (entries name them).
fn indexed_rules(c: &skpc::compile::Compiled) -> std::collections::BTreeSet<usize> {
    let hashed = c
        .lowered
        .index
        .iter()
        .flat_map(|e| e.used().map(|s| s.rule as usize));
    let ports = c.lowered.port_index.iter().map(|e| e.value as usize - 1);
    hashed.chain(ports).collect()
}

#[test]
fn indexed_rules_drop_on_loopback_and_the_first_matching_rule_counts() {
    if !common::kernel_or_skip("indexed_rules_drop_on_loopback_and_the_first_matching_rule_counts")
    {
        return;
    }
    // Sockets first: the rules name their ports.
    let (_hold_g, g_port) = reserve_port();
    let (_hold_f, f_port) = reserve_port();
    let (_hold_lc, lc_port) = reserve_port();
    let (l1, p1) = listen("127.0.0.1:0"); // `port == p1`
    let (l55, h2) = listen("127.0.0.55:0"); // remote.ip 127.0.0.55 (early), remote.port h2 (late)
    let (l56, h3) = listen("127.0.0.56:0"); // remote.port h3 (early), remote.ip 127.0.0.56 (late)
    let (l77, _) = listen("127.0.0.77:0"); // remote.ip == 127.0.0.77
    let (l5, _) = listen("127.0.5.3:0"); // remote.ip in 127.0.5.0/28 and local.port == lc
    let (ld, d_port) = listen("127.0.0.1:0"); // remote.port == d
    let (l6e, e_port) = listen("[::1]:0"); // remote.port == e, an IPv6 socket
    let (l6, _) = listen("[::1]:0"); // local.ip == ::1 and local.port == f; and passes
    let (l98, _) = listen("[::ffff:127.0.0.98]:0"); // remote.ip == ::ffff:127.0.0.98
    let (lm, _) = listen("[::ffff:127.0.0.99]:0"); // remote.ip == 127.0.0.99, mapped too
    let (l4, _) = listen("127.0.0.1:0"); // passes

    let mut rules: Vec<String> = Vec::new();
    let at = |rules: &mut Vec<String>, r: String| {
        rules.push(r);
        rules.len() - 1
    };
    fillers(&mut rules, 30);
    let r_port_g = at(&mut rules, format!("drop if port == {g_port};"));
    let r_ip55 = at(&mut rules, "drop if remote.ip == 127.0.0.55;".into());
    let r_h3 = at(&mut rules, format!("drop if remote.port == {h3};"));
    fillers(&mut rules, 20);
    // Stays code (a `not` is no key), inside the block.
    let r_payload = at(
        &mut rules,
        "drop if not port == 1 and payload starts with \"ZAP\";".into(),
    );
    fillers(&mut rules, 20);
    let r_local_g = at(&mut rules, format!("drop if local.port == {g_port};"));
    let r_h2 = at(&mut rules, format!("drop if remote.port == {h2};"));
    let r_ip56 = at(&mut rules, "drop if remote.ip == 127.0.0.56;".into());
    let r_p1 = at(&mut rules, format!("drop if port == {p1};"));
    let r_ip77 = at(&mut rules, "drop if remote.ip == 127.0.0.77;".into());
    let r_cidr = at(
        &mut rules,
        format!("drop if remote.ip in 127.0.5.0/28 and local.port == {lc_port};"),
    );
    let r_d = at(&mut rules, format!("drop if remote.port == {d_port};"));
    let r_v6_remote = at(&mut rules, format!("drop if remote.port == {e_port};"));
    // An IPv6 address and a port: one key of five words.
    let r_v6_local = at(
        &mut rules,
        format!("drop if local.ip == ::1 and local.port == {f_port};"),
    );
    let r_v6_literal = at(&mut rules, "drop if remote.ip == ::ffff:127.0.0.98;".into());
    let r_mapped = at(&mut rules, "drop if remote.ip == 127.0.0.99;".into());
    fillers(&mut rules, 30);
    let src = rules.join("\n") + "\ndefault pass;\n";

    let compiled = skpc::compile::compile("index.skp", &src).expect("compiles");
    let indexed = indexed_rules(&compiled);
    for r in [
        r_port_g,
        r_ip55,
        r_h3,
        r_h2,
        r_ip56,
        r_p1,
        r_ip77,
        r_cidr,
        r_d,
        r_v6_remote,
        r_v6_literal,
        r_mapped,
        r_v6_local,
    ] {
        assert!(
            indexed.contains(&r),
            "rule {r} `{}` is not in the index",
            rules[r]
        );
    }
    // `local.port == g` has the same key as `port == g` before it: only that one is listed.
    assert!(!indexed.contains(&r_local_g));
    assert!(!indexed.contains(&r_payload), "the payload rule stays code");
    let policy = &compiled.policy;
    let default = policy.default.counter;

    let mut g = Guard::new(&src);
    assert_eq!(
        g.enf().index_entries(),
        compiled.lowered.index.len() + compiled.lowered.port_index.len()
    );
    assert!(g.enf().index_entries() > 100);

    let mut cases = vec![
        Case {
            name: "port == (remote end)",
            conn: connect(&l1),
            payload: b"hello",
            slot: r_p1,
            dropped: true,
        },
        Case {
            name: "port == and a later local.port ==: the first counts",
            conn: connect_from(&l4, from("127.0.0.1", g_port)),
            payload: b"hello",
            slot: r_port_g,
            dropped: true,
        },
        Case {
            name: "remote.ip before a remote.port rule (another tuple)",
            conn: connect(&l55),
            payload: b"hi",
            slot: r_ip55,
            dropped: true,
        },
        Case {
            name: "remote.port before a remote.ip rule (another tuple)",
            conn: connect(&l56),
            payload: b"hi",
            slot: r_h3,
            dropped: true,
        },
        Case {
            name: "remote.ip ==",
            conn: connect(&l77),
            payload: b"abc",
            slot: r_ip77,
            dropped: true,
        },
        Case {
            name: "remote.ip in CIDR and local.port ==",
            conn: connect_from(&l5, from("127.0.0.1", lc_port)),
            payload: b"abcd",
            slot: r_cidr,
            dropped: true,
        },
        Case {
            name: "remote.ip in CIDR from another local port",
            conn: connect(&l5),
            payload: b"abcd",
            slot: default,
            dropped: false,
        },
        Case {
            name: "remote.port ==",
            conn: connect(&ld),
            payload: b"x",
            slot: r_d,
            dropped: true,
        },
        Case {
            name: "IPv6 remote.port ==",
            conn: connect(&l6e),
            payload: b"six",
            slot: r_v6_remote,
            dropped: true,
        },
        Case {
            name: "IPv6 local.ip == ::1 and local.port ==",
            conn: connect_from(&l6, from("::1", f_port)),
            payload: b"six",
            slot: r_v6_local,
            dropped: true,
        },
        Case {
            name: "IPv4-mapped remote.ip (IPv6 socket)",
            conn: connect(&lm),
            payload: b"mapped",
            slot: r_mapped,
            dropped: true,
        },
        Case {
            name: "the same address from an IPv4 socket",
            conn: connect_v4(&lm),
            payload: b"plain",
            slot: r_mapped,
            dropped: true,
        },
        Case {
            name: "IPv6 literal of a mapped address, IPv6 socket",
            conn: connect(&l98),
            payload: b"literal",
            slot: r_v6_literal,
            dropped: true,
        },
        Case {
            name: "IPv6 literal of a mapped address, IPv4 socket",
            conn: connect_v4(&l98),
            payload: b"literal",
            slot: default,
            dropped: false,
        },
        Case {
            name: "payload rule, nothing indexed matches",
            conn: connect(&l4),
            payload: b"ZAP!",
            slot: r_payload,
            dropped: true,
        },
        Case {
            name: "payload rule after a matching indexed rule",
            conn: connect(&l55),
            payload: b"ZAP!",
            slot: r_ip55,
            dropped: true,
        },
        Case {
            name: "payload rule before a matching indexed rule",
            conn: connect(&l1),
            payload: b"ZAP!",
            slot: r_payload,
            dropped: true,
        },
        Case {
            name: "IPv4, nothing matches",
            conn: connect(&l4),
            payload: b"let me through",
            slot: default,
            dropped: false,
        },
        Case {
            name: "IPv6, nothing matches",
            conn: connect(&l6),
            payload: b"let me through",
            slot: default,
            dropped: false,
        },
    ];
    run_cases(&mut g, policy, &mut cases);
    drop(cases);
    g.finish();
}

/// 200 bytes: longer than the `len` bounds of the mixed test's rules.
const LONG_X: &[u8] = &[b'x'; 200];
/// "K0000004" and more: the payload key of the mixed test.
const K_LONG: &[u8] = b"K0000004 and more";

#[test]
fn payload_keys_and_len_residuals_drop_on_loopback_in_first_match_order() {
    if !common::kernel_or_skip(
        "payload_keys_and_len_residuals_drop_on_loopback_in_first_match_order",
    ) {
        return;
    }
    let (la, pa) = listen("127.0.0.1:0"); // remote.port == pa and len > 100 / len <= 10
    let (lb, pb) = listen("127.0.0.1:0"); // remote.port == pb and payload[0..4] == "Q004"
    let (lc, pc) = listen("127.0.0.1:0"); // remote.ip in lan and remote.port == pc and len > 50
    let (ld, pd) = listen("[::1]:0"); // remote.ip6 == ::1 and remote.port == pd
    let (l4, _) = listen("127.0.0.1:0"); // payload keys only
    let mut rules: Vec<String> = Vec::new();
    let at = |rules: &mut Vec<String>, r: String| {
        rules.push(r);
        rules.len() - 1
    };
    fillers(&mut rules, 30);
    let r_k = at(
        &mut rules,
        "drop if payload starts with \"K0000004\";".into(),
    );
    let r_big = at(
        &mut rules,
        format!("drop if remote.port == {pa} and len > 100;"),
    );
    let r_small = at(
        &mut rules,
        format!("drop if remote.port == {pa} and len <= 10;"),
    );
    let r_q = at(
        &mut rules,
        format!("drop if remote.port in {{{pb}, 80}} and payload[0..4] == \"Q004\";"),
    );
    let r_lan = at(
        &mut rules,
        format!("drop if remote.ip in lan and remote.port == {pc} and len > 50;"),
    );
    let r_v6 = at(
        &mut rules,
        format!("drop if remote.ip6 == ::1 and remote.port == {pd};"),
    );
    fillers(&mut rules, 40);
    let src = format!(
        "set lan = {{127.0.0.0/8, fd00::/8}};\n{}\ndefault pass;\n",
        rules.join("\n")
    );
    let compiled = skpc::compile::compile("mixed.skp", &src).expect("compiles");
    let indexed = indexed_rules(&compiled);
    for r in [r_k, r_big, r_small, r_q, r_lan, r_v6] {
        assert!(
            indexed.contains(&r),
            "rule {r} `{}` is not in the index",
            rules[r]
        );
    }
    let [block] = compiled.lowered.index_summary.as_slice() else {
        panic!("one indexed block: {:?}", compiled.lowered.index_summary);
    };
    assert!(block.contains("0 as code"), "{block}");
    let policy = &compiled.policy;
    let default = policy.default.counter;
    let mut g = Guard::new(&src);
    let case = |name, conn, payload, slot, dropped| Case {
        name,
        conn,
        payload,
        slot,
        dropped,
    };
    let mut cases = vec![
        case("payload key", connect(&l4), K_LONG, r_k, true),
        case(
            "too short for the payload key",
            connect(&l4),
            b"K000000",
            default,
            false,
        ),
        case(
            "len residual, first slot",
            connect(&la),
            LONG_X,
            r_big,
            true,
        ),
        case(
            "len residual, second slot",
            connect(&la),
            b"tiny",
            r_small,
            true,
        ),
        case(
            "both residuals fail",
            connect(&la),
            &LONG_X[..50],
            default,
            false,
        ),
        // Two tuples match; the payload rule comes first.
        case(
            "payload rule before a residual rule",
            connect(&la),
            K_LONG,
            r_k,
            true,
        ),
        case(
            "port and payload slice",
            connect(&lb),
            b"Q004 go",
            r_q,
            true,
        ),
        case(
            "port, another slice",
            connect(&lb),
            b"Q005 go",
            default,
            false,
        ),
        case(
            "lan, port and len",
            connect(&lc),
            &LONG_X[..60],
            r_lan,
            true,
        ),
        case(
            "lan and port, too short",
            connect(&lc),
            &LONG_X[..20],
            default,
            false,
        ),
        case("IPv6 address and port", connect(&ld), b"six", r_v6, true),
        case(
            "nothing matches",
            connect(&l4),
            b"let me through",
            default,
            false,
        ),
    ];
    run_cases(&mut g, policy, &mut cases);
    drop(cases);
    g.finish();
}

#[test]
fn indexed_ipv6_loopback_rules_drop_ipv6_and_leave_ipv4_and_mapped_alone() {
    if !common::kernel_or_skip(
        "indexed_ipv6_loopback_rules_drop_ipv6_and_leave_ipv4_and_mapped_alone",
    ) {
        return;
    }
    let (l6, _) = listen("[::1]:0");
    let (l4, _) = listen("127.0.0.1:0");
    let (l66, _) = listen("[::ffff:127.0.0.66]:0");
    let mut rules: Vec<String> = Vec::new();
    fillers(&mut rules, 40);
    let r_remote6 = rules.len();
    rules.push("drop if remote.ip == ::1;".into());
    fillers(&mut rules, 10);
    let r_local6 = rules.len();
    rules.push("drop if local.ip in ::1/128;".into());
    fillers(&mut rules, 30);
    let r_ip66 = rules.len();
    rules.push("drop if ip == 127.0.0.66;".into());
    let src = rules.join("\n") + "\n";
    let compiled = skpc::compile::compile("v6.skp", &src).expect("compiles");
    let indexed = indexed_rules(&compiled);
    for r in [r_remote6, r_local6, r_ip66] {
        assert!(
            indexed.contains(&r),
            "rule {r} `{}` is not in the index",
            rules[r]
        );
    }
    let default = compiled.policy.default.counter;
    let mut g = Guard::new(&src);
    let mut cases = vec![
        Case {
            name: "IPv6 to ::1: remote.ip == ::1 before local.ip in ::1/128",
            conn: connect(&l6),
            payload: b"six",
            slot: r_remote6,
            dropped: true,
        },
        Case {
            name: "IPv4 to 127.0.0.1",
            conn: connect(&l4),
            payload: b"four",
            slot: default,
            dropped: false,
        },
        Case {
            name: "IPv6 socket, IPv4-mapped 127.0.0.1: not ::1",
            conn: connect_from(&l66, from("::ffff:127.0.0.1", 0)),
            payload: b"mapped",
            slot: r_ip66,
            dropped: true,
        },
        Case {
            name: "IPv4 to 127.0.0.66 (ip: either end)",
            conn: connect_v4(&l66),
            payload: b"four",
            slot: r_ip66,
            dropped: true,
        },
    ];
    run_cases(&mut g, &compiled.policy, &mut cases);
    // A mapped connection that no IPv4 rule names passes: ::1 is not ::ffff:127.0.0.1.
    let l4m = TcpListener::bind("[::ffff:127.0.0.1]:0").expect("listen on mapped loopback");
    let mut cases = vec![Case {
        name: "IPv6 socket to ::ffff:127.0.0.1",
        conn: connect(&l4m),
        payload: b"mapped",
        slot: default,
        dropped: false,
    }];
    run_cases(&mut g, &compiled.policy, &mut cases);
    drop(cases);
    g.finish();
}

#[test]
fn hot_reload_swaps_one_filled_index_for_another() {
    if !common::kernel_or_skip("hot_reload_swaps_one_filled_index_for_another") {
        return;
    }
    let (la, pa) = listen("127.0.0.1:0");
    let (lb, pb) = listen("[::1]:0");
    let block = |drop_port: u16| {
        let mut rules = Vec::new();
        fillers(&mut rules, 40);
        rules.push(format!("drop if remote.port == {drop_port};"));
        fillers(&mut rules, 40);
        rules.join("\n") + "\n"
    };
    let mut g = Guard::new("count all;\ndefault pass;");
    let v1_ids = g.enf().kernel_ids();
    // v1 (no index) -> v2 (drops port pa) -> v3 (drops port pb) -> v4 (no index).
    let (a1, mut a1_srv) = connect(&la);
    let (b1, mut b1_srv) = connect(&lb);
    g.enf().insert_sock(0, fd(&a1)).unwrap();
    g.enf().insert_sock(1, fd(&b1)).unwrap();
    assert_eq!(send(&a1, b"v1"), Ok(2));
    assert_eq!(recv_up_to(&mut a1_srv, 2, LONG), b"v1");

    g.enf().reload(&policy(&block(pa))).unwrap();
    let entries = g.enf().index_entries();
    assert!(entries >= 80, "v2 has an index: {entries}");
    let v2_ids = g.enf().kernel_ids();
    // The live socket under v1 gets v2, index and all: port pa is dropped now.
    assert_eq!(send(&a1, b"v2"), Err(EACCES));
    assert_eq!(send(&b1, b"v2"), Ok(2));
    assert_eq!(recv_up_to(&mut b1_srv, 2, LONG), b"v2");

    g.enf().reload(&policy(&block(pb))).unwrap();
    assert_eq!(g.enf().index_entries(), entries);
    assert_eq!(send(&b1, b"v3"), Err(EACCES), "v3's index holds port {pb}");
    let (a2, mut a2_srv) = connect(&la);
    g.enf().insert_sock(2, fd(&a2)).unwrap();
    assert_eq!(send(&a2, b"v3"), Ok(2), "v3 no longer drops port {pa}");
    assert_eq!(recv_up_to(&mut a2_srv, 2, LONG), b"v3");

    // v2's index maps went with v2 (each version has its own, unpinned). v2 brought
    // skp_untouched too (v1 takes every connection, v2 does not), which is shared
    // (pinned) and stays: the count of left-out sockets spans versions.
    let untouched = aya::maps::MapData::from_pin(g.enf().pin_dir().join("skp_untouched"))
        .and_then(|m| m.info())
        .map(|i| i.id())
        .expect("v2's skp_untouched, pinned");
    let v2_only: Vec<u32> = v2_ids
        .maps
        .iter()
        .copied()
        .filter(|id| !v1_ids.maps.contains(id) && *id != untouched)
        .collect();
    let gone = skpc_runtime::KernelIds {
        programs: Vec::new(),
        maps: v2_only.clone(),
    };
    wait_gone(&gone, "v2's maps after v3 replaced it");
    assert!(
        v2_only.len() >= 3,
        "v2 had counters, skp_index, skp_index_ready: {v2_only:?}"
    );

    g.enf().reload(&policy("default pass;")).unwrap();
    assert_eq!(g.enf().index_entries(), 0);
    let (b2, mut b2_srv) = connect(&lb);
    g.enf().insert_sock(3, fd(&b2)).unwrap();
    assert_eq!(send(&b2, b"v4"), Ok(2));
    assert_eq!(recv_up_to(&mut b2_srv, 2, LONG), b"v4");
    let all = g.enf().all_counters().unwrap();
    let dropped = |v: usize| all[v].counters[..81].iter().position(|c| c.messages > 0);
    assert_eq!(dropped(1), Some(40), "v2 counted its port rule: {all:?}");
    assert_eq!(dropped(2), Some(40), "v3 counted its port rule: {all:?}");
    drop((a1, b1, a2, b2));
    g.finish();
}

/// Waits until none of `ids` is in the kernel (freed after an RCU grace period).
fn wait_gone(ids: &skpc_runtime::KernelIds, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = ids.still_alive();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still in the kernel: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An indexed policy: 80 filler rules and `drop if remote.port == PORT` among them.
fn small_indexed(port: u16) -> String {
    let mut rules = Vec::new();
    fillers(&mut rules, 40);
    rules.push(format!("drop if remote.port == {port};"));
    fillers(&mut rules, 40);
    rules.join("\n") + "\n"
}

#[test]
fn an_unfilled_index_drops_everything_until_it_is_filled_and_marked_ready() {
    if !common::kernel_or_skip(
        "an_unfilled_index_drops_everything_until_it_is_filled_and_marked_ready",
    ) {
        return;
    }
    let (l, port) = listen("127.0.0.1:0");
    let (l_other, _) = listen("127.0.0.1:0");
    let src = small_indexed(port);
    let c = skpc::compile::compile("unfilled.skp", &src).expect("compiles");
    let object = c.object.clone();
    let entries = skpc_runtime::index_entries(&object)
        .expect("readable")
        .expect("the object has an index");
    assert_eq!(entries, c.lowered.index);

    // Loaded the way any aya program would load it, without the runtime.
    let mut ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(&object)
        .expect("aya loads the object");
    let mut ids = skpc_runtime::KernelIds::default();
    for (name, m) in ebpf.maps() {
        use aya::maps::Map;
        match m {
            Map::HashMap(d)
            | Map::Array(d)
            | Map::SockMap(d)
            | Map::SockHash(d)
            | Map::ProgramArray(d)
            | Map::PerCpuArray(d) => ids.maps.push(d.info().unwrap().id()),
            _ => panic!("map {name} of an unexpected type"),
        }
    }
    let socks: SockMap<MapData> = SockMap::try_from(ebpf.take_map("skp_socks").unwrap()).unwrap();
    {
        let prog: &mut SkMsg = ebpf.program_mut("skp_verdict").unwrap().try_into().unwrap();
        prog.load().expect("the verifier accepts it");
        ids.programs.push(prog.info().unwrap().id());
        prog.attach(socks.fd()).expect("attach to skp_socks");
    }
    let mut socks = socks;
    let ready = |ebpf: &aya::Ebpf| -> u32 {
        let a: Array<&MapData, u32> = Array::try_from(ebpf.map(INDEX_READY_NAME).unwrap()).unwrap();
        a.get(&0, 0).unwrap()
    };
    let index_len = |ebpf: &aya::Ebpf| -> usize {
        let h: HashMap<&MapData, [u8; IndexEntry::KEY_SIZE], [u8; IndexEntry::VALUE_SIZE]> =
            HashMap::try_from(ebpf.map(INDEX_NAME).unwrap()).unwrap();
        h.keys().count()
    };
    assert_eq!(
        ready(&ebpf),
        0,
        "nothing marks the index ready before it is filled"
    );
    assert_eq!(index_len(&ebpf), 0);

    // Fail closed: a message that no rule matches is dropped too.
    let (c0, mut s0) = connect(&l_other);
    socks.set(0, &c0, 0).unwrap();
    assert_eq!(send(&c0, b"no rule matches me"), Err(EACCES));
    assert!(recv_any(&mut s0, SHORT).is_empty());

    // Filled: every entry in the kernel, then the flag; the rules work.
    let n = skpc_runtime::fill_index(&ebpf, &object).expect("fills");
    let ports = skpc_runtime::port_entries(&object).expect("port entries");
    assert_eq!(n, entries.len() + ports.len());
    assert_eq!(index_len(&ebpf), entries.len());
    assert_eq!(ready(&ebpf), INDEX_READY);
    let (c1, mut s1) = connect(&l_other);
    socks.set(1, &c1, 0).unwrap();
    assert_eq!(send(&c1, b"no rule matches me"), Ok(18));
    assert_eq!(recv_up_to(&mut s1, 18, LONG), b"no rule matches me");
    let (c2, mut s2) = connect(&l);
    socks.set(2, &c2, 0).unwrap();
    assert_eq!(send(&c2, b"port rule"), Err(EACCES));
    assert!(recv_any(&mut s2, SHORT).is_empty());

    drop((c0, c1, c2, socks));
    drop(ebpf);
    wait_gone(&ids, "the aya-loaded object after its drop");
}

#[test]
fn bpftool_loads_an_indexed_object_with_the_index_empty_and_not_ready() {
    let Some(bpftool) = common::bpftool_or_skip(
        "bpftool_loads_an_indexed_object_with_the_index_empty_and_not_ready",
    ) else {
        return;
    };
    let c = skpc::compile::compile("bpftool.skp", &small_indexed(4242)).expect("compiles");
    let file = common::TempFile::with_contents("skpc_index", "o", &c.object);
    let pins = common::PinDir::new("skpc_index");
    let maps = pins.join("maps");
    std::fs::create_dir_all(&pins.path).expect("a directory under /sys/fs/bpf");
    common::run_ok(
        std::process::Command::new(&bpftool)
            .args(["prog", "loadall"])
            .arg(&file.path)
            .arg(pins.join("progs"))
            .arg("pinmaps")
            .arg(&maps),
    );
    let ready = common::run_ok(
        std::process::Command::new(&bpftool)
            .args(["-j", "map", "lookup", "pinned"])
            .arg(maps.join(INDEX_READY_NAME))
            .args(["key", "0", "0", "0", "0"]),
    );
    assert!(
        ready.contains(r#""value":["0x00","0x00","0x00","0x00"]"#),
        "a libbpf loader leaves the ready flag 0, so the program drops everything: {ready}"
    );
    let dump = common::run_ok(
        std::process::Command::new(&bpftool)
            .args(["-j", "map", "dump", "pinned"])
            .arg(maps.join(INDEX_NAME)),
    );
    assert_eq!(dump.trim(), "[]", "libbpf does not fill skp_index");
    // The pins are the only references: removing them frees everything.
    drop(pins);
}

#[test]
fn a_hundred_thousand_entries_fill_in_one_batch() {
    if !common::kernel_or_skip("a_hundred_thousand_entries_fill_in_one_batch") {
        return;
    }
    let (l, _) = listen("127.0.0.123:0");
    let (l_pass, _) = listen("127.0.0.1:0");
    // 100,000 distinct addresses, then one rule for this test's listener.
    let mut src: String = (0..100_000u32)
        .map(|i| {
            format!(
                "drop if remote.ip == 10.{}.{}.{};\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect();
    src.push_str("drop if remote.ip == 127.0.0.123;\n");
    let c = skpc::compile::compile("big.skp", &src).expect("compiles");
    assert_eq!(c.lowered.index.len(), 100_001);
    // The address tuple's gate: one slot per first 16 bits (10.0, 10.1, 127.0).
    let gates = c.lowered.port_index.len();
    assert_eq!(gates, 3);

    let ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(&c.object)
        .expect("aya loads the object");
    let start = Instant::now();
    let n = skpc_runtime::fill_index(&ebpf, &c.object).expect("fills");
    let took = start.elapsed();
    assert_eq!(n, 100_001 + gates);
    let h: HashMap<&MapData, [u8; IndexEntry::KEY_SIZE], [u8; IndexEntry::VALUE_SIZE]> =
        HashMap::try_from(ebpf.map(INDEX_NAME).unwrap()).unwrap();
    assert_eq!(h.keys().count(), 100_001, "every entry is in the kernel");
    eprintln!("filled {n} index entries in {took:.1?}");
    drop(ebpf);

    let mut g = Guard::new(&src);
    assert_eq!(g.enf().index_entries(), 100_001 + gates);
    let (hit, _hit_srv) = connect(&l);
    let (miss, mut miss_srv) = connect(&l_pass);
    g.enf().insert_sock(0, fd(&hit)).unwrap();
    g.enf().insert_sock(1, fd(&miss)).unwrap();
    assert_eq!(send(&hit, b"x"), Err(EACCES));
    assert_eq!(send(&miss, b"y"), Ok(1));
    assert_eq!(recv_up_to(&mut miss_srv, 1, LONG), b"y");
    let counters = g.enf().counters().unwrap();
    assert_eq!(
        counters[100_000].messages, 1,
        "the last rule counted the drop"
    );
    assert_eq!(counters.iter().map(|c| c.messages).sum::<u64>(), 2);
    drop((hit, miss));
    g.finish();
}

/// A case of `ten_thousand_uid_and_payload_byte_rules_drop_on_loopback`: its name, the
/// sender's uid (None: the test's) and thread name, the listener it connects to, the
/// payload, and the counter slot the message must bump.
type SenderCase<'a> = (
    &'a str,
    Option<u32>,
    &'a str,
    &'a TcpListener,
    &'a [u8],
    usize,
);

/// One send of `payload` on `c` from a thread named `name` whose real uid is `uid`
/// (what `bpf_get_current_uid_gid` reads; the effective uid stays root), and the
/// message as the evaluator takes it (the thread's uid, gid, pid, comm and cgroup).
fn send_as(
    name: &str,
    uid: Option<u32>,
    c: &TcpStream,
    payload: &[u8],
) -> (Result<usize, i32>, skpc::hir::Message) {
    std::thread::scope(|s| {
        let sender = std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, || {
                if let Some(uid) = uid {
                    // The raw syscall changes this thread's credentials only (glibc's
                    // setresuid would change every thread's); the thread ends after.
                    // SAFETY: no pointers; -1 leaves the effective and saved uids.
                    let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, -1i32, -1i32) };
                    assert_eq!(r, 0, "setresuid({uid})");
                }
                let mut m = loopback_message(c, payload);
                process_fields(&mut m);
                (send(c, payload), m)
            })
            .expect("a sender thread");
        sender.join().expect("the sender thread")
    })
}

/// 10,000 rules `drop if uid == U and payload[3] == B;` (the budget bench's
/// uid_payload_rules, none of which the index could hold before) and rules keyed on
/// this test's own uid, comm, cgroup and ports: the kernel verifies the program in a
/// few hundred instructions, a listed uid with its byte is dropped and counted on its
/// rule, the same uid with another byte, another uid with the byte and a message too
/// short for the byte pass; the first matching rule counts.
#[test]
fn ten_thousand_uid_and_payload_byte_rules_drop_on_loopback() {
    if !common::kernel_or_skip("ten_thousand_uid_and_payload_byte_rules_drop_on_loopback") {
        return;
    }
    let (la, pa) = listen("127.0.0.1:0"); // uid and payload byte; uid and port
    let (lb, pb) = listen("127.0.0.1:0"); // comm and port
    let (lc, pc) = listen("[::1]:0"); // cgroup, gid and the IPv6 port
    let mut me = loopback_message(&connect(&la).0, b"");
    process_fields(&mut me);
    let mut rules: Vec<String> = budget_shapes::uid_payload_rules(10_000)
        .lines()
        .map(str::to_string)
        .collect();
    let at = |rules: &mut Vec<String>, r: String| {
        rules.push(r);
        rules.len() - 1
    };
    // uid_payload_rules: rule i is `uid == 1000 + i and payload[3] == i % 256`.
    let r_listed = 5;
    assert_eq!(rules[r_listed], "drop if uid == 1005 and payload[3] == 5;");
    let r_me = at(
        &mut rules,
        format!("drop if uid == {} and payload[3] == 66;", me.uid),
    );
    // The same key as r_me, later: never counted.
    let r_me_again = at(
        &mut rules,
        format!("drop if payload[3] == 66 and uid == {};", me.uid),
    );
    let r_port = at(
        &mut rules,
        format!("drop if uid == 1007 and remote.port == {pa};"),
    );
    let r_comm = at(
        &mut rules,
        format!("drop if comm == \"skpc-ix-comm\" and remote.port == {pb};"),
    );
    let r_cgroup = at(
        &mut rules,
        format!(
            "drop if cgroup == {} and gid == {} and remote.port == {pc} and len > 4;",
            me.cgroup, me.gid
        ),
    );
    let src = format!("{}\ndefault pass;\n", rules.join("\n"));

    let start = Instant::now();
    let compiled = skpc::compile::compile("senders.skp", &src).expect("compiles");
    let built = start.elapsed();
    let [block] = compiled.lowered.index_summary.as_slice() else {
        panic!("one indexed block: {:?}", compiled.lowered.index_summary);
    };
    assert!(
        block.contains("10005 rules in the index, 0 as code"),
        "{block}"
    );
    for lookup in [
        "payload[3..4]+uid (uid gate)",
        "remote.port+uid",
        "remote.port+comm",
    ] {
        assert!(block.contains(lookup), "{lookup}: {block}");
    }
    let verified = budget_shapes::load_verified(&compiled.object).expect("the kernel loads it");
    eprintln!(
        "10,005 sender rules: built in {built:.1?}, {} instructions, {verified} verified",
        compiled.lowered.verdict.insns.len()
    );
    assert!(
        verified <= 100_000,
        "{verified} instructions verified (the bar: 100,000)"
    );

    let policy = &compiled.policy;
    let default = policy.default.counter;
    let mut g = Guard::new(&src);
    let cases: Vec<SenderCase> = vec![
        (
            "this uid, its byte",
            None,
            "skpc-ix-a",
            &la,
            b"abcB and more",
            r_me,
        ),
        (
            "this uid, another byte",
            None,
            "skpc-ix-a",
            &la,
            b"abcC",
            default,
        ),
        (
            "this uid, too short for the byte",
            None,
            "skpc-ix-a",
            &la,
            b"abc",
            default,
        ),
        (
            "a listed uid, its byte",
            Some(1005),
            "skpc-ix-a",
            &la,
            b"abc\x05",
            r_listed,
        ),
        (
            "a listed uid, another rule's byte",
            Some(1005),
            "skpc-ix-a",
            &la,
            b"abc\x06",
            default,
        ),
        (
            "an unlisted uid, the byte",
            Some(65534),
            "skpc-ix-a",
            &la,
            b"abc\x05",
            default,
        ),
        (
            "uid and port",
            Some(1007),
            "skpc-ix-a",
            &la,
            b"abcd",
            r_port,
        ),
        // 1006's byte is 6, 1007's 7: the port rule matches, and rule 7 comes first.
        (
            "uid, port and byte: the first rule",
            Some(1007),
            "skpc-ix-a",
            &la,
            b"abc\x07",
            7,
        ),
        (
            "uid, another port",
            Some(1007),
            "skpc-ix-a",
            &lb,
            b"abcd",
            default,
        ),
        ("comm and port", None, "skpc-ix-comm", &lb, b"hello", r_comm),
        (
            "another comm",
            None,
            "skpc-ix-commx",
            &lb,
            b"hello",
            default,
        ),
        (
            "cgroup, gid, port and len",
            None,
            "skpc-ix-a",
            &lc,
            b"hello",
            r_cgroup,
        ),
        (
            "cgroup, gid and port, too short",
            None,
            "skpc-ix-a",
            &lc,
            b"hey",
            default,
        ),
        (
            "cgroup and gid, another uid",
            Some(1234),
            "skpc-ix-a",
            &lc,
            b"hello",
            r_cgroup,
        ),
    ];
    for (i, &(name, uid, comm, l, payload, slot)) in cases.iter().enumerate() {
        let (c, mut s) = connect(l);
        let before = g.enf().counters().unwrap();
        g.enf().insert_sock(i as u32, fd(&c)).unwrap();
        let (sent, m) = send_as(comm, uid, &c, payload);
        let eval = skpc::eval::eval(policy, &m);
        let mut want = vec![(0u64, 0u64); policy.counters.len()];
        want[slot] = (1, payload.len() as u64);
        assert_eq!(
            eval.counters, want,
            "{name}: the evaluator disagrees with the test"
        );
        if slot == default {
            assert_eq!(sent, Ok(payload.len()), "{name}: passes");
            assert_eq!(recv_up_to(&mut s, payload.len(), LONG), payload, "{name}");
        } else {
            assert_eq!(sent, Err(EACCES), "{name}: dropped by rule {slot}");
        }
        let after = g.enf().counters().unwrap();
        let delta = counter_delta(&after, &before);
        assert_eq!(delta[slot], want[slot], "{name}: counted on rule {slot}");
        assert_eq!(
            delta.iter().filter(|d| d.0 > 0).count(),
            1,
            "{name}: one counter moved"
        );
        g.enf().remove_sock(i as u32).unwrap();
    }
    assert_eq!(g.enf().counters().unwrap()[r_me_again].messages, 0);
    drop((la, lb, lc));
    g.finish();
}

/// 10,000 `log if uid == U and remote.port == P;` and 10,000 `count hitsK if
/// remote.port == P and len > N;` rules (the budget bench's log_rules and count_rules),
/// and rules for this test's ports that share keys (eight with one key: two pages):
/// one block where every matching rule acts. The kernel verifies it in about a
/// thousand instructions; a message that
/// matches several rules bumps each one's counter (and `count NAME`'s) once and sends
/// one log record per matching `log` rule, in rule order, as the evaluator says.
#[test]
fn count_and_log_rules_in_the_index_act_once_each_on_loopback() {
    if !common::kernel_or_skip("count_and_log_rules_in_the_index_act_once_each_on_loopback") {
        return;
    }
    let (la, pa) = listen("127.0.0.1:0");
    let (lb, pb) = listen("127.0.0.1:0");
    let mut me = loopback_message(&connect(&la).0, b"");
    process_fields(&mut me);
    let uid = me.uid;
    let src = format!(
        "{}{}log if uid == {uid} and remote.port == {pa};\n\
         count a if remote.port == {pa} and len > 3;\n\
         log if remote.port == {pa} and uid == {uid};\n\
         count b if remote.port == {pa};\n\
         count a if remote.port in {{{pa}, {pb}}};\n\
         {}default pass;\n",
        budget_shapes::log_rules(10_000),
        budget_shapes::count_rules(10_000),
        // Five more rules with `pa`'s key: eight, two entries (pages) of four.
        [0, 1, 2, 3, 10]
            .map(|n| format!("count c if remote.port == {pa} and len > {n};\n"))
            .concat(),
    );
    let compiled = skpc::compile::compile("effects.skp", &src).expect("compiles");
    let [block] = compiled.lowered.index_summary.as_slice() else {
        panic!("one indexed block: {:?}", compiled.lowered.index_summary);
    };
    assert!(
        block.contains("20010 rules in the index, 0 as code") && block.contains("8 rules per key"),
        "{block}"
    );
    let verified = budget_shapes::load_verified(&compiled.object).expect("the kernel loads it");
    eprintln!(
        "20,010 count and log rules: {} instructions, {verified} verified",
        compiled.lowered.verdict.insns.len()
    );
    assert!(
        verified <= 100_000,
        "{verified} instructions verified (the bar: 100,000)"
    );

    let policy = &compiled.policy;
    let mut g = Guard::new(&src);
    for (i, (l, payload, logs)) in [(&la, &b"hello"[..], 2), (&la, b"hi", 2), (&lb, b"hello", 0)]
        .into_iter()
        .enumerate()
    {
        let (c, mut s) = connect(l);
        let mut m = loopback_message(&c, payload);
        process_fields(&mut m);
        let want = skpc::eval::eval(policy, &m);
        assert_eq!(want.events.len(), logs, "the evaluator's records");
        let before = g.enf().counters().unwrap();
        g.enf().insert_sock(i as u32, fd(&c)).unwrap();
        assert_eq!(send(&c, payload), Ok(payload.len()));
        assert_eq!(recv_up_to(&mut s, payload.len(), LONG), payload);
        counters_and_logs_as_evaluated(&mut g, &before, &want, i);
        g.enf().remove_sock(i as u32).unwrap();
    }
    drop((la, lb));
    g.finish();
}

/// The budget shape `mixed_rules` (drop, `discard` and `log` rules in turn: one block of
/// several decisions) and rules of the test's ports after it: the kernel decides, counts
/// and logs each message as the evaluator does (first match over decisions, `count` and
/// `log` rules only before the deciding rule), within the budget.
#[test]
fn a_block_of_several_decisions_decides_counts_and_logs_in_rule_order_on_loopback() {
    if !common::kernel_or_skip(
        "a_block_of_several_decisions_decides_counts_and_logs_in_rule_order_on_loopback",
    ) {
        return;
    }
    // 2,000 rules: a quarter of them keyed on remote ports, 250 on payload bytes. The
    // listeners take ports of 47100-47199 that no rule of the shape names, and the
    // payloads a filler byte that no payload rule of the shape matches, so that the
    // rules after the shape decide.
    let shape = budget_shapes::mixed_rules(2_000);
    let named = |p: u16| shape.contains(&format!("== {p};")) || shape.contains(&format!("== {p} "));
    let mut listeners = (47100..47200)
        .filter(|&p| !named(p))
        .filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (l, p)));
    let ((la, pa), (lb, pb)) = match (listeners.next(), listeners.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("no two free ports in 47100-47199 that the shape does not name"),
    };
    let mut me = loopback_message(&connect(&la).0, b"");
    process_fields(&mut me);
    // The `log` rules in the shape's tuple (comm and remote port): the `log` rules of a
    // block are keyed in one tuple or are all code.
    let comm = String::from_utf8_lossy(&me.comm).into_owned();
    let src = format!(
        "{shape}log if comm == \"{comm}\" and remote.port == {pa};\n\
         count a if remote.port == {pa} and len > 3;\n\
         discard if remote.port == {pa} and payload[0] == 100;\n\
         pass if remote.port == {pa} and len > 100;\n\
         drop if remote.port == {pa};\n\
         count b if remote.port == {pa};\n\
         log if comm == \"{comm}\" and remote.port == {pb};\n\
         drop if remote.port == {pb} and len < 3;\n\
         count b if remote.port == {pb};\n\
         discard if payload starts with \"zz\";\n\
         default pass;\n",
    );
    let compiled = skpc::compile::compile("mixed.skp", &src).expect("compiles");
    let [block] = compiled.lowered.index_summary.as_slice() else {
        panic!("one indexed block: {:?}", compiled.lowered.index_summary);
    };
    assert!(
        block.contains("2010 rules in the index, 0 as code")
            && block.contains("3 decisions and count/log"),
        "{block}"
    );
    let verified = budget_shapes::load_verified(&compiled.object).expect("the kernel loads it");
    eprintln!(
        "2,010 rules of three decisions, count and log: {} instructions, {verified} verified",
        compiled.lowered.verdict.insns.len()
    );
    assert!(
        verified <= 100_000,
        "{verified} instructions verified (the bar: 100,000)"
    );
    let policy = &compiled.policy;
    // Each case: its listener, payload (filler bytes `f` after a prefix), the rule that
    // decides (None: the default) and the `count`/`log` rules that act.
    type Case = (usize, &'static [u8], usize, Option<usize>, Vec<usize>);
    let cases: Vec<Case> = vec![
        (0, b"", 2, Some(2004), vec![2000]),
        (0, b"", 5, Some(2004), vec![2000, 2001]),
        (0, b"d", 4, Some(2002), vec![2000, 2001]),
        (0, b"", 200, Some(2003), vec![2000, 2001]),
        (1, b"", 2, Some(2007), vec![2006]),
        (1, b"", 5, None, vec![2006, 2008]),
        (1, b"zz", 6, Some(2009), vec![2006, 2008]),
    ];
    let payload = |prefix: &[u8], len: usize, f: u8| {
        let mut p = prefix.to_vec();
        p.resize(len, f);
        p
    };
    let shape_only = skpc::compile::compile("shape.skp", &format!("{shape}default pass;\n"))
        .expect("compiles")
        .policy;
    let quiet = |f: u8| {
        cases.iter().all(|(_, prefix, len, _, _)| {
            let mut m = me.clone();
            m.payload = payload(prefix, *len, f);
            m.len = *len as u32;
            skpc::eval::eval(&shape_only, &m).fired == skpc::eval::Fired::Default
        })
    };
    let f = (b'a'..=b'z')
        .chain(b'0'..=b'9')
        // Not the bytes the rules after the shape look for.
        .find(|&f| f != b'd' && f != b'z' && quiet(f))
        .expect("a filler byte that no payload rule of the shape matches");
    let mut g = Guard::new(&src);
    for (i, (l, prefix, len, rule, acting)) in cases.iter().enumerate() {
        let payload = payload(prefix, *len, f);
        let (c, mut s) = connect([&la, &lb][*l]);
        let mut m = loopback_message(&c, &payload);
        process_fields(&mut m);
        let want = skpc::eval::eval(policy, &m);
        let fired = match want.fired {
            skpc::eval::Fired::Rule(r) => Some(r),
            skpc::eval::Fired::Default => None,
        };
        assert_eq!(fired, *rule, "message {i}: the evaluator's rule");
        let acted: Vec<usize> = (0..policy.rules.len())
            .filter(|&r| !policy.rules[r].action.is_terminal() && want.counters[r].0 > 0)
            .collect();
        assert_eq!(
            &acted, acting,
            "message {i}: the evaluator's count and log rules"
        );
        let before = g.enf().counters().unwrap();
        g.enf().insert_sock(i as u32, fd(&c)).unwrap();
        let r = send(&c, &payload);
        match want.decision.verdict {
            skpc::hir::Verdict::Drop => {
                assert_eq!(r, Err(EACCES), "message {i}: dropped");
                assert!(recv_any(&mut s, SHORT).is_empty(), "message {i}");
            }
            skpc::hir::Verdict::Discard => {
                assert_eq!(r, Ok(payload.len()), "message {i}: discarded");
                assert!(recv_any(&mut s, SHORT).is_empty(), "message {i}");
            }
            skpc::hir::Verdict::Pass => {
                assert_eq!(r, Ok(payload.len()), "message {i}: passes");
                assert_eq!(recv_up_to(&mut s, payload.len(), LONG), payload);
            }
            ref v => panic!("message {i}: the evaluator says {v:?}"),
        }
        counters_and_logs_as_evaluated(&mut g, &before, &want, i);
        g.enf().remove_sock(i as u32).unwrap();
    }
    drop((la, lb));
    g.finish();
}

/// After message `i` (the counters read `before` it): every counter moved as the
/// evaluator's `want` says, and its log records arrived, in its order.
fn counters_and_logs_as_evaluated(
    g: &mut Guard,
    before: &[skpc_runtime::CounterValue],
    want: &skpc::eval::EvalOutcome,
    i: usize,
) {
    let after = g.enf().counters().unwrap();
    let delta = counter_delta(&after, before);
    assert_eq!(
        delta, want.counters,
        "message {i}: every counter as the evaluator's"
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + LONG;
    while got.len() < want.events.len() && Instant::now() < deadline {
        got.extend(g.enf().wait_events(Duration::from_millis(100)));
    }
    got.extend(g.enf().wait_events(Duration::from_millis(100)));
    let rules = |rs: &[skpc_abi::LogRecord]| rs.iter().map(|r| r.rule).collect::<Vec<_>>();
    assert_eq!(
        rules(&got),
        rules(&want.events),
        "message {i}: the log records in order"
    );
}

/// The object of `src` with its `.skp.index` section changed by `edit` (`None`: no
/// such section).
fn edited_object(src: &str, edit: impl FnOnce(&mut Option<Vec<u8>>)) -> Vec<u8> {
    edited_section(src, skpc_abi::INDEX_SECTION, edit)
}

/// The object of `src` with its section `name` changed by `edit`.
fn edited_section(src: &str, name: &str, edit: impl FnOnce(&mut Option<Vec<u8>>)) -> Vec<u8> {
    let c = skpc::compile::compile("edited.skp", src).expect("compiles");
    let mut spec = skpc::compile::object_spec(&c.lowered, "edited.skp", src);
    let at = spec.data_sections.iter().position(|(n, _)| n == name);
    let mut section = at.map(|i| spec.data_sections.remove(i).1);
    edit(&mut section);
    if let Some(bytes) = section {
        spec.data_sections.push((name.to_string(), bytes));
    }
    skpc::object::write_object(&spec)
}

/// Enforcing `object` fails with a BadObject error whose message has `says`.
fn refused(object: Vec<u8>, says: &str) {
    let before = skpc_runtime::index_entries(&object);
    match skpc_runtime::Enforcement::new(&skpc_runtime::Policy::new(object, Vec::new())) {
        Ok(_) => panic!("an object with a broken index was enforced ({says})"),
        Err(e) => {
            assert_eq!(e.kind(), skpc_runtime::ErrorKind::BadObject, "{e}");
            assert!(e.message().contains(says), "{e}");
            assert!(e.message().contains("rebuild"), "the fix is named: {e}");
            assert!(!e.message().contains('\n'), "one sentence: {e}");
        }
    }
    drop(before);
}

#[test]
fn a_broken_index_section_is_a_clear_error() {
    if !common::kernel_or_skip("a_broken_index_section_is_a_clear_error") {
        return;
    }
    let src = small_indexed(4243);
    // Cut short: not a whole number of records.
    let truncated = edited_object(&src, |s| {
        s.as_mut().expect("indexed").pop();
    });
    let e = skpc_runtime::index_entries(&truncated).unwrap_err();
    let says = format!(
        "not a whole number of {}-byte index entries",
        IndexEntry::SIZE
    );
    assert!(e.message().contains(&says), "{e}");
    refused(truncated, &says);
    // Gone (stripped), while the maps are there.
    refused(
        edited_object(&src, |s| *s = None),
        "but no .skp.index section",
    );
    // A key twice.
    refused(
        edited_object(&src, |s| {
            let b = s.as_mut().expect("indexed");
            let first: Vec<u8> = b[..IndexEntry::SIZE].to_vec();
            let n = b.len();
            b[n - IndexEntry::SIZE..].copy_from_slice(&first);
        }),
        "twice",
    );
    // More entries than the map holds.
    refused(
        edited_object(&src, |s| {
            let b = s.as_mut().expect("indexed");
            let mut extra = IndexEntry::from_bytes(b[..IndexEntry::SIZE].try_into().unwrap());
            extra.key[4] = 0xdead;
            b.extend_from_slice(&extra.to_bytes());
        }),
        "holds at most",
    );
    // A rule past the counters.
    refused(
        edited_object(&src, |s| {
            let b = s.as_mut().expect("indexed");
            b[IndexEntry::KEY_SIZE..IndexEntry::KEY_SIZE + 4]
                .copy_from_slice(&999_999u32.to_le_bytes());
        }),
        "names rule 999999",
    );
    // A section without the maps.
    refused(
        edited_object("drop if port == 1;", |s| {
            *s = Some(IndexEntry::default().to_bytes().to_vec())
        }),
        "but not both maps",
    );
    // The port array's section (single-port rules: `drop if remote.port == P;`).
    let ports = |edit: &dyn Fn(&mut Vec<u8>)| {
        edited_section(&src, skpc_abi::INDEX_PORTS_SECTION, |s| {
            edit(s.as_mut().expect("port rules are indexed"))
        })
    };
    let entry = |b: &Vec<u8>, i: usize| {
        PortEntry::from_bytes(
            b[i * PortEntry::SIZE..][..PortEntry::SIZE]
                .try_into()
                .unwrap(),
        )
    };
    refused(
        edited_section(&src, skpc_abi::INDEX_PORTS_SECTION, |s| *s = None),
        "but no .skp.index_ports section",
    );
    refused(
        ports(&|b| {
            b.pop();
        }),
        "not a whole number of 8-byte index entries",
    );
    refused(
        ports(&|b| {
            let mut e = entry(b, 0);
            e.slot = u32::MAX;
            b[..PortEntry::SIZE].copy_from_slice(&e.to_bytes());
        }),
        "names slot 4294967295",
    );
    refused(
        ports(&|b| {
            let mut e = entry(b, 0);
            e.value = 0;
            b[..PortEntry::SIZE].copy_from_slice(&e.to_bytes());
        }),
        "counter slots",
    );
    refused(
        ports(&|b| {
            let first = entry(b, 0);
            let n = b.len();
            b[n - PortEntry::SIZE..].copy_from_slice(&first.to_bytes());
        }),
        "twice",
    );
    // Without the section and the maps, nothing changes: the policy enforces.
    let plain = edited_object("drop if port == 1;", |_| {});
    assert!(skpc_runtime::index_entries(&plain).unwrap().is_none());
    let enf = skpc_runtime::Enforcement::new(&skpc_runtime::Policy::new(plain, Vec::new()))
        .expect("an object without an index enforces as before");
    assert_eq!(enf.index_entries(), 0);
}
