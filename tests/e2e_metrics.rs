//! `skpc run --metrics`: a process in the cgroup sends traffic, a real Prometheus
//! (Debian's `prometheus`, started here on free ports) scrapes the counters, and
//! `promtool check metrics` finds nothing to complain about in the exposition.
//! Needs root and the packages .ci/setup installs.

mod common;
use common::tool_or_skip;

mod e2e_support;
use e2e_support::{
    dies_with_the_test, free_port, leftovers, send_from_cgroup, skpc_bin, text, wait_until,
};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `GET path` on `addr` (HTTP/1.0, so the server closes): (status line, body).
fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// A Prometheus server scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: common::TempDir,
}

impl Prometheus {
    fn start(binary: &PathBuf, target: &str) -> Prometheus {
        let dir = common::TempDir::new("skpc_prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: skpc\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = dies_with_the_test(&mut cmd)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until("prometheus", 30, || {
            http_get(&p.addr, "/-/ready").is_some_and(|(status, _)| status.contains("200"))
        });
        p
    }

    /// The value of `metric` whose labels include `labels`, from the query API.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<String> {
        let (_, body) = http_get(&self.addr, &format!("/api/v1/query?query={metric}"))?;
        let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
        doc["data"]["result"]
            .as_array()?
            .iter()
            .find(|r| labels.iter().all(|(k, v)| r["metric"][*k] == *v))
            .and_then(|r| r["value"][1].as_str().map(String::from))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_counters_of_skpc_run_and_promtool_finds_them_clean() {
    let name = "prometheus_scrapes_the_counters_of_skpc_run_and_promtool_finds_them_clean";
    if !common::kernel_or_skip(name) {
        return;
    }
    let (Some(python), Some(prometheus), Some(promtool)) = (
        tool_or_skip(name, "python3", "python3"),
        tool_or_skip(name, "prometheus", "prometheus"),
        tool_or_skip(name, "promtool", "prometheus"),
    ) else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let file = common::TempFile::with_contents(
        "skpc_metrics",
        "skp",
        format!(
            "drop if remote.port == {port} and payload starts with \"BAD\";\ncount seen if remote.port == {port};\n"
        )
        .as_bytes(),
    );
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let (mut run, stderr, target) = e2e_support::run_with_metrics(&file.path, cg.path());
    let pid = run.id();
    let expect = |what: &str| stderr.expect(what);
    expect("enforcing");
    let acceptor = std::thread::spawn(move || {
        for _ in 0..3 {
            let _ = listener.accept();
        }
    });
    let send_from_cgroup = |msg: &str| send_from_cgroup(&python, port, cg.path(), msg);
    assert_eq!(send_from_cgroup("BAD x"), "EACCES");
    assert_eq!(send_from_cgroup("good 1"), "ok");
    assert_eq!(send_from_cgroup("good 2"), "ok");

    // The exposition itself, checked by promtool.
    let mut body = String::new();
    wait_until("the counters in /metrics", 10, || {
        body = http_get(&target, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        body.contains("action=\"count\"") && body.contains("} 2\n")
    });
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(body.contains("skpc_sockets "), "{body}");
    assert!(body.contains("skpc_program_runs_total "), "{body}");
    assert!(body.contains("skpc_program_run_seconds_total "), "{body}");
    assert!(body.contains("skpc_policy_info{"), "{body}");
    assert!(
        body.contains("skpc_policy_reloads_total{result=\"ok\"} 0"),
        "{body}"
    );
    assert_eq!(
        http_get(&target, "/nothing").map(|(s, _)| s.contains("404")),
        Some(true)
    );

    // `skpc top` reads the same counters back: totals, and rates over its interval.
    let top = Command::new(skpc_bin())
        .args([
            "top",
            "--metrics",
            &target,
            "--once",
            "--interval",
            "0.2",
            "-j",
        ])
        .output()
        .unwrap();
    assert!(top.status.success(), "{}", text(&top.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    assert_eq!(doc["version"], 1, "{doc}");
    let rules = doc["rules"].as_array().unwrap();
    let row = |line: u64| {
        rules
            .iter()
            .find(|r| r["line"] == line)
            .unwrap_or_else(|| panic!("line {line} in {doc}"))
    };
    assert_eq!(
        (row(1)["action"].as_str(), row(1)["messages"].as_u64()),
        (Some("drop"), Some(1))
    );
    assert_eq!(
        (row(2)["action"].as_str(), row(2)["messages"].as_u64()),
        (Some("count"), Some(2))
    );
    assert_eq!(
        row(2)["messages_per_second"].as_f64(),
        Some(0.0),
        "no traffic now"
    );

    // A real scrape.
    let prom = Prometheus::start(&prometheus, &target);
    let mut drop_rule = None;
    let mut count_rule = None;
    wait_until("prometheus's scrape of skpc", 30, || {
        drop_rule = prom.value(
            "skpc_rule_messages_total",
            &[("line", "1"), ("action", "drop")],
        );
        count_rule = prom.value(
            "skpc_rule_messages_total",
            &[("line", "2"), ("action", "count")],
        );
        drop_rule.is_some() && count_rule.is_some()
    });
    assert_eq!(drop_rule.as_deref(), Some("1"));
    // The count rule saw the two good messages; the dropped one never reached it.
    assert_eq!(count_rule.as_deref(), Some("2"));
    assert_eq!(
        prom.value("skpc_policy_info", &[("version", "1")])
            .as_deref(),
        Some("1")
    );
    drop(prom);

    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = run.wait().unwrap();
    let all = stderr.all();
    assert_eq!(status.code(), Some(0), "{all}");
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
    acceptor.join().unwrap();
}
