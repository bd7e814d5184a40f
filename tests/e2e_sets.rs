//! Large sets on real sockets: a blocklist of 100,000 prefixes is one LPM trie lookup,
//! built, loaded and enforced by `skpc exec` (a listed address is dropped, an unlisted
//! one passes, over IPv4 and IPv6); and a set read from a file of 100,000 lines is
//! swapped under `skpc run` when the file changes, with no program loaded, no socket
//! touched and no message judged by a half-written set. Sets of strings too: 10,000
//! HTTP hosts are one HASH lookup of the request's host (curl to a listed host, in any
//! case, cannot send; to an unlisted one it gets the server's answer), and 1001 process
//! names one of `comm` (curl is dropped, python3 passes).

mod common;
mod e2e_support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use e2e_support::{free_port, leftovers, skpc, skpc_bin, text, Lines};

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

/// `n` distinct /24 prefixes outside 127/8, from `seed` (a threat feed's shape).
fn random_prefixes(n: usize, seed: u64) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut x: u64 = seed;
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
    let mut elements = random_prefixes(100_000, 0x9e37_79b9_7f4a_7c15);
    // The addresses the test can reach over loopback: one IPv4, one IPv6.
    elements.push("127.0.0.2/32".into());
    elements.push("::1/128".into());
    let policy = format!(
        "set blocklist = {{\n{}\n}};\ndrop if remote.ip in blocklist;\n",
        elements.join(",\n")
    );

    // The listing says the IPv4 prefixes (/24s and one /32) are one block hash of
    // bitmaps keyed by /24 and the IPv6 ones a trie, and the program stays small.
    let (file, listing) = listing_of(&dir, "blocklist", &policy);
    assert!(
        listing.contains("skp_set_0: 100001 HASH keys of 4 bytes to 32-byte bitmaps"),
        "{}",
        &listing[..listing.len().min(600)]
    );
    assert!(
        listing.contains("skp_set_1: 1 LPM_TRIE keys of 20 bytes"),
        "{}",
        &listing[..listing.len().min(600)]
    );
    let instructions = instructions(&listing);
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

/// A loopback HTTP server on `127.0.0.1:0` answering every request `200 ok` and closing;
/// sends the Host header of each request it gets. Returns the port.
fn http_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds 127.0.0.1");
    let port = listener.local_addr().expect("its address").port();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 2) {
                    if let Some(h) = line.strip_prefix("Host: ") {
                        let _ = tx.send(h.trim().to_string());
                    }
                    line.clear();
                }
                let _ = std::io::Write::write_all(
                    &mut &conn,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, rx)
}

#[test]
fn a_10k_host_set_is_one_hash_lookup_and_curl_to_a_listed_host_is_dropped() {
    let name = "a_10k_host_set_is_one_hash_lookup_and_curl_to_a_listed_host_is_dropped";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(curl) = common::tool_or_skip(name, "curl", "curl") else {
        return;
    };
    let dir = common::TempDir::new("skpc-hosts");
    let hosts: Vec<String> = (0..10_000)
        .map(|i| format!("\"h{i}.example.com\""))
        .collect();
    let policy = format!(
        "set hosts = {{\n{}\n}};\ndrop if http.host in hosts;\n",
        hosts.join(",\n")
    );

    // The listing: one HASH of the 10,000 hosts (length word and 24 bytes: the longest
    // host, 17 bytes, rounded up to 8), and a program of the parser's size.
    let (file, listing) = listing_of(&dir, "hosts", &policy);
    assert!(
        listing.contains("skp_set_0: 10000 HASH keys of 28 bytes for `http.host in 10000 strings`"),
        "{}",
        &listing[..listing.len().min(600)]
    );
    let instructions = instructions(&listing);
    assert!(instructions < 500, "{instructions} instructions");

    // A listed host in another case, an unlisted one, the listed one last.
    curl_hosts(
        &curl,
        &file,
        &[
            ("H42.Example.COM", false),
            ("h42.example.org", true),
            ("h9999.example.com", false),
            ("h10000.example.com", true),
        ],
    );
}

/// Runs curl under `skpc exec FILE` once per `(host, passes)` with that Host header
/// against a local HTTP server: a host that passes gets the server's `ok` (and the
/// server saw it), another fails to send its request (curl's exit 55, EACCES).
fn curl_hosts(curl: &Path, file: &Path, cases: &[(&str, bool)]) {
    let (port, seen) = http_server();
    let url = format!("http://127.0.0.1:{port}/");
    for &(host, passes) in cases {
        let want = passes.then_some("ok");
        let out = skpc(&[
            "exec",
            path(file),
            "--",
            path(curl),
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("Host: {host}"),
            &url,
        ]);
        let stdout = text(&out.stdout);
        match want {
            Some(body) => {
                assert_eq!(out.status.code(), Some(0), "{host}: {}", text(&out.stderr));
                assert_eq!(stdout, body, "{host}");
                assert_eq!(
                    seen.recv_timeout(Duration::from_secs(5)).as_deref(),
                    Ok(host),
                    "the server got {host}"
                );
            }
            // curl cannot send the request (EACCES): "Failed sending HTTP request".
            None => {
                assert_eq!(
                    out.status.code(),
                    Some(55),
                    "{host}: {stdout}\n{}",
                    text(&out.stderr)
                );
            }
        }
    }
    assert!(seen.try_recv().is_err(), "the server saw a listed host");
}

/// `http.host ends with {...}` over 10,000 domains: one LPM trie of the reversed
/// suffixes, looked up with the host's last bytes reversed (a domain blocklist).
#[test]
fn a_10k_domain_suffix_list_is_one_trie_lookup_and_curl_to_a_listed_domain_is_dropped() {
    let name = "a_10k_domain_suffix_list_is_one_trie_lookup_and_curl_to_a_listed_domain_is_dropped";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(curl) = common::tool_or_skip(name, "curl", "curl") else {
        return;
    };
    let dir = common::TempDir::new("skpc-suffixes");
    let domains: Vec<String> = (0..10_000).map(|i| format!("\".d{i}.example\"")).collect();
    let policy = format!(
        "drop if http.host ends with {{\n{}\n}};\n",
        domains.join(",\n")
    );
    let (file, listing) = listing_of(&dir, "suffixes", &policy);
    // The longest suffix, `.d9999.example`, is 14 bytes: keys of 4 + 16.
    assert!(
        listing.contains(
            "skp_set_0: 10000 LPM_TRIE keys of 20 bytes for `http.host ends with 10000 strings`"
        ),
        "{}",
        &listing[..listing.len().min(600)]
    );
    curl_hosts(
        &curl,
        &file,
        &[
            ("www.d42.example", false),
            ("WWW.D42.Example", false),
            // The suffix is `.d42.example`: the domain itself does not end with it.
            ("d42.example", true),
            ("www.d42.example.org", true),
            ("a.b.d9999.example", false),
            ("www.d10000.example", true),
        ],
    );
}

#[test]
fn a_comm_set_is_one_hash_lookup_and_drops_the_listed_program_only() {
    // 1000 names and `curl`: a HASH of 16-byte names.
    let mut names: Vec<String> = (0..1000).map(|i| format!("\"tool{i}\"")).collect();
    names.push("\"curl\"".into());
    let policy = format!(
        "set tools = {{ {} }};\ndrop if comm in tools;\n",
        names.join(", ")
    );
    only_curl_is_dropped(
        "a_comm_set_is_one_hash_lookup_and_drops_the_listed_program_only",
        &policy,
        "skp_set_0: 1001 HASH keys of 16 bytes for `comm in 1001 names`",
    );
}

/// `comm starts with {...}`: one LPM trie of the names' bits, looked up with the whole
/// 16-byte name (`cu` holds `curl`, not `python3`).
#[test]
fn comm_prefixes_are_one_trie_lookup_and_drop_the_programs_they_start() {
    let mut names: Vec<String> = (0..1000).map(|i| format!("\"tool{i}\"")).collect();
    names.push("\"cu\"".into());
    let policy = format!("drop if comm starts with {{ {} }};\n", names.join(", "));
    only_curl_is_dropped(
        "comm_prefixes_are_one_trie_lookup_and_drop_the_programs_they_start",
        &policy,
        "skp_set_0: 1001 LPM_TRIE keys of 20 bytes for `comm starts with 1001 names`",
    );
}

/// Under `skpc exec` of `policy` (whose listing has `listed`), curl cannot send its
/// request and python3's goes through.
fn only_curl_is_dropped(name: &str, policy: &str, listed: &str) {
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(curl), Some(python)) = (
        common::tool_or_skip(name, "curl", "curl"),
        common::tool_or_skip(name, "python3", "python3"),
    ) else {
        return;
    };
    let dir = common::TempDir::new("skpc-comms");
    let (file, listing) = listing_of(&dir, "comms", policy);
    assert!(
        listing.contains(listed),
        "{}",
        &listing[..listing.len().min(600)]
    );

    let (port, seen) = http_server();
    let url = format!("http://127.0.0.1:{port}/");
    // curl is listed: it cannot send its request.
    let out = skpc(&[
        "exec",
        path(&file),
        "--",
        path(&curl),
        "-sS",
        "--max-time",
        "10",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(55), "curl: {}", text(&out.stderr));
    // python3 is not: its request goes through.
    let script = "import socket,sys\nc=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\nc.sendall(b'GET / HTTP/1.1\\r\\nHost: py\\r\\n\\r\\n')\nprint(c.recv(100).split(b'\\r\\n')[0].decode())";
    let port_s = port.to_string();
    let out = skpc(&[
        "exec",
        path(&file),
        "--",
        path(&python),
        "-c",
        script,
        &port_s,
    ]);
    assert_eq!(out.status.code(), Some(0), "python3: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "HTTP/1.1 200 OK");
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("py")
    );
    assert!(seen.try_recv().is_err(), "the server saw curl's request");
}

/// Writes `policy` as `NAME.skp` in `dir` and returns its path and the listing of
/// `skpc build --emit asm` (which must succeed).
fn listing_of(dir: &common::TempDir, name: &str, policy: &str) -> (std::path::PathBuf, String) {
    let file = dir.path.join(format!("{name}.skp"));
    std::fs::write(&file, policy).expect("writes the policy");
    let out = skpc(&[
        "build",
        "--emit",
        "asm",
        path(&file),
        "-o",
        path(&dir.path.join(format!("{name}.o"))),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (file, text(&out.stdout))
}

/// The program's instruction count from a listing's first line.
fn instructions(listing: &str) -> usize {
    listing
        .lines()
        .next()
        .and_then(|l| l.split(", ").last())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Sends one message to `addr:port` on a new connection from a python3 process in
/// `cgroup`: "ok", or "EACCES" when the policy dropped it.
fn probe(python: &Path, cgroup: &Path, addr: &str, port: u16) -> String {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import socket,sys\nc=socket.create_connection((sys.argv[1],int(sys.argv[2])))\ntry:\n c.send(b'probe'); print('ok')\nexcept PermissionError: print('EACCES')",
        addr,
        &port.to_string(),
    ]);
    skpc_runtime::process::join_cgroup_on_exec(&mut cmd, cgroup).expect("joining the cgroup");
    text(&cmd.output().expect("python3 runs").stdout)
        .trim()
        .to_string()
}

/// A feed file: `n` random /24 prefixes (from `seed`, with a Spamhaus-style `;`
/// comment) and the `extra` lines.
fn feed(n: usize, seed: u64, extra: &[&str]) -> String {
    let mut out = String::from("# generated feed\n");
    for p in random_prefixes(n, seed) {
        out.push_str(&p);
        out.push_str(" ; feed\n");
    }
    for e in extra {
        out.push_str(e);
        out.push('\n');
    }
    out
}

#[test]
fn run_swaps_a_100k_line_set_file_without_a_reload_or_a_half_written_set() {
    let name = "run_swaps_a_100k_line_set_file_without_a_reload_or_a_half_written_set";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(python) = common::tool_or_skip(name, "python3", "python3") else {
        return;
    };
    let (port, pump_port) = (free_port(), free_port());
    sink(port);
    sink(pump_port);
    let dir = common::TempDir::new("skpc-setfile");
    let list = dir.path.join("blocklist.txt");
    // Version 1 lists 127.0.0.2, version 2 lists 127.0.0.3 instead; both list 127.0.0.4,
    // which the pump below sends to all along.
    std::fs::write(&list, feed(100_000, 1, &["127.0.0.2", "127.0.0.4"])).unwrap();
    let policy = dir.path.join("policy.skp");
    std::fs::write(
        &policy,
        format!(
            "set blocklist = file \"blocklist.txt\";\n\
             count listed if remote.ip in blocklist and remote.port == {pump_port};\n\
             drop if remote.ip in blocklist and remote.port == {port};\n"
        ),
    )
    .unwrap();
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let mut run = Command::new(skpc_bin())
        .args(["run", "-j"])
        .arg(&policy)
        .arg("--cgroup")
        .arg(cg.path())
        .args(["--interval", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skpc run starts");
    let pid = run.id();
    let stderr = Lines::of(run.stderr.take().unwrap());
    let stdout = run.stdout.take().unwrap();
    let last_doc = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .last()
            .unwrap_or_default()
    });
    stderr.expect("a change of the file or SIGHUP");
    let probe = |addr: &str| probe(&python, cg.path(), addr, port);
    assert_eq!(probe("127.0.0.2"), "EACCES");
    assert_eq!(probe("127.0.0.3"), "ok");

    // The pump: one connection to a listed address, one message after another for 4 s,
    // across the swap; it prints how many it sent.
    let mut pump = Command::new(&python);
    pump.args([
        "-c",
        "import socket,sys,time\nc=socket.create_connection(('127.0.0.4',int(sys.argv[1])))\nn=0\nend=time.time()+4\nwhile time.time()<end:\n c.send(b'x'); n+=1\n time.sleep(0.0005)\nprint(n)",
        &pump_port.to_string(),
    ]);
    pump.stdout(Stdio::piped());
    skpc_runtime::process::join_cgroup_on_exec(&mut pump, cg.path()).unwrap();
    let pump = pump.spawn().expect("the pump starts");
    thread::sleep(Duration::from_millis(500));

    // The new feed, written next to it and renamed over it (as feed updaters do).
    let next = dir.path.join(".blocklist.txt.new");
    std::fs::write(&next, feed(100_000, 2, &["127.0.0.3", "127.0.0.4"])).unwrap();
    let t = Instant::now();
    std::fs::rename(&next, &list).unwrap();
    while probe("127.0.0.3") != "EACCES" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new set never enforced"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let swapped_after = t.elapsed();
    assert_eq!(probe("127.0.0.2"), "ok", "the old contents are gone");
    stderr.expect("no program loaded, no socket touched");
    // A malformed feed: an error with file, line and column; the contents stay.
    std::fs::write(&list, "10.0.0.0/8\n10.1.2.300\n127.0.0.3\n").unwrap();
    let err = stderr.expect("blocklist.txt:2:1");
    assert!(err.contains("blocklist.txt:2:1"), "{err}");
    assert_eq!(probe("127.0.0.3"), "EACCES");

    let sent: u64 = text(&pump.wait_with_output().unwrap().stdout)
        .trim()
        .parse()
        .expect("the pump's count");
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = run.wait().unwrap();
    let all = stderr.all();
    assert_eq!(status.code(), Some(0), "{all}");
    let doc: serde_json::Value = serde_json::from_str(&last_doc.join().unwrap()).unwrap();
    // No new program: still version 1; one swap, one refused file.
    assert_eq!(doc["version"], 1, "{doc}");
    assert_eq!(doc["reloads"]["ok"], 1, "{doc}");
    assert_eq!(doc["reloads"]["error"], 1, "{doc}");
    // Every pumped message was judged with 127.0.0.4 in the set: none saw a set
    // being written.
    let listed = doc["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "listed"))
        .unwrap_or_else(|| panic!("the listed counter: {doc}"));
    assert!(sent > 100, "the pump sent {sent}");
    assert_eq!(listed["messages"], sent, "{doc}");
    eprintln!(
        "{name}: enforced {swapped_after:?} after the rename; {sent} messages across the swap"
    );
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
}
