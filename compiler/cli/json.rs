//! `-j/--json`: the machine-readable shapes, one serde struct per document. The field
//! names are a stable contract, documented in docs/json.md: add fields, never rename or
//! remove one. The library hands over plain data (`Diag`, `diag::position`,
//! `compile::listed_programs`); only this module knows JSON.

use serde::Serialize;

use skpc::compile::Compiled;
use skpc::diag::Diag;
use skpc::hir::CounterKind;
use skpc_runtime::{CounterValue, LogRecord};

use crate::exec::{describe, ip_of, Loaded};

/// `skpc check -j`, and the start of every other document: the file, whether it has
/// no errors, and every diagnostic.
#[derive(Serialize)]
pub struct CheckDoc<'a> {
    pub file: &'a str,
    pub ok: bool,
    pub diagnostics: Vec<DiagJson<'a>>,
}

#[derive(Serialize)]
pub struct DiagJson<'a> {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: &'a str,
    pub file: &'a str,
    pub line: u32,
    pub column: u32,
    pub end_line: u32,
    pub end_column: u32,
    pub label: &'a str,
    pub help: Option<&'a str>,
    pub notes: &'a [String],
    pub secondary: Vec<SecondaryJson<'a>>,
}

#[derive(Serialize)]
pub struct SecondaryJson<'a> {
    pub line: u32,
    pub column: u32,
    pub end_line: u32,
    pub end_column: u32,
    pub label: &'a str,
}

/// The diagnostics of `source` (named `file`) as JSON values, positions 1-based with
/// columns in characters.
pub fn diagnostics<'a>(file: &'a str, source: &str, diags: &'a [Diag]) -> Vec<DiagJson<'a>> {
    diags
        .iter()
        .map(|d| {
            let (start, end) = d.range_in(source);
            DiagJson {
                severity: d.severity_name(),
                code: d.code.as_str(),
                message: &d.message,
                file,
                line: start.line,
                column: start.column,
                end_line: end.line,
                end_column: end.column,
                label: &d.label,
                help: d.help.as_deref(),
                notes: &d.notes,
                secondary: d
                    .secondary
                    .iter()
                    .map(|(span, label)| {
                        let start = skpc::diag::position(source, span.start);
                        let end = skpc::diag::position(source, span.end.max(span.start));
                        SecondaryJson {
                            line: start.line,
                            column: start.column,
                            end_line: end.line,
                            end_column: end.column,
                            label,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

pub fn check_doc<'a>(file: &'a str, source: &str, diags: &'a [Diag]) -> CheckDoc<'a> {
    CheckDoc {
        file,
        ok: !diags.iter().any(Diag::is_error),
        diagnostics: diagnostics(file, source, diags),
    }
}

/// `skpc build --emit asm -j`: the check document of a policy that compiled (its
/// warnings), then its programs and maps.
#[derive(Serialize)]
pub struct ListingDoc<'a> {
    #[serde(flatten)]
    pub check: CheckDoc<'a>,
    pub programs: Vec<ProgramJson>,
    pub maps: Vec<MapJson>,
    pub verifier: VerifierJson,
}

/// `skpc build -j` writing an object: the check document of the compiled policy and
/// its verifier budget.
#[derive(Serialize)]
pub struct BuildDoc<'a> {
    #[serde(flatten)]
    pub check: CheckDoc<'a>,
    pub verifier: VerifierJson,
}

/// The policy program's verifier budget (`lower::budget`).
#[derive(Serialize)]
pub struct VerifierJson {
    pub estimate: u64,
    pub refused_above: u64,
    pub kernel_limit: u64,
    pub pending_branches: u64,
    pub stack_bytes: u64,
    pub costliest: Vec<RuleCostJson>,
}

#[derive(Serialize)]
pub struct RuleCostJson {
    pub rule_line: Option<u32>,
    pub estimate: u64,
}

/// How many of the costliest rules `verifier.costliest` lists.
const COSTLIEST_RULES: usize = 5;

pub fn verifier(compiled: &Compiled) -> VerifierJson {
    use skpc::lower::budget;
    let b = &compiled.budget;
    VerifierJson {
        estimate: b.estimate,
        refused_above: budget::refused_above(),
        kernel_limit: budget::BPF_COMPLEXITY_LIMIT_INSNS,
        pending_branches: b.jump_chain,
        stack_bytes: b.stack_bytes,
        costliest: b
            .costs
            .iter()
            .take(COSTLIEST_RULES)
            .map(|&(mark, estimate)| RuleCostJson {
                rule_line: Some(compiled.lowered.line_of(mark)).filter(|&l| l > 0),
                estimate,
            })
            .collect(),
    }
}

pub fn build_doc<'a>(file: &'a str, source: &str, compiled: &'a Compiled) -> BuildDoc<'a> {
    BuildDoc {
        check: check_doc(file, source, &compiled.warnings),
        verifier: verifier(compiled),
    }
}

#[derive(Serialize)]
pub struct ProgramJson {
    pub section: &'static str,
    pub name: &'static str,
    pub instructions: Vec<InsnJson>,
}

#[derive(Serialize)]
pub struct InsnJson {
    pub index: usize,
    pub text: String,
    pub rule_line: Option<u32>,
    pub source: Option<String>,
}

#[derive(Serialize)]
pub struct MapJson {
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub fn listing_doc<'a>(file: &'a str, source: &str, compiled: &'a Compiled) -> ListingDoc<'a> {
    let lines: Vec<&str> = source.lines().collect();
    let programs = skpc::compile::listed_programs(compiled)
        .into_iter()
        .map(|p| ProgramJson {
            section: p.section,
            name: p.name,
            instructions: p
                .insns
                .into_iter()
                .map(|i| InsnJson {
                    index: i.slot,
                    text: i.text,
                    rule_line: i.line,
                    source: i
                        .line
                        .and_then(|l| lines.get((l as usize).checked_sub(1)?))
                        .map(|s| s.trim().to_string()),
                })
                .collect(),
        })
        .collect();
    let maps = compiled
        .lowered
        .maps
        .iter()
        .map(|m| MapJson {
            name: m.name(),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
        })
        .collect();
    ListingDoc {
        check: check_doc(file, source, &compiled.warnings),
        programs,
        maps,
        verifier: verifier(compiled),
    }
}

/// `skpc exec -j` at the end, `skpc run -j` every interval and at the end: the counters.
#[derive(Serialize)]
pub struct CountersDoc<'a> {
    pub policy: &'a str,
    /// exec: the command's exit status (what skpc exits with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u8>,
    /// run: the policy version in force (1, then +1 per reload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// run: seconds since enforcement started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<f64>,
    /// run: reloads so far (by a change of the file or SIGHUP), by result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reloads: Option<ReloadsJson>,
    /// Established sockets the SOCK_OPS program left out of the sockmaps (no rule could
    /// act on them, so they are in no counter); always set by exec and run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untouched_sockets: Option<u64>,
    pub counters: Vec<CounterJson<'a>>,
}

#[derive(Serialize, Clone, Copy, Default)]
pub struct ReloadsJson {
    /// Reloads that swapped a new version in.
    pub ok: u64,
    /// Reloads refused (the policy did not compile or load): the old version stayed.
    pub error: u64,
}

#[derive(Serialize)]
pub struct CounterJson<'a> {
    pub name: &'a str,
    pub kind: &'static str,
    pub line: u32,
    pub rule: String,
    pub messages: u64,
    pub bytes: u64,
}

pub fn counters_doc<'a>(l: &'a Loaded, values: &'a [CounterValue]) -> CountersDoc<'a> {
    let lines: Vec<&str> = l.source.lines().collect();
    let counters = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let info = l.counters.get(i);
            let kind = match info.map(|c| c.kind) {
                Some(CounterKind::Rule) => "rule",
                Some(CounterKind::Named) => "count",
                Some(CounterKind::Default) => "default",
                None => "unknown",
            };
            let (_, rule) = describe(info, &v.name, &lines);
            CounterJson {
                name: &v.name,
                kind,
                line: info.map_or(0, |c| c.line),
                rule,
                messages: v.messages,
                bytes: v.bytes,
            }
        })
        .collect();
    CountersDoc {
        policy: &l.name,
        exit_status: None,
        version: None,
        elapsed_seconds: None,
        reloads: None,
        untouched_sockets: None,
        counters,
    }
}

/// One `log` record (`--events -j`), a JSON line on stderr.
#[derive(Serialize)]
pub struct LogJson {
    /// Always "log": tells a record from the other JSON lines on stderr.
    pub event: &'static str,
    pub line: u32,
    pub comm: String,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub family: &'static str,
    pub local_ip: String,
    pub local_port: u32,
    pub remote_ip: String,
    pub remote_port: u32,
    pub len: u32,
}

pub fn log_record(l: &Loaded, r: &LogRecord) -> LogJson {
    let comm_len = r.comm.iter().position(|&c| c == 0).unwrap_or(r.comm.len());
    LogJson {
        event: "log",
        line: l.counters.get(r.rule as usize).map_or(0, |c| c.line),
        comm: String::from_utf8_lossy(&r.comm[..comm_len]).into_owned(),
        pid: r.pid,
        uid: r.uid,
        gid: r.gid,
        family: if r.family == skpc_abi::AF_INET6 {
            "ipv6"
        } else {
            "ipv4"
        },
        local_ip: ip_of(r.family, r.local_ip).to_string(),
        local_port: r.local_port,
        remote_ip: ip_of(r.family, r.remote_ip).to_string(),
        remote_port: r.remote_port,
        len: r.size,
    }
}

/// One document as one line. Serializing these structs cannot fail (string keys,
/// finite numbers); the error arm is there so that no path can panic.
/// `skpc top -j`: the policy a `skpc run --metrics` enforces and each rule's rates over
/// the interval between two scrapes.
#[derive(Serialize)]
pub struct TopDoc<'a> {
    pub metrics: &'a str,
    pub policy: &'a str,
    pub version: u32,
    pub hash: &'a str,
    pub sockets: u64,
    pub untouched_sockets: u64,
    pub reloads: ReloadsJson,
    pub interval_seconds: f64,
    pub reset: bool,
    pub rules: Vec<TopRuleJson<'a>>,
}

#[derive(Serialize)]
pub struct TopRuleJson<'a> {
    pub line: u32,
    pub action: &'a str,
    pub rule: &'a str,
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

pub fn line(doc: &impl Serialize) -> String {
    serde_json::to_string(doc).unwrap_or_else(|e| {
        format!(
            "{{\"error\":{}}}",
            serde_json::Value::String(format!("cannot write JSON: {e}"))
        )
    })
}
