//! The fleet deployment files: deploy/systemd/skpc.service, deploy/kubernetes/skpc.yaml
//! and deploy/Dockerfile (docs/operations.md, "Deploying").
//!
//! Always: the unit is parsed and its command line, reload, restart, hardening and
//! capabilities checked (and `systemd-analyze verify` run on it when installed); every
//! YAML document of the manifests is parsed and the image, the command, the mounts, the
//! port, the privileges and the ConfigMap's policy checked against the Dockerfile, the
//! unit and the docs. As root: the unit's own ExecStart runs (the built skpc for
//! /usr/local/bin/skpc, a temporary cgroup) with exactly the unit's capabilities, its
//! ExecReload is run, then systemd's stop signal; and each capability is shown needed.
//!
//! The ConfigMap's symlink swap is tested on a real `skpc run` in tests/e2e_exec.rs
//! (`run_follows_edits_of_the_policy_file_configmap_swap_rename_and_in_place`).

mod common;

mod e2e_support;
use e2e_support::{leftovers, skpc, skpc_bin, text};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_norway::Value;

/// What the service needs (docs/runtime.md, "What needs root"), measured on 6.18 by
/// `each_capability_of_the_unit_is_needed` below.
const CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A systemd unit file: (section, key, value) in order; comments and blank lines
/// skipped, `\` continuation lines joined.
fn parse_unit(src: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in src.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn load() -> Unit {
        Unit(parse_unit(&read("deploy/systemd/skpc.service")))
    }

    /// Every value of `key` in [Service].
    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of `key` in [Service].
    fn one(&self, key: &str) -> &str {
        match self.all(key)[..] {
            [v] => v,
            ref vs => panic!("{key}: expected one value, found {vs:?}"),
        }
    }

    fn words(&self, key: &str) -> Vec<String> {
        self.one(key).split_whitespace().map(String::from).collect()
    }

    fn caps(&self, key: &str) -> BTreeSet<String> {
        self.words(key).into_iter().collect()
    }

    /// The value of `--flag` in ExecStart.
    fn flag(&self, flag: &str) -> String {
        let words = self.words("ExecStart");
        let i = words
            .iter()
            .position(|w| w == flag)
            .unwrap_or_else(|| panic!("ExecStart has no {flag}: {words:?}"));
        words[i + 1].clone()
    }
}

fn caps_set() -> BTreeSet<String> {
    CAPS.iter().map(|c| c.to_string()).collect()
}

#[test]
fn systemd_unit_runs_skpc_run_reloads_on_sighup_and_grants_the_documented_capabilities() {
    let unit = Unit::load();
    let exec = unit.words("ExecStart");
    assert_eq!(
        exec[..3],
        ["/usr/local/bin/skpc", "run", "/etc/skpc/policy.skp"],
        "{exec:?}"
    );
    assert_eq!(unit.flag("--cgroup"), "${SKPC_CGROUP}");
    assert_eq!(unit.one("Environment"), "SKPC_CGROUP=system.slice");
    assert_eq!(unit.one("EnvironmentFile"), "-/etc/skpc/skpc.env");
    assert!(
        read("deploy/systemd/skpc.env").contains("\nSKPC_CGROUP=system.slice\n"),
        "the example environment file sets SKPC_CGROUP"
    );
    assert_eq!(unit.flag("--metrics"), "127.0.0.1:9464");
    // Reload = SIGHUP to skpc; stop = SIGTERM (systemd's default), which cleans up.
    assert_eq!(unit.one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(unit.all("KillSignal").is_empty(), "stop must send SIGTERM");
    assert_eq!(unit.one("Restart"), "on-failure");
    assert_eq!(unit.one("User"), "root");
    assert_eq!(unit.one("LimitMEMLOCK"), "infinity");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(unit.one(key), value, "{key}");
    }
    assert_eq!(
        unit.caps("ReadWritePaths"),
        ["/sys/fs/bpf", "/sys/fs/cgroup"].map(String::from).into(),
        "ProtectSystem=strict: exactly the two trees skpc writes are writable"
    );
    assert!(
        unit.all("ProtectControlGroups").is_empty(),
        "ProtectControlGroups=yes makes the cgroup fs read-only"
    );
    assert_eq!(unit.caps("CapabilityBoundingSet"), caps_set());
    assert_eq!(unit.caps("AmbientCapabilities"), caps_set());
    // "Documented": docs/runtime.md says why each is needed.
    let runtime = read("docs/runtime.md");
    let section = &runtime[runtime.find("## What needs root").expect("the section")..];
    for cap in CAPS {
        assert!(
            section.contains(cap),
            "docs/runtime.md does not explain {cap}"
        );
    }

    // systemd's own parser, on a copy whose binary exists (verify checks that).
    let verify = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(verify) = verify else {
        eprintln!("systemd-analyze is not installed (package systemd): not running `systemd-analyze verify`; the checks above ran");
        return;
    };
    let dir = common::TempDir::new("skpc_unit");
    let copy = dir.join("skpc.service");
    std::fs::write(
        &copy,
        read("deploy/systemd/skpc.service").replace("/usr/local/bin/skpc", skpc_bin()),
    )
    .unwrap();
    let out = Command::new(verify)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    // Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The unit's ExecStart for this machine: the built skpc, `policy`, `cgroup`, metrics on
/// a free port; run through setpriv with exactly `caps` (the unit's bounding and ambient
/// sets) and no_new_privs (NoNewPrivileges=yes).
fn unit_command(unit: &Unit, caps: &[&str], policy: &Path, cgroup: &Path) -> Command {
    let exec = unit.words("ExecStart");
    let list = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<String>();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--inh-caps=-all{list}"))
        .arg(format!("--ambient-caps=-all{list}"))
        .arg(format!("--bounding-set=-all{list}"))
        .arg("--no-new-privs")
        .arg("--");
    for w in exec {
        match w.as_str() {
            "/usr/local/bin/skpc" => cmd.arg(skpc_bin()),
            "/etc/skpc/policy.skp" => cmd.arg(policy),
            "${SKPC_CGROUP}" => cmd.arg(cgroup),
            "127.0.0.1:9464" => cmd.arg("127.0.0.1:0"),
            other => cmd.arg(other),
        };
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A started skpc that gets SIGTERM (and so cleans up) if the test fails before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            skpc_runtime::process::send_signal(self.0.id(), skpc_runtime::process::sig::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.0.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Waits for `child` to end within `secs`; kills it and fails otherwise.
fn wait_for(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn systemd_unit_exec_start_runs_reloads_and_stops_under_its_capabilities() {
    let name = "systemd_unit_exec_start_runs_reloads_and_stops_under_its_capabilities";
    if !common::kernel_or_skip(name) {
        return;
    }
    let unit = Unit::load();
    // A policy that reads the payload: its verification needs CAP_PERFMON too.
    let policy = root().join("examples/redis_reply.skp");
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    // The unit's own bounding set, whatever it says (the parse test checks it is CAPS).
    let caps = unit.caps("CapabilityBoundingSet");
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let mut run = Running(
        unit_command(&unit, &caps, &policy, cg.path())
            .spawn()
            .expect("setpriv (util-linux) starts"),
    );
    let pid = run.0.id();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = run.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let expect = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("the unit's skpc run never said {what:?}"),
            }
        }
    };
    let metrics = expect("metrics on http://");
    let addr = metrics
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{metrics}"))
        .to_string();
    expect("enforcing");
    let scrape = || -> String {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        all
    };
    // The metrics are at most one poll old: wait for the first update.
    let scraped = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !scrape().contains(what) {
            assert!(Instant::now() < deadline, "no {what} in {}", scrape());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    scraped("version=\"1\"");

    // ExecReload, as systemd runs it: $MAINPID is skpc's pid (setpriv execs it). The
    // file did not change: SIGHUP reloads anyway.
    let reload = unit.one("ExecReload").replace("$MAINPID", &pid.to_string());
    let words: Vec<&str> = reload.split_whitespace().collect();
    let status = Command::new(words[0]).args(&words[1..]).status().unwrap();
    assert!(status.success(), "{reload}");
    expect("version 2 now enforced");
    scraped("version=\"2\"");
    scraped("skpc_policy_reloads_total{result=\"ok\"} 1");

    // `systemctl stop`: SIGTERM (the unit sets no other KillSignal).
    skpc_runtime::process::send_signal(pid, skpc_runtime::process::sig::SIGTERM);
    let status = wait_for(&mut run.0, 10, "skpc after SIGTERM");
    let all = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{all}");
    assert!(all.contains("stopped; counters"), "{all}");
    assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    let name = "each_capability_of_the_unit_is_needed";
    if !common::kernel_or_skip(name) {
        return;
    }
    let unit = Unit::load();
    let policy = root().join("examples/redis_reply.skp");
    let cg = skpc_runtime::TempCgroup::create().unwrap();
    let caps = unit.caps("CapabilityBoundingSet");
    for missing in &caps {
        let rest: Vec<&str> = caps
            .iter()
            .filter(|c| *c != missing)
            .map(String::as_str)
            .collect();
        let mut run = unit_command(&unit, &rest, &policy, cg.path())
            .spawn()
            .unwrap();
        let pid = run.id();
        let status = wait_for(&mut run, 20, &format!("skpc without {missing}"));
        let mut err = String::new();
        run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(1), "without {missing}: {err}");
        assert!(
            err.contains("refused") || err.contains("rejected"),
            "without {missing}: {err}"
        );
        assert_eq!(leftovers(pid), Vec::<PathBuf>::new());
    }
}

/// Every YAML document of deploy/kubernetes/skpc.yaml.
fn manifests() -> Vec<Value> {
    let src = read("deploy/kubernetes/skpc.yaml");
    serde_norway::Deserializer::from_str(&src)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("skpc.yaml: {e}")))
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(s)
        .collect()
}

/// The image `deploy/Dockerfile`'s build line tags (`docker build ... -t IMAGE .`).
fn dockerfile_image() -> String {
    let dockerfile = read("deploy/Dockerfile");
    let line = dockerfile
        .lines()
        .find(|l| l.contains("docker build"))
        .expect("the Dockerfile says how to build it");
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "-t").expect("-t IMAGE");
    words[i + 1].to_string()
}

#[test]
fn dockerfile_builds_the_cli_into_a_slim_debian_image() {
    let dockerfile = read("deploy/Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with(" AS build"));
    assert!(froms[1].starts_with("FROM debian:") && froms[1].ends_with("-slim"));
    // The package that builds the binary, and the path the DaemonSet runs.
    assert!(dockerfile.contains("cargo build --release --locked -p skpc-cli"));
    assert_eq!(env!("CARGO_PKG_NAME"), "skpc-cli");
    assert!(dockerfile.contains("COPY --from=build /skpc /usr/local/bin/skpc"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/skpc\"]"));
    // The build context is the root: its target/ (gigabytes) stays out.
    let ignore = read("deploy/Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "{ignore}");
    // One image name, tagged with the version it builds.
    let image = dockerfile_image();
    assert_eq!(
        image,
        format!("ghcr.io/skpc/skpc:{}", env!("CARGO_PKG_VERSION"))
    );
    for doc in ["docs/operations.md", "deploy/kubernetes/skpc.yaml"] {
        assert!(read(doc).contains(&image), "{doc} does not name {image}");
    }
}

#[test]
fn kubernetes_manifests_run_skpc_on_the_pods_cgroup_with_the_configmap_policy() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().map(|d| s(&d["kind"])).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    let ns = s(&docs[0]["metadata"]["name"]);
    for d in &docs[1..] {
        assert_eq!(s(&d["metadata"]["namespace"]), ns);
    }
    let (config, ds) = (&docs[2], &docs[3]);
    assert_eq!(s(&ds["apiVersion"]), "apps/v1");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let spec = &pod["spec"];
    let containers = spec["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(s(&c["image"]), dockerfile_image());

    // The command: `skpc run FILE --cgroup DIR --metrics ADDR`, FILE in the ConfigMap.
    let cmd = strings(&c["command"]);
    assert_eq!(cmd[..2], ["/usr/local/bin/skpc", "run"], "{cmd:?}");
    let flag = |f: &str| -> &str {
        let i = cmd
            .iter()
            .position(|w| *w == f)
            .unwrap_or_else(|| panic!("{f}"));
        cmd[i + 1]
    };
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = spec["volumes"].as_sequence().unwrap();
    let volume = |name: &str| -> &Value {
        volumes
            .iter()
            .find(|v| s(&v["name"]) == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mount_of = |pred: &dyn Fn(&Value) -> bool| -> &Value {
        mounts
            .iter()
            .find(|m| pred(volume(s(&m["name"]))))
            .expect("a mount")
    };
    let policy_mount = mount_of(&|v| v["configMap"]["name"] == config["metadata"]["name"]);
    assert!(
        policy_mount.get("subPath").is_none(),
        "a subPath mount never sees a ConfigMap update"
    );
    let data = config["data"].as_mapping().unwrap();
    assert_eq!(data.len(), 1);
    let key = s(data.keys().next().unwrap());
    assert_eq!(cmd[2], format!("{}/{key}", s(&policy_mount["mountPath"])));
    assert_eq!(cmd[2], "/etc/skpc/policy.skp", "the unit's path too");

    // The host's bpffs and cgroup2 tree, and --cgroup inside the latter.
    let host =
        |path: &str| -> &Value { mount_of(&|v| v["hostPath"]["path"].as_str() == Some(path)) };
    assert_eq!(s(&host("/sys/fs/bpf")["mountPath"]), "/sys/fs/bpf");
    let cgroup_fs = s(&host("/sys/fs/cgroup")["mountPath"]);
    let cgroup = flag("--cgroup");
    assert!(
        cgroup.starts_with(&format!("{cgroup_fs}/kubepods")),
        "{cgroup} is not the pods' cgroup under {cgroup_fs}"
    );
    for m in mounts {
        assert!(m.get("subPath").is_none(), "{m:?}");
    }

    // The metrics port: --metrics, containerPort, the scrape annotation, the probe.
    let metrics = flag("--metrics");
    let port: u64 = metrics
        .strip_prefix("0.0.0.0:")
        .expect("listens on the pod's IP")
        .parse()
        .unwrap();
    let ports = c["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(port));
    let port_name = s(&ports[0]["name"]);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(s(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(s(&annotations["prometheus.io/port"]), port.to_string());
    assert_eq!(s(&annotations["prometheus.io/path"]), "/metrics");
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(s(&probe["path"]), "/metrics");
    assert_eq!(s(&probe["port"]), port_name);

    // Time for the SIGTERM cleanup, resources, and the privileges docs/runtime.md gives.
    assert!(spec["terminationGracePeriodSeconds"].as_u64() >= Some(10));
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(spec["hostPID"].as_bool(), Some(true), "stale pin cleanup");
    assert!(spec.get("hostNetwork").is_none());
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["runAsUser"].as_u64(), Some(0));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(added, caps_set(), "the unit's (and docs/runtime.md's) set");

    // The policy: examples/redis_guard.skp verbatim, and it compiles and passes its tests.
    let policy = s(&config["data"][key]);
    assert_eq!(policy, read("examples/redis_guard.skp"));
    let file = common::TempFile::with_contents("skpc_configmap", "skp", policy.as_bytes());
    for sub in ["check", "test"] {
        let out = skpc(&[sub, file.path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "skpc {sub}: {}",
            text(&out.stderr)
        );
    }
}
