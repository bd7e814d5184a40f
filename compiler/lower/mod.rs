//! Lowering: the typed policy (HIR) to BPF instructions, through LIR (instructions with
//! symbolic labels, see `lir`). Also generates the SOCK_OPS program that fills the
//! sockhash, with the same encoder and the same key layout (`skpc_abi::SockKey`).
//!
//! Code shape ("jumping code", as in libpcap): every condition is compiled to jumps to a
//! true label and a false label; a matching terminal rule jumps straight to its verdict;
//! rules after an unconditional terminal rule are not emitted; the LIR cleanup removes
//! jumps to the next instruction and code no jump reaches (the verifier rejects it).
//!
//! The jobs, one module each: `maps` (the maps an object defines, and their ids),
//! `verdict` (the rule loop, runs, cached context fields), `cond` (conditions as jumping
//! code, integer ranges, binary search), `flat` (branch-free conditions of large
//! policies), `addr` (address tests), `payload` (payload and comm bytes), `runs` and
//! `keyed` (rule runs planned and searched), `index` and `lookup` (the rule index planned
//! and looked up; `index_keys`, the keys of a rule's condition; `text_index`, its
//! protocol-field rules as set maps; `mixed`, the code of its blocks of several
//! decisions), `tails` (shared verdict tails, counters, decisions, log), `programs`
//! (the entry and SOCK_OPS programs), `lir` (labels, cleanup, assembly), `sets` and
//! `text_set` (large sets as map lookups; a protocol field's value as a set map's key).
//! This module holds the generator's state and its instruction emitters.

mod addr;
pub mod budget;
mod cond;
mod flat;
mod index;
mod index_keys;
mod keyed;
pub mod lir;
mod lookup;
mod maps;
mod mixed;
mod payload;
mod programs;
mod proto;
mod runs;
mod set_lookup;
mod sets;
mod tails;
mod text_index;
mod text_set;
mod verdict;

use maps::Maps;
pub use maps::{MapId, MapKind, MapSpec};
use programs::{entry_program, sockops_program};

use skpc_abi::{IndexEntry, PortEntry};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{self, Decision, IntField};
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
    /// The connections `sockops` puts into the sockhash (`hir::conn::taken`, or every
    /// one without `Options::select_connections`).
    pub connections: hir::Cond,
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
    /// The keys of every set map (see `sets`), for the runtime to fill them with.
    pub sets: Vec<SetKeys>,
}

/// The keys of one set map: `key_size` bytes each (the map's), every value
/// `skpc_abi::SET_MEMBER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetKeys {
    /// The map's number in `Lowered::maps`.
    pub map: MapId,
    /// For a set read from a file: the slot of `skp_sets` that says which buffer is
    /// live, and the second buffer's map (the runtime fills `map` first).
    pub file: Option<(u32, MapId)>,
    pub keys: Vec<u8>,
    /// One line for listings: the test and the map.
    pub describe: String,
}

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
/// The key (0 or a small slot) of a lookup in a ready-flag array (the index, the sets).
const STACK_READY_KEY: i16 = -8;
const STACK_SOCK_KEY: i16 = -56; // 44 bytes, 8-aligned
const STACK_COMM: i16 = -80; // COMM_BYTES
/// The bytes of a comm as `bpf_get_current_comm` writes it (TASK_COMM_LEN).
const COMM_BYTES: i32 = 16;
const STACK_LOG: i16 = -168; // 80 bytes
const STACK_SNAPSHOT: i16 = -232; // 56 bytes: sk_msg_md words family..size
const STACK_KEYED: i16 = -304; // runs::MAX_KEYS x (index u32, flag u32)
const STACK_INDEX_KEY: i16 = -480; // IndexEntry::KEY_SIZE (36) bytes, below STACK_PROTO
/// 24 bytes below the index key: what `get_current_uid_gid`, `get_current_pid_tgid` and
/// `get_current_cgroup_id` returned, for the index's keys (`lookup`; the comm goes to
/// STACK_COMM).
const STACK_INDEX_FIELDS: i16 = -504;
/// The address of the entry a lookup of a `count`/`log` block found, while its slots act
/// (each action calls helpers): the 8 bytes between the parsers' region and the set key.
const STACK_INDEX_ENTRY: i16 = -336;
/// The lowest stack word, which no program uses: the user-space VM spills a register
/// there to run atomic adds (`vm::VM_SPILL`).
pub const STACK_UNUSED: i16 = -512;
const _: () = assert!(
    STACK_INDEX_FIELDS - 8 >= STACK_UNUSED
        && STACK_INDEX_FIELDS + 24 <= STACK_INDEX_KEY
        && STACK_INDEX_FIELDS % 8 == 0
        && STACK_INDEX_ENTRY >= STACK_PROTO + 104
        && STACK_INDEX_ENTRY + 8 <= STACK_SET_KEY
        && STACK_INDEX_ENTRY % 8 == 0
);
const STACK_PROTO: i16 = -440; // proto::PROTO_STACK_BYTES (96) and 8 spare: parser results, scratch
const STACK_SET_KEY: i16 = -328; // 20 bytes: the key of a set map lookup (sets)
                                 // The set key lies between the parsers' region (with its 8 spare bytes) and the keyed
                                 // searches, apart from the index key (which keeps zeroed padding words from one lookup
                                 // to the next).
const _: () = assert!(
    STACK_SET_KEY >= STACK_PROTO + 104
        && STACK_SET_KEY + 20 <= STACK_KEYED
        && (STACK_SET_KEY + 20 <= STACK_INDEX_KEY || STACK_SET_KEY >= STACK_INDEX_KEY + 36)
        && STACK_SET_KEY % 8 == 0
);
/// The key of a protocol field's set map (`sets`, `Gen::text_in_map`): the value's length
/// (u32), then up to `sets::TEXT_KEY_MAX` bytes. It reuses the log record, the comm
/// buffer and the sockhash key, which are dead while a rule's tests run: each is written
/// whole right before its one use (the ring buffer output, a comm compare, a redirect)
/// and never read across a test.
const STACK_TEXT_KEY: i16 = STACK_LOG;
const _: () = assert!(
    STACK_TEXT_KEY > STACK_SNAPSHOT + 56
        && STACK_LOG + 80 <= STACK_COMM
        && STACK_COMM + 16 <= STACK_SOCK_KEY
        && STACK_TEXT_KEY + 4 + sets::TEXT_KEY_MAX as i16 <= STACK_READY_KEY
        && STACK_TEXT_KEY % 8 == 0
);
/// The key of a `comm starts with` trie (`sets::Shape::Comm`): the prefix length word in
/// the 4 bytes of the (dead, see above) log record right below the comm buffer, then the
/// comm buffer itself.
const STACK_COMM_TRIE_KEY: i16 = STACK_COMM - 4;
const _: () = assert!(STACK_COMM_TRIE_KEY >= STACK_LOG + 80 - 4 && STACK_COMM_TRIE_KEY % 4 == 0);
/// "No rule" in the index's best rule (SLOT) and the keyed searches' index words.
const NO_RULE: u32 = u32::MAX;
/// The context words a snapshot holds: `family` (16) up to and including `size` (68).
const SNAPSHOT_FIRST: i16 = SK_MSG_MD_FAMILY;
const SNAPSHOT_END: i16 = SK_MSG_MD_SIZE + 4;

impl Lowered {
    /// The 1-based source line a mark of `verdict` stands for; 0 for none (the verdict
    /// tails, an implicit default).
    pub fn line_of(&self, mark: Mark) -> u32 {
        match mark {
            Mark::Rule(i) | Mark::Parser { rule: i, .. } => {
                self.rule_lines.get(i).copied().unwrap_or(0)
            }
            Mark::Default => self.default_line,
            Mark::Tails | Mark::Prologue => 0,
        }
    }
}

/// Code generation choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Per-rule counters (messages and bytes). Off gives the smallest program, for
    /// comparing with hand-written C that counts nothing.
    pub counters: bool,
    /// A set test with more elements than this is a map lookup (`sets`), else code;
    /// `None`: the threshold measured for its kind (`sets::MAP_ABOVE_*`).
    pub set_maps_above: Option<usize>,
    /// The SOCK_OPS program inserts only the connections some rule can act on
    /// (`hir::conn::taken`); off, it inserts every TCP connection. Off suits a loader
    /// that hot-reloads policies behind one SOCK_OPS program and cannot replace it (a
    /// later version may act on connections the first one left out); `skpc run`
    /// replaces it (`skpc_runtime::Enforcement::reload`).
    pub select_connections: bool,
    /// Counter slots per counters map: `skpc_abi::COUNTER_CHUNK_SLOTS` (the most one map
    /// value holds); smaller in tests, so that a policy of a few rules spans several maps.
    pub counter_chunk_slots: u32,
}

/// Lowers a checked policy with the default options.
pub fn lower(policy: &hir::Policy) -> Lowered {
    lower_with(policy, Options::default())
}

/// Lowers a checked policy.
pub fn lower_with(policy: &hir::Policy, options: Options) -> Lowered {
    let mut index = index::plan(policy);
    // The set maps of the tests, then those of the index's text groups.
    let mut planned = sets::plan(policy, options.set_maps_above, |r| index.indexed(r));
    planned.append(&mut index.text.sets);
    let (mut specs, maps, set_ids) =
        maps::define(policy, &index, &planned, options.counter_chunk_slots);
    let set_keys = sets::keys(&planned, &set_ids, &specs);
    let mut g = Gen::new(options, maps);
    g.counter_slots = policy.counters.len() as u32;
    g.sets = planned.into_iter().zip(set_ids).collect();
    g.verdict_program(policy, &index.blocks);
    let verdict = lir::assemble(&lir::cleanup(g.code));
    let connections = if options.select_connections {
        hir::conn::taken(policy)
    } else {
        hir::Cond::Const(true)
    };
    // Counting the left-out sockets needs a map; a program that takes every connection
    // leaves none out, and its object stays as it was.
    let untouched =
        (connections != hir::Cond::Const(true)).then(|| maps::define_untouched(&mut specs));
    Lowered {
        maps: specs,
        verdict,
        entry: entry_program(maps),
        sockops: sockops_program(maps, &connections, untouched),
        connections,
        rule_lines: policy.rules.iter().map(|r| r.line).collect(),
        default_line: policy
            .counters
            .get(policy.default.counter)
            .map_or(0, |c| c.line),
        index_summary: index.blocks.iter().map(|b| b.describe(policy)).collect(),
        index: index.entries,
        port_index: index.port_entries,
        sets: set_keys,
    }
}

/// The code generator: the LIR emitted so far and what it knows about it.
struct Gen {
    code: Vec<Lir>,
    labels: u32,
    options: Options,
    /// The maps the code refers to.
    maps: Maps,
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
    /// The program reads a `bpf_sock_ops` context: `ctx_ld` maps each `sk_msg_md`
    /// offset to the same field there (`programs::sock_ops_offset`).
    sock_ops_ctx: bool,
    /// A large policy (see `verdict::BLUR_SLOT_ABOVE_RULES`): rules carry their counter
    /// slot's number in SLOT to the decisions' tails and one count block (`count_reg`,
    /// which hides the value from the verifier when many rules set it).
    blur_slot: bool,
    /// Where a rule jumps with its counter's offset in SLOT (policies that do not blur
    /// the slot; see `tails`).
    count_block: Option<Label>,
    /// Each rule that joins the count block: the position in `code` of its jump there,
    /// its counter slot and its decision (policies that do not blur the slot).
    count_sites: Vec<(usize, u32, Decision)>,
    /// The positions in `code` of the instructions that set SLOT (see `set_slot`).
    slot_writes: Vec<usize>,
    /// The slot whose offset SLOT holds here, on every path (see `set_slot`).
    slot_in_reg: Option<u32>,
    /// How many rules jump to a tail with a constant slot in SLOT (see `count_reg`).
    const_slot_sites: usize,
    /// Some path reaches a tail with a slot the verifier knows no bound of (see
    /// `count_reg`).
    slot_unbounded: bool,
    /// The number of counters (`Counter`s in the counters map's value).
    counter_slots: u32,
    /// The counter slots that lead to each decision (the rules deciding it, and the
    /// default): after the shared count block, the key says which decision to take.
    decision_slots: Vec<(Decision, Vec<u32>)>,
    /// Where the program goes when the index is not filled (set by the first block).
    index_not_ready: Option<Label>,
    /// The large sets (see `sets`) and their maps.
    sets: Vec<(sets::PlannedSet, sets::SetIds)>,
    /// Where the program goes when the set maps are not filled.
    sets_not_ready: Option<Label>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            counters: true,
            set_maps_above: None,
            select_connections: true,
            counter_chunk_slots: skpc_abi::COUNTER_CHUNK_SLOTS,
        }
    }
}

impl Gen {
    fn new(options: Options, maps: Maps) -> Gen {
        Gen {
            code: Vec::new(),
            labels: 0,
            options,
            maps,
            tails: Vec::new(),
            cached: Vec::new(),
            last_use: Vec::new(),
            ctx_in_r1: false,
            flat: false,
            snapshot: false,
            blur_slot: true,
            count_block: None,
            count_sites: Vec::new(),
            slot_writes: Vec::new(),
            slot_in_reg: None,
            const_slot_sites: 0,
            slot_unbounded: false,
            counter_slots: 0,
            decision_slots: Vec::new(),
            sock_ops_ctx: false,
            index_not_ready: None,
            sets: Vec::new(),
            sets_not_ready: None,
        }
    }

    /// `dst = ` the 32-bit context word at `off`: from the stack snapshot when the
    /// prologue took one (stack loads are not rewritten by the kernel, context loads
    /// are, each rewrite costing time linear in the program size), else from the context.
    fn ctx_ld(&mut self, dst: Reg, off: i16) {
        if self.sock_ops_ctx {
            let off = programs::sock_ops_offset(off);
            self.ldx(Size::W, dst, self.ctx(), off);
            return;
        }
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
            keep: false,
        });
    }

    fn jmp64(&mut self, op: JmpOp, dst: Reg, src: Src, target: Label) {
        self.code.push(Lir::Jmp {
            op,
            wide: true,
            dst,
            src,
            target,
            keep: false,
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

    /// `dst = ` the address of `map`.
    fn ld_map(&mut self, dst: Reg, map: MapId) {
        self.emit(Insn::LdMap {
            dst,
            map: map.number(),
        });
    }

    /// `r0 = bpf_map_lookup_elem(map, r10 + key)`.
    fn map_lookup(&mut self, map: MapId, key: i16) {
        self.ld_map(Reg::R1, map);
        self.stack_ptr(Reg::R2, key);
        self.call(BPF_FUNC_map_lookup_elem);
    }

    /// `dst = r10 + off`
    fn stack_ptr(&mut self, dst: Reg, off: i16) {
        self.mov64(dst, Src::Reg(Reg::R10));
        self.alu64(AluOp::Add, dst, Src::Imm(off as i32));
    }

    /// The sender's comm (the name, NUL-padded to 16 bytes) at stack offset `at`:
    /// `bpf_get_current_comm`, which clobbers r0-r5.
    fn current_comm(&mut self, at: i16) {
        self.stack_ptr(Reg::R1, at);
        self.mov64(Reg::R2, Src::Imm(COMM_BYTES));
        self.call(BPF_FUNC_get_current_comm);
    }

    /// Loads a field that is a context word (`IntField::ctx_word`, from the field
    /// registry) into `dst`, in host order.
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
