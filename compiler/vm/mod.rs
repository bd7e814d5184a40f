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
//! - Maps: `bpf_map_lookup_elem` is modelled for the counters (a zeroed PERCPU_ARRAY per
//!   run, the deltas of one run) and the rule index as the runtime fills it: `skp_index`
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
//! Helpers are plain `fn`s in rbpf, so the state of the current run lives in a
//! thread-local (one run at a time per thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use skpc_abi::{Counter, IndexEntry, LogRecord, PortEntry, SockKey, INDEX_READY};

use crate::bpf::uapi::*;
use crate::bpf::{encode_all, Insn, JmpOp, Src};
use crate::hir::{Decision, Message, SockSlot, Target, Verdict};
use crate::lower::{Lowered, MapKind, MapSpec};

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

/// Why a program could not be run, or misbehaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmError(pub String);

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VmError {}

fn err<T>(msg: impl Into<String>) -> Result<T, VmError> {
    Err(VmError(msg.into()))
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

/// What the runtime writes into the rule index maps (`Lowered::index` and
/// `Lowered::port_index`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexData<'a> {
    pub entries: &'a [IndexEntry],
    pub ports: &'a [PortEntry],
}

/// The rule index maps of one program, filled.
#[derive(Debug, Default)]
struct IndexModel {
    /// HASH key bytes to the position of the entry's value in `values`.
    slots: HashMap<[u8; IndexEntry::KEY_SIZE], usize>,
    /// The u32 value (rule index) of every HASH entry.
    values: Vec<u32>,
    /// Port array slot to the position of its value in `port_values`.
    port_slots: HashMap<u32, usize>,
    /// The values of the port array's non-zero slots.
    port_values: Vec<u32>,
    /// `max_entries` of the port array (0: the object has none).
    port_array_slots: u32,
    /// Zero cells a run may hand out for other slots of the port array: one per call
    /// instruction (no loops, so no more lookups than that).
    zero_cells: usize,
    /// `max_entries` of the ready flag ARRAY (0: the object has none).
    ready_slots: u32,
}

/// A verdict program ready to run: the encoded bytes with map loads relocated.
#[derive(Clone, Debug)]
pub struct Vm {
    code: Vec<u8>,
    maps: Vec<MapSpec>,
    counters: usize,
    index: Arc<IndexModel>,
    index_state: IndexState,
}

impl Vm {
    /// Prepares `lowered.verdict` (encoded with `encode_all`, exactly as in the object),
    /// with its rule index filled as the runtime fills it.
    pub fn new(lowered: &Lowered) -> Result<Vm, VmError> {
        let index = IndexData {
            entries: &lowered.index,
            ports: &lowered.port_index,
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
        let index = Arc::new(index_model(maps, index, calls)?);
        let mut code = encode_all(insns);
        let mut slot = 0usize;
        for (i, insn) in insns.iter().enumerate() {
            match *insn {
                Insn::LdMap { map, .. } => {
                    if map as usize >= maps.len() {
                        return err(format!("instruction {slot} loads map {map}, but the object has {} maps", maps.len()));
                    }
                    // The relocation: imm of both halves = the handle (low, high words).
                    let handle = MAP_HANDLE_BASE + map as u64;
                    let at = slot * 8;
                    code[at + 4..at + 8].copy_from_slice(&(handle as u32).to_le_bytes());
                    code[at + 12..at + 16].copy_from_slice(&((handle >> 32) as u32).to_le_bytes());
                }
                Insn::Gotol { imm } => {
                    // rbpf 0.4 has no `gotol` (BPF_JMP32 | BPF_JA, 32-bit offset). One whose
                    // target is within reach of a 16-bit offset is the same jump as a `ja`
                    // (one slot either way): rewrite it; a longer one cannot run here.
                    let Ok(off) = i16::try_from(imm) else {
                        return err(format!(
                            "instruction {slot} is a `gotol` over {imm} slots, which the VM (rbpf 0.4, 16-bit jumps) cannot run"
                        ));
                    };
                    let at = slot * 8;
                    code[at] = BPF_JMP | BPF_JA;
                    code[at + 1] = 0;
                    code[at + 2..at + 4].copy_from_slice(&off.to_le_bytes());
                    code[at + 4..at + 8].copy_from_slice(&0i32.to_le_bytes());
                }
                Insn::Jmp { op, src: Src::Imm(imm), .. } if imm < 0 && op != JmpOp::Jset => {
                    return err(format!(
                        "instruction {slot} compares a 64-bit register with a negative immediate, which rbpf 0.4 zero-extends"
                    ))
                }
                _ => {}
            }
            if let Some(off) = insn.jump_off() {
                if off < 0 {
                    return err(format!(
                        "instruction {slot} jumps backwards (loops are not supported by the VM)"
                    ));
                }
                let target = slot as i64 + insn.slots() as i64 + off as i64;
                let total: usize = insns.iter().map(|i| i.slots()).sum();
                if target > total as i64 {
                    return err(format!("instruction {slot} jumps out of the program"));
                }
            }
            let _ = i;
            slot += insn.slots();
        }
        let counters = maps
            .iter()
            .find(|m| m.kind == MapKind::Counters)
            .map(|m| m.max_entries as usize)
            .unwrap_or(0);
        Ok(Vm {
            code,
            maps: maps.to_vec(),
            counters,
            index,
            index_state: IndexState::Filled,
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

    /// Runs the program once on `msg`.
    pub fn run(&self, msg: &Message, cfg: &RunConfig) -> Result<VmOutcome, VmError> {
        if (msg.payload.len() as u64) > msg.len as u64 {
            return err(format!(
                "the message has {} payload bytes but size {}",
                msg.payload.len(),
                msg.len
            ));
        }
        // The bytes the program can see: the payload. A larger `len` (a test case's
        // `len = 5000` with a short payload) stands for bytes the rules cannot see: the
        // window ends with the payload and a pull past it fails like one past the end.
        let window = (cfg.window as usize).min(msg.payload.len()).min(MAX_WINDOW);
        let mut buf: Vec<u8> = Vec::with_capacity(msg.payload.len().max(1));
        buf.extend_from_slice(&msg.payload);
        let buf_ptr = buf.as_mut_ptr() as u64;

        let mut ctx = [0u64; 10];
        let ctx_bytes = context(msg, buf_ptr, window as u64)?;
        // SAFETY: ctx is 80 bytes; we copy 80 bytes into it.
        unsafe {
            std::ptr::copy_nonoverlapping(ctx_bytes.as_ptr(), ctx.as_mut_ptr() as *mut u8, 80)
        };
        let ctx_ptr = ctx.as_mut_ptr() as *mut u8;

        let mut counters = vec![[0u64; 2]; self.counters];
        let counters_range = if counters.is_empty() {
            0..0
        } else {
            let start = counters.as_mut_ptr() as u64;
            start..start + (counters.len() * Counter::SIZE) as u64
        };

        // The rule index and its flag, as the runtime filled them (or not). Fresh for
        // every run, so that a store into them (which the kernel would keep) shows.
        let filled = self.index_state == IndexState::Filled;
        let mut index_values: Vec<u32> = if filled {
            self.index.values.clone()
        } else {
            Vec::new()
        };
        let mut ready = vec![0u32; self.index.ready_slots as usize];
        if filled {
            if let Some(slot) = ready.first_mut() {
                *slot = INDEX_READY;
            }
        }
        let ready_before = ready.clone();
        // The port array: its non-zero slots, then zero cells for the others.
        let mut port_values: Vec<u32> = if filled {
            self.index.port_values.clone()
        } else {
            Vec::new()
        };
        let port_entries = port_values.len();
        if self.index.port_array_slots > 0 {
            port_values.resize(port_entries + self.index.zero_cells, 0);
        }
        let region = |v: &mut Vec<u32>| {
            let start = v.as_mut_ptr() as u64;
            start..start + 4 * v.len() as u64
        };
        let index_range = region(&mut index_values);
        let ready_range = region(&mut ready);
        let ports_range = region(&mut port_values);

        let state = RunState {
            ctx: ctx_ptr as u64,
            buf: buf_ptr,
            buf_len: buf.len(),
            size: msg.len,
            maps: self.maps.iter().map(|m| m.kind).collect(),
            counters: counters.as_mut_ptr() as u64,
            counter_slots: counters.len(),
            index: Arc::clone(&self.index),
            index_values: index_range.start,
            index_filled: filled,
            ready: ready_range.start,
            ready_slots: ready.len(),
            port_values: ports_range.start,
            port_entries,
            zero_cells: HashMap::new(),
            uid: msg.uid,
            gid: msg.gid,
            pid: msg.pid,
            cgroup: msg.cgroup,
            comm: msg.comm.clone(),
            events: Vec::new(),
            pulls: Vec::new(),
            redirect: None,
            apply: None,
            cork: None,
            calls: Vec::new(),
            error: None,
        };
        STATE.with(|s| *s.borrow_mut() = Some(state));
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                STATE.with(|s| *s.borrow_mut() = None);
            }
        }
        let _clear = Clear;

        let mut vm = rbpf::EbpfVmMbuff::new(Some(&self.code))
            .map_err(|e| VmError(format!("rbpf rejected the program: {e}")))?;
        for (id, f) in HELPERS {
            vm.register_helper(*id as u32, *f)
                .map_err(|e| VmError(e.to_string()))?;
        }
        for range in [counters_range, index_range, ready_range, ports_range] {
            if !range.is_empty() {
                vm.register_allowed_memory(range);
            }
        }
        // SAFETY: the slices stay alive for the whole run; rbpf and the helpers write
        // through raw pointers derived from them, as the kernel does with its buffers.
        let (mem, mbuff) = unsafe {
            (
                std::slice::from_raw_parts(buf_ptr as *const u8, buf.len()),
                std::slice::from_raw_parts(ctx_ptr as *const u8, 80),
            )
        };
        let result = vm.execute_program(mem, mbuff);
        let state = STATE
            .with(|s| s.borrow_mut().take())
            .ok_or_else(|| VmError("VM state lost".into()))?;
        // A helper the model refused comes first: the fault after it (the program using
        // the -EFAULT it got as a pointer, say) is only its consequence.
        if let Some(e) = state.error {
            return Err(VmError(e));
        }
        let ret = result.map_err(|e| VmError(format!("the program faulted: {e}")))?;
        // (Unfilled, `port_entries` is 0.)
        let ports_kept = port_values[..port_entries] == self.index.port_values[..port_entries]
            && port_values[port_entries..].iter().all(|&v| v == 0);
        if (filled && index_values != self.index.values) || ready != ready_before || !ports_kept {
            return err(format!(
                "the program wrote into {}, {} or {}, which the kernel would keep for later messages: the VM cannot model it",
                skpc_abi::INDEX_NAME,
                skpc_abi::INDEX_PORTS_NAME,
                skpc_abi::INDEX_READY_NAME
            ));
        }
        // The context is read-only: only the helpers may move data/data_end.
        let mut after = [0u8; 80];
        // SAFETY: ctx is 80 bytes.
        unsafe { std::ptr::copy_nonoverlapping(ctx.as_ptr() as *const u8, after.as_mut_ptr(), 80) };
        if after[16..] != ctx_bytes[16..] {
            let at = (16..80).find(|&i| after[i] != ctx_bytes[i]).unwrap_or(16);
            return err(format!(
                "the program wrote into the read-only context at offset {at}"
            ));
        }

        let verdict = match ret {
            0 => Verdict::Drop,
            1 => match (&state.redirect, state.cork) {
                (Some((r, ok)), _) if *ok == SK_PASS as u64 => match r {
                    Redirect::Map { key, flags } => Verdict::Redirect {
                        ingress: flags & BPF_F_INGRESS != 0,
                        target: Target::Sock(SockSlot::Const(*key)),
                    },
                    Redirect::Hash { flags, .. } => Verdict::Redirect { ingress: flags & BPF_F_INGRESS != 0, target: Target::Peer },
                },
                (_, Some(n)) => Verdict::Cork(n),
                _ => Verdict::Pass,
            },
            other => return err(format!("the program returned {other}; an SK_MSG program returns SK_PASS (1) or SK_DROP (0)")),
        };
        Ok(VmOutcome {
            decision: Decision {
                verdict,
                apply_bytes: state.apply,
            },
            ret,
            counters: counters.iter().map(|c| (c[0], c[1])).collect(),
            events: state.events,
            pulls: state.pulls,
            redirect: state.redirect,
            calls: state.calls,
        })
    }
}

/// Compiles nothing: runs an already lowered policy on one message (convenience).
pub fn run(lowered: &Lowered, msg: &Message, cfg: &RunConfig) -> Result<VmOutcome, VmError> {
    Vm::new(lowered)?.run(msg, cfg)
}

/// Refuses a map that is not an ARRAY with u32 keys and values (the port array and the
/// ready flag).
fn u32_array(m: &MapSpec) -> Result<(), VmError> {
    if m.map_type != BPF_MAP_TYPE_ARRAY || m.key_size != 4 || m.value_size != 4 {
        return err(format!(
            "{} is map type {} with {}-byte keys and {}-byte values; the VM models an ARRAY of u32",
            m.kind.name(),
            m.map_type,
            m.key_size,
            m.value_size
        ));
    }
    Ok(())
}

/// The rule index of an object: checks that its maps are what the model implements.
fn index_model(maps: &[MapSpec], data: IndexData<'_>, calls: usize) -> Result<IndexModel, VmError> {
    let entries = data.entries;
    let one = |kind: MapKind| -> Result<Option<&MapSpec>, VmError> {
        let mut found = maps.iter().filter(|m| m.kind == kind);
        let first = found.next();
        if found.next().is_some() {
            return err(format!("the object defines {} twice", kind.name()));
        }
        Ok(first)
    };
    let index = one(MapKind::Index)?;
    let ready = one(MapKind::IndexReady)?;
    let ports = one(MapKind::IndexPorts)?;
    let mut model = IndexModel::default();
    if let Some(m) = ports {
        u32_array(m)?;
        model.port_array_slots = m.max_entries;
        model.zero_cells = calls;
    } else if !data.ports.is_empty() {
        return err(format!(
            "{} port entries but no {} map",
            data.ports.len(),
            skpc_abi::INDEX_PORTS_NAME
        ));
    }
    for e in data.ports {
        if e.slot >= model.port_array_slots {
            return err(format!(
                "port entry slot {} is past the end of {} ({} slots)",
                e.slot,
                skpc_abi::INDEX_PORTS_NAME,
                model.port_array_slots
            ));
        }
        let at = model.port_values.len();
        if model.port_slots.insert(e.slot, at).is_some() {
            return err(format!(
                "two entries for slot {} of {}: an array slot holds one value",
                e.slot,
                skpc_abi::INDEX_PORTS_NAME
            ));
        }
        model.port_values.push(e.value);
    }
    if let Some(m) = index {
        if m.map_type != BPF_MAP_TYPE_HASH
            || m.key_size as usize != IndexEntry::KEY_SIZE
            || m.value_size as usize != IndexEntry::VALUE_SIZE
        {
            return err(format!(
                "{} is map type {} with {}-byte keys and {}-byte values; the VM models a HASH with {}-byte keys and {}-byte values",
                m.kind.name(),
                m.map_type,
                m.key_size,
                m.value_size,
                IndexEntry::KEY_SIZE,
                IndexEntry::VALUE_SIZE
            ));
        }
        if entries.len() > m.max_entries as usize {
            return err(format!(
                "{} entries for {}, which holds {}: the runtime could not fill it",
                entries.len(),
                m.kind.name(),
                m.max_entries
            ));
        }
    } else if !entries.is_empty() {
        return err(format!(
            "{} index entries but no {} map",
            entries.len(),
            skpc_abi::INDEX_NAME
        ));
    }
    if let Some(m) = ready {
        u32_array(m)?;
        if m.max_entries == 0 {
            return err(format!("{} has no slot for the flag", m.kind.name()));
        }
        model.ready_slots = m.max_entries;
    } else if index.is_some() || ports.is_some() {
        return err(format!(
            "a rule index without {}: nothing says when it is filled",
            skpc_abi::INDEX_READY_NAME
        ));
    }
    model.values.reserve(entries.len());
    for e in entries {
        let at = model.values.len();
        if model.slots.insert(e.key_bytes(), at).is_some() {
            return err(format!(
                "two entries of {} have the key {:?}: a HASH map keeps one value per key",
                skpc_abi::INDEX_NAME,
                e.key
            ));
        }
        model.values.push(e.rule);
    }
    Ok(model)
}

/// The 80-byte `struct sk_msg_md` of `msg` as the kernel presents it.
fn context(msg: &Message, data: u64, window: u64) -> Result<[u8; 80], VmError> {
    let mut c = [0u8; 80];
    let put32 = |c: &mut [u8; 80], off: i16, v: u32| {
        c[off as usize..off as usize + 4].copy_from_slice(&v.to_ne_bytes())
    };
    c[SK_MSG_MD_DATA as usize..SK_MSG_MD_DATA as usize + 8].copy_from_slice(&data.to_ne_bytes());
    c[SK_MSG_MD_DATA_END as usize..SK_MSG_MD_DATA_END as usize + 8]
        .copy_from_slice(&(data + window).to_ne_bytes());
    put32(&mut c, SK_MSG_MD_FAMILY, msg.family);
    let (v4, v6) = (AF_INET as u32, AF_INET6 as u32);
    for (ip, off4, off6) in [
        (msg.local_ip, SK_MSG_MD_LOCAL_IP4, SK_MSG_MD_LOCAL_IP6),
        (msg.remote_ip, SK_MSG_MD_REMOTE_IP4, SK_MSG_MD_REMOTE_IP6),
    ] {
        match (msg.family, ip) {
            (f, IpAddr::V4(a)) if f == v4 => {
                // An IPv4 socket: the address in ip4 (network order), ip6 zero.
                c[off4 as usize..off4 as usize + 4].copy_from_slice(&a.octets());
            }
            (f, IpAddr::V6(a)) if f == v6 => {
                c[off6 as usize..off6 as usize + 16].copy_from_slice(&a.octets());
                // skc_daddr/skc_rcv_saddr of an IPv6 socket: the IPv4 address when the
                // IPv6 one is IPv4-mapped, else LOOPBACK4_IPV6 (127.0.0.6), as the
                // kernel's tcp_v6_connect leaves it.
                let ip4 = match a.to_ipv4_mapped() {
                    Some(m) => m.octets(),
                    None => [127, 0, 0, 6],
                };
                c[off4 as usize..off4 as usize + 4].copy_from_slice(&ip4);
            }
            (f, ip) => {
                return err(format!(
                    "family {f} with address {ip}: the message is inconsistent"
                ))
            }
        }
    }
    // remote_port: network order in the upper 16 bits (the u32 is htonl(port)).
    put32(
        &mut c,
        SK_MSG_MD_REMOTE_PORT,
        (msg.remote_port as u32).to_be(),
    );
    put32(&mut c, SK_MSG_MD_LOCAL_PORT, msg.local_port as u32);
    put32(&mut c, SK_MSG_MD_SIZE, msg.len);
    // `sk`: a non-NULL pointer the program cannot dereference (no region covers it).
    c[SK_MSG_MD_SK as usize..SK_MSG_MD_SK as usize + 8]
        .copy_from_slice(&0xdead_0000_0000_0000u64.to_ne_bytes());
    Ok(c)
}

// ---------------------------------------------------------------------- helpers

struct RunState {
    ctx: u64,
    buf: u64,
    buf_len: usize,
    size: u32,
    maps: Vec<MapKind>,
    counters: u64,
    counter_slots: usize,
    index: Arc<IndexModel>,
    /// Where the index values of this run start (one u32 per entry).
    index_values: u64,
    index_filled: bool,
    /// The ready flag ARRAY of this run.
    ready: u64,
    ready_slots: usize,
    /// The port array of this run: its entries (none unless filled), then zero cells.
    port_values: u64,
    port_entries: usize,
    /// Port array slots without an entry looked up so far, and their zero cells.
    zero_cells: HashMap<u32, usize>,
    uid: u32,
    gid: u32,
    pid: u32,
    cgroup: u64,
    comm: Vec<u8>,
    events: Vec<LogRecord>,
    pulls: Vec<Pull>,
    redirect: Option<(Redirect, u64)>,
    apply: Option<u32>,
    cork: Option<u32>,
    calls: Vec<i32>,
    error: Option<String>,
}

thread_local! {
    static STATE: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

const EINVAL: i64 = 22;
const EFAULT: i64 = 14;

/// Runs `f` on the current run's state, recording the call; a model error stops
/// nothing in rbpf but fails the run afterwards.
fn with_state(id: i32, f: impl FnOnce(&mut RunState) -> Result<u64, String>) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(st) = s.as_mut() else { return 0 };
        st.calls.push(id);
        match f(st) {
            Ok(v) => v,
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(format!("helper {}: {e}", helper_name(id)));
                }
                (-EFAULT) as u64
            }
        }
    })
}

fn helper_name(id: i32) -> String {
    crate::bpf::uapi::helper_name(id)
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{id}"))
}

impl RunState {
    /// The kind of the map `handle` stands for.
    fn map_kind(&self, handle: u64) -> Result<MapKind, String> {
        let idx = handle.wrapping_sub(MAP_HANDLE_BASE);
        match self.maps.get(idx as usize) {
            Some(k) if handle >= MAP_HANDLE_BASE => Ok(*k),
            _ => Err(format!("given {handle:#x}, which is not a map")),
        }
    }

    fn map(&self, handle: u64, want: MapKind) -> Result<(), String> {
        match self.map_kind(handle)? {
            k if k == want => Ok(()),
            k => Err(format!(
                "given map {} ({}), expected {}",
                handle.wrapping_sub(MAP_HANDLE_BASE),
                k.name(),
                want.name()
            )),
        }
    }

    fn check_ctx(&self, msg: u64) -> Result<(), String> {
        if msg != self.ctx {
            return Err(format!("r1 is {msg:#x}, not the context"));
        }
        Ok(())
    }
}

/// Pointers the program hands to helpers point into its stack (or the context); rbpf
/// does not tell us where the stack is, so we can only refuse the obviously wrong.
fn readable(ptr: u64, len: usize) -> Result<(), String> {
    if ptr < 0x10000 || ptr.checked_add(len as u64).is_none() {
        return Err(format!("bad pointer {ptr:#x}"));
    }
    Ok(())
}

fn h_map_lookup_elem(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_map_lookup_elem, |st| {
        // ARRAY-like maps: a u32 key, NULL past the end.
        let slot = |key: u64, slots: usize| -> Result<Option<usize>, String> {
            readable(key, 4)?;
            // SAFETY: checked non-null; the key lives in the program's stack.
            let k = unsafe { (key as *const u32).read_unaligned() } as usize;
            Ok((k < slots).then_some(k))
        };
        match st.map_kind(map)? {
            MapKind::Counters => Ok(slot(key, st.counter_slots)?
                .map_or(0, |k| st.counters + (k * Counter::SIZE) as u64)),
            MapKind::IndexReady => {
                Ok(slot(key, st.ready_slots)?.map_or(0, |k| st.ready + 4 * k as u64))
            }
            MapKind::IndexPorts => {
                let Some(k) = slot(key, st.index.port_array_slots as usize)? else {
                    return Ok(0);
                };
                let k = k as u32;
                let entry = st.index.port_slots.get(&k).copied();
                let cell = match entry {
                    Some(at) if at < st.port_entries => at,
                    _ => {
                        let next = st.port_entries + st.zero_cells.len();
                        let cell = *st.zero_cells.entry(k).or_insert(next);
                        if cell >= st.port_entries + st.index.zero_cells {
                            return Err(format!(
                                "more port array lookups than the program has calls ({})",
                                st.index.zero_cells
                            ));
                        }
                        cell
                    }
                };
                Ok(st.port_values + 4 * cell as u64)
            }
            MapKind::Index => {
                readable(key, IndexEntry::KEY_SIZE)?;
                let mut k = [0u8; IndexEntry::KEY_SIZE];
                // SAFETY: checked non-null; the key lives in the program's stack.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        key as *const u8,
                        k.as_mut_ptr(),
                        IndexEntry::KEY_SIZE,
                    )
                };
                if !st.index_filled {
                    return Ok(0);
                }
                Ok(st
                    .index
                    .slots
                    .get(&k)
                    .map_or(0, |&at| st.index_values + 4 * at as u64))
            }
            other => Err(format!(
                "a lookup in {} is not modelled by the VM",
                other.name()
            )),
        }
    })
}

fn h_msg_pull_data(msg: u64, start: u64, end: u64, flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_pull_data, |st| {
        st.check_ctx(msg)?;
        // u32 arguments, as the helper's prototype says.
        let (start, end) = (start as u32, end as u32);
        let result = if flags != 0 || end <= start || start >= st.size || end > st.size {
            -EINVAL
        } else if end as usize > st.buf_len {
            // Bytes the message does not give (its `len` is larger than its payload).
            -EINVAL
        } else {
            let data = st.buf + start as u64;
            // SAFETY: ctx is the 80-byte context of this run.
            unsafe {
                ((st.ctx + SK_MSG_MD_DATA as u64) as *mut u64).write_unaligned(data);
                ((st.ctx + SK_MSG_MD_DATA_END as u64) as *mut u64)
                    .write_unaligned(st.buf + end as u64);
            }
            0
        };
        st.pulls.push(Pull {
            start,
            end,
            flags,
            result,
        });
        Ok(result as u64)
    })
}

fn h_msg_redirect_map(msg: u64, map: u64, key: u64, flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_redirect_map, |st| {
        st.check_ctx(msg)?;
        st.map(map, MapKind::Sockmap)?;
        let key = key as u32;
        // Every slot of the sockmap holds a socket in this model; a key past the end
        // finds none; a flag other than BPF_F_INGRESS is refused. Both: SK_DROP.
        let ok = flags & !BPF_F_INGRESS == 0 && key < skpc_abi::SOCKMAP_SLOTS;
        let ret = if ok { SK_PASS } else { SK_DROP } as u64;
        st.redirect = Some((Redirect::Map { key, flags }, ret));
        Ok(ret)
    })
}

fn h_msg_redirect_hash(msg: u64, map: u64, key: u64, flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_redirect_hash, |st| {
        st.check_ctx(msg)?;
        st.map(map, MapKind::Sockhash)?;
        readable(key, SockKey::SIZE)?;
        let mut b = [0u8; SockKey::SIZE];
        // SAFETY: checked non-null; the key lives in the program's stack.
        unsafe { std::ptr::copy_nonoverlapping(key as *const u8, b.as_mut_ptr(), SockKey::SIZE) };
        let w = |i: usize| u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let key = SockKey {
            family: w(0),
            local_ip: [w(1), w(2), w(3), w(4)],
            remote_ip: [w(5), w(6), w(7), w(8)],
            local_port: w(9),
            remote_port: w(10),
        };
        // The peer is assumed to be in the sockhash (both ends enforced).
        let ret = if flags & !BPF_F_INGRESS == 0 {
            SK_PASS
        } else {
            SK_DROP
        } as u64;
        st.redirect = Some((Redirect::Hash { key, flags }, ret));
        Ok(ret)
    })
}

fn h_msg_apply_bytes(msg: u64, bytes: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_apply_bytes, |st| {
        st.check_ctx(msg)?;
        st.apply = Some(bytes as u32);
        Ok(0)
    })
}

fn h_msg_cork_bytes(msg: u64, bytes: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_cork_bytes, |st| {
        st.check_ctx(msg)?;
        st.cork = Some(bytes as u32);
        Ok(0)
    })
}

fn h_get_current_uid_gid(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_get_current_uid_gid, |st| {
        Ok(((st.gid as u64) << 32) | st.uid as u64)
    })
}

fn h_get_current_pid_tgid(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // tgid (the user-visible pid) high, thread id low: a single-threaded sender.
    with_state(BPF_FUNC_get_current_pid_tgid, |st| {
        Ok(((st.pid as u64) << 32) | st.pid as u64)
    })
}

fn h_get_current_cgroup_id(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_get_current_cgroup_id, |st| Ok(st.cgroup))
}

fn h_get_current_comm(buf: u64, size: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_get_current_comm, |st| {
        let size = size as u32 as usize;
        if size == 0 {
            return Ok((-EINVAL) as u64);
        }
        readable(buf, size)?;
        // strscpy_pad: at most size-1 bytes of the name, then NULs up to size.
        let mut out = vec![0u8; size];
        let n = st.comm.len().min(size - 1).min(15);
        out[..n].copy_from_slice(&st.comm[..n]);
        // SAFETY: checked non-null; the buffer lives in the program's stack.
        unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), buf as *mut u8, size) };
        Ok(0)
    })
}

fn h_ringbuf_output(map: u64, data: u64, size: u64, _flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_ringbuf_output, |st| {
        st.map(map, MapKind::Events)?;
        if size as usize != LogRecord::SIZE {
            return Err(format!(
                "a {size}-byte record; a LogRecord has {}",
                LogRecord::SIZE
            ));
        }
        readable(data, LogRecord::SIZE)?;
        let mut b = [0u8; LogRecord::SIZE];
        // SAFETY: checked non-null; the record lives in the program's stack.
        unsafe {
            std::ptr::copy_nonoverlapping(data as *const u8, b.as_mut_ptr(), LogRecord::SIZE)
        };
        let rec = LogRecord::from_bytes(&b).ok_or("short record")?;
        st.events.push(rec);
        Ok(0)
    })
}

type Helper = fn(u64, u64, u64, u64, u64) -> u64;

const HELPERS: &[(i32, Helper)] = &[
    (BPF_FUNC_map_lookup_elem, h_map_lookup_elem),
    (BPF_FUNC_msg_pull_data, h_msg_pull_data),
    (BPF_FUNC_msg_redirect_map, h_msg_redirect_map),
    (BPF_FUNC_msg_redirect_hash, h_msg_redirect_hash),
    (BPF_FUNC_msg_apply_bytes, h_msg_apply_bytes),
    (BPF_FUNC_msg_cork_bytes, h_msg_cork_bytes),
    (BPF_FUNC_get_current_uid_gid, h_get_current_uid_gid),
    (BPF_FUNC_get_current_pid_tgid, h_get_current_pid_tgid),
    (BPF_FUNC_get_current_cgroup_id, h_get_current_cgroup_id),
    (BPF_FUNC_get_current_comm, h_get_current_comm),
    (BPF_FUNC_ringbuf_output, h_ringbuf_output),
];

#[cfg(test)]
mod tests;
