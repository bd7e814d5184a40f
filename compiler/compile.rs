//! The whole pipeline, source to object: parse, check, lower, assemble, write the ELF.
//! Also the assembly listing (`skpc build --emit asm`), as text and as data.

use skpc_abi::{
    IndexEntry, PortEntry, INDEX_NAME, INDEX_PORTS_NAME, INDEX_PORTS_SECTION, INDEX_SECTION,
    PROGS_NAME, SETS_NAME, SET_SECTION_PREFIX, SK_MSG_ENTRY_PROGRAM, SK_MSG_PROGRAM,
    SK_MSG_SECTION, SOCKHASH_NAME, SOCKMAP_NAME, SOCK_OPS_PROGRAM, SOCK_OPS_SECTION,
    UNTOUCHED_NAME,
};

use crate::bpf::uapi::LIBBPF_PIN_BY_NAME;
use crate::bpf::{disassemble_at, encode_all, Insn};
use crate::check;
use crate::diag::Diag;
use crate::hir;
use crate::lower::budget::{self, Budget};
use crate::lower::{self, lir::Mark, Lowered, MapKind};
mod budget_diag;

use crate::object::{self, LineInfo, MapDef, MapRef, ObjectSpec, ProgramSpec};

/// A compiled policy: the checked policy, the generated code and the object bytes.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub policy: hir::Policy,
    pub lowered: Lowered,
    pub object: Vec<u8>,
    /// What the policy program costs the kernel's verifier (within its limits).
    pub budget: Budget,
    /// Warnings (there are no errors in a compiled policy).
    pub warnings: Vec<Diag>,
}

/// Compiles `source` (named `file_name` in line info). Errors: the diagnostics (which
/// include every warning too).
pub fn compile(file_name: &str, source: &str) -> Result<Compiled, Vec<Diag>> {
    compile_with(file_name, source, lower::Options::default())
}

/// [`compile`] with explicit code generation options.
pub fn compile_with(
    file_name: &str,
    source: &str,
    options: lower::Options,
) -> Result<Compiled, Vec<Diag>> {
    let (policy, diags) = check::check_in(source, base_dir(file_name));
    let Some(policy) = policy else {
        return Err(diags);
    };
    let lowered = lower::lower_with(&policy, options);
    let budget = budget::estimate(&lowered.verdict);
    if let Some(refusal) = budget_diag::refusal(&policy, &budget) {
        let mut diags = diags;
        diags.push(refusal);
        return Err(diags);
    }
    let object = object::write_object_owned(object_spec(&lowered, file_name, source));
    Ok(Compiled {
        policy,
        lowered,
        object,
        budget,
        warnings: diags,
    })
}

/// Where the set files of the policy named `file_name` are: its directory (`None`, the
/// working directory, for a policy given on the command line, named `<-e>`).
pub fn base_dir(file_name: &str) -> Option<&std::path::Path> {
    if file_name.starts_with('<') {
        return None;
    }
    std::path::Path::new(file_name).parent()
}

/// `skpc check`: the checker's diagnostics and, for a policy without errors, the
/// verifier's budget of its program with the default options (E0401 when over it).
/// The policy is None when there is an error. Set files are read relative to
/// `file_name`'s directory (`base_dir`).
pub fn check(file_name: &str, source: &str) -> (Option<hir::Policy>, Vec<Diag>) {
    let (policy, mut diags) = check::check_in(source, base_dir(file_name));
    let Some(policy) = policy else {
        return (None, diags);
    };
    let lowered = lower::lower_with(&policy, lower::Options::default());
    match budget_diag::refusal(&policy, &budget::estimate(&lowered.verdict)) {
        Some(refusal) => {
            diags.push(refusal);
            (None, diags)
        }
        None => (Some(policy), diags),
    }
}

/// The ELF contents of a lowered policy.
pub fn object_spec(lowered: &Lowered, file_name: &str, source: &str) -> ObjectSpec {
    let maps = lowered
        .maps
        .iter()
        .map(|m| MapDef {
            name: m.name(),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            map_flags: m.flags,
            pinning: 0,
            data_var: match m.kind {
                MapKind::Counters { chunk } => Some(skpc_abi::counters_var(chunk)),
                _ => None,
            },
        })
        .collect();
    let lines: Vec<&str> = source.lines().collect();
    let verdict_lines = line_info(lowered, file_name, &lines);
    // The rule index's entries, for the runtime to fill the maps with (both sections
    // whenever the policy has an indexed block, so that a loader can tell an empty
    // index from a stripped one).
    let mut data_sections = Vec::new();
    if !lowered.index_summary.is_empty() {
        let mut bytes = Vec::with_capacity(lowered.index.len() * IndexEntry::SIZE);
        for e in &lowered.index {
            bytes.extend_from_slice(&e.to_bytes());
        }
        data_sections.push((INDEX_SECTION.to_string(), bytes));
        let mut bytes = Vec::with_capacity(lowered.port_index.len() * PortEntry::SIZE);
        for e in &lowered.port_index {
            bytes.extend_from_slice(&e.to_bytes());
        }
        data_sections.push((INDEX_PORTS_SECTION.to_string(), bytes));
    }
    // The keys of the set maps, one section per map.
    for set in &lowered.sets {
        if let Some(spec) = lowered.maps.get(set.map.number() as usize) {
            data_sections.push((
                format!("{SET_SECTION_PREFIX}{}", spec.name()),
                set.keys.clone(),
            ));
        }
    }
    ObjectSpec {
        license: "GPL".to_string(),
        maps,
        data_sections,
        programs: vec![
            ProgramSpec {
                section: SK_MSG_SECTION.to_string(),
                name: SK_MSG_PROGRAM.to_string(),
                code: encode_all(&lowered.verdict.insns),
                map_refs: map_refs(&lowered.verdict.insns),
                lines: verdict_lines,
            },
            ProgramSpec {
                section: SK_MSG_SECTION.to_string(),
                name: SK_MSG_ENTRY_PROGRAM.to_string(),
                code: encode_all(&lowered.entry.insns),
                map_refs: map_refs(&lowered.entry.insns),
                lines: vec![generated_line(
                    "entry: tail-call the policy in skp_progs[0]; pass if empty",
                )],
            },
            ProgramSpec {
                section: SOCK_OPS_SECTION.to_string(),
                name: SOCK_OPS_PROGRAM.to_string(),
                code: encode_all(&lowered.sockops.insns),
                map_refs: map_refs(&lowered.sockops.insns),
                // libbpf drops all line info of an object when one program has none.
                lines: vec![generated_line(
                    "sockops: insert the established TCP sockets the policy takes into skp_peers",
                )],
            },
        ],
    }
}

/// The object for the runtime (`skpc exec`/`run`, skpc_runtime::Policy): the same as
/// [`Compiled::object`] except that the maps every policy version must share,
/// skp_socks, skp_peers and skp_progs (and skp_untouched, the SOCK_OPS program's count of
/// the sockets it left out, which goes on across versions), carry `pinning =
/// LIBBPF_PIN_BY_NAME`, so that a hot-reloaded object reuses the live ones from the
/// runtime's private pin directory.
/// `skpc build` keeps them unpinned: libbpf pins BY_NAME maps under /sys/fs/bpf by
/// itself (`bpftool prog loadall` would leave /sys/fs/bpf/skp_* behind).
pub fn runtime_object(c: &Compiled, file_name: &str, source: &str) -> Vec<u8> {
    let mut spec = object_spec(&c.lowered, file_name, source);
    for m in &mut spec.maps {
        if [SOCKMAP_NAME, SOCKHASH_NAME, PROGS_NAME, UNTOUCHED_NAME].contains(&m.name.as_str()) {
            m.pinning = LIBBPF_PIN_BY_NAME;
        }
    }
    object::write_object_owned(spec)
}

/// Line info for generated programs: libbpf drops all line info of an object when one
/// program has none.
fn generated_line(text: &str) -> LineInfo {
    LineInfo {
        slot: 0,
        file: "<skpc>".to_string(),
        line: 1,
        col: 1,
        text: text.to_string(),
    }
}

fn map_refs(insns: &[Insn]) -> Vec<MapRef> {
    let mut refs = Vec::new();
    let mut slot = 0;
    for insn in insns {
        if let Insn::LdMap { map, .. } | Insn::LdMapValue { map, .. } = insn {
            refs.push(MapRef {
                slot,
                map: *map as usize,
            });
        }
        slot += insn.slots();
    }
    refs
}

/// One line-info record wherever the source rule changes (and one at slot 0, which
/// the kernel requires).
fn line_info(lowered: &Lowered, file: &str, lines: &[&str]) -> Vec<LineInfo> {
    let code = &lowered.verdict;
    let mut out: Vec<LineInfo> = Vec::new();
    let mut slot = 0usize;
    let mut current: Option<u32> = None;
    let first_line = code
        .marks
        .iter()
        .flatten()
        .next()
        .map_or(1, |m| lowered.line_of(*m));
    for (i, insn) in code.insns.iter().enumerate() {
        let line = code
            .marks
            .get(slot)
            .copied()
            .flatten()
            .map(|m| lowered.line_of(m));
        let line = if i == 0 {
            Some(line.unwrap_or(first_line))
        } else {
            line
        };
        if let Some(l) = line {
            if current != Some(l) {
                let l = l.max(1);
                out.push(LineInfo {
                    slot,
                    file: file.to_string(),
                    line: l,
                    col: 1,
                    text: lines
                        .get(l as usize - 1)
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default(),
                });
                current = Some(l);
            }
        }
        slot += insn.slots();
    }
    out
}

/// The assembly listing: both programs, numbered by slot, each rule's source line
/// above its code.
pub fn listing(c: &Compiled, file_name: &str, source: &str) -> String {
    // Built without counters (`--no-counters`), the verdicts only decide.
    let counted = c
        .lowered
        .verdict
        .insns
        .iter()
        .any(|i| matches!(i, crate::bpf::Insn::AtomicAdd { .. }));
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    out.push_str(&format!(
        "; {file_name}: section {SK_MSG_SECTION}, program {SK_MSG_PROGRAM}, {} instructions\n",
        c.lowered.verdict.marks.len()
    ));
    out.push_str(&format!(
        "; verifier budget: at most {} processed instructions (estimate; the kernel's limit is {})\n",
        c.budget.estimate,
        budget::BPF_COMPLEXITY_LIMIT_INSNS
    ));
    if !c.lowered.index_summary.is_empty() {
        out.push_str(&format!(
            "; rule index {INDEX_NAME}: {} entries, {INDEX_PORTS_NAME}: {} ports; filled by the runtime before the program runs\n",
            c.lowered.index.len(),
            c.lowered.port_index.len()
        ));
        for b in &c.lowered.index_summary {
            out.push_str(&format!(";   {b}\n"));
        }
    }
    if !c.lowered.sets.is_empty() {
        out.push_str(&format!(
            "; set maps, filled by the runtime before the program runs ({SETS_NAME}[0] says so):\n"
        ));
        for s in &c.lowered.sets {
            out.push_str(&format!(";   {}\n", s.describe));
        }
    }
    let mut slot = 0usize;
    let mut current: Option<Mark> = None;
    for insn in &c.lowered.verdict.insns {
        let mark = c.lowered.verdict.marks.get(slot).copied().flatten();
        if let Some(m) = mark.filter(|_| mark != current) {
            current = mark;
            match (m, c.lowered.line_of(m)) {
                (Mark::Parser { proto, .. }, l) => out.push_str(&format!(
                    "; the {} parser, for line {l}: {}\n",
                    proto.name(),
                    lines
                        .get((l as usize).wrapping_sub(1))
                        .map(|s| s.trim())
                        .unwrap_or("")
                )),
                (Mark::Prologue, _) => {
                    out.push_str("; prologue: context fields cached for the rules\n")
                }
                (_, l) if l > 0 => out.push_str(&format!(
                    "; line {l}: {}\n",
                    lines.get(l as usize - 1).map(|s| s.trim()).unwrap_or("")
                )),
                (Mark::Default, _) => out.push_str(&format!(
                    "; (implicit) default {}\n",
                    describe_default(&c.policy)
                )),
                _ if counted => {
                    out.push_str("; verdicts: count the deciding rule once (atomic adds to its counter in .data.counters), then decide\n")
                }
                _ => out.push_str("; verdicts\n"),
            }
        }
        out.push_str(&format!("{slot:5}: {}\n", disassemble_at(insn, slot)));
        slot += insn.slots();
    }
    out.push_str(&format!(
        "\n; section {SK_MSG_SECTION}, program {SK_MSG_ENTRY_PROGRAM}\n"
    ));
    let mut slot = 0usize;
    for insn in &c.lowered.entry.insns {
        out.push_str(&format!("{slot:5}: {}\n", disassemble_at(insn, slot)));
        slot += insn.slots();
    }
    out.push_str(&format!(
        "\n; section {SOCK_OPS_SECTION}, program {SOCK_OPS_PROGRAM}, {} instructions\n",
        c.lowered.sockops.marks.len()
    ));
    out.push_str(&format!(
        "; connections the policy takes (the rest never enter the sockmaps): {}\n",
        hir::conn::describe(&c.lowered.connections)
    ));
    let mut slot = 0usize;
    for insn in &c.lowered.sockops.insns {
        out.push_str(&format!("{slot:5}: {}\n", disassemble_at(insn, slot)));
        slot += insn.slots();
    }
    out
}

/// One program of the listing as data (`skpc build --emit asm --json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedProgram {
    pub section: &'static str,
    pub name: &'static str,
    pub insns: Vec<ListedInsn>,
}

/// One instruction of a [`ListedProgram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedInsn {
    /// Its slot (a 16-byte `lddw` takes two), the number the jumps count in.
    pub slot: usize,
    /// The verifier-style text, as in the listing.
    pub text: String,
    /// The 1-based source line of the rule (or explicit default) it belongs to; None
    /// for shared tails, an implicit default and the generated programs.
    pub line: Option<u32>,
}

/// The three programs of the listing, in its order: the policy (each instruction with
/// its rule's line, from the same marks as the listing's `; line N:` headers), the
/// entry program and the SOCK_OPS program.
pub fn listed_programs(c: &Compiled) -> Vec<ListedProgram> {
    let listed = |insns: &[Insn], line_at: &dyn Fn(usize) -> Option<u32>| {
        let mut slot = 0usize;
        insns
            .iter()
            .map(|insn| {
                let row = ListedInsn {
                    slot,
                    text: disassemble_at(insn, slot),
                    line: line_at(slot),
                };
                slot += insn.slots();
                row
            })
            .collect()
    };
    let verdict_line = |slot: usize| {
        let mark = c.lowered.verdict.marks.get(slot).copied().flatten()?;
        Some(c.lowered.line_of(mark)).filter(|&l| l > 0)
    };
    let no_line = |_: usize| None;
    vec![
        ListedProgram {
            section: SK_MSG_SECTION,
            name: SK_MSG_PROGRAM,
            insns: listed(&c.lowered.verdict.insns, &verdict_line),
        },
        ListedProgram {
            section: SK_MSG_SECTION,
            name: SK_MSG_ENTRY_PROGRAM,
            insns: listed(&c.lowered.entry.insns, &no_line),
        },
        ListedProgram {
            section: SOCK_OPS_SECTION,
            name: SOCK_OPS_PROGRAM,
            insns: listed(&c.lowered.sockops.insns, &no_line),
        },
    ]
}

fn describe_default(p: &hir::Policy) -> &'static str {
    match p.default.decision.verdict {
        hir::Verdict::Drop => "drop",
        _ => "pass",
    }
}
