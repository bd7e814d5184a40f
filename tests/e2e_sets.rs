//! Large sets on real sockets: a blocklist of 100,000 prefixes is one LPM trie lookup,
//! built, loaded and enforced by `skpc exec` (a listed address is dropped, an unlisted
//! one passes, over IPv4 and IPv6).

mod common;
mod e2e_support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::thread;

use e2e_support::{free_port, skpc, text};

/// A dual-stack listener on `[::]:port` that reads every connection to its end.
fn sink(port: u16) {
    let listener = TcpListener::bind(("::", port)).expect("binds [::]");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

/// The client `skpc exec` runs: one connection and one send to each address, printing
/// `ADDR pass` or `ADDR drop` (EACCES).
const CLIENT: &str = r#"
import socket, sys
port = int(sys.argv[1])
for addr in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect((addr, port))
    try:
        s.send(b"hello")
        print(addr, "pass")
    except PermissionError:
        print(addr, "drop")
    s.close()
"#;

/// `n` distinct /24 prefixes outside 127/8, from a fixed seed (a threat feed's shape).
fn random_prefixes(n: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while seen.len() < n {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let a = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as u32;
        if a >> 16 != 127 {
            seen.insert(a);
        }
    }
    seen.iter()
        .map(|a| format!("{}.{}.{}.0/24", a >> 16, (a >> 8) & 255, a & 255))
        .collect()
}

#[test]
fn a_100k_prefix_blocklist_is_enforced_under_exec_over_ipv4_and_ipv6() {
    let name = "a_100k_prefix_blocklist_is_enforced_under_exec_over_ipv4_and_ipv6";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(python) = common::tool_or_skip(name, "python3", "python3") else {
        return;
    };
    let dir = common::TempDir::new("skpc-sets");
    let mut elements = random_prefixes(100_000);
    // The addresses the test can reach over loopback: one IPv4, one IPv6.
    elements.push("127.0.0.2/32".into());
    elements.push("::1/128".into());
    let policy = format!(
        "set blocklist = {{\n{}\n}};\ndrop if remote.ip in blocklist;\n",
        elements.join(",\n")
    );
    let file = dir.path.join("blocklist.skp");
    std::fs::write(&file, &policy).expect("writes the policy");

    // The listing says the set is a trie, and the program stays small.
    let out = skpc(&[
        "build",
        "--emit",
        "asm",
        path(&file),
        "-o",
        path(&dir.path.join("b.o")),
    ]);
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listing.contains("skp_set_0: 100001 LPM_TRIE keys of 8 bytes"),
        "{}",
        &listing[..listing.len().min(600)]
    );
    assert!(
        listing.contains("skp_set_1: 1 LPM_TRIE keys of 20 bytes"),
        "{}",
        &listing[..listing.len().min(600)]
    );
    let instructions: usize = listing
        .lines()
        .next()
        .and_then(|l| l.split(", ").last())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(instructions < 200, "{instructions} instructions");

    let port = free_port();
    sink(port);
    let script = dir.path.join("client.py");
    std::fs::write(&script, CLIENT).expect("writes the client");
    let port_s = port.to_string();
    let out = skpc(&[
        "exec",
        "-j",
        path(&file),
        "--",
        path(&python),
        path(&script),
        &port_s,
        "127.0.0.2",
        "127.0.0.3",
        "::1",
        "::ffff:127.0.0.3",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for (addr, want) in [
        ("127.0.0.2", "drop"),
        ("127.0.0.3", "pass"),
        ("::1", "drop"),
        ("::ffff:127.0.0.3", "pass"),
    ] {
        assert!(
            stdout.lines().any(|l| l == format!("{addr} {want}")),
            "{addr} should {want}:\n{stdout}"
        );
    }
    // The rule's counter saw exactly the two listed sends.
    let doc: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON document: {stdout}"));
    let rule = doc["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "rule"))
        .unwrap_or_else(|| panic!("a rule row: {doc}"));
    assert_eq!(rule["messages"], 2, "{doc}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
