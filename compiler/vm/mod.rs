//! A user-space model of the SK_MSG hook: runs the exact bytes `compile` emits for
//! `skp_verdict` in rbpf's interpreter, against a `struct sk_msg_md` laid out as the
//! kernel's and models of the helpers the program may call. `skpc test` and the
//! differential tests run policies here; no root, no kernel.
//!
//! Why rbpf (0.4, the interpreter of `EbpfVmMbuff`): it decodes and executes the encoded
//! bytes independently of our own `bpf` module, so an encoder bug (a wrong opcode, a
//! swapped register nibble, a bad jump offset) shows up as a wrong result instead of being
//! mirrored by our own decoder. `EbpfVmMbuff` takes two buffers: the metadata buffer
//! (`mbuff`, r1 points at it) is our 80-byte `sk_msg_md`, the packet buffer (`mem`) is the
//! message bytes that `data`/`data_end` point into. Both are bounds-checked by rbpf on every
//! load and store, and so is the 512-byte stack. What rbpf cannot model, we check
//! around it:
//! - `ld_imm64` with `src_reg = BPF_PSEUDO_MAP_FD`: rbpf ignores `src_reg` and loads the
//!   immediate, so before running we do what libbpf's relocation does and patch the
//!   immediate of every map load with a handle (`MAP_HANDLE_BASE + map index`) that the
//!   helper models recognise; a helper given anything else fails the run.
//! - rbpf has no instruction limit and no `gotol` (`BPF_JMP32 | BPF_JA`): we reject
//!   programs with a backward jump (the generated code has none, so every run ends), and
//!   rewrite each `gotol` into the equivalent one-slot `ja` when its offset fits 16 bits
//!   (a program up to 32K slots; beyond that, an error rather than a wrong answer).
//! - rbpf zero-extends the immediate of 64-bit conditional jumps (the kernel
//!   sign-extends it); a negative immediate there is rejected up front.
//! - The data window: rbpf checks loads against the whole message buffer, not against
//!   `[data, data_end)`. Staying inside the window is what the kernel verifier proves
//!   (the kernel leg of the differential tests); here `data`/`data_end` carry the
//!   window exactly as the kernel sets them, so bounds checks in the program take the
//!   same branches as in the kernel.
//! - The context is read-only in the kernel: a store into it is detected after the run.
//! - `bpf_msg_pop_data`/`bpf_msg_push_data` change a model of the message's bytes
//!   (`helpers::Rewrite`); a pull of the changed message copies bytes into a scratch
//!   region the program may write, and they are copied back. A message popped to nothing
//!   that passes is a `discard`; one redirected with BPF_F_INGRESS to the sender's own
//!   sockhash key is a `reply` of the bytes it holds then. The sockhash holds the sender
//!   and its peer: a redirect to any other key finds no socket (SK_DROP).
//! - The counters are one zeroed value per run (the deltas of one run), which the
//!   program addresses directly (`Insn::LdMapValue`, relocated to its address for each
//!   run) and adds to with `Insn::AtomicAdd`. rbpf 0.4 has no atomics: each becomes a
//!   load, add and store of a scratch register that is spilled to the stack's lowest
//!   word around them ([`VM_SPILL`], which the program must not touch), with every jump
//!   over it lengthened. One run is one thread: the add needs no lock here.
//! - Maps: `bpf_map_lookup_elem` is modelled for the counters (key 0: the value) and
//!   the rule index as the runtime fills it: `skp_index`
//!   (a HASH holding exactly the entries of `Lowered::index`: a hit returns a pointer to
//!   the entry's u32 value, a miss NULL), `skp_index_ports` (an ARRAY of u32: the slots
//!   of `Lowered::port_index` hold their values, every other slot below `max_entries`
//!   holds 0, past it NULL) and `skp_index_ready` (an ARRAY whose slot 0 holds
//!   `INDEX_READY`). With [`IndexState::Empty`] they are as the kernel creates them, as
//!   after a load by a tool that does not fill the index: no entry, every slot 0. Map
//!   values live in memory rbpf lets the program read and write (the port array
//!   sparsely: its entries, and a zero cell per other slot looked up, at most one per
//!   call instruction since the program has no loop); a store into the index would
//!   persist across messages in the kernel, which one run cannot model: it fails the
//!   run. rbpf checks only that an access starts inside such a region, not that it stays
//!   within one value: that bound is the verifier's (the kernel leg of the differential
//!   tests). Any other map, or a map whose type or sizes the object does not define as
//!   skpc does, is refused rather than approximated.
//!
//! The module's parts, one job each: `context` (the `sk_msg_md` the program reads),
//! `maps` (the map models and the rule index), `helpers` (the helper models and the
//! run's state they share), `run` (one execution and its checks), `error` (why a
//! program cannot run). This file prepares a program: relocation and the checks of
//! what rbpf cannot run.

mod context;
mod error;
mod helpers;
mod maps;
mod run;
mod sets;

use std::sync::Arc;

use skpc_abi::{Counter, LogRecord, SockKey};

use crate::bpf::uapi::{BPF_JA, BPF_JMP};
use crate::bpf::{encode_all, AluOp, Insn, JmpOp, Reg, Size, Src};
use crate::hir::{Decision, Message};
use crate::lower::{Lowered, MapKind, MapSpec};

pub use error::VmError;
pub use helpers::HelperError;
use maps::{index_model, IndexModel};
pub use maps::{IndexData, MapModelError};
use sets::{set_model, SetModel};

/// Map handles the patched `ld_imm64`s load: `MAP_HANDLE_BASE + index in Lowered::maps`.
pub const MAP_HANDLE_BASE: u64 = 0x5b5c_0000_0000_0000;

/// The initial data window when the caller does not choose one: the kernel's first
/// scatterlist element covers the whole message up to 16 KiB.
pub const DEFAULT_WINDOW: u32 = 16 * 1024;

/// The largest initial window the VM models (a kernel's first scatterlist element is
/// smaller: 16 KiB, or 32 KiB of a large send); larger ones are clamped.
pub const MAX_WINDOW: usize = 1 << 20;

/// How a message is presented to the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// Bytes readable before any `msg_pull_data` (the first scatterlist element);
    /// clamped to the message's (given) bytes. 0 models `sendfile`/`splice` on older
    /// kernels.
    pub window: u32,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            window: DEFAULT_WINDOW,
        }
    }
}

/// One `bpf_msg_pull_data` call and what it returned (0 or a negative errno).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub start: u32,
    pub end: u32,
    pub flags: u64,
    pub result: i64,
}

/// A redirect helper call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `bpf_msg_redirect_map(msg, sockmap, key, flags)`.
    Map { key: u32, flags: u64 },
    /// `bpf_msg_redirect_hash(msg, sockhash, &key, flags)`.
    Hash { key: SockKey, flags: u64 },
}

/// What one run of the program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmOutcome {
    /// The verdict (from the return value and the helper calls).
    pub decision: Decision,
    /// The raw return value (0 or 1; anything else is an error).
    pub ret: u64,
    /// Per counter slot: (messages, bytes) added by this run.
    pub counters: Vec<(u64, u64)>,
    /// Records sent to the ring buffer.
    pub events: Vec<LogRecord>,
    pub pulls: Vec<Pull>,
    /// The last redirect helper call, if any, and its return value.
    pub redirect: Option<(Redirect, u64)>,
    /// Every helper call, by id, in order.
    pub calls: Vec<i32>,
}

/// What the runtime has put into the rule index maps (`skp_index`, `skp_index_ports`)
/// and the ready flag (`skp_index_ready`) before the program runs. Only programs with an
/// indexed block look at them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexState {
    /// As the runtime leaves them: every entry of `Lowered::index` in the HASH map,
    /// every slot of `Lowered::port_index` in the port array, then `INDEX_READY` in slot
    /// 0 of the flag.
    #[default]
    Filled,
    /// As the kernel creates them, which is how a loader that does not know the index
    /// (`bpftool prog loadall`) leaves them: no entry, every array slot 0, flag 0. The
    /// program must fail closed (drop every message).
    Empty,
}

/// The stack word (from r10) where the VM spills the scratch register of an atomic add.
pub const VM_SPILL: i16 = crate::lower::STACK_UNUSED;

/// A verdict program ready to run: the encoded bytes with map loads relocated.
#[derive(Clone, Debug)]
pub struct Vm {
    code: Vec<u8>,
    maps: Vec<MapSpec>,
    counters: usize,
    /// The `ld_imm64` of a counter's address: the byte in `code` where it starts and the
    /// offset into the counters, relocated for each run (the counters are fresh).
    counter_refs: Vec<(usize, u32)>,
    index: Arc<IndexModel>,
    index_state: IndexState,
    sets: Arc<SetModel>,
}

impl Vm {
    /// Prepares `lowered.verdict` (encoded with `encode_all`, exactly as in the object),
    /// with its rule index filled as the runtime fills it.
    pub fn new(lowered: &Lowered) -> Result<Vm, VmError> {
        let index = IndexData {
            entries: &lowered.index,
            ports: &lowered.port_index,
            sets: &lowered.sets,
        };
        Vm::from_parts(&lowered.verdict.insns, &lowered.maps, index)
    }

    /// A program and its maps, without a rule index (no entries to fill in).
    pub fn from_insns(insns: &[Insn], maps: &[MapSpec]) -> Result<Vm, VmError> {
        Vm::from_parts(insns, maps, IndexData::default())
    }

    /// A program, its maps and what the runtime writes into the rule index maps.
    pub fn from_parts(
        insns: &[Insn],
        maps: &[MapSpec],
        index: IndexData<'_>,
    ) -> Result<Vm, VmError> {
        let calls = insns
            .iter()
            .filter(|i| matches!(i, Insn::Call { .. }))
            .count();
        let sets = Arc::new(set_model(maps, index.sets)?);
        let index = Arc::new(index_model(maps, index, calls)?);
        let expanded = expand_atomics(insns)?;
        let insns = &expanded[..];
        let mut code = encode_all(insns);
        let mut counter_refs = Vec::new();
        // Every counters map but the last holds as many slots as the first.
        let chunk_bytes = maps
            .iter()
            .find(|m| m.kind == MapKind::Counters { chunk: 0 })
            .map_or(0, |m| m.value_size);
        let total: usize = insns.iter().map(|i| i.slots()).sum();
        let mut slot = 0usize;
        for insn in insns {
            match *insn {
                Insn::LdMap { map, .. } => {
                    if map as usize >= maps.len() {
                        return Err(VmError::NoSuchMap {
                            slot,
                            map,
                            maps: maps.len(),
                        });
                    }
                    // The relocation: imm of both halves = the handle (low, high words).
                    let handle = MAP_HANDLE_BASE + map as u64;
                    let at = slot * 8;
                    code[at + 4..at + 8].copy_from_slice(&(handle as u32).to_le_bytes());
                    code[at + 12..at + 16].copy_from_slice(&((handle >> 32) as u32).to_le_bytes());
                }
                Insn::LdMapValue { map, off, .. } => {
                    let Some(MapKind::Counters { chunk }) = maps.get(map as usize).map(|m| m.kind)
                    else {
                        return Err(VmError::Unmodelled(
                            "a direct pointer into a map other than the counters",
                        ));
                    };
                    // rbpf loads the imm as it is: the address goes there for each run.
                    // The counters maps lie one after the other in one buffer.
                    code[slot * 8 + 1] &= 0x0f;
                    counter_refs.push((slot * 8, chunk * chunk_bytes + off));
                }
                Insn::Gotol { imm } => {
                    // rbpf 0.4 has no `gotol` (BPF_JMP32 | BPF_JA, 32-bit offset). One whose
                    // target is within reach of a 16-bit offset is the same jump as a `ja`
                    // (one slot either way): rewrite it; a longer one cannot run here.
                    let Ok(off) = i16::try_from(imm) else {
                        return Err(VmError::LongJump { slot, offset: imm });
                    };
                    let at = slot * 8;
                    code[at] = BPF_JMP | BPF_JA;
                    code[at + 1] = 0;
                    code[at + 2..at + 4].copy_from_slice(&off.to_le_bytes());
                    code[at + 4..at + 8].copy_from_slice(&0i32.to_le_bytes());
                }
                Insn::Jmp {
                    op,
                    src: Src::Imm(imm),
                    ..
                } if imm < 0 && op != JmpOp::Jset => {
                    return Err(VmError::NegativeImmediate { slot })
                }
                _ => {}
            }
            if let Some(off) = insn.jump_off() {
                // rbpf has no instruction limit: the only backward jump it runs is the
                // protocol parsers' counted loop (`if K < N goto top`); any other loop
                // is refused.
                let counted = matches!(
                    insn,
                    Insn::Jmp {
                        op: JmpOp::Jlt,
                        src: Src::Imm(_),
                        ..
                    }
                );
                if off < 0 && !counted {
                    return Err(VmError::BackwardJump { slot });
                }
                let target = slot as i64 + insn.slots() as i64 + off as i64;
                if target < 0 || target > total as i64 {
                    return Err(VmError::JumpOutOfProgram { slot });
                }
            }
            slot += insn.slots();
        }
        let counters = maps
            .iter()
            .filter(|m| matches!(m.kind, MapKind::Counters { .. }))
            .map(|m| m.value_size as usize / Counter::SIZE)
            .sum();
        Ok(Vm {
            code,
            maps: maps.to_vec(),
            counters,
            counter_refs,
            index,
            index_state: IndexState::Filled,
            sets,
        })
    }

    /// The same program with the rule index in `state` (see [`IndexState`]).
    pub fn with_index_state(mut self, state: IndexState) -> Vm {
        self.index_state = state;
        self
    }

    /// What the rule index holds when this VM runs the program.
    pub fn index_state(&self) -> IndexState {
        self.index_state
    }

    /// The relocated bytecode the VM runs.
    pub fn code(&self) -> &[u8] {
        &self.code
    }
}

/// `insns` with each `Insn::AtomicAdd` (which rbpf 0.4 refuses) replaced by a plain
/// load, add and store through a scratch register spilled to [`VM_SPILL`] and back, and
/// every jump's offset adjusted to the longer code. A run is single-threaded: the same
/// sum.
fn expand_atomics(insns: &[Insn]) -> Result<Vec<Insn>, VmError> {
    const EXPANSION: usize = 5;
    let mut slot = 0usize;
    // The new slot of each old slot (and of the end).
    let total: usize = insns.iter().map(|i| i.slots()).sum();
    let mut new_slot = vec![0usize; total + 1];
    let mut moved = 0usize;
    for insn in insns {
        let touches_spill = |base: Reg, off: i16, size: usize| {
            base == Reg::R10 && off < VM_SPILL + 8 && off as i32 + size as i32 > VM_SPILL as i32
        };
        let spill_hit = match *insn {
            Insn::Ldx { size, src, off, .. } => touches_spill(src, off, size.bytes()),
            Insn::St { size, dst, off, .. }
            | Insn::Stx { size, dst, off, .. }
            | Insn::AtomicAdd { size, dst, off, .. } => touches_spill(dst, off, size.bytes()),
            _ => false,
        };
        if spill_hit {
            return Err(VmError::Unmodelled(
                "the stack's lowest word, where the VM spills a register for an atomic add",
            ));
        }
        for k in 0..insn.slots() {
            new_slot[slot + k] = slot + k + moved;
        }
        slot += insn.slots();
        if matches!(insn, Insn::AtomicAdd { .. }) {
            moved += EXPANSION - 1;
        }
    }
    new_slot[total] = total + moved;
    if moved == 0 {
        return Ok(insns.to_vec());
    }
    let mut out = Vec::with_capacity(insns.len() + moved);
    let mut slot = 0usize;
    for insn in insns {
        let retarget = |off: i32| -> Result<i32, VmError> {
            let target =
                (slot as i64 + insn.slots() as i64 + off as i64).clamp(0, total as i64) as usize;
            Ok(new_slot[target] as i32 - (new_slot[slot] + insn.slots()) as i32)
        };
        let short =
            |off: i32| i16::try_from(off).map_err(|_| VmError::LongJump { slot, offset: off });
        let last = match *insn {
            Insn::Ja { off } => Insn::Ja {
                off: short(retarget(off as i32)?)?,
            },
            Insn::Gotol { imm } => Insn::Gotol {
                imm: retarget(imm)?,
            },
            Insn::Jmp { op, dst, src, off } => Insn::Jmp {
                op,
                dst,
                src,
                off: short(retarget(off as i32)?)?,
            },
            Insn::Jmp32 { op, dst, src, off } => Insn::Jmp32 {
                op,
                dst,
                src,
                off: short(retarget(off as i32)?)?,
            },
            Insn::AtomicAdd {
                size,
                dst,
                src,
                off,
            } => {
                let tmp = [Reg::R0, Reg::R1, Reg::R2]
                    .into_iter()
                    .find(|r| *r != dst && *r != src)
                    .unwrap_or(Reg::R3);
                let add = if size == Size::DW {
                    Insn::Alu64 {
                        op: AluOp::Add,
                        dst: tmp,
                        src: Src::Reg(src),
                    }
                } else {
                    Insn::Alu32 {
                        op: AluOp::Add,
                        dst: tmp,
                        src: Src::Reg(src),
                    }
                };
                out.extend([
                    Insn::Stx {
                        size: Size::DW,
                        dst: Reg::R10,
                        src: tmp,
                        off: VM_SPILL,
                    },
                    Insn::Ldx {
                        size,
                        dst: tmp,
                        src: dst,
                        off,
                    },
                    add,
                    Insn::Stx {
                        size,
                        dst,
                        src: tmp,
                        off,
                    },
                ]);
                Insn::Ldx {
                    size: Size::DW,
                    dst: tmp,
                    src: Reg::R10,
                    off: VM_SPILL,
                }
            }
            other => other,
        };
        out.push(last);
        slot += insn.slots();
    }
    Ok(out)
}

/// Compiles nothing: runs an already lowered policy on one message (convenience).
pub fn run(lowered: &Lowered, msg: &Message, cfg: &RunConfig) -> Result<VmOutcome, VmError> {
    Vm::new(lowered)?.run(msg, cfg)
}

#[cfg(test)]
mod tests;
