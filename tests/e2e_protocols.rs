//! End-to-end tests of the protocol fields and `reply`, with real third-party clients
//! and servers under `skpc exec`, each checked the way a user would:
//! - redis-cli against redis-server (`redis.command`, `reply`);
//! - curl against a python3 HTTP/1.1 keep-alive server (`http.method`, `http.path`,
//!   `reply`), on one reused connection;
//! - psql against a PostgreSQL server the test initializes (`pg.user`, `reply` with a
//!   PostgreSQL ErrorResponse);
//! - openssl s_client against openssl s_server (`tls`, `tls.sni`).
//!
//! Each test first runs the same client with traffic the policy does not match, which
//! must pass unchanged. The servers run outside skpc's cgroup, on their own loopback
//! ports, and are stopped on drop; their temp dirs are removed. The Debian packages are
//! installed by .ci/setup.

mod common;
use common::{tool_in_or_skip, tool_or_skip, TempDir, TempFile};

mod e2e_support;
use e2e_support::{dies_with_the_test, free_port, skpc, skpc_with_stdin, text, wait_until, Redis};

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The command's stdout and stderr, and skpc's own stderr (the counters), as one text.
fn all(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// The non-empty lines of `s`, trimmed.
fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

// ---------------------------------------------------------------------------- redis

const REDIS_POLICY: &str =
    r#"reply "-ERR FLUSHALL is disabled here\r\n" if redis.command in {"FLUSHALL", "FLUSHDB"};"#;

/// redis-cli under `skpc exec`, reading `commands` (one a line) from its stdin: one
/// session, one connection.
fn redis_session(redis: &Redis, cli: &Path, commands: &str) -> Output {
    let input = TempFile::with_contents("redis_session", "txt", commands.as_bytes());
    let port = redis.port.to_string();
    let cli = cli.to_str().unwrap();
    let stdin = File::open(&input.path).unwrap();
    skpc_with_stdin(&["exec", "-e", REDIS_POLICY, "--", cli, "-p", &port], stdin)
}

/// INFO's `total_connections_received` (the asking connection counted).
fn redis_connections(redis: &Redis) -> u64 {
    let (info, _) = redis.cli(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats: {info}"))
}

#[test]
fn redis_flushall_gets_the_policy_error_and_the_session_goes_on() {
    let name = "redis_flushall_gets_the_policy_error_and_the_session_goes_on";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(redis) = Redis::start_or_skip(name) else {
        return;
    };
    let cli = redis.cli.clone();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(redis.cli(&["SET", k, v]), ("OK".into(), 0));
    }

    // The control: a session of commands the policy does not name passes unchanged.
    let out = redis_session(&redis, &cli, "PING\nSET d 4\nGET d\nDBSIZE\n");
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert_eq!(
        lines(&text(&out.stdout)),
        ["PONG", "OK", "4", "4"],
        "{}",
        all(&out)
    );

    // FLUSHALL (as typed: lower case) gets the policy's error; the same session goes on
    // and the keys are all there.
    let before = redis_connections(&redis);
    let out = redis_session(&redis, &cli, "PING\nflushall\nPING\nDBSIZE\n");
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert_eq!(
        lines(&text(&out.stdout)),
        ["PONG", "ERR FLUSHALL is disabled here", "PONG", "4"],
        "{}",
        all(&out)
    );
    // One connection for the session, one for this INFO.
    assert_eq!(
        redis_connections(&redis) - before,
        2,
        "redis-cli kept one connection"
    );
    let (stats, _) = redis.cli(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_ping"), "{stats}");
    assert!(
        !stats.contains("cmdstat_flushall") && !stats.contains("cmdstat_flushdb"),
        "the server never got a flush: {stats}"
    );
    assert_eq!(redis.cli(&["DBSIZE"]), ("4".into(), 0));

    // Outside skpc's cgroup the server flushes as asked: the error was the policy's.
    assert_eq!(redis.cli(&["FLUSHALL"]), ("OK".into(), 0));
    assert_eq!(redis.cli(&["DBSIZE"]), ("0".into(), 0));
}

// ----------------------------------------------------------------------------- http

const HTTP_POLICY: &str = r#"reply "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" if http.method == "DELETE" and http.path starts with "/admin";"#;

/// tests/fixtures/http_keepalive.py on a loopback port it picks; killed on drop.
struct HttpServer {
    child: Child,
    port: u16,
    log: TempFile,
}

impl HttpServer {
    fn start(python: &Path) -> HttpServer {
        HttpServer::start_on(python, 0)
    }

    /// On loopback port `port` (0: one the kernel picks).
    fn start_on(python: &Path, port: u16) -> HttpServer {
        let log = TempFile::with_contents("http_requests", "log", b"");
        let mut child = dies_with_the_test(&mut Command::new(python))
            .args(["-c", include_str!("fixtures/http_keepalive.py")])
            .arg(&log.path)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut first);
        let mut server = HttpServer {
            child,
            port: 0,
            log,
        };
        server.port = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the HTTP server printed no port: {first:?}"));
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// "METHOD PATH" of each request the server got, in order.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log.path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One curl under `skpc exec`: `-X DELETE first --next second`, one connection if
/// curl can keep it. Each transfer writes its body, then `[CODE connects=N]`.
fn curl_delete_then_get(curl: &Path, first: &str, second: &str) -> Output {
    let report = "[%{http_code} connects=%{num_connects}]\n";
    skpc(&[
        "exec",
        "-e",
        HTTP_POLICY,
        "--",
        curl.to_str().unwrap(),
        "-sS",
        "-X",
        "DELETE",
        first,
        "-w",
        report,
        "--next",
        second,
        "-w",
        report,
    ])
}

#[test]
fn http_delete_on_admin_gets_the_policy_403_and_the_connection_goes_on() {
    let name = "http_delete_on_admin_gets_the_policy_403_and_the_connection_goes_on";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(python), Some(curl)) = (
        tool_or_skip(name, "python3", "python3"),
        tool_or_skip(name, "curl", "curl"),
    ) else {
        return;
    };
    let server = HttpServer::start(&python);

    // The control: a DELETE elsewhere, then a GET under /admin, reach the server, on
    // one connection.
    let out = curl_delete_then_get(&curl, &server.url("/other/x"), &server.url("/admin/x"));
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert_eq!(
        text(&out.stdout),
        "server answered DELETE /other/x\n[200 connects=1]\n\
         server answered GET /admin/x\n[200 connects=0]\n",
        "{}",
        all(&out)
    );
    assert_eq!(server.requests(), ["DELETE /other/x", "GET /admin/x"]);

    // DELETE /admin/x: the policy's 403; then the server's own answer to GET /ok on the
    // same connection (curl made no new one).
    let out = curl_delete_then_get(&curl, &server.url("/admin/x"), &server.url("/ok"));
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert_eq!(
        text(&out.stdout),
        "[403 connects=1]\nserver answered GET /ok\n[200 connects=0]\n",
        "{}",
        all(&out)
    );
    assert_eq!(
        server.requests(),
        ["DELETE /other/x", "GET /admin/x", "GET /ok"],
        "the server saw no DELETE /admin/x"
    );
}

/// Issue 11: rules of protocol fields are rule-index data (compiler/lower/text_index.rs).
/// 300 `http.host ==` rules and 100 `http.host ends with` rules are two lookups; curl
/// asking for a listed host (in another case) is dropped and counted on that host's
/// first rule, a host that ends with a listed suffix on the suffix's rule, and another
/// host reaches the server, counted on the default.
#[test]
fn http_host_rules_in_the_index_drop_listed_hosts_and_count_the_first_rule() {
    let name = "http_host_rules_in_the_index_drop_listed_hosts_and_count_the_first_rule";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(python), Some(curl)) = (
        tool_or_skip(name, "python3", "python3"),
        tool_or_skip(name, "curl", "curl"),
    ) else {
        return;
    };
    let mut src: String = (0..300)
        .map(|i| format!("drop if http.host == \"h{i}.example.com\";\n"))
        .collect();
    src.extend((0..100).map(|i| format!("drop if http.host ends with \".d{i}.example\";\n")));
    // A second rule for a host: the first one counts.
    src.push_str("drop if http.host == \"h7.example.com\";\n");
    let compiled = skpc::compile::compile("hosts.skp", &src).expect("compiles");
    assert_eq!(
        compiled.lowered.index_summary,
        ["lines 1-401: 401 rules in the index, 0 as code; lookups: \
          http.host == (301 rules, 16-byte keys) | http.host ends with (100 rules, 16-byte keys)"]
    );
    let dir = TempDir::new("text-index");
    let policy = dir.join("hosts.skp");
    std::fs::write(&policy, &src).unwrap();
    let server = HttpServer::start_on(&python, 47200);
    // curl under `skpc exec -j`: its output, then the counters document.
    let curl_host = |host: &str| {
        let out = skpc(&[
            "exec",
            "-j",
            policy.to_str().unwrap(),
            "--",
            curl.to_str().unwrap(),
            "-sS",
            "-H",
            &format!("Host: {host}"),
            &server.url("/x"),
        ]);
        let stdout = text(&out.stdout);
        let doc: serde_json::Value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no counters document: {}", all(&out)));
        let moved: Vec<(String, u64)> = doc["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .filter(|c| c["messages"].as_u64() != Some(0))
            .map(|c| {
                let name = c["name"].as_str().unwrap_or("").to_string();
                (name, c["messages"].as_u64().unwrap_or(0))
            })
            .collect();
        (out, moved)
    };
    let (out, moved) = curl_host("other.example.com");
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(
        text(&out.stdout).starts_with("server answered GET /x"),
        "{}",
        all(&out)
    );
    assert_eq!(moved, [("default".to_string(), 1)]);
    for (host, rule) in [
        ("h7.example.com", "rule7"),
        ("H299.Example.COM", "rule299"),
        ("www.d42.example", "rule342"),
    ] {
        let (out, moved) = curl_host(host);
        assert_ne!(out.status.code(), Some(0), "{host}: {}", all(&out));
        assert_eq!(moved, [(rule.to_string(), 1)], "{host}: {}", all(&out));
    }
    assert_eq!(
        server.requests(),
        ["GET /x"],
        "the server saw no listed host"
    );
}

// ------------------------------------------------------------------------- postgres

/// `PG_DENIED` is a PostgreSQL ErrorResponse: 'E', then its length as a big-endian
/// int32 that counts itself (4) and the fields (68 = 0x48): S "FATAL", V "FATAL",
/// C "28000" (invalid_authorization_specification) and M the message (1 + 44 + 1),
/// each type byte's text ended by a NUL, and the NUL that ends the list.
const PG_POLICY: &str = r#"const PG_DENIED = "E\x00\x00\x00\x48SFATAL\x00VFATAL\x00C28000\x00Mconnections as postgres are not allowed here\x00\x00";
reply PG_DENIED if pg.user == "postgres";
"#;

/// PG_DENIED, read back from the compiled policy, is a well-formed ErrorResponse: its
/// length counts exactly the bytes after the type byte, and its fields are the four
/// written, then the terminating NUL. (No kernel needed: this guards the literal.)
#[test]
fn pg_denied_is_a_well_formed_error_response() {
    let c = skpc::compile::compile("pg.skp", PG_POLICY).unwrap_or_else(|d| panic!("{d:?}"));
    let reply = c
        .policy
        .rules
        .iter()
        .find_map(|r| match &r.action {
            skpc::hir::Action::Decide(d) => match &d.verdict {
                skpc::hir::Verdict::Reply(bytes) => Some(bytes.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("a reply rule");
    assert_eq!(reply[0], b'E');
    let len = u32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        reply.len() - 1,
        "the length counts itself and the fields"
    );
    let mut fields = Vec::new();
    let mut rest = &reply[5..];
    while rest[0] != 0 {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .expect("a NUL-ended field");
        fields.push((rest[0] as char, text(&rest[1..end])));
        rest = &rest[end + 1..];
    }
    assert_eq!(rest, [0], "one NUL ends the fields, and the message");
    assert_eq!(
        fields,
        [
            ('S', "FATAL".to_string()),
            ('V', "FATAL".to_string()),
            ('C', "28000".to_string()),
            (
                'M',
                "connections as postgres are not allowed here".to_string()
            ),
        ]
    );
}

/// A PostgreSQL server in a temp dir (initdb'd, trust authentication), listening on
/// 127.0.0.1 and on a socket in that dir, run as the user postgres; shut down
/// (immediate) on drop, and its dir removed.
struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    dir: TempDir,
}

/// The uid and gid of the user `name`.
fn user_ids(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string; the result is read at once, before any other call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(!pw.is_null(), "no user {name}");
    // SAFETY: getpwnam returned a valid passwd.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl Postgres {
    fn start(bin: PathBuf, runuser: &Path) -> Postgres {
        let (uid, gid) = user_ids("postgres");
        let dir = TempDir::new("postgres");
        std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid)).unwrap();
        let data = dir.join("data");
        common::run_ok(
            Command::new(runuser)
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "--no-locale"])
                .args(["-E", "UTF8"]),
        );
        let port = free_port();
        let log = File::create(dir.join("server.log")).unwrap();
        let child = dies_with_the_test(&mut Command::new(bin.join("postgres")))
            .uid(uid)
            .gid(gid)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir.path)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut pg = Postgres {
            child,
            port,
            bin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.admin("select 1").0 != "1" {
            let exited = pg.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(pg.dir.join("server.log"));
                panic!("postgres did not start ({exited:?}): {log:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// psql over the server's Unix socket as postgres, outside skpc: (stdout, status).
    fn admin(&self, sql: &str) -> (String, i32) {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir.path)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-Atc", sql])
            .output()
            .unwrap();
        (
            text(&out.stdout).trim().to_string(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// The libpq connection string for `user` over TCP.
    fn conninfo(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} sslmode=disable dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, the postmaster ends its backends first.
        skpc_runtime::process::send_signal(self.child.id(), skpc_runtime::process::sig::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest PostgreSQL server's bin directory (/usr/lib/postgresql/NN/bin).
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    dirs.sort();
    dirs.into_iter().rev().map(|(_, d)| d).collect()
}

#[test]
fn psql_as_postgres_gets_the_policy_fatal_error_and_other_users_connect() {
    let name = "psql_as_postgres_gets_the_policy_fatal_error_and_other_users_connect";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(server), Some(psql), Some(runuser)) = (
        tool_in_or_skip(name, &postgres_bin_dirs(), "postgres", "postgresql"),
        tool_or_skip(name, "psql", "postgresql-client"),
        tool_or_skip(name, "runuser", "util-linux"),
    ) else {
        return;
    };
    let pg = Postgres::start(server.parent().unwrap().to_path_buf(), &runuser);
    assert_eq!(
        pg.admin("create role alice login"),
        ("CREATE ROLE".into(), 0)
    );
    let psql = psql.to_str().unwrap();

    // The control: as alice, the startup message reaches the server, which answers.
    let alice = pg.conninfo("alice");
    let out = skpc(&[
        "exec", "-e", PG_POLICY, "--", psql, &alice, "-c", "select 1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    // (The row count line after these is in the locale's language.)
    assert_eq!(
        lines(&text(&out.stdout)).get(..3),
        Some(&["?column?", "----------", "1"][..]),
        "{}",
        all(&out)
    );

    // As postgres: the policy's FATAL error, as psql prints a server's.
    let postgres = pg.conninfo("postgres");
    let out = skpc(&[
        "exec", "-e", PG_POLICY, "--", psql, &postgres, "-c", "select 1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "psql: no connection\n{}",
        all(&out)
    );
    assert!(
        text(&out.stderr).contains("FATAL:  connections as postgres are not allowed here"),
        "{}",
        all(&out)
    );
    assert_eq!(text(&out.stdout), "", "{}", all(&out));

    // Outside skpc's cgroup postgres connects over TCP: the error was the policy's.
    let out = Command::new(psql)
        .args([&postgres, "-Atc", "select 1"])
        .output()
        .unwrap();
    assert_eq!(
        (text(&out.stdout).trim(), out.status.code()),
        ("1", Some(0)),
        "{}",
        text(&out.stderr)
    );
}

// ------------------------------------------------------------------------------ tls

const TLS_POLICY: &str = r#"drop if tls and not (tls.sni ends with ".internal.example");"#;

/// `openssl s_server -www` on a loopback port with a self-signed certificate for
/// localhost made in a temp dir; killed on drop, the dir removed.
struct TlsServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl TlsServer {
    fn start(openssl: &Path) -> TlsServer {
        let dir = TempDir::new("tls");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        common::run_ok(
            Command::new(openssl)
                .args(["req", "-x509", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-days", "1", "-subj", "/CN=localhost", "-nodes"])
                .stderr(Stdio::null()),
        );
        let port = free_port();
        let child = dies_with_the_test(&mut Command::new(openssl))
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-www")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = TlsServer {
            child,
            port,
            _dir: dir,
        };
        wait_until("openssl s_server", 10, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client -connect 127.0.0.1:PORT -servername SNI </dev/null` under
/// `skpc exec`.
fn s_client(openssl: &Path, port: u16, sni: &str) -> Output {
    skpc(&[
        "exec",
        "-e",
        TLS_POLICY,
        "--",
        openssl.to_str().unwrap(),
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        sni,
    ])
}

/// s_client's summary of a finished handshake: the negotiated cipher and the
/// verification of the server's (self-signed) certificate.
fn handshake_finished(out: &Output) -> bool {
    let stdout = text(&out.stdout);
    stdout.lines().any(|l| l.starts_with("New, TLS"))
        && !stdout.contains("Cipher is (NONE)")
        && stdout.contains("Verify return code: 18 (self")
}

#[test]
fn tls_client_hello_with_an_outside_sni_is_refused() {
    let name = "tls_client_hello_with_an_outside_sni_is_refused";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(openssl) = tool_or_skip(name, "openssl", "openssl") else {
        return;
    };
    let server = TlsServer::start(&openssl);

    // The control: an SNI under .internal.example completes the handshake.
    let out = s_client(&openssl, server.port, "api.internal.example");
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(handshake_finished(&out), "{}", all(&out));

    // Another SNI: the ClientHello's send fails, no handshake.
    let out = s_client(&openssl, server.port, "evil.example");
    assert_ne!(out.status.code(), Some(0), "{}", all(&out));
    assert!(!handshake_finished(&out), "{}", all(&out));
    assert!(
        all(&out).contains("errno=13"),
        "the write failed with EACCES: {}",
        all(&out)
    );
}

/// A set of 10,000 server names is one HASH lookup of the ClientHello's SNI: a listed
/// name (in any case) is refused, another completes the handshake.
#[test]
fn tls_sni_in_a_10k_name_set_is_refused_and_other_names_connect() {
    let name = "tls_sni_in_a_10k_name_set_is_refused_and_other_names_connect";
    if !common::kernel_or_skip(name) {
        return;
    }
    let Some(openssl) = tool_or_skip(name, "openssl", "openssl") else {
        return;
    };
    let dir = TempDir::new("sni-set");
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("\"s{i}.blocked.example\""))
        .collect();
    let policy = dir.join("sni.skp");
    std::fs::write(
        &policy,
        format!(
            "set blocked = {{ {} }};\ndrop if tls.sni in blocked;\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let server = TlsServer::start(&openssl);
    let s_client = |sni: &str| {
        skpc(&[
            "exec",
            policy.to_str().unwrap(),
            "--",
            openssl.to_str().unwrap(),
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.port),
            "-servername",
            sni,
        ])
    };
    let out = s_client("api.internal.example");
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    assert!(handshake_finished(&out), "{}", all(&out));
    for listed in ["s42.blocked.example", "S9999.Blocked.EXAMPLE"] {
        let out = s_client(listed);
        assert_ne!(out.status.code(), Some(0), "{listed}: {}", all(&out));
        assert!(!handshake_finished(&out), "{listed}: {}", all(&out));
        assert!(
            all(&out).contains("errno=13"),
            "{listed}: the write failed with EACCES: {}",
            all(&out)
        );
    }
}
