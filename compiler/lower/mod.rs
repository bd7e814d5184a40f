//! Lowering: the typed policy (HIR) to BPF instructions, through LIR (instructions with
//! symbolic labels, see `lir`). Also generates the SOCK_OPS program that fills the
//! sockhash, with the same encoder and the same key layout (`skpc_abi::SockKey`).
//!
//! Code shape ("jumping code", as in libpcap): every condition is compiled to jumps to a
//! true label and a false label; a matching terminal rule jumps straight to its verdict;
//! rules after an unconditional terminal rule are not emitted; the LIR cleanup removes
//! jumps to the next instruction and code no jump reaches (the verifier rejects it).

mod addr;
mod cond;
mod flat;
mod index;
mod keyed;
pub mod lir;
mod lookup;
mod maps;
mod payload;
mod programs;
mod runs;
mod tails;
mod verdict;

pub use maps::{MapKind, MapSpec};
use programs::{entry_program, sockops_program};

use skpc_abi::{Counter, IndexEntry, PortEntry, SockKey, PORTS_PER_TUPLE};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{self, Action, Decision, IntField};
use lir::{Assembled, Label, Lir, Mark};

/// What lowering produces: the maps, the two programs, and for every mark in the
/// verdict program the source line it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lowered {
    pub maps: Vec<MapSpec>,
    pub verdict: Assembled,
    /// The stable entry program: tail-calls `verdict` through the PROG_ARRAY.
    pub entry: Assembled,
    pub sockops: Assembled,
    /// The source line of each rule, by rule index, and of the default (0 when implicit):
    /// what the marks of `verdict` stand for (`line_of`).
    rule_lines: Vec<u32>,
    default_line: u32,
    /// The entries of the rule index map (empty when no block is indexed), sorted by key.
    pub index: Vec<IndexEntry>,
    /// The non-zero slots of the port array (empty when no block has a port tuple).
    pub port_index: Vec<PortEntry>,
    /// One line per indexed block, for listings: its rules, tuples and code rules.
    pub index_summary: Vec<String>,
}

const MAP_SOCKMAP: u32 = 0;
const MAP_SOCKHASH: u32 = 1;
const MAP_COUNTERS: u32 = 2;
const MAP_PROGS: u32 = 3;
const MAP_EVENTS: u32 = 4;

/// Context register, kept for the whole program (callee-saved).
const CTX: Reg = Reg::R6;
/// Policies with more rules than this compile their context-only rules branch-free
/// (`flat`), so that the verifier's pending-branch stack stays bounded; smaller ones
/// use compare-and-jump code, which is shorter.
const FLAT_ABOVE_RULES: usize = 1000;

/// Counter slot of the deciding rule, on the way to a shared verdict tail.
const SLOT: Reg = Reg::R7;
/// Callee-saved registers for context fields loaded once.
const CACHE_REGS: [Reg; 2] = [Reg::R8, Reg::R9];

// Stack layout (offsets from r10).
const STACK_COUNTER_KEY: i16 = -8;
const STACK_SOCK_KEY: i16 = -56; // 44 bytes, 8-aligned
const STACK_COMM: i16 = -80; // 16 bytes
const STACK_LOG: i16 = -168; // 80 bytes
const STACK_SNAPSHOT: i16 = -232; // 56 bytes: sk_msg_md words family..size
const STACK_KEYED: i16 = -304; // runs::MAX_KEYS x (index u32, flag u32)
const STACK_INDEX_KEY: i16 = -328; // IndexEntry::KEY_SIZE (20) bytes
const STACK_INDEX_BEST: i16 = -336; // u32: the smallest indexed rule found
/// "No rule" in STACK_INDEX_BEST and the keyed searches' index words.
const NO_RULE: u32 = u32::MAX;
/// The context words a snapshot holds: `family` (16) up to and including `size` (68).
const SNAPSHOT_FIRST: i16 = SK_MSG_MD_FAMILY;
const SNAPSHOT_END: i16 = SK_MSG_MD_SIZE + 4;

impl Lowered {
    /// The 1-based source line a mark of `verdict` stands for; 0 for none (the verdict
    /// tails, an implicit default).
    pub fn line_of(&self, mark: Mark) -> u32 {
        match mark {
            Mark::Rule(i) => self.rule_lines.get(i).copied().unwrap_or(0),
            Mark::Default => self.default_line,
            Mark::Tails => 0,
        }
    }
}

/// Code generation choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Per-rule counters (messages and bytes). Off gives the smallest program, for
    /// comparing with hand-written C that counts nothing.
    pub counters: bool,
}

/// Lowers a checked policy with the default options.
pub fn lower(policy: &hir::Policy) -> Lowered {
    lower_with(policy, Options::default())
}

/// Lowers a checked policy.
pub fn lower_with(policy: &hir::Policy, options: Options) -> Lowered {
    let has_log = policy.rules.iter().any(|r| r.action == Action::Log);
    let mut maps = vec![
        MapSpec {
            kind: MapKind::Sockmap,
            map_type: BPF_MAP_TYPE_SOCKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: skpc_abi::SOCKMAP_SLOTS,
        },
        MapSpec {
            kind: MapKind::Sockhash,
            map_type: BPF_MAP_TYPE_SOCKHASH,
            key_size: SockKey::SIZE as u32,
            value_size: skpc_abi::SOCKHASH_VALUE_SIZE,
            max_entries: skpc_abi::SOCKHASH_ENTRIES,
        },
        MapSpec {
            kind: MapKind::Counters,
            map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
            key_size: 4,
            value_size: Counter::SIZE as u32,
            max_entries: policy.counters.len() as u32,
        },
        MapSpec {
            kind: MapKind::Progs,
            map_type: BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        },
    ];
    if has_log {
        maps.push(MapSpec {
            kind: MapKind::Events,
            map_type: BPF_MAP_TYPE_RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: skpc_abi::EVENTS_BYTES,
        });
    }
    let index = index::plan(policy);
    let mut g = Gen {
        options,
        ..Gen::default()
    };
    if !index.blocks.is_empty() {
        g.index_map = maps.len() as u32;
        maps.push(MapSpec {
            kind: MapKind::Index,
            map_type: BPF_MAP_TYPE_HASH,
            key_size: IndexEntry::KEY_SIZE as u32,
            value_size: IndexEntry::VALUE_SIZE as u32,
            max_entries: index.entries.len().max(1) as u32,
        });
        g.ready_map = maps.len() as u32;
        maps.push(MapSpec {
            kind: MapKind::IndexReady,
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        });
        if index.port_tuples > 0 {
            g.ports_map = maps.len() as u32;
            maps.push(MapSpec {
                kind: MapKind::IndexPorts,
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: 4,
                max_entries: index.port_tuples * PORTS_PER_TUPLE,
            });
        }
    }
    g.verdict_program(policy, &index.blocks);
    let verdict = lir::assemble(&lir::cleanup(g.code));
    Lowered {
        maps,
        verdict,
        entry: entry_program(),
        sockops: sockops_program(),
        rule_lines: policy.rules.iter().map(|r| r.line).collect(),
        default_line: policy
            .counters
            .get(policy.default.counter)
            .map_or(0, |c| c.line),
        index_summary: index.blocks.iter().map(|b| b.describe(policy)).collect(),
        index: index.entries,
        port_index: index.port_entries,
    }
}

#[derive(Default)]
struct Gen {
    code: Vec<Lir>,
    labels: u32,
    options: Options,
    /// One shared tail per distinct decision: rules jump there with the counter slot in
    /// `SLOT` (the tail counts, then decides).
    tails: Vec<(Decision, Label)>,
    /// Context fields loaded once in the prologue, and the register holding each.
    cached: Vec<(IntField, Reg)>,
    /// The last rule (compiled as code) that reads each integer field.
    last_use: Vec<(IntField, usize)>,
    /// The program calls no helper before deciding: the context can stay in r1.
    ctx_in_r1: bool,
    /// Compile context-only rules branch-free (see `flat`).
    flat: bool,
    /// The context words are copied to the stack (`take_snapshot`).
    snapshot: bool,
    /// Map numbers of the rule index and its ready flag (when a block is indexed).
    index_map: u32,
    ready_map: u32,
    ports_map: u32,
    /// Where the program goes when the index is not filled (set by the first block).
    index_not_ready: Option<Label>,
}

impl Default for Options {
    fn default() -> Options {
        Options { counters: true }
    }
}

impl Gen {
    /// `dst = ` the 32-bit context word at `off`: from the stack snapshot when the
    /// prologue took one (stack loads are not rewritten by the kernel, context loads
    /// are, each rewrite costing time linear in the program size), else from the context.
    fn ctx_ld(&mut self, dst: Reg, off: i16) {
        match self.snapshot_slot(off) {
            Some(slot) => self.ldx(Size::W, dst, Reg::R10, slot),
            None => self.ldx(Size::W, dst, self.ctx(), off),
        }
    }

    fn snapshot_slot(&self, off: i16) -> Option<i16> {
        (self.snapshot && (SNAPSHOT_FIRST..SNAPSHOT_END).contains(&off))
            .then_some(STACK_SNAPSHOT + off - SNAPSHOT_FIRST)
    }

    /// Copies the context words `SNAPSHOT_FIRST..SNAPSHOT_END` to the stack.
    fn take_snapshot(&mut self) {
        let ctx = self.ctx();
        for off in (SNAPSHOT_FIRST..SNAPSHOT_END).step_by(4) {
            self.ldx(Size::W, Reg::R2, ctx, off);
            self.stx(
                Size::W,
                Reg::R10,
                STACK_SNAPSHOT + off - SNAPSHOT_FIRST,
                Reg::R2,
            );
        }
        self.snapshot = true;
    }

    /// The register holding the context.
    fn ctx(&self) -> Reg {
        if self.ctx_in_r1 {
            Reg::R1
        } else {
            CTX
        }
    }

    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels)
    }

    fn emit(&mut self, insn: Insn) {
        self.code.push(Lir::Insn(insn));
    }

    fn place(&mut self, l: Label) {
        self.code.push(Lir::Label(l));
    }

    fn goto(&mut self, l: Label) {
        self.code.push(Lir::Goto(l));
    }

    fn jmp32(&mut self, op: JmpOp, dst: Reg, imm: i32, target: Label) {
        self.code.push(Lir::Jmp {
            op,
            wide: false,
            dst,
            src: Src::Imm(imm),
            target,
        });
    }

    fn jmp64(&mut self, op: JmpOp, dst: Reg, src: Src, target: Label) {
        self.code.push(Lir::Jmp {
            op,
            wide: true,
            dst,
            src,
            target,
        });
    }

    fn mov64(&mut self, dst: Reg, src: Src) {
        if src == Src::Reg(dst) {
            return;
        }
        self.emit(Insn::Alu64 {
            op: AluOp::Mov,
            dst,
            src,
        });
    }

    fn mov32(&mut self, dst: Reg, imm: u32) {
        self.emit(Insn::Alu32 {
            op: AluOp::Mov,
            dst,
            src: Src::Imm(imm as i32),
        });
    }

    fn alu32(&mut self, op: AluOp, dst: Reg, src: Src) {
        self.emit(Insn::Alu32 { op, dst, src });
    }

    fn alu64(&mut self, op: AluOp, dst: Reg, src: Src) {
        self.emit(Insn::Alu64 { op, dst, src });
    }

    fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.emit(Insn::Ldx {
            size,
            dst,
            src,
            off,
        });
    }

    fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.emit(Insn::Stx {
            size,
            dst,
            src,
            off,
        });
    }

    fn st(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.emit(Insn::St {
            size,
            dst,
            off,
            imm,
        });
    }

    fn call(&mut self, helper: i32) {
        self.emit(Insn::Call { helper });
    }

    fn ret(&mut self, value: i32) {
        self.mov64(Reg::R0, Src::Imm(value));
        self.emit(Insn::Exit);
    }

    /// `r0 = bpf_map_lookup_elem(map, r10 + key)`.
    fn map_lookup(&mut self, map: u32, key: i16) {
        self.emit(Insn::LdMap { dst: Reg::R1, map });
        self.stack_ptr(Reg::R2, key);
        self.call(BPF_FUNC_map_lookup_elem);
    }

    /// `dst = r10 + off`
    fn stack_ptr(&mut self, dst: Reg, off: i16) {
        self.mov64(dst, Src::Reg(Reg::R10));
        self.alu64(AluOp::Add, dst, Src::Imm(off as i32));
    }

    /// Loads a field that is a context word (`ctx_word`) into `dst`, in host order.
    fn load_ctx_field(&mut self, off: i16, swap: bool, dst: Reg) {
        self.ctx_ld(dst, off);
        if swap {
            self.emit(Insn::End {
                dst,
                endian: Endian::ToBe,
                bits: 32,
            });
        }
    }
}

/// The `sk_msg_md` word of a field that is read straight from the context, and whether
/// it needs `bswap32` (remote_port is network order in the upper half of its word).
fn ctx_word(field: IntField) -> Option<(i16, bool)> {
    match field {
        IntField::Len => Some((SK_MSG_MD_SIZE, false)),
        IntField::Family => Some((SK_MSG_MD_FAMILY, false)),
        IntField::LocalPort => Some((SK_MSG_MD_LOCAL_PORT, false)),
        IntField::RemotePort => Some((SK_MSG_MD_REMOTE_PORT, true)),
        _ => None,
    }
}
