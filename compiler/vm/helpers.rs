//! The helper models: what `bpf_map_lookup_elem`, `bpf_msg_pull_data`, the redirects,
//! `apply`/`cork`, `pop_data` (whole messages only), the process helpers and `bpf_ringbuf_output` do to one run. rbpf
//! calls helpers as plain `fn`s, so the state of the current run lives in a
//! thread-local (one run at a time per thread), which [`Vm::run`](super::Vm::run) sets
//! before executing and takes back after.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use skpc_abi::{Counter, IndexEntry, LogRecord, SockKey};

use crate::bpf::uapi::*;
use crate::lower::MapKind;

use super::maps::IndexModel;
use super::{Pull, Redirect, MAP_HANDLE_BASE};

/// Why a helper model refused a call: the program did something the kernel's helper
/// would not accept (the verifier would reject it), or that the VM does not model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    #[error("given {handle:#x}, which is not a map")]
    NotAMap { handle: u64 },
    #[error("given map {map} ({given}), expected {expected}")]
    WrongMap {
        map: u64,
        given: &'static str,
        expected: &'static str,
    },
    #[error("r1 is {r1:#x}, not the context")]
    NotTheContext { r1: u64 },
    #[error("bad pointer {ptr:#x}")]
    BadPointer { ptr: u64 },
    #[error("more port array lookups than the program has calls ({calls})")]
    TooManyPortLookups { calls: usize },
    #[error("a lookup in {map} is not modelled by the VM")]
    LookupNotModelled { map: &'static str },
    #[error("a {size}-byte record; a LogRecord has {}", LogRecord::SIZE)]
    RecordSize { size: u64 },
    #[error("short record")]
    ShortRecord,
    /// The VM models a pop of the whole message only (what `discard` generates).
    #[error("a pop of bytes {start}..+{len} (flags {flags:#x}) of a {size}-byte message; only the whole message (0, size, 0) is modelled")]
    PopNotModelled {
        start: u64,
        len: u64,
        flags: u64,
        size: u32,
    },
}

pub(super) struct RunState {
    pub(super) ctx: u64,
    pub(super) buf: u64,
    pub(super) buf_len: usize,
    pub(super) size: u32,
    pub(super) maps: Vec<MapKind>,
    pub(super) counters: u64,
    pub(super) counter_slots: usize,
    pub(super) index: Arc<IndexModel>,
    /// Where the index values of this run start (one u32 per entry).
    pub(super) index_values: u64,
    pub(super) index_filled: bool,
    /// The ready flag ARRAY of this run.
    pub(super) ready: u64,
    pub(super) ready_slots: usize,
    /// The port array of this run: its entries (none unless filled), then zero cells.
    pub(super) port_values: u64,
    pub(super) port_entries: usize,
    /// Port array slots without an entry looked up so far, and their zero cells.
    pub(super) zero_cells: HashMap<u32, usize>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) pid: u32,
    pub(super) cgroup: u64,
    pub(super) comm: Vec<u8>,
    pub(super) events: Vec<LogRecord>,
    pub(super) pulls: Vec<Pull>,
    pub(super) redirect: Option<(Redirect, u64)>,
    pub(super) apply: Option<u32>,
    pub(super) cork: Option<u32>,
    /// The whole message was popped (`discard`): nothing of it leaves.
    pub(super) popped: bool,
    pub(super) calls: Vec<i32>,
    /// The first call a model refused: the helper and why.
    pub(super) error: Option<(i32, HelperError)>,
}

thread_local! {
    pub(super) static STATE: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

const EINVAL: i64 = 22;
const EFAULT: i64 = 14;

/// Runs `f` on the current run's state, recording the call; a model error stops
/// nothing in rbpf but fails the run afterwards.
fn with_state(id: i32, f: impl FnOnce(&mut RunState) -> Result<u64, HelperError>) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(st) = s.as_mut() else { return 0 };
        st.calls.push(id);
        match f(st) {
            Ok(v) => v,
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some((id, e));
                }
                (-EFAULT) as u64
            }
        }
    })
}

pub(super) fn helper_name(id: i32) -> String {
    crate::bpf::uapi::helper_name(id)
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{id}"))
}

impl RunState {
    /// The kind of the map `handle` stands for.
    fn map_kind(&self, handle: u64) -> Result<MapKind, HelperError> {
        let idx = handle.wrapping_sub(MAP_HANDLE_BASE);
        match self.maps.get(idx as usize) {
            Some(k) if handle >= MAP_HANDLE_BASE => Ok(*k),
            _ => Err(HelperError::NotAMap { handle }),
        }
    }

    fn map(&self, handle: u64, want: MapKind) -> Result<(), HelperError> {
        match self.map_kind(handle)? {
            k if k == want => Ok(()),
            k => Err(HelperError::WrongMap {
                map: handle.wrapping_sub(MAP_HANDLE_BASE),
                given: k.name(),
                expected: want.name(),
            }),
        }
    }

    fn check_ctx(&self, msg: u64) -> Result<(), HelperError> {
        if msg != self.ctx {
            return Err(HelperError::NotTheContext { r1: msg });
        }
        Ok(())
    }
}

/// Pointers the program hands to helpers point into its stack (or the context); rbpf
/// does not tell us where the stack is, so we can only refuse the obviously wrong.
fn readable(ptr: u64, len: usize) -> Result<(), HelperError> {
    if ptr < 0x10000 || ptr.checked_add(len as u64).is_none() {
        return Err(HelperError::BadPointer { ptr });
    }
    Ok(())
}

fn h_map_lookup_elem(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_map_lookup_elem, |st| {
        // ARRAY-like maps: a u32 key, NULL past the end.
        let slot = |key: u64, slots: usize| -> Result<Option<usize>, HelperError> {
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
                            return Err(HelperError::TooManyPortLookups {
                                calls: st.index.zero_cells,
                            });
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
            other => Err(HelperError::LookupNotModelled { map: other.name() }),
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

fn h_msg_pop_data(msg: u64, start: u64, len: u64, flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_pop_data, |st| {
        st.check_ctx(msg)?;
        // Only what `discard` generates: every byte, no flags, once. A partial pop would
        // need the kernel's scatterlist surgery, which the VM does not model.
        if start != 0 || len != st.size as u64 || flags != 0 || st.popped {
            return Err(HelperError::PopNotModelled {
                start,
                len,
                flags,
                size: st.size,
            });
        }
        st.popped = true;
        // The kernel empties the message; no pulled bytes remain readable.
        // SAFETY: ctx is the 80-byte context of this run.
        unsafe {
            ((st.ctx + SK_MSG_MD_DATA as u64) as *mut u64).write_unaligned(st.buf);
            ((st.ctx + SK_MSG_MD_DATA_END as u64) as *mut u64).write_unaligned(st.buf);
        }
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
            return Err(HelperError::RecordSize { size });
        }
        readable(data, LogRecord::SIZE)?;
        let mut b = [0u8; LogRecord::SIZE];
        // SAFETY: checked non-null; the record lives in the program's stack.
        unsafe {
            std::ptr::copy_nonoverlapping(data as *const u8, b.as_mut_ptr(), LogRecord::SIZE)
        };
        let rec = LogRecord::from_bytes(&b).ok_or(HelperError::ShortRecord)?;
        st.events.push(rec);
        Ok(0)
    })
}

pub(super) type Helper = fn(u64, u64, u64, u64, u64) -> u64;

pub(super) const HELPERS: &[(i32, Helper)] = &[
    (BPF_FUNC_map_lookup_elem, h_map_lookup_elem),
    (BPF_FUNC_msg_pull_data, h_msg_pull_data),
    (BPF_FUNC_msg_redirect_map, h_msg_redirect_map),
    (BPF_FUNC_msg_redirect_hash, h_msg_redirect_hash),
    (BPF_FUNC_msg_apply_bytes, h_msg_apply_bytes),
    (BPF_FUNC_msg_cork_bytes, h_msg_cork_bytes),
    (BPF_FUNC_msg_pop_data, h_msg_pop_data),
    (BPF_FUNC_get_current_uid_gid, h_get_current_uid_gid),
    (BPF_FUNC_get_current_pid_tgid, h_get_current_pid_tgid),
    (BPF_FUNC_get_current_cgroup_id, h_get_current_cgroup_id),
    (BPF_FUNC_get_current_comm, h_get_current_comm),
    (BPF_FUNC_ringbuf_output, h_ringbuf_output),
];
