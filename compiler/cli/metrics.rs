//! `skpc run --metrics ADDR`: the policy's counters as Prometheus metrics on
//! `http://ADDR/metrics` (the text exposition format, encoded by the `prometheus` crate).
//!
//! The main loop of `skpc run` owns the enforcement; every poll it hands a `Snapshot`
//! (counter values, version, reloads, sockets) to the server thread, which encodes the
//! latest one when Prometheus scrapes. Metrics (docs/operations.md says what each means):
//! - `skpc_rule_messages_total`, `skpc_rule_bytes_total` {policy, line, rule, action}:
//!   per counter slot (rules, named counters, the default), of the version in force;
//! - `skpc_policy_reloads_total` {result="ok"|"error"};
//! - `skpc_policy_info` {policy, version, hash} = 1;
//! - `skpc_sockets`: sockets under the policy (in `skp_peers`);
//! - `skpc_untouched_sockets_total`: sockets the SOCK_OPS program left out of the
//!   sockmaps (no rule could act on them; in no rule counter);
//! - `skpc_program_run_seconds_total`, `skpc_program_runs_total`: the verdict program's
//!   run time and runs from the kernel's BPF stats (0 unless they are enabled).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus::{
    Counter as FloatCounter, Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::json::{CounterJson, ReloadsJson};

/// What a scrape reports: copied from the main loop.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub policy: String,
    pub version: u32,
    /// A hash of the policy text in force (hex), to tell versions apart across restarts.
    pub hash: String,
    pub reloads: ReloadsJson,
    pub sockets: usize,
    /// Sockets the SOCK_OPS program left out (`Enforcement::untouched_sockets`).
    pub untouched_sockets: u64,
    /// The verdict program's run time (seconds) and runs, from the kernel's BPF stats.
    pub run_seconds: f64,
    pub runs: u64,
    pub counters: Vec<Counter>,
}

#[derive(Clone)]
pub(crate) struct Counter {
    pub line: u32,
    pub rule: String,
    pub action: String,
    pub messages: u64,
    pub bytes: u64,
}

impl Counter {
    pub(crate) fn from_json(c: &CounterJson) -> Counter {
        Counter {
            line: c.line,
            rule: c.rule.clone(),
            action: action_of(c.kind, &c.rule),
            messages: c.messages,
            bytes: c.bytes,
        }
    }
}

/// The action of a counter's rule: its first word (`drop`, `reply`, `count` ...), the
/// verdict of the default, `count` for a named counter.
fn action_of(kind: &str, rule: &str) -> String {
    let mut words = rule.split_whitespace();
    match kind {
        "default" => words.nth(1).unwrap_or("pass"),
        "named" => "count",
        _ => words.next().unwrap_or(""),
    }
    .trim_end_matches(';')
    .to_string()
}

/// The metrics server: a thread answering `GET /metrics`; stops when dropped.
pub(crate) struct Metrics {
    snapshot: Arc<Mutex<Snapshot>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Metrics {
    pub(crate) fn start(addr: &str) -> anyhow::Result<Metrics> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("serving metrics on {addr}: not an IP address"))?;
        let server = Arc::new(server);
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let thread = {
            let (server, snapshot) = (server.clone(), snapshot.clone());
            std::thread::spawn(move || serve(&server, &snapshot))
        };
        Ok(Metrics {
            snapshot,
            server,
            thread: Some(thread),
            addr,
        })
    }

    pub(crate) fn update(&self, s: Snapshot) {
        if let Ok(mut guard) = self.snapshot.lock() {
            *guard = s;
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, snapshot: &Mutex<Snapshot>) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = if path == "/metrics" {
            let s = match snapshot.lock() {
                Ok(guard) => guard.clone(),
                Err(_) => Snapshot::default(),
            };
            match encode(&s) {
                Ok(body) => {
                    let mut r = tiny_http::Response::from_data(body);
                    if let Ok(h) = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        TextEncoder::new().format_type().as_bytes(),
                    ) {
                        r = r.with_header(h);
                    }
                    r
                }
                Err(e) => {
                    tiny_http::Response::from_data(e.to_string().into_bytes()).with_status_code(500)
                }
            }
        } else {
            tiny_http::Response::from_data(b"skpc: metrics are at /metrics\n".to_vec())
                .with_status_code(404)
        };
        let _ = request.respond(response);
    }
}

/// The exposition of one snapshot.
pub(crate) fn encode(s: &Snapshot) -> Result<Vec<u8>, prometheus::Error> {
    let registry = Registry::new();
    let labels = ["policy", "line", "rule", "action"];
    let messages = IntCounterVec::new(
        Opts::new(
            "skpc_rule_messages_total",
            "Messages (send calls) a rule matched, of the policy version in force.",
        ),
        &labels,
    )?;
    let bytes = IntCounterVec::new(
        Opts::new(
            "skpc_rule_bytes_total",
            "Bytes of the messages a rule matched, of the policy version in force.",
        ),
        &labels,
    )?;
    let reloads = IntCounterVec::new(
        Opts::new(
            "skpc_policy_reloads_total",
            "Policy reloads by result: ok (swapped in) or error (the old version stayed).",
        ),
        &["result"],
    )?;
    let info = IntGaugeVec::new(
        Opts::new(
            "skpc_policy_info",
            "The policy in force: its version (1, then one more per reload) and text hash.",
        ),
        &["policy", "version", "hash"],
    )?;
    let sockets = IntGauge::new(
        "skpc_sockets",
        "Sockets under the policy (in the skp_peers sockhash).",
    )?;
    let untouched = IntCounter::new(
        "skpc_untouched_sockets_total",
        "Established TCP sockets of the cgroup left out of the sockmaps because no rule of the policy in force could act on them (in no rule counter).",
    )?;
    let run_seconds = FloatCounter::new(
        "skpc_program_run_seconds_total",
        "Time the verdict program in force ran, from the kernel's BPF stats (0 unless sysctl kernel.bpf_stats_enabled=1).",
    )?;
    let runs = IntCounter::new(
        "skpc_program_runs_total",
        "Runs of the verdict program in force, from the kernel's BPF stats (0 unless enabled).",
    )?;
    registry.register(Box::new(run_seconds.clone()))?;
    registry.register(Box::new(runs.clone()))?;
    run_seconds.inc_by(s.run_seconds);
    runs.inc_by(s.runs);
    registry.register(Box::new(messages.clone()))?;
    registry.register(Box::new(bytes.clone()))?;
    registry.register(Box::new(reloads.clone()))?;
    registry.register(Box::new(info.clone()))?;
    registry.register(Box::new(sockets.clone()))?;
    registry.register(Box::new(untouched.clone()))?;
    untouched.inc_by(s.untouched_sockets);
    for c in &s.counters {
        let line = c.line.to_string();
        let values = [s.policy.as_str(), &line, &c.rule, &c.action];
        messages.with_label_values(&values).inc_by(c.messages);
        bytes.with_label_values(&values).inc_by(c.bytes);
    }
    reloads.with_label_values(&["ok"]).inc_by(s.reloads.ok);
    reloads
        .with_label_values(&["error"])
        .inc_by(s.reloads.error);
    info.with_label_values(&[s.policy.as_str(), &s.version.to_string(), &s.hash])
        .set(1);
    sockets.set(s.sockets as i64);
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_encoded_with_every_metric_and_label() {
        let s = Snapshot {
            policy: "guard.skp".into(),
            version: 2,
            hash: "0123abcd".into(),
            reloads: ReloadsJson { ok: 1, error: 3 },
            sockets: 5,
            untouched_sockets: 4,
            run_seconds: 0.5,
            runs: 9,
            counters: vec![Counter {
                line: 1,
                rule: "drop if port == 6379 and payload starts with \"x\";".into(),
                action: "drop".into(),
                messages: 7,
                bytes: 700,
            }],
        };
        let text = String::from_utf8(encode(&s).unwrap()).unwrap();
        for want in [
            "# TYPE skpc_rule_messages_total counter",
            "skpc_rule_messages_total{action=\"drop\",line=\"1\",policy=\"guard.skp\",rule=\"drop if port == 6379 and payload starts with \\\"x\\\";\"} 7",
            "skpc_rule_bytes_total{action=\"drop\",line=\"1\",policy=\"guard.skp\",rule=\"drop if port == 6379 and payload starts with \\\"x\\\";\"} 700",
            "skpc_policy_reloads_total{result=\"error\"} 3",
            "skpc_policy_reloads_total{result=\"ok\"} 1",
            "skpc_policy_info{hash=\"0123abcd\",policy=\"guard.skp\",version=\"2\"} 1",
            "skpc_sockets 5",
            "skpc_untouched_sockets_total 4",
            "skpc_program_run_seconds_total 0.5",
            "skpc_program_runs_total 9",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }

    #[test]
    fn actions_of_rules_defaults_and_named_counters() {
        assert_eq!(action_of("rule", "reply \"x\" if redis;"), "reply");
        assert_eq!(action_of("default", "default pass (implicit)"), "pass");
        assert_eq!(action_of("default", "default drop;"), "drop");
        assert_eq!(action_of("named", "big"), "count");
    }
}
