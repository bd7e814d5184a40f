//! Lowering: the typed policy (HIR) to BPF instructions, through LIR (instructions with
//! symbolic labels, see `lir`). Also generates the SOCK_OPS program that fills the
//! sockhash, with the same encoder and the same key layout (`skpc_abi::SockKey`).
//!
//! Code shape ("jumping code", as in libpcap): every condition is compiled to jumps to a
//! true label and a false label; a matching terminal rule jumps straight to its verdict;
//! rules after an unconditional terminal rule are not emitted; the LIR cleanup removes
//! jumps to the next instruction and code no jump reaches (the verifier rejects it).

mod flat;
mod index;
pub mod lir;
mod runs;

use skpc_abi::{Counter, IndexEntry, LogRecord, PortEntry, SockKey, PORTS_PER_TUPLE};

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{
    self, Action, Cond, Decision, End, IntField, Net, SockSlot, Target, Test, Verdict,
};
use lir::{Assembled, Label, Lir};

/// The maps of every skpc object, in object order (`Insn::LdMap { map }` indexes this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Sockmap,
    Sockhash,
    Counters,
    Events,
    Progs,
    /// The rule index (see `index`).
    Index,
    /// Whether the runtime filled the index.
    IndexReady,
    /// The rule index of single-port tuples (see `index`).
    IndexPorts,
}

impl MapKind {
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Sockmap => skpc_abi::SOCKMAP_NAME,
            MapKind::Sockhash => skpc_abi::SOCKHASH_NAME,
            MapKind::Counters => skpc_abi::COUNTERS_NAME,
            MapKind::Events => skpc_abi::EVENTS_NAME,
            MapKind::Progs => skpc_abi::PROGS_NAME,
            MapKind::Index => skpc_abi::INDEX_NAME,
            MapKind::IndexReady => skpc_abi::INDEX_READY_NAME,
            MapKind::IndexPorts => skpc_abi::INDEX_PORTS_NAME,
        }
    }
}

/// A map the object defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub kind: MapKind,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// What lowering produces: the maps, the two programs, and for every mark in the
/// verdict program the source line it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lowered {
    pub maps: Vec<MapSpec>,
    pub verdict: Assembled,
    /// The stable entry program: tail-calls `verdict` through the PROG_ARRAY.
    pub entry: Assembled,
    pub sockops: Assembled,
    /// Mark `i` of `verdict` is rule `i`; mark `rules.len()` is the default, and
    /// `rules.len() + 1` the verdict tails the rules jump to (line 0: no source line).
    pub mark_lines: Vec<u32>,
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
    let mut mark_lines: Vec<u32> = policy.rules.iter().map(|r| r.line).collect();
    mark_lines.push(
        policy
            .counters
            .get(policy.default.counter)
            .map(|c| c.line)
            .unwrap_or(0),
    );
    // The shared verdict tails belong to no line.
    mark_lines.push(0);
    Lowered {
        maps,
        verdict,
        entry: entry_program(),
        sockops: sockops_program(),
        mark_lines,
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
    /// The mark of the shared verdict tails (after the rules' and the default's).
    tails_mark: u32,
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

/// Which context layout a key is built from.
#[derive(Clone, Copy)]
struct CtxLayout {
    family: i16,
    local_ip4: i16,
    remote_ip4: i16,
    local_ip6: i16,
    remote_ip6: i16,
    local_port: i16,
    remote_port: i16,
}

const SK_MSG_LAYOUT: CtxLayout = CtxLayout {
    family: SK_MSG_MD_FAMILY,
    local_ip4: SK_MSG_MD_LOCAL_IP4,
    remote_ip4: SK_MSG_MD_REMOTE_IP4,
    local_ip6: SK_MSG_MD_LOCAL_IP6,
    remote_ip6: SK_MSG_MD_REMOTE_IP6,
    local_port: SK_MSG_MD_LOCAL_PORT,
    remote_port: SK_MSG_MD_REMOTE_PORT,
};

const SOCK_OPS_LAYOUT: CtxLayout = CtxLayout {
    family: BPF_SOCK_OPS_FAMILY,
    local_ip4: BPF_SOCK_OPS_LOCAL_IP4,
    remote_ip4: BPF_SOCK_OPS_REMOTE_IP4,
    local_ip6: BPF_SOCK_OPS_LOCAL_IP6,
    remote_ip6: BPF_SOCK_OPS_REMOTE_IP6,
    local_port: BPF_SOCK_OPS_LOCAL_PORT,
    remote_port: BPF_SOCK_OPS_REMOTE_PORT,
};

/// Word `w` (0..4) of a 16-byte IPv6 address or mask, as a 32-bit load of it sees it.
fn word_of(bytes: &[u8; 16], w: usize) -> i32 {
    wire_word([
        bytes[w * 4],
        bytes[w * 4 + 1],
        bytes[w * 4 + 2],
        bytes[w * 4 + 3],
    ])
}

/// The IPv4-mapped prefix word 2 (`0000:ffff`) as a little-endian load sees it.
const MAPPED_WORD2: u32 = u32::from_le_bytes([0, 0, 0xff, 0xff]);

/// A network-order 4-byte group as a little-endian 32-bit load sees it.
fn wire_word(bytes: [u8; 4]) -> i32 {
    u32::from_le_bytes(bytes) as i32
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

    // ------------------------------------------------------------------ program

    fn verdict_program(&mut self, policy: &hir::Policy, blocks: &[index::Block]) {
        self.tails_mark = policy.rules.len() as u32 + 1;
        let indexed: usize = blocks.iter().map(|b| b.indexed).sum();
        self.flat = policy.rules.len() - indexed > FLAT_ABOVE_RULES;
        // Branch-free rules use r0-r5 as scratch, and index lookups call a helper: the
        // context must live in r6.
        self.ctx_in_r1 =
            !self.flat && blocks.is_empty() && !needs_helper_before_verdict(policy, self.options);
        if !self.ctx_in_r1 {
            self.mov64(CTX, Src::Reg(Reg::R1));
        }
        if self.flat {
            self.take_snapshot();
        }
        self.cache_fields(policy, blocks);
        for step in runs::plan(policy, blocks) {
            let (i, run) = match step {
                runs::Step::Indexed(k) => {
                    if self.indexed_block(policy, &blocks[k]) {
                        // An unconditional rule of the block decided: the rest is dead.
                        self.emit_tails();
                        return;
                    }
                    continue;
                }
                runs::Step::Rule(i) => (i, None),
                runs::Step::Run {
                    first,
                    last,
                    cond,
                    keyed,
                } => {
                    if let (true, Some(keys), Action::Decide(d)) =
                        (self.options.counters, &keyed, &policy.rules[first].action)
                    {
                        // One keyed search finds both whether and which rule matched.
                        self.code.push(Lir::Mark(first as u32));
                        self.keyed_run(keys, d);
                        self.forget_search_bounds(&cond, last);
                        continue;
                    }
                    (first, Some((last, cond)))
                }
            };
            let rule = &policy.rules[i];
            let cond = match &run {
                Some((_, merged)) => merged.clone(),
                None => rule.cond.clone(),
            };
            if cond == Cond::Const(false) {
                continue;
            }
            self.code.push(Lir::Mark(i as u32));
            let last = run.as_ref().map_or(i, |(last, _)| *last);
            let (act, next) = (self.label(), self.label());
            self.rule_test(&cond, act, next);
            self.place(act);
            match (&rule.action, run) {
                (Action::Decide(d), Some((last, _))) => self.run_matched(policy, i, last, d),
                (Action::Decide(d), None) => self.decide_via_tail(d, rule.counter as u32),
                (Action::Count { counter }, _) => {
                    self.count_const(rule.counter as u32);
                    self.count_const(*counter as u32);
                    self.goto(next);
                }
                (Action::Log, _) => {
                    self.count_const(rule.counter as u32);
                    self.log(rule.counter as u32);
                    self.goto(next);
                }
            }
            self.place(next);
            self.forget_search_bounds(&cond, last);
            if cond == Cond::Const(true) && rule.action.is_terminal() {
                // Everything after an unconditional verdict is dead.
                self.emit_tails();
                return;
            }
        }
        self.code.push(Lir::Mark(policy.rules.len() as u32));
        self.decide_via_tail(&policy.default.decision, policy.default.counter as u32);
        self.emit_tails();
    }

    /// The test of one rule (or merged run): branch-free in large policies where it can be.
    fn rule_test(&mut self, cond: &Cond, t: Label, f: Label) {
        if self.flat && flat::flat_ok(cond) {
            self.flat_cond(cond, f);
        } else {
            self.cond(cond, t, f);
        }
    }

    /// A run `first..=last` (one decision `d`) matched: decide. With counters, find the
    /// first rule of the run that matches (only on this, the matching, path) for its
    /// counter slot.
    fn run_matched(&mut self, policy: &hir::Policy, first: usize, last: usize, d: &Decision) {
        if !self.options.counters {
            self.decide_via_tail(d, first as u32);
            return;
        }
        // Read the fields afresh here, not from the cached registers: the search left
        // them narrowed to the matched value, a different state for every value, and the
        // verifier would walk this chain once per value. Unread, they do not count.
        let cached = std::mem::take(&mut self.cached);
        for i in first..=last {
            let rule = &policy.rules[i];
            let (hit, miss) = (self.label(), self.label());
            self.code.push(Lir::Mark(i as u32));
            self.rule_test(&rule.cond, hit, miss);
            self.place(hit);
            self.decide_via_tail(d, rule.counter as u32);
            self.place(miss);
        }
        // The run's search matched, so one of its rules does; the verifier cannot know.
        self.decide_via_tail(d, policy.rules[last].counter as u32);
        self.cached = cached;
    }

    /// Loads the cheap context fields that several tests read into callee-saved
    /// registers, once, so that each test is a single compare.
    fn cache_fields(&mut self, policy: &hir::Policy, blocks: &[index::Block]) {
        let mut uses: Vec<(IntField, usize)> = Vec::new();
        let mut in_index = vec![false; policy.rules.len()];
        for b in blocks {
            in_index[b.first..=b.last].fill(true);
            for &r in &b.rest {
                in_index[r] = false;
            }
        }
        for (i, (r, _)) in policy
            .rules
            .iter()
            .zip(&in_index)
            .enumerate()
            .filter(|(_, (_, x))| !**x)
        {
            let mut here = Vec::new();
            count_field_uses(&r.cond, &mut here);
            for (f, n) in here {
                match uses.iter_mut().find(|(g, _)| *g == f) {
                    Some(u) => u.1 += n,
                    None => uses.push((f, n)),
                }
                match self.last_use.iter_mut().find(|(g, _)| *g == f) {
                    Some(at) => at.1 = i,
                    None => self.last_use.push((f, i)),
                }
            }
        }
        let mut words: Vec<(IntField, usize, i16, bool)> = uses
            .into_iter()
            .filter_map(|(f, n)| {
                ctx_word(f)
                    .filter(|_| n >= 2)
                    .map(|(off, swap)| (f, n, off, swap))
            })
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for ((field, _, off, swap), reg) in words.into_iter().zip(CACHE_REGS) {
            self.load_ctx_field(off, swap, reg);
            self.cached.push((field, reg));
        }
    }

    /// After a binary search over a cached field, every leaf that missed knows the field
    /// within a different range; after `port == 80 and ...` failed in its second half,
    /// the field is known to be 80 on that path and not on the others. Later rules that
    /// read the field would then be verified once per range (a 1000-rule policy hit the
    /// verifier's 1M limit that way, and a 170-rule one of such `and`s). Loading the
    /// field again makes the old bounds dead, so those paths merge. Only where a rule
    /// after `last` still reads the field.
    fn forget_search_bounds(&mut self, cond: &Cond, last: usize) {
        let cached = self.cached.clone();
        for (field, reg) in cached {
            let read_later = self
                .last_use
                .iter()
                .any(|(f, at)| *f == field && *at > last);
            if read_later && narrows(cond, field) {
                if let Some((off, swap)) = ctx_word(field) {
                    self.load_ctx_field(off, swap, reg);
                }
            }
        }
    }

    /// Jumps to the shared tail of decision `d`, with the rule's counter slot in SLOT.
    fn decide_via_tail(&mut self, d: &Decision, slot: u32) {
        if self.options.counters {
            self.mov32(SLOT, slot);
        }
        let tail = self.tail(d);
        self.goto(tail);
    }

    /// The label of the shared tail of decision `d`.
    fn tail(&mut self, d: &Decision) -> Label {
        match self.tails.iter().find(|(x, _)| x == d) {
            Some((_, l)) => *l,
            None => {
                let l = self.label();
                self.tails.push((d.clone(), l));
                l
            }
        }
    }

    /// An indexed block (see `index`): one map lookup per tuple, then the block's other
    /// rules as code; the smallest matching rule index decides (and is counted). Returns
    /// whether an unconditional rule of the block makes everything after it dead.
    fn indexed_block(&mut self, policy: &hir::Policy, block: &index::Block) -> bool {
        use index::Component;
        self.code.push(Lir::Mark(block.first as u32));
        if self.index_not_ready.is_none() {
            // Every path to a later block passes this one: one check is enough.
            let not_ready = self.label();
            self.index_not_ready = Some(not_ready);
            self.st(Size::W, Reg::R10, STACK_COUNTER_KEY, 0);
            self.map_lookup(self.ready_map, STACK_COUNTER_KEY);
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), not_ready);
            self.ldx(Size::W, Reg::R1, Reg::R0, 0);
            self.jmp32(JmpOp::Jne, Reg::R1, skpc_abi::INDEX_READY as i32, not_ready);
        }
        let counters = self.options.counters;
        if counters {
            // NO_RULE, but unknown to the verifier (`+ size - size`, as in `count_reg`):
            // a known constant would make the compares below decided on the paths that
            // found nothing, marking the word precise, and the verifier would walk the
            // rest of the program once for "nothing found" and once for "found".
            self.ctx_ld(Reg::R1, SK_MSG_MD_SIZE);
            self.mov32(Reg::R2, NO_RULE);
            self.alu64(AluOp::Add, Reg::R2, Src::Reg(Reg::R1));
            self.alu64(AluOp::Sub, Reg::R2, Src::Reg(Reg::R1));
            self.stx(Size::W, Reg::R10, STACK_INDEX_BEST, Reg::R2);
        }
        let has = |t: &index::Tuple, f: fn(&Component) -> bool| t.components.iter().any(f);
        let is_ip4 = |c: &Component| matches!(c, Component::Ip4 { .. });
        let is_ip6 = |c: &Component| matches!(c, Component::Ip6 { .. });
        let unmapped = |c: &Component| matches!(c, Component::Ip4 { mapped: false, .. });
        // Key words past the tuple's own that may not be zero (all, at first).
        let mut dirty = IndexEntry::KEY_WORDS - 1;
        // Ports only: any socket.
        for t in block
            .tuples
            .iter()
            .filter(|t| !has(t, is_ip4) && !has(t, is_ip6))
        {
            self.index_lookup(t, false, &block.decision, &mut dirty);
        }
        let v4: Vec<&index::Tuple> = block
            .tuples
            .iter()
            .filter(|t| has(t, is_ip4) && !has(t, is_ip6))
            .collect();
        let v6: Vec<&index::Tuple> = block
            .tuples
            .iter()
            .filter(|t| (has(t, is_ip4) || has(t, is_ip6)) && !has(t, unmapped))
            .collect();
        if !v4.is_empty() || !v6.is_empty() {
            let (l4, l6, done) = (self.label(), self.label(), self.label());
            self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
            if !v4.is_empty() {
                self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, l4);
            }
            if !v6.is_empty() {
                self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, l6);
            }
            self.goto(done);
            // Both families start from the key the port-only lookups left.
            let after_ports = dirty;
            if !v4.is_empty() {
                self.place(l4);
                for t in v4 {
                    self.index_lookup(t, false, &block.decision, &mut dirty);
                }
                self.goto(done);
            }
            if !v6.is_empty() {
                self.place(l6);
                dirty = after_ports;
                for t in v6 {
                    self.index_lookup(t, true, &block.decision, &mut dirty);
                }
            }
            self.place(done);
        }
        // The block's other rules, in order: a match decides with the smaller of its
        // index and the best indexed one.
        let found_best = self.label();
        let mut ends = false;
        for &r in &block.rest {
            let rule = &policy.rules[r];
            let cond = &rule.cond;
            if *cond == Cond::Const(false) {
                continue;
            }
            self.code.push(Lir::Mark(r as u32));
            let (act, next) = (self.label(), self.label());
            self.rule_test(cond, act, next);
            self.place(act);
            if counters {
                self.ldx(Size::W, Reg::R1, Reg::R10, STACK_INDEX_BEST);
                self.jmp32(JmpOp::Jlt, Reg::R1, r as i32, found_best);
            }
            self.decide_via_tail(&block.decision, rule.counter as u32);
            self.place(next);
            self.forget_search_bounds(cond, block.last);
            if *cond == Cond::Const(true) {
                ends = true;
                break;
            }
        }
        if counters {
            let miss = self.label();
            self.code.push(Lir::Mark(block.first as u32));
            self.ldx(Size::W, Reg::R1, Reg::R10, STACK_INDEX_BEST);
            self.jmp32(JmpOp::Jeq, Reg::R1, NO_RULE as i32, miss);
            self.place(found_best);
            self.alu32(AluOp::Mov, SLOT, Src::Reg(Reg::R1));
            let tail = self.tail(&block.decision);
            self.goto(tail);
            self.place(miss);
        }
        ends
    }

    /// Looks tuple `t` up in the index: builds the key at STACK_INDEX_KEY from the
    /// context (on an IPv6 socket, `v6`: IPv4 components from the IPv4-mapped address,
    /// skipping the lookup if it is not one) and keeps the smaller rule index in
    /// STACK_INDEX_BEST; without counters a hit decides at once. `dirty`: how many key
    /// words after the tuple id may hold something other than zero.
    fn index_lookup(&mut self, t: &index::Tuple, v6: bool, d: &Decision, dirty: &mut usize) {
        use index::Component;
        let skip = self.label();
        if let Some(slot) = t.port_slot {
            // One port: the array slot `slot * 65536 + port` holds the rule plus one.
            let remote = t.components.first() == Some(&Component::RemotePort);
            let (off, swap) = if remote {
                (SK_MSG_MD_REMOTE_PORT, true)
            } else {
                (SK_MSG_MD_LOCAL_PORT, false)
            };
            self.load_ctx_field(off, swap, Reg::R2);
            if slot > 0 {
                self.alu32(
                    AluOp::Add,
                    Reg::R2,
                    Src::Imm((slot * PORTS_PER_TUPLE) as i32),
                );
            }
            // Word 0 is the tuple id of hash keys, which every hash lookup writes anew.
            self.stx(Size::W, Reg::R10, STACK_INDEX_KEY, Reg::R2);
            self.map_lookup(self.ports_map, STACK_INDEX_KEY);
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
            self.ldx(Size::W, Reg::R1, Reg::R0, 0);
            if self.options.counters {
                // 0 (no rule) becomes NO_RULE.
                self.alu32(AluOp::Sub, Reg::R1, Src::Imm(1));
                self.keep_smaller_rule();
            } else {
                self.jmp32(JmpOp::Jeq, Reg::R1, 0, skip);
                let tail = self.tail(d);
                self.goto(tail);
            }
            self.place(skip);
            return;
        }
        self.st(Size::W, Reg::R10, STACK_INDEX_KEY, t.id as i32);
        let mut at = STACK_INDEX_KEY + 4;
        for &c in &t.components {
            let words: Vec<i16> = match c {
                Component::LocalPort => vec![SK_MSG_MD_LOCAL_PORT],
                Component::RemotePort => vec![SK_MSG_MD_REMOTE_PORT],
                Component::Ip4 { end, .. } => {
                    let (ip4, ip6) = addr_words(end);
                    if v6 {
                        for (w, want) in [(0i16, 0u32), (4, 0), (8, MAPPED_WORD2)] {
                            self.ctx_ld(Reg::R2, ip6 + w);
                            self.jmp32(JmpOp::Jne, Reg::R2, want as i32, skip);
                        }
                        vec![ip6 + 12]
                    } else {
                        vec![ip4]
                    }
                }
                Component::Ip6 { end, .. } => {
                    let (_, ip6) = addr_words(end);
                    (0..4).map(|w| ip6 + 4 * w).collect()
                }
            };
            for (w, off) in words.into_iter().enumerate() {
                let mask = index::mask_word(c, w);
                if mask == 0 {
                    self.st(Size::W, Reg::R10, at, 0);
                } else {
                    self.ctx_ld(Reg::R2, off);
                    if mask != u32::MAX {
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(mask as i32));
                    }
                    self.stx(Size::W, Reg::R10, at, Reg::R2);
                }
                at += 4;
            }
        }
        // Words past this tuple's must be zero; only those an earlier key set need it.
        let used = ((at - STACK_INDEX_KEY) / 4 - 1) as usize;
        for w in used..*dirty {
            self.st(Size::W, Reg::R10, STACK_INDEX_KEY + 4 * (w as i16 + 1), 0);
        }
        // On an IPv6 socket, an address that is not IPv4-mapped skips an IPv4 component's
        // lookup before the stores above: the words an earlier key left stay there.
        let skips_early = v6
            && t.components
                .iter()
                .any(|c| matches!(c, Component::Ip4 { .. }));
        *dirty = if skips_early {
            (*dirty).max(used)
        } else {
            used
        };
        self.map_lookup(self.index_map, STACK_INDEX_KEY);
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
        if self.options.counters {
            self.ldx(Size::W, Reg::R1, Reg::R0, 0);
            self.keep_smaller_rule();
        } else {
            let tail = self.tail(d);
            self.goto(tail);
        }
        self.place(skip);
    }

    /// STACK_INDEX_BEST = min(STACK_INDEX_BEST, w1), without a branch:
    /// r2 += (r1 - r2) & ((r1 - r2) >> 63). A compare would narrow the best rule on each
    /// side, the final `== NO_RULE` test would then be decided on some paths, and the
    /// verifier would have to keep apart states that differ only in which rule was found.
    fn keep_smaller_rule(&mut self) {
        self.ldx(Size::W, Reg::R2, Reg::R10, STACK_INDEX_BEST);
        self.alu64(AluOp::Sub, Reg::R1, Src::Reg(Reg::R2));
        self.mov64(Reg::R3, Src::Reg(Reg::R1));
        self.alu64(AluOp::Arsh, Reg::R3, Src::Imm(63));
        self.alu64(AluOp::And, Reg::R1, Src::Reg(Reg::R3));
        self.alu64(AluOp::Add, Reg::R2, Src::Reg(Reg::R1));
        self.stx(Size::W, Reg::R10, STACK_INDEX_BEST, Reg::R2);
    }

    /// A run as keyed searches (see `runs::Keyed`): each search leaves the index of the
    /// first matching rule in its stack word (NONE if none) and 1 in its flag word; the
    /// smallest index wins. The verifier only branches on the flags, never on an index,
    /// so it keeps the indices imprecise and verifies the rest of the program once, not
    /// once per value.
    fn keyed_run(&mut self, keys: &[runs::Keyed], d: &Decision) {
        const NONE: u32 = NO_RULE;
        let index_at = |k: usize| STACK_KEYED + 8 * k as i16;
        let flag_at = |k: usize| STACK_KEYED + 8 * k as i16 + 4;
        for k in 0..keys.len() {
            self.st(Size::W, Reg::R10, index_at(k), NONE as i32);
            self.st(Size::W, Reg::R10, flag_at(k), 0);
        }
        for (k, keyed) in keys.iter().enumerate() {
            let done = self.label();
            // One label per rule (a rule may own several intervals), in first-use order.
            let mut rule_labels: Vec<(usize, Label)> = Vec::new();
            let mut label_of: std::collections::HashMap<usize, Label> =
                std::collections::HashMap::new();
            let mut items = Vec::with_capacity(keyed.intervals.len());
            for &(lo, hi, rule) in &keyed.intervals {
                let l = match label_of.get(&rule) {
                    Some(l) => *l,
                    None => {
                        let l = self.label();
                        label_of.insert(rule, l);
                        rule_labels.push((rule, l));
                        l
                    }
                };
                items.push((lo, hi, l));
            }
            match keyed.key {
                runs::Key::Int(field) => {
                    let reg = match self.cached.iter().find(|(c, _)| *c == field) {
                        Some((_, r)) => *r,
                        None => {
                            let (off, swap) = ctx_word(field).unwrap_or((SK_MSG_MD_SIZE, false));
                            self.load_ctx_field(off, swap, Reg::R2);
                            Reg::R2
                        }
                    };
                    self.ranges_to(reg, &items, field.max_value(), false, done);
                }
                runs::Key::Addr4 { end, mapped } => {
                    let (ip4, ip6) = addr_words(end);
                    let (v4, v6) = (self.label(), self.label());
                    self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
                    self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, v4);
                    if mapped {
                        self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6);
                    }
                    self.goto(done);
                    self.place(v4);
                    self.ctx_ld(Reg::R2, ip4);
                    self.emit(Insn::End {
                        dst: Reg::R2,
                        endian: Endian::ToBe,
                        bits: 32,
                    });
                    self.ranges_to(Reg::R2, &items, u32::MAX as u64, false, done);
                    if mapped {
                        self.place(v6);
                        for (w, want) in [(0i16, 0u32), (4, 0), (8, MAPPED_WORD2)] {
                            self.ctx_ld(Reg::R2, ip6 + w);
                            self.jmp32(JmpOp::Jne, Reg::R2, want as i32, done);
                        }
                        self.ctx_ld(Reg::R2, ip6 + 12);
                        self.emit(Insn::End {
                            dst: Reg::R2,
                            endian: Endian::ToBe,
                            bits: 32,
                        });
                        self.ranges_to(Reg::R2, &items, u32::MAX as u64, false, done);
                    }
                }
            }
            for (rule, l) in rule_labels {
                self.place(l);
                self.st(Size::W, Reg::R10, index_at(k), rule as i32);
                self.st(Size::W, Reg::R10, flag_at(k), 1);
                self.goto(done);
            }
            self.place(done);
        }
        // r5 = any flag; r4 = the smallest index, without a branch:
        // r4 += (r3 - r4) & ((r3 - r4) >> 63).
        let miss = self.label();
        self.ldx(Size::W, Reg::R5, Reg::R10, flag_at(0));
        self.ldx(Size::W, Reg::R4, Reg::R10, index_at(0));
        for k in 1..keys.len() {
            self.ldx(Size::W, Reg::R0, Reg::R10, flag_at(k));
            self.alu64(AluOp::Or, Reg::R5, Src::Reg(Reg::R0));
            self.ldx(Size::W, Reg::R3, Reg::R10, index_at(k));
            self.mov64(Reg::R1, Src::Reg(Reg::R3));
            self.alu64(AluOp::Sub, Reg::R1, Src::Reg(Reg::R4));
            self.mov64(Reg::R2, Src::Reg(Reg::R1));
            self.alu64(AluOp::Arsh, Reg::R2, Src::Imm(63));
            self.alu64(AluOp::And, Reg::R1, Src::Reg(Reg::R2));
            self.alu64(AluOp::Add, Reg::R4, Src::Reg(Reg::R1));
        }
        self.jmp64(JmpOp::Jeq, Reg::R5, Src::Imm(0), miss);
        self.alu32(AluOp::Mov, SLOT, Src::Reg(Reg::R4));
        let tail = self.tail(d);
        self.goto(tail);
        self.place(miss);
    }

    fn emit_tails(&mut self) {
        let tails = std::mem::take(&mut self.tails);
        self.code.push(Lir::Mark(self.tails_mark));
        for (d, l) in tails {
            self.place(l);
            self.count_reg();
            self.decision(&d);
        }
        if let Some(not_ready) = self.index_not_ready {
            // Fail closed: the index is empty, so the rules in it cannot be enforced.
            self.place(not_ready);
            self.ret(SK_DROP);
        }
    }

    /// Bumps counter `slot` by one message and `sk_msg_md.size` bytes.
    fn count_const(&mut self, slot: u32) {
        if self.options.counters {
            self.st(Size::W, Reg::R10, STACK_COUNTER_KEY, slot as i32);
            self.count_key_on_stack();
        }
    }

    /// Bumps the counter whose slot is in SLOT.
    fn count_reg(&mut self) {
        if self.options.counters {
            // SLOT holds a constant on every path, a different one per rule. Stored as a
            // map key, the verifier would track it exactly and walk this tail once per
            // rule. `+ size - size` leaves the value alone but makes it unknown to the
            // verifier, so the tail is verified once.
            self.ctx_ld(Reg::R2, SK_MSG_MD_SIZE);
            self.alu64(AluOp::Add, SLOT, Src::Reg(Reg::R2));
            self.alu64(AluOp::Sub, SLOT, Src::Reg(Reg::R2));
            self.stx(Size::W, Reg::R10, STACK_COUNTER_KEY, SLOT);
            self.count_key_on_stack();
        }
    }

    fn count_key_on_stack(&mut self) {
        let skip = self.label();
        self.map_lookup(MAP_COUNTERS, STACK_COUNTER_KEY);
        self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
        self.ldx(Size::DW, Reg::R1, Reg::R0, Counter::OFF_MESSAGES);
        self.alu64(AluOp::Add, Reg::R1, Src::Imm(1));
        self.stx(Size::DW, Reg::R0, Counter::OFF_MESSAGES, Reg::R1);
        self.ctx_ld(Reg::R1, SK_MSG_MD_SIZE);
        self.ldx(Size::DW, Reg::R2, Reg::R0, Counter::OFF_BYTES);
        self.alu64(AluOp::Add, Reg::R2, Src::Reg(Reg::R1));
        self.stx(Size::DW, Reg::R0, Counter::OFF_BYTES, Reg::R2);
        self.place(skip);
    }

    fn decision(&mut self, d: &Decision) {
        if let Some(n) = d.apply_bytes {
            self.mov64(Reg::R1, Src::Reg(self.ctx()));
            self.mov32(Reg::R2, n);
            self.call(BPF_FUNC_msg_apply_bytes);
        }
        match &d.verdict {
            Verdict::Pass => self.ret(SK_PASS),
            Verdict::Drop => self.ret(SK_DROP),
            Verdict::Cork(n) => {
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.mov32(Reg::R2, *n);
                self.call(BPF_FUNC_msg_cork_bytes);
                self.ret(SK_PASS);
            }
            Verdict::Redirect {
                ingress,
                target: Target::Sock(slot),
            } => {
                match slot {
                    SockSlot::Const(k) => self.mov32(Reg::R3, *k),
                    SockSlot::Field(f) => {
                        // Payload bytes are rejected by the checker as keys.
                        let fail = self.label();
                        self.load_int(*f, fail);
                        self.mov64(Reg::R3, Src::Reg(Reg::R2));
                        let go = self.label();
                        self.goto(go);
                        self.place(fail);
                        self.ret(SK_DROP);
                        self.place(go);
                    }
                }
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.emit(Insn::LdMap {
                    dst: Reg::R2,
                    map: MAP_SOCKMAP,
                });
                self.mov64(
                    Reg::R4,
                    Src::Imm(if *ingress { BPF_F_INGRESS as i32 } else { 0 }),
                );
                self.call(BPF_FUNC_msg_redirect_map);
                self.emit(Insn::Exit);
            }
            Verdict::Redirect {
                ingress,
                target: Target::Peer,
            } => {
                // Egress (no `ingress`) sends the bytes out of the peer socket, i.e. back to
                // this one; the checker warns (W0004), the kernel does what it is told.
                self.sock_key(SK_MSG_LAYOUT, true);
                self.mov64(Reg::R1, Src::Reg(self.ctx()));
                self.emit(Insn::LdMap {
                    dst: Reg::R2,
                    map: MAP_SOCKHASH,
                });
                self.stack_ptr(Reg::R3, STACK_SOCK_KEY);
                self.mov64(
                    Reg::R4,
                    Src::Imm(if *ingress { BPF_F_INGRESS as i32 } else { 0 }),
                );
                self.call(BPF_FUNC_msg_redirect_hash);
                self.emit(Insn::Exit);
            }
        }
    }

    /// Builds a `SockKey` at `STACK_SOCK_KEY` from the context in `self.ctx()`: this socket's
    /// key, or (`swapped`) its peer's. A socket whose both addresses are IPv4-mapped is
    /// keyed as AF_INET, so that a dual-stack server and an IPv4 client find each other.
    fn sock_key(&mut self, ctx: CtxLayout, swapped: bool) {
        let k = STACK_SOCK_KEY;
        // Zero the whole key (44 bytes: 5 double words and a word).
        for i in 0..5 {
            self.st(Size::DW, Reg::R10, k + i * 8, 0);
        }
        self.st(Size::W, Reg::R10, k + 40, 0);
        let (first_ip, second_ip) = if swapped {
            (SockKey::OFF_REMOTE_IP, SockKey::OFF_LOCAL_IP)
        } else {
            (SockKey::OFF_LOCAL_IP, SockKey::OFF_REMOTE_IP)
        };
        let (v6, ports, plain6) = (self.label(), self.label(), self.label());
        self.ctx_ld(Reg::R2, ctx.family);
        self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6);
        // IPv4
        self.st(Size::W, Reg::R10, k + SockKey::OFF_FAMILY, AF_INET);
        self.ctx_ld(Reg::R3, ctx.local_ip4);
        self.stx(Size::W, Reg::R10, k + first_ip, Reg::R3);
        self.ctx_ld(Reg::R3, ctx.remote_ip4);
        self.stx(Size::W, Reg::R10, k + second_ip, Reg::R3);
        self.goto(ports);
        // IPv6: mapped?
        self.place(v6);
        for ip in [ctx.local_ip6, ctx.remote_ip6] {
            self.ctx_ld(Reg::R3, ip);
            self.jmp32(JmpOp::Jne, Reg::R3, 0, plain6);
            self.ctx_ld(Reg::R3, ip + 4);
            self.jmp32(JmpOp::Jne, Reg::R3, 0, plain6);
            self.ctx_ld(Reg::R3, ip + 8);
            self.jmp32(JmpOp::Jne, Reg::R3, MAPPED_WORD2 as i32, plain6);
        }
        self.st(Size::W, Reg::R10, k + SockKey::OFF_FAMILY, AF_INET);
        self.ctx_ld(Reg::R3, ctx.local_ip6 + 12);
        self.stx(Size::W, Reg::R10, k + first_ip, Reg::R3);
        self.ctx_ld(Reg::R3, ctx.remote_ip6 + 12);
        self.stx(Size::W, Reg::R10, k + second_ip, Reg::R3);
        self.goto(ports);
        self.place(plain6);
        self.st(Size::W, Reg::R10, k + SockKey::OFF_FAMILY, AF_INET6);
        for w in 0..4 {
            self.ctx_ld(Reg::R3, ctx.local_ip6 + w * 4);
            self.stx(Size::W, Reg::R10, k + first_ip + w * 4, Reg::R3);
            self.ctx_ld(Reg::R3, ctx.remote_ip6 + w * 4);
            self.stx(Size::W, Reg::R10, k + second_ip + w * 4, Reg::R3);
        }
        self.place(ports);
        let (first_port, second_port) = if swapped {
            (SockKey::OFF_REMOTE_PORT, SockKey::OFF_LOCAL_PORT)
        } else {
            (SockKey::OFF_LOCAL_PORT, SockKey::OFF_REMOTE_PORT)
        };
        self.ctx_ld(Reg::R3, ctx.local_port);
        self.stx(Size::W, Reg::R10, k + first_port, Reg::R3);
        self.ctx_ld(Reg::R3, ctx.remote_port);
        self.emit(Insn::End {
            dst: Reg::R3,
            endian: Endian::ToBe,
            bits: 32,
        });
        self.stx(Size::W, Reg::R10, k + second_port, Reg::R3);
    }

    /// Sends a `LogRecord` for rule `rule` to the ring buffer.
    fn log(&mut self, rule: u32) {
        let b = STACK_LOG;
        for i in 0..(LogRecord::SIZE as i16 / 8) {
            self.st(Size::DW, Reg::R10, b + i * 8, 0);
        }
        self.st(Size::W, Reg::R10, b + LogRecord::OFF_RULE, rule as i32);
        let (v6, done) = (self.label(), self.label());
        self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_FAMILY, Reg::R2);
        self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6);
        self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_IP4);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_LOCAL_IP, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_IP4);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_REMOTE_IP, Reg::R3);
        self.goto(done);
        self.place(v6);
        for w in 0..4 {
            self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_IP6 + w * 4);
            self.stx(
                Size::W,
                Reg::R10,
                b + LogRecord::OFF_LOCAL_IP + w * 4,
                Reg::R3,
            );
            self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_IP6 + w * 4);
            self.stx(
                Size::W,
                Reg::R10,
                b + LogRecord::OFF_REMOTE_IP + w * 4,
                Reg::R3,
            );
        }
        self.place(done);
        self.ctx_ld(Reg::R3, SK_MSG_MD_LOCAL_PORT);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_LOCAL_PORT, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_REMOTE_PORT);
        self.emit(Insn::End {
            dst: Reg::R3,
            endian: Endian::ToBe,
            bits: 32,
        });
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_REMOTE_PORT, Reg::R3);
        self.ctx_ld(Reg::R3, SK_MSG_MD_SIZE);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_SIZE, Reg::R3);
        self.call(BPF_FUNC_get_current_pid_tgid);
        self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_PID, Reg::R0);
        self.call(BPF_FUNC_get_current_uid_gid);
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_UID, Reg::R0);
        self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
        self.stx(Size::W, Reg::R10, b + LogRecord::OFF_GID, Reg::R0);
        self.stack_ptr(Reg::R1, b + LogRecord::OFF_COMM);
        self.mov64(Reg::R2, Src::Imm(16));
        self.call(BPF_FUNC_get_current_comm);
        self.emit(Insn::LdMap {
            dst: Reg::R1,
            map: MAP_EVENTS,
        });
        self.stack_ptr(Reg::R2, b);
        self.mov64(Reg::R3, Src::Imm(LogRecord::SIZE as i32));
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_ringbuf_output);
    }

    // ------------------------------------------------------------------ conditions

    /// Emits code that jumps to `t` when `c` holds and to `f` when it does not.
    fn cond(&mut self, c: &Cond, t: Label, f: Label) {
        match c {
            Cond::Const(true) => self.goto(t),
            Cond::Const(false) => self.goto(f),
            Cond::Not(inner) => self.cond(inner, f, t),
            Cond::And(cs) | Cond::Or(cs) => {
                let is_and = matches!(c, Cond::And(_));
                // Cheap tests first: a payload test may pull data, a helper test calls.
                let mut order: Vec<&Cond> = cs.iter().collect();
                order.sort_by_key(|c| cost(c));
                let last = order.len().saturating_sub(1);
                for (i, sub) in order.into_iter().enumerate() {
                    if i == last {
                        self.cond(sub, t, f);
                    } else {
                        let next = self.label();
                        if is_and {
                            self.cond(sub, next, f);
                        } else {
                            self.cond(sub, t, next);
                        }
                        self.place(next);
                    }
                }
            }
            Cond::Test(test) => self.test(test, t, f),
        }
    }

    fn test(&mut self, test: &Test, t: Label, f: Label) {
        match test {
            Test::Int { field, ranges } => {
                let points = ranges.iter().all(|(lo, hi)| lo == hi) && ranges.len() <= 4;
                if *field == IntField::RemotePort
                    && points
                    && !self.cached.iter().any(|(c, _)| c == field)
                {
                    // Equality with a few ports: compare the raw network-order word with
                    // byte-swapped constants instead of swapping the word (as clang does).
                    self.ctx_ld(Reg::R2, SK_MSG_MD_REMOTE_PORT);
                    for (port, _) in ranges {
                        self.jmp32(JmpOp::Jeq, Reg::R2, raw_remote_port(*port as u16), t);
                    }
                    self.goto(f);
                    return;
                }
                let reg = match self.cached.iter().find(|(c, _)| c == field) {
                    Some((_, r)) => *r,
                    None => {
                        self.load_int(*field, f);
                        Reg::R2
                    }
                };
                self.ranges(
                    reg,
                    ranges,
                    field.max_value(),
                    *field == IntField::Cgroup,
                    t,
                    f,
                );
            }
            Test::Addr { end, nets, mapped } => self.addr(*end, nets, *mapped, t, f),
            Test::Payload { offset, alts } => {
                let len = alts.first().map(|a| a.len() as u32).unwrap_or(0);
                self.ensure_payload(offset + len, f);
                for alt in alts {
                    let next = self.label();
                    self.compare_bytes(Reg::R2, *offset as i16, alt, None, next);
                    self.goto(t);
                    self.place(next);
                }
                self.goto(f);
            }
            Test::Comm { alts, prefix } => {
                self.stack_ptr(Reg::R1, STACK_COMM);
                self.mov64(Reg::R2, Src::Imm(16));
                self.call(BPF_FUNC_get_current_comm);
                for alt in alts {
                    let next = self.label();
                    // Exact names also compare the NUL after them.
                    let mut want = alt.clone();
                    if !prefix {
                        want.push(0);
                    }
                    self.compare_bytes(Reg::R10, STACK_COMM, &want, None, next);
                    self.goto(t);
                    self.place(next);
                }
                self.goto(f);
            }
        }
    }

    /// Loads an integer field into r2 (host order, zero-extended). Payload bytes jump
    /// to `short` when the message is too short.
    fn load_int(&mut self, field: IntField, short: Label) {
        match field {
            IntField::Len | IntField::Family | IntField::LocalPort | IntField::RemotePort => {
                let (off, swap) = ctx_word(field).unwrap_or((SK_MSG_MD_SIZE, false));
                self.load_ctx_field(off, swap, Reg::R2);
            }
            IntField::Uid => {
                self.call(BPF_FUNC_get_current_uid_gid);
                self.alu32(AluOp::Mov, Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Gid => {
                self.call(BPF_FUNC_get_current_uid_gid);
                self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Pid => {
                self.call(BPF_FUNC_get_current_pid_tgid);
                self.alu64(AluOp::Rsh, Reg::R0, Src::Imm(32));
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::Cgroup => {
                self.call(BPF_FUNC_get_current_cgroup_id);
                self.mov64(Reg::R2, Src::Reg(Reg::R0));
            }
            IntField::PayloadByte(i) => {
                self.ensure_payload(i + 1, short);
                self.ldx(Size::B, Reg::R2, Reg::R2, i as i16);
            }
        }
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

    /// Makes the first `need` payload bytes readable: on return r2 = data with at least
    /// `need` bytes before data_end (the verifier knows it). Jumps to `short` when the
    /// message has fewer bytes. Pulls (`bpf_msg_pull_data(msg, 0, need, 0)`) only when
    /// the current window is too small; the pull invalidates the old pointers, so both
    /// are reloaded and checked again.
    fn ensure_payload(&mut self, need: u32, short: Label) {
        let ok = self.label();
        self.window_check(need);
        self.jmp64(JmpOp::Jle, Reg::R4, Src::Reg(Reg::R3), ok);
        self.mov64(Reg::R1, Src::Reg(self.ctx()));
        self.mov64(Reg::R2, Src::Imm(0));
        self.mov32(Reg::R3, need);
        self.mov64(Reg::R4, Src::Imm(0));
        self.call(BPF_FUNC_msg_pull_data);
        self.jmp64(JmpOp::Jne, Reg::R0, Src::Imm(0), short);
        self.window_check(need);
        self.jmp64(JmpOp::Jgt, Reg::R4, Src::Reg(Reg::R3), short);
        self.place(ok);
    }

    /// r2 = data, r3 = data_end, r4 = data + need.
    fn window_check(&mut self, need: u32) {
        self.ldx(Size::DW, Reg::R2, self.ctx(), SK_MSG_MD_DATA);
        self.ldx(Size::DW, Reg::R3, self.ctx(), SK_MSG_MD_DATA_END);
        self.mov64(Reg::R4, Src::Reg(Reg::R2));
        self.alu64(AluOp::Add, Reg::R4, Src::Imm(need as i32));
    }

    /// Jumps to `ne` unless the bytes at `base + off` equal `want` (under `mask`, if
    /// given). Uses 8-, 4-, 2- and 1-byte loads into r4 (r5 for 8-byte constants).
    fn compare_bytes(&mut self, base: Reg, off: i16, want: &[u8], mask: Option<&[u8]>, ne: Label) {
        let mut at = 0usize;
        while at < want.len() {
            let rest = want.len() - at;
            let (size, n) = match rest {
                8.. => (Size::DW, 8),
                4..=7 => (Size::W, 4),
                2..=3 => (Size::H, 2),
                _ => (Size::B, 1),
            };
            let mut bytes = [0u8; 8];
            bytes[..n].copy_from_slice(&want[at..at + n]);
            let value = u64::from_le_bytes(bytes);
            self.ldx(size, Reg::R4, base, off + at as i16);
            if let Some(m) = mask {
                let mut mb = [0u8; 8];
                mb[..n].copy_from_slice(&m[at..at + n]);
                let mv = u64::from_le_bytes(mb);
                self.emit(Insn::LdImm64 {
                    dst: Reg::R5,
                    imm: mv,
                });
                self.alu64(AluOp::And, Reg::R4, Src::Reg(Reg::R5));
            }
            if size == Size::DW {
                self.emit(Insn::LdImm64 {
                    dst: Reg::R5,
                    imm: value,
                });
                self.jmp64(JmpOp::Jne, Reg::R4, Src::Reg(Reg::R5), ne);
            } else {
                self.jmp32(JmpOp::Jne, Reg::R4, value as u32 as i32, ne);
            }
            at += n;
        }
    }

    /// Jumps to `t` if `reg` lies in one of the sorted, disjoint `ranges`, else to `f`.
    /// `max` is the largest value the register can hold (no test needed up to it).
    fn ranges(
        &mut self,
        reg: Reg,
        ranges: &[(u64, u64)],
        max: u64,
        wide: bool,
        t: Label,
        f: Label,
    ) {
        let labeled: Vec<(u64, u64, Label)> = ranges.iter().map(|&(lo, hi)| (lo, hi, t)).collect();
        self.ranges_to(reg, &labeled, max, wide, f);
    }

    /// Jumps to the label of the sorted, disjoint range that holds `reg`, else to `f`.
    /// Few ranges: a linear scan that leaves early; many: binary search.
    fn ranges_to(
        &mut self,
        reg: Reg,
        ranges: &[(u64, u64, Label)],
        max: u64,
        wide: bool,
        f: Label,
    ) {
        // A leaf scans up to 16 compares: fewer internal nodes and leaf exits keep both
        // the code and the verifier's work below a compare chain's (clang's rules_1000).
        let compares: usize = ranges
            .iter()
            .map(|(lo, hi, _)| if lo == hi { 1 } else { 2 })
            .sum();
        if compares > 16 && ranges.len() > 1 {
            let mid = ranges.len() / 2;
            let right = self.label();
            self.cmp_const(JmpOp::Jgt, reg, ranges[mid - 1].1, wide, right);
            self.ranges_to(reg, &ranges[..mid], max, wide, f);
            self.place(right);
            self.ranges_to(reg, &ranges[mid..], max, wide, f);
            return;
        }
        for &(lo, hi, t) in ranges {
            if lo == hi {
                self.cmp_const(JmpOp::Jeq, reg, lo, wide, t);
                continue;
            }
            if lo > 0 {
                self.cmp_const(JmpOp::Jlt, reg, lo, wide, f);
            }
            if hi >= max {
                // Sorted ranges: nothing above this one, and the register cannot exceed max.
                self.goto(t);
                return;
            }
            self.cmp_const(JmpOp::Jle, reg, hi, wide, t);
        }
        self.goto(f);
    }

    /// `if reg OP value goto target`, unsigned; 32-bit compares for 32-bit fields.
    fn cmp_const(&mut self, op: JmpOp, reg: Reg, value: u64, wide: bool, target: Label) {
        if !wide {
            self.jmp32(op, reg, value as u32 as i32, target);
        } else if value <= i32::MAX as u64 {
            self.jmp64(op, reg, Src::Imm(value as i32), target);
        } else {
            self.emit(Insn::LdImm64 {
                dst: Reg::R3,
                imm: value,
            });
            self.jmp64(op, reg, Src::Reg(Reg::R3), target);
        }
    }

    fn addr(&mut self, end: End, nets: &[Net], mapped: bool, t: Label, f: Label) {
        let (v4, v6) = split_nets(nets);
        let (ip4, ip6) = addr_words(end);
        let (v4_path, v6_path) = (self.label(), self.label());
        self.ctx_ld(Reg::R2, SK_MSG_MD_FAMILY);
        if !v4.is_empty() {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, v4_path);
        }
        let v4_mapped = mapped && !v4.is_empty();
        if !v6.is_empty() || v4_mapped {
            self.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, v6_path);
        }
        self.goto(f);
        if !v4.is_empty() {
            self.place(v4_path);
            self.ctx_ld(Reg::R2, ip4);
            self.v4_nets(&v4, t, f);
        }
        if !v6.is_empty() || v4_mapped {
            self.place(v6_path);
            for (addr, prefix) in &v6 {
                let next = self.label();
                let bytes = addr.to_be_bytes();
                let mask = hir::mask128(*prefix).to_be_bytes();
                for w in 0..4usize {
                    let m = word_of(&mask, w);
                    if m == 0 {
                        continue;
                    }
                    let want = word_of(&bytes, w);
                    self.ctx_ld(Reg::R2, ip6 + (w as i16) * 4);
                    if m != -1 {
                        self.alu32(AluOp::And, Reg::R2, Src::Imm(m));
                    }
                    self.jmp32(JmpOp::Jne, Reg::R2, want, next);
                }
                self.goto(t);
                self.place(next);
            }
            if v4_mapped {
                self.ctx_ld(Reg::R2, ip6);
                self.jmp32(JmpOp::Jne, Reg::R2, 0, f);
                self.ctx_ld(Reg::R2, ip6 + 4);
                self.jmp32(JmpOp::Jne, Reg::R2, 0, f);
                self.ctx_ld(Reg::R2, ip6 + 8);
                self.jmp32(JmpOp::Jne, Reg::R2, MAPPED_WORD2 as i32, f);
                self.ctx_ld(Reg::R2, ip6 + 12);
                self.v4_nets(&v4, t, f);
            } else {
                self.goto(f);
            }
        }
    }

    /// r2 holds an IPv4 address as loaded (network order bytes).
    fn v4_nets(&mut self, nets: &[(u32, u8)], t: Label, f: Label) {
        if nets.len() > 4 {
            // Many prefixes: in host order each is a range; binary search over them.
            let ranges = crate::hir::ranges::normalize(
                nets.iter()
                    .map(|&(a, p)| (a as u64, (a | !hir::mask32(p)) as u64))
                    .collect(),
            );
            self.emit(Insn::End {
                dst: Reg::R2,
                endian: Endian::ToBe,
                bits: 32,
            });
            self.ranges(Reg::R2, &ranges, u32::MAX as u64, false, t, f);
            return;
        }
        for &(addr, prefix) in nets {
            let want = wire_word(addr.to_be_bytes());
            if prefix == 32 {
                self.jmp32(JmpOp::Jeq, Reg::R2, want, t);
            } else if prefix == 0 {
                self.goto(t);
                return;
            } else {
                let m = wire_word(hir::mask32(prefix).to_be_bytes());
                self.alu32(AluOp::Mov, Reg::R3, Src::Reg(Reg::R2));
                self.alu32(AluOp::And, Reg::R3, Src::Imm(m));
                self.jmp32(JmpOp::Jeq, Reg::R3, want, t);
            }
        }
        self.goto(f);
    }
}

/// Whether any path calls a helper (which clobbers r1-r5) while it still needs the
/// context afterwards; if not, the context stays in r1 and no copy is made.
fn needs_helper_before_verdict(policy: &hir::Policy, options: Options) -> bool {
    fn cond_calls(c: &Cond) -> bool {
        match c {
            Cond::Const(_) => false,
            Cond::Not(x) => cond_calls(x),
            Cond::And(cs) | Cond::Or(cs) => cs.iter().any(cond_calls),
            Cond::Test(Test::Int { field, .. }) => ctx_word(*field).is_none(),
            Cond::Test(Test::Addr { .. }) => false,
            Cond::Test(Test::Payload { .. } | Test::Comm { .. }) => true,
        }
    }
    let decision_calls = |d: &Decision| {
        d.apply_bytes.is_some()
            || matches!(
                d.verdict,
                Verdict::Redirect {
                    target: Target::Sock(SockSlot::Field(_)),
                    ..
                }
            )
    };
    options.counters
        || decision_calls(&policy.default.decision)
        || policy.rules.iter().any(|r| match &r.action {
            Action::Decide(d) => decision_calls(d) || cond_calls(&r.cond),
            Action::Count { .. } | Action::Log => true,
        })
}

/// `sk_msg_md.remote_port` as a 32-bit load sees port `p`: the network-order port in
/// the upper half.
fn raw_remote_port(p: u16) -> i32 {
    ((p.swap_bytes() as u32) << 16) as i32
}

/// IPv4 prefixes as (host-order address, length).
type Nets4 = Vec<(u32, u8)>;
/// IPv6 prefixes as (host-order address, length).
type Nets6 = Vec<(u128, u8)>;

/// The IPv4 and IPv6 prefixes of an address test, apart.
fn split_nets(nets: &[Net]) -> (Nets4, Nets6) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in nets {
        match *n {
            Net::V4 { addr, prefix } => v4.push((addr, prefix)),
            Net::V6 { addr, prefix } => v6.push((addr, prefix)),
        }
    }
    (v4, v6)
}

/// The `sk_msg_md` offsets of one end's IPv4 address and IPv6 address.
fn addr_words(end: End) -> (i16, i16) {
    match end {
        End::Local => (SK_MSG_MD_LOCAL_IP4, SK_MSG_MD_LOCAL_IP6),
        End::Remote => (SK_MSG_MD_REMOTE_IP4, SK_MSG_MD_REMOTE_IP6),
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

/// Whether some path on which `c` is false knows more about `field` than the others:
/// a binary search or a range test over it, or a test of it inside an `and` or `not`
/// (its true side can lead to a false result). A plain `==` (or an `or` of them) leaves
/// nothing behind: where it is false, the field is just not that value.
fn narrows(c: &Cond, field: IntField) -> bool {
    match c {
        Cond::Const(_) => false,
        Cond::Test(Test::Int { field: f, ranges }) => {
            *f == field && (ranges.iter().any(|(lo, hi)| lo != hi) || searches(c, field))
        }
        Cond::Test(_) => false,
        Cond::Or(cs) => cs.iter().any(|c| narrows(c, field)),
        Cond::And(_) | Cond::Not(_) => reads(c, field),
    }
}

/// Whether `c` tests `field` at all.
fn reads(c: &Cond, field: IntField) -> bool {
    match c {
        Cond::Const(_) => false,
        Cond::Not(x) => reads(x, field),
        Cond::And(cs) | Cond::Or(cs) => cs.iter().any(|c| reads(c, field)),
        Cond::Test(Test::Int { field: f, .. }) => *f == field,
        Cond::Test(_) => false,
    }
}

/// Whether `c` tests `field` against enough values to be a binary search (see `ranges_to`).
fn searches(c: &Cond, field: IntField) -> bool {
    match c {
        Cond::Const(_) => false,
        Cond::Not(x) => searches(x, field),
        Cond::And(cs) | Cond::Or(cs) => cs.iter().any(|c| searches(c, field)),
        Cond::Test(Test::Int { field: f, ranges }) => {
            *f == field
                && ranges
                    .iter()
                    .map(|(lo, hi)| if lo == hi { 1 } else { 2 })
                    .sum::<usize>()
                    > 16
        }
        Cond::Test(_) => false,
    }
}

/// Counts how many tests read each integer field.
fn count_field_uses(c: &Cond, uses: &mut Vec<(IntField, usize)>) {
    match c {
        Cond::Const(_) => {}
        Cond::Not(x) => count_field_uses(x, uses),
        Cond::And(cs) | Cond::Or(cs) => cs.iter().for_each(|c| count_field_uses(c, uses)),
        Cond::Test(Test::Int { field, .. }) => match uses.iter_mut().find(|(f, _)| f == field) {
            Some((_, n)) => *n += 1,
            None => uses.push((*field, 1)),
        },
        Cond::Test(_) => {}
    }
}

/// Relative cost of evaluating a condition, for ordering `and`/`or` operands.
fn cost(c: &Cond) -> u32 {
    match c {
        Cond::Const(_) => 0,
        Cond::Not(x) => cost(x),
        Cond::And(cs) | Cond::Or(cs) => cs.iter().map(cost).max().unwrap_or(0),
        Cond::Test(
            Test::Int {
                field: IntField::PayloadByte(_),
                ..
            }
            | Test::Payload { .. },
        ) => 3,
        Cond::Test(
            Test::Int {
                field: IntField::Uid | IntField::Gid | IntField::Pid | IntField::Cgroup,
                ..
            }
            | Test::Comm { .. },
        ) => 2,
        Cond::Test(_) => 1,
    }
}

/// The entry program: `tail_call(msg, skp_progs, 0)`; if the slot is empty (no policy
/// installed yet), pass: a drop would stick to the socket for good.
fn entry_program() -> Assembled {
    let mut g = Gen::default();
    g.emit(Insn::LdMap {
        dst: Reg::R2,
        map: MAP_PROGS,
    });
    g.mov32(Reg::R3, skpc_abi::PROGS_POLICY_SLOT);
    g.call(BPF_FUNC_tail_call);
    g.ret(SK_PASS);
    lir::assemble(&g.code)
}

/// The SOCK_OPS program: on every established TCP connection (active and passive),
/// put the socket in the sockhash under its own `SockKey`.
fn sockops_program() -> Assembled {
    let mut g = Gen::default();
    let insert = g.label();
    let done = g.label();
    g.mov64(g.ctx(), Src::Reg(Reg::R1));
    g.ldx(Size::W, Reg::R2, g.ctx(), BPF_SOCK_OPS_OP);
    g.jmp32(
        JmpOp::Jeq,
        Reg::R2,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        insert,
    );
    g.jmp32(
        JmpOp::Jeq,
        Reg::R2,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        insert,
    );
    g.goto(done);
    g.place(insert);
    g.ldx(Size::W, Reg::R2, g.ctx(), BPF_SOCK_OPS_FAMILY);
    let known = g.label();
    g.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, known);
    g.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, known);
    g.goto(done);
    g.place(known);
    g.sock_key(SOCK_OPS_LAYOUT, false);
    g.mov64(Reg::R1, Src::Reg(g.ctx()));
    g.emit(Insn::LdMap {
        dst: Reg::R2,
        map: MAP_SOCKHASH,
    });
    g.stack_ptr(Reg::R3, STACK_SOCK_KEY);
    g.mov64(Reg::R4, Src::Imm(BPF_ANY as i32));
    g.call(BPF_FUNC_sock_hash_update);
    g.place(done);
    g.ret(1);
    lir::assemble(&lir::cleanup(g.code))
}
