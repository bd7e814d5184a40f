//! End-to-end: cgroup-wide enforcement. The SOCK_OPS program on a temporary cgroup v2
//! puts every TCP socket its processes establish (connect and accept, IPv4 and IPv6)
//! that the policy takes (`hir::conn`: some rule can act on it) into skp_peers, and no
//! other (a real redis-cli on an unnamed port stays out), so `redirect to peer` works between them and rules on the sending
//! process (uid) apply. The clients are python3 (Debian package python3) children
//! started inside the cgroup, one of them with another uid (setuid in pre_exec).

mod common;
mod e2e_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use e2e_support::*;
use skpc_runtime::TempCgroup;

const PYTHON: &str = "/usr/bin/python3";

fn python_or_skip(test: &str) -> bool {
    if std::path::Path::new(PYTHON).exists() {
        return true;
    }
    if std::env::var("SKP_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("{test} needs {PYTHON} (apt-get install python3)");
    }
    eprintln!("skipping {test}: {PYTHON} is not installed");
    false
}

/// A python3 script run inside `cg`; returns its stdout lines. `uid`: setuid first.
fn run_py(cg: &TempCgroup, uid: Option<u32>, script: &str, args: &[String]) -> Vec<String> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::piped());
    skpc_runtime::process::join_cgroup_on_exec(&mut cmd, cg.path()).unwrap();
    if let Some(uid) = uid {
        // Registered after the cgroup hook, so it runs after the child joined.
        // SAFETY: setgid/setuid are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("python3");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    assert!(child.wait().unwrap().success(), "python failed: {lines:?}");
    lines
}

/// Listens, connects to itself and reports what each send did and what arrived.
const SELF_PAIR: &str = r#"
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = "::1" if sys.argv[1] == "6" else "127.0.0.1"
l = socket.socket(fam); l.bind((host, 0)); l.listen()
c = socket.socket(fam); c.connect((host, l.getsockname()[1])); a, _ = l.accept()
print("ports", c.getsockname()[1], l.getsockname()[1], flush=True)
for x in (a, c): x.settimeout(0.5)
def recv(s):
    try: return s.recv(100).decode()
    except socket.timeout: return "-"
for msg in sys.argv[2:]:
    try:
        c.send(msg.encode()); r = "ok"
    except PermissionError: r = "EACCES"
    print(msg, r, "client:" + recv(c), "server:" + recv(a), flush=True)
"#;

#[test]
fn cgroup_sockets_enter_skp_peers_and_redirect_to_peer_works() {
    let name = "cgroup_sockets_enter_skp_peers_and_redirect_to_peer_works";
    if !common::kernel_or_skip(name) || !python_or_skip(name) {
        return;
    }
    for v6 in [false, true] {
        let mut g = Guard::new(
            "redirect ingress to peer if payload starts with \"PEER\";\n\
             drop if payload starts with \"BAD\";",
        );
        let cg = TempCgroup::create().unwrap();
        g.enf().attach_cgroup(cg.path()).unwrap();
        let args: Vec<String> = [
            if v6 { "6" } else { "4" },
            "PEER you",
            "plain",
            "BAD",
            "after",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = run_py(&cg, None, SELF_PAIR, &args);
        let fam = if v6 { "v6" } else { "v4" };
        // Ingress to the peer: onto the server-side socket's receive queue. (Both
        // sockets are in skp_peers: else the redirect would fail, a drop.)
        assert_eq!(
            out[1], "PEER you ok client:- server:PEER you",
            "{fam} {out:?}"
        );
        assert_eq!(out[2], "plain ok client:- server:plain", "{fam} {out:?}");
        assert_eq!(out[3], "BAD EACCES client:- server:-", "{fam} {out:?}");
        assert_eq!(out[4], "after EACCES client:- server:-", "{fam} {out:?}");
        let c = g.enf().counters().unwrap();
        assert_eq!(
            [c[0].messages, c[1].messages, c[2].messages],
            [1, 1, 1],
            "{fam} {c:?}"
        );
        let cg_path = cg.path().to_path_buf();
        drop(cg);
        assert!(!cg_path.exists());
        g.finish();
    }
}

#[test]
fn egress_redirect_to_peer_sends_out_of_the_peer_back_to_the_sender() {
    let name = "egress_redirect_to_peer_sends_out_of_the_peer_back_to_the_sender";
    if !common::kernel_or_skip(name) || !python_or_skip(name) {
        return;
    }
    let mut g = Guard::new("redirect to peer if payload starts with \"ECHO\";");
    let cg = TempCgroup::create().unwrap();
    g.enf().attach_cgroup(cg.path()).unwrap();
    let out = run_py(
        &cg,
        None,
        SELF_PAIR,
        &["4".to_string(), "ECHO me".to_string()],
    );
    // Out of the server-side socket, to its peer: back to the sender (docs/runtime.md,
    // examples/peer_bypass.skp).
    assert_eq!(out[1], "ECHO me ok client:ECHO me server:-", "{out:?}");
    drop(cg);
    g.finish();
}

/// Connects to 127.0.0.1:PORT, sends one message, reports ok/EACCES.
const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdin.readline()
try:
    c.send(sys.argv[2].encode()); print("ok", flush=True)
except PermissionError: print("EACCES", flush=True)
"#;

#[test]
fn uid_rules_see_the_sending_process_and_peer_must_be_in_the_map() {
    let name = "uid_rules_see_the_sending_process_and_peer_must_be_in_the_map";
    if !common::kernel_or_skip(name) || !python_or_skip(name) {
        return;
    }
    let l = listener(false);
    let port = l.local_addr().unwrap().port();
    let mut g = Guard::new(&format!(
        "drop if uid == 65534 and remote.port == {port};\n\
         redirect ingress to peer if payload starts with \"PEER\";"
    ));
    let cg = TempCgroup::create().unwrap();
    g.enf().attach_cgroup(cg.path()).unwrap();
    let accept = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..3 {
            let (mut s, _) = l.accept().unwrap();
            got.push(recv_any(&mut s, SHORT));
        }
        got
    });
    let nobody = run_py(
        &cg,
        Some(65534),
        CLIENT,
        &[port.to_string(), "hello".into()],
    );
    let root = run_py(&cg, None, CLIENT, &[port.to_string(), "hello".into()]);
    // The server (this test process) is outside the cgroup: its socket is not in
    // skp_peers, so a redirect to it fails: a drop.
    let peerless = run_py(&cg, None, CLIENT, &[port.to_string(), "PEER x".into()]);
    let got = accept.join().unwrap();
    assert_eq!(nobody, ["EACCES"]);
    assert_eq!(root, ["ok"]);
    assert_eq!(peerless, ["EACCES"]);
    assert_eq!(got, [Vec::new(), b"hello".to_vec(), Vec::new()]);
    let c = g.enf().counters().unwrap();
    assert_eq!(
        (c[0].messages, c[1].messages, c[2].messages),
        (1, 1, 1),
        "{c:?}"
    );
    drop(cg);
    g.finish();
}

/// Selective insertion (hir::conn, docs/runtime.md): under a policy that guards one
/// redis port, a real redis-cli session to another port never enters skp_peers and its
/// commands go through, while a session to the guarded port is in it and gets the
/// policy's reply. Both sessions are open at once, in one cgroup, under one policy.
#[test]
fn a_connection_no_rule_can_touch_stays_out_of_the_sockmap() {
    let name = "a_connection_no_rule_can_touch_stays_out_of_the_sockmap";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(guarded), Some(other)) = (Redis::start_or_skip(name), Redis::start_or_skip(name))
    else {
        return;
    };
    let mut g = Guard::new(&format!(
        "reply \"-ERR guarded by skpc\\r\\n\" if port == {} and payload[0..2] == \"*3\";",
        guarded.port
    ));
    let cg = TempCgroup::create().unwrap();
    g.enf().attach_cgroup(cg.path()).unwrap();
    assert_eq!(g.enf().sockets(), 0);

    // The unnamed port: established, used, and not in the sockhash.
    let mut plain = CliSession::open(&other, &cg);
    assert_eq!(plain.say("PING", "PONG"), "PONG");
    assert_eq!(plain.say("SET plain yes", "OK"), "OK");
    assert_eq!(
        g.enf().sockets(),
        0,
        "the connection to the unnamed port is not taken"
    );

    // The guarded port, while the other session is still open: taken, and enforced.
    let mut held = CliSession::open(&guarded, &cg);
    assert_eq!(held.say("PING", "PONG"), "PONG");
    assert_eq!(
        g.enf().sockets(),
        1,
        "the connection to the guarded port is taken"
    );
    assert_eq!(held.say("SET held yes", "guarded"), "ERR guarded by skpc");
    // Both sessions go on.
    assert_eq!(plain.say("GET plain", "yes"), "yes");
    assert_eq!(held.say("PING", "PONG"), "PONG");
    let rule = g.enf().counters().unwrap();
    assert_eq!(counter(&rule, "rule0").0, 1, "{rule:?}");
    plain.close();
    held.close();

    assert_eq!(other.cli(&["GET", "plain"]), ("yes".into(), 0));
    assert_eq!(
        guarded.cli(&["EXISTS", "held"]),
        ("0".into(), 0),
        "the SET never arrived"
    );
    drop(cg);
    g.finish();
}

/// Selective insertion across a reload (Enforcement::reload, docs/runtime.md): a policy
/// that takes other connections replaces the SOCK_OPS program on the cgroup (the old
/// program is freed), a new connection to the newly guarded port is inserted and
/// enforced, the session opened before the reload stays out (its owner has its fd, we
/// do not), and a reload that takes the same connections keeps the program in force.
/// The left-out session is counted as one untouched socket, across the reloads.
#[test]
fn a_reload_that_takes_other_connections_replaces_the_sock_ops_program() {
    let name = "a_reload_that_takes_other_connections_replaces_the_sock_ops_program";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(guarded), Some(other)) = (Redis::start_or_skip(name), Redis::start_or_skip(name))
    else {
        return;
    };
    let mut g = Guard::new(&guard_ports(&[guarded.port]));
    let cg = TempCgroup::create().unwrap();
    g.enf().attach_cgroup(cg.path()).unwrap();
    let first = g.enf().sock_ops_id();

    let mut plain = CliSession::open(&other, &cg);
    assert_eq!(plain.say("PING", "PONG"), "PONG");
    assert_eq!(g.enf().sockets(), 0, "the unnamed port is not taken");
    assert_eq!(g.enf().untouched_sockets().unwrap(), 1);

    let both = policy(&guard_ports(&[guarded.port, other.port]));
    let r = g.enf().reload(&both).unwrap();
    assert!(r.sock_ops_replaced, "the condition changed");
    let second = g.enf().sock_ops_id();
    assert_ne!(second, first);
    wait_until("the replaced sockops program to be freed", 5, || {
        !skpc_runtime::prog_exists(first)
    });
    assert!(skpc_runtime::prog_exists(second));

    // Open before the reload: still out, still untouched by the policy.
    assert_eq!(plain.say("SET plain yes", "OK"), "OK");
    assert_eq!(g.enf().sockets(), 0);
    // Established after it: taken and enforced.
    let mut fresh = CliSession::open(&other, &cg);
    assert_eq!(fresh.say("PING", "PONG"), "PONG");
    assert_eq!(g.enf().sockets(), 1, "the new connection is taken");
    assert_eq!(fresh.say("SET fresh yes", "guarded"), "ERR guarded by skpc");

    // The same connections again: the SOCK_OPS program stays.
    let r = g.enf().reload(&both).unwrap();
    assert!(!r.sock_ops_replaced);
    assert_eq!(g.enf().sock_ops_id(), second);
    assert_eq!(g.enf().version(), 3);
    // The program in force and the shared count can be pinned for bpftool.
    let pins = common::PinDir::new("runops");
    g.enf().pin(&pins.path).unwrap();
    for pinned in ["skp_sockops", "skp_untouched"] {
        assert!(pins.join(pinned).exists(), "{pinned} pinned");
    }
    g.enf().unpin();
    assert!(!pins.path.exists());
    assert_eq!(
        g.enf().untouched_sockets().unwrap(),
        1,
        "counted once, kept across reloads"
    );
    plain.close();
    fresh.close();
    assert_eq!(other.cli(&["GET", "plain"]), ("yes".into(), 0));
    assert_eq!(other.cli(&["EXISTS", "fresh"]), ("0".into(), 0));
    drop(cg);
    g.finish();
}

/// A reload whose SOCK_OPS program the kernel refuses keeps the old version and the old
/// SOCK_OPS program in force, and says which program failed. The refused program is the
/// new policy's own, with its last instruction (`exit`) overwritten in the object bytes,
/// so that the verifier rejects it after the new verdict program loaded fine.
#[test]
fn a_reload_whose_sock_ops_program_fails_keeps_the_old_one() {
    let name = "a_reload_whose_sock_ops_program_fails_keeps_the_old_one";
    if !common::kernel_or_skip(name) {
        return;
    }
    let mut g = Guard::new(&guard_ports(&[28210]));
    let cg = TempCgroup::create().unwrap();
    g.enf().attach_cgroup(cg.path()).unwrap();
    let first = g.enf().sock_ops_id();

    let src = guard_ports(&[28210, 28211]);
    let c = skpc::compile::compile("test.skp", &src).unwrap();
    let mut broken = policy(&src);
    // The program's tail after its last map load (the count of a left-out socket, then
    // `r0 = 1; exit`) is unique in the object.
    let insns = &c.lowered.sockops.insns;
    let last_map = insns
        .iter()
        .rposition(|i| matches!(i, skpc::bpf::Insn::LdMap { .. }))
        .expect("the sockops program loads skp_untouched");
    let tail = skpc::bpf::encode_all(&insns[last_map + 1..]);
    let at = broken
        .object
        .windows(tail.len())
        .position(|w| w == tail.as_slice())
        .expect("the sockops program's tail in the object");
    let exit = at + tail.len() - 8;
    assert_eq!(broken.object[exit], 0x95, "BPF_JMP | BPF_EXIT");
    broken.object[exit] = 0xb7; // `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K): falls off the end
    let e = g.enf().reload(&broken).unwrap_err().to_string();
    assert!(e.contains("skp_sockops"), "{e}");
    assert_eq!(g.enf().version(), 1);
    assert_eq!(g.enf().sock_ops_id(), first);
    assert!(skpc_runtime::prog_exists(first));

    // The same source, not broken: goes in.
    assert!(g.enf().reload(&policy(&src)).unwrap().sock_ops_replaced);
    assert_eq!(g.enf().version(), 2);
    assert_ne!(g.enf().sock_ops_id(), first);
    drop(cg);
    g.finish();
}
