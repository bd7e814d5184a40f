//! One run: the message, counters and index maps laid out in memory rbpf may touch,
//! the helpers' state set up, the bytecode executed, and afterwards what the program
//! must not have done (a refused helper call, a store into the index or the context,
//! a return value other than SK_PASS/SK_DROP) turned into an error.

use std::collections::HashMap;
use std::sync::Arc;

use skpc_abi::{Counter, INDEX_READY, SETS_READY, SET_MEMBER};

use crate::bpf::uapi::{BPF_F_INGRESS, SK_PASS};
use crate::hir::{Decision, Message, SockSlot, Target, Verdict};

use super::context::{context, own_key, CONTEXT_SIZE};
use super::helpers::{helper_name, RunState, HELPERS, STATE};
use super::{IndexState, Redirect, RunConfig, Vm, VmError, VmOutcome, MAX_WINDOW};

/// The size of the region a pull of a rewritten message copies bytes into: a reply is at
/// most `hir::MAX_REPLY` bytes; a wider pull is refused as not modelled.
const SCRATCH: usize = 64 * 1024;

fn region8(v: &mut [u8]) -> std::ops::Range<u64> {
    let start = v.as_mut_ptr() as u64;
    start..start + v.len() as u64
}

impl Vm {
    /// Runs the program once on `msg`.
    ///
    /// Bytes past the payload a message gives (`len` larger than its payload) are unseen:
    /// a pull that reaches them fails, so a rule that tests them is false, as the
    /// evaluator has it. A reply does not read them but must pull the whole message
    /// when it is exactly as long as the reply (no pop or push before): when a run drops
    /// because its last pull reached unseen bytes (whatever earlier pulls did: a protocol
    /// parser's window, a payload test past the end), the program runs again with
    /// unseen bytes readable as zeros from that last pull on, and a reply of that run
    /// (whose pulls before the last are the first run's) is the outcome.
    pub fn run(&self, msg: &Message, cfg: &RunConfig) -> Result<VmOutcome, VmError> {
        let strict = self.run_once(msg, cfg, None)?;
        let unseen = |p: &crate::vm::Pull| {
            p.result != 0
                && p.flags == 0
                && p.start < p.end
                && p.end <= msg.len
                && p.end as usize > msg.payload.len()
        };
        let only_last_unseen = match strict.pulls.split_last() {
            // Earlier pulls fail or succeed alike in both runs: only pulls from the
            // last one on read unseen bytes in the second.
            Some((last, _)) => unseen(last),
            None => false,
        };
        if strict.decision.verdict != Verdict::Drop || !only_last_unseen {
            return Ok(strict);
        }
        match self.run_once(msg, cfg, Some(strict.pulls.len() - 1)) {
            Ok(second)
                if matches!(second.decision.verdict, Verdict::Reply(_))
                    && second.pulls.len() == strict.pulls.len()
                    && second.pulls[..second.pulls.len() - 1]
                        == strict.pulls[..strict.pulls.len() - 1] =>
            {
                Ok(second)
            }
            _ => Ok(strict),
        }
    }

    fn run_once(
        &self,
        msg: &Message,
        cfg: &RunConfig,
        unseen_readable_from: Option<usize>,
    ) -> Result<VmOutcome, VmError> {
        if (msg.payload.len() as u64) > msg.len as u64 {
            return Err(VmError::PayloadLongerThanMessage {
                payload: msg.payload.len(),
                len: msg.len,
            });
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
            std::ptr::copy_nonoverlapping(
                ctx_bytes.as_ptr(),
                ctx.as_mut_ptr() as *mut u8,
                CONTEXT_SIZE,
            )
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
        // The set maps' values (0 and SET_MEMBER, the cells a lookup points at) and
        // their ready flag, filled with the index or not at all.
        let mut set_cells = vec![0u8, SET_MEMBER];
        let set_cells_range = region8(&mut set_cells);
        let mut set_values = self.sets.values.clone();
        let set_values_range = region8(&mut set_values);
        let mut sets_ready = vec![0u32; self.sets.ready_slots as usize];
        if filled {
            if let Some(slot) = sets_ready.first_mut() {
                *slot = SETS_READY;
            }
        }
        let sets_ready_before = sets_ready.clone();
        let sets_ready_range = region(&mut sets_ready);
        let index_range = region(&mut index_values);
        let ready_range = region(&mut ready);
        let ports_range = region(&mut port_values);

        // Where a pull of a rewritten message (after a pop or push) puts its bytes.
        let mut scratch = vec![0u8; SCRATCH];
        let scratch_range = region8(&mut scratch);
        let own = own_key(msg);
        let state = RunState {
            ctx: ctx_ptr as u64,
            buf: buf_ptr,
            buf_len: buf.len(),
            size: msg.len,
            maps: self.maps.iter().map(|m| m.kind).collect(),
            counters: counters.as_mut_ptr() as u64,
            index: Arc::clone(&self.index),
            index_values: index_range.start,
            index_filled: filled,
            ready: ready_range.start,
            ready_slots: ready.len(),
            port_values: ports_range.start,
            port_entries,
            sets: Arc::clone(&self.sets),
            set_cells: set_cells_range.start,
            set_values: set_values_range.start,
            sets_ready: sets_ready_range.start,
            sets_ready_slots: sets_ready.len(),
            zero_cells: HashMap::new(),
            uid: msg.uid,
            gid: msg.gid,
            pid: msg.pid,
            cgroup: msg.cgroup,
            comm: msg.comm.clone(),
            events: Vec::new(),
            pulls: Vec::new(),
            redirect: None,
            own_key: own,
            rewrite: None,
            scratch: scratch_range.start,
            scratch_len: SCRATCH,
            unseen_readable_from,
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

        // The counters' address, in a copy of the code when the program takes it.
        let code: std::borrow::Cow<'_, [u8]> = if self.counter_refs.is_empty() {
            std::borrow::Cow::Borrowed(&self.code)
        } else {
            let mut code = self.code.clone();
            for &(at, off) in &self.counter_refs {
                let addr = counters_range.start + off as u64;
                code[at + 4..at + 8].copy_from_slice(&(addr as u32).to_le_bytes());
                code[at + 12..at + 16].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
            }
            std::borrow::Cow::Owned(code)
        };
        let mut vm = rbpf::EbpfVmMbuff::new(Some(&code)).map_err(VmError::Rejected)?;
        for (id, f) in HELPERS {
            vm.register_helper(*id as u32, *f)
                .map_err(VmError::HelperRegistration)?;
        }
        for range in [
            counters_range,
            index_range,
            ready_range,
            ports_range,
            set_cells_range,
            set_values_range,
            sets_ready_range,
            scratch_range.clone(),
        ] {
            if !range.is_empty() {
                vm.register_allowed_memory(range);
            }
        }
        // SAFETY: the slices stay alive for the whole run; rbpf and the helpers write
        // through raw pointers derived from them, as the kernel does with its buffers.
        let (mem, mbuff) = unsafe {
            (
                std::slice::from_raw_parts(buf_ptr as *const u8, buf.len()),
                std::slice::from_raw_parts(ctx_ptr as *const u8, CONTEXT_SIZE),
            )
        };
        let result = vm.execute_program(mem, mbuff);
        let state = STATE
            .with(|s| s.borrow_mut().take())
            .ok_or(VmError::StateLost)?;
        // A helper the model refused comes first: the fault after it (the program using
        // the -EFAULT it got as a pointer, say) is only its consequence.
        if let Some((id, refusal)) = state.error {
            return Err(VmError::Helper {
                helper: helper_name(id),
                refusal,
            });
        }
        let ret = result.map_err(VmError::Fault)?;
        // (Unfilled, `port_entries` is 0.)
        let ports_kept = port_values[..port_entries] == self.index.port_values[..port_entries]
            && port_values[port_entries..].iter().all(|&v| v == 0);
        let sets_kept = set_cells == [0, SET_MEMBER]
            && set_values == self.sets.values
            && sets_ready == sets_ready_before;
        if (filled && index_values != self.index.values)
            || ready != ready_before
            || !ports_kept
            || !sets_kept
        {
            return Err(VmError::IndexWritten);
        }
        // The context is read-only: only the helpers may move data/data_end.
        let mut after = [0u8; CONTEXT_SIZE];
        // SAFETY: ctx is 80 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ctx.as_ptr() as *const u8,
                after.as_mut_ptr(),
                CONTEXT_SIZE,
            )
        };
        if after[16..] != ctx_bytes[16..] {
            let offset = (16..CONTEXT_SIZE)
                .find(|&i| after[i] != ctx_bytes[i])
                .unwrap_or(16);
            return Err(VmError::ContextWritten { offset });
        }

        // The message as it leaves: rewritten (its scratch window synced back), or the
        // given bytes as the program may have written them.
        let mut rewrite = state.rewrite.clone();
        if let Some(r) = &mut rewrite {
            r.sync(scratch_range.start);
        }
        let message = || match &rewrite {
            Some(r) => r.bytes().ok_or(VmError::Unmodelled(
                "a rewritten message of more than 1 MiB",
            )),
            None if msg.len as usize <= buf.len() => Ok(buf[..msg.len as usize].to_vec()),
            None => Err(VmError::Unmodelled(
                "a redirect to the sender of bytes the message does not give",
            )),
        };
        let verdict = match ret {
            0 => Verdict::Drop,
            1 => match (&state.redirect, state.cork) {
                (Some((r, ok)), _) if *ok == SK_PASS as u64 => match r {
                    Redirect::Map { key, flags } => Verdict::Redirect {
                        ingress: flags & BPF_F_INGRESS != 0,
                        target: Target::Sock(SockSlot::Const(*key)),
                    },
                    // To its own receive queue: the sender reads the (rewritten) message.
                    // A connection to itself (its peer's key is its own) whose message the
                    // program left as it was is a redirect to the peer.
                    Redirect::Hash { key, flags }
                        if *key == state.own_key
                            && (state.own_key != state.own_key.peer()
                                || rewrite.is_some()
                                || buf != msg.payload) =>
                    {
                        if flags & BPF_F_INGRESS == 0 {
                            return Err(VmError::Unmodelled(
                                "an egress redirect to the sender's own socket",
                            ));
                        }
                        Verdict::Reply(message()?)
                    }
                    Redirect::Hash { flags, .. } => Verdict::Redirect {
                        ingress: flags & BPF_F_INGRESS != 0,
                        target: Target::Peer,
                    },
                },
                // A message popped to nothing that passes is a discard: nothing is sent.
                _ if rewrite.as_ref().is_some_and(|r| r.size == 0) => Verdict::Discard,
                _ if rewrite.is_some() => {
                    return Err(VmError::Unmodelled(
                        "a rewritten message passed to the peer",
                    ))
                }
                (_, Some(n)) => Verdict::Cork(n),
                _ => Verdict::Pass,
            },
            other => return Err(VmError::BadReturn(other)),
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
