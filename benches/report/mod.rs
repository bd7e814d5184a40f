//! Where the benchmarks put their tables: printed, written to
//! `target/skpc-bench/<name>.md`, and (for a full `cargo bench` run) into the generated
//! section `<!-- bench:<name> -->` ... `<!-- /bench:<name> -->` of docs/performance.md.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The C anchor (`shared/anchors/sk_msg_c` beside the repository), or `SKPC_ANCHOR_DIR`.
pub fn anchor_dir() -> PathBuf {
    match std::env::var_os("SKPC_ANCHOR_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo().join("../shared/anchors/sk_msg_c"),
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".to_string())
}

/// `uname -srvm`, CPUs, the date (UTC).
pub fn machine() -> String {
    format!(
        "Machine: `{}`, {} CPUs (`nproc`). Date: {}.",
        run("uname", &["-srvm"]),
        run("nproc", &[]),
        run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    )
}

/// The bench binary was started by `cargo bench` (not `cargo test --benches`).
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Prints `body`, writes it to target/skpc-bench/`name`.md and, if `to_docs`, replaces
/// the generated section `name` of docs/performance.md with it.
pub fn publish(name: &str, body: &str, to_docs: bool) {
    println!("\n{body}");
    let dir = repo().join("target/skpc-bench");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}.md"));
    match std::fs::write(&file, body) {
        Ok(()) => eprintln!("tables written to {}", file.display()),
        Err(e) => eprintln!("could not write {}: {e}", file.display()),
    }
    if !to_docs {
        return;
    }
    let doc = repo().join("docs/performance.md");
    let begin = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let text = std::fs::read_to_string(&doc).unwrap_or_default();
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{}\n{}", &text[..b], body.trim_end(), &text[e..])
        }
        _ => format!("{}\n{begin}\n{}\n{end}\n", text.trim_end(), body.trim_end()),
    };
    match std::fs::write(&doc, new) {
        Ok(()) => eprintln!("section {name} of {} updated", doc.display()),
        Err(e) => eprintln!("could not update {}: {e}", doc.display()),
    }
}

/// Nanoseconds as a short human number.
pub fn dur(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
