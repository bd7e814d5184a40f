//! The helper models: what `bpf_map_lookup_elem`, `bpf_msg_pull_data`, the redirects,
//! `apply`/`cork`, `pop_data`/`push_data` (a model of the message's bytes, see
//! [`Rewrite`]), the process helpers and `bpf_ringbuf_output` do to one run. rbpf
//! calls helpers as plain `fn`s, so the state of the current run lives in a
//! thread-local (one run at a time per thread), which [`Vm::run`](super::Vm::run) sets
//! before executing and takes back after.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use skpc_abi::{IndexEntry, LogRecord, SockKey};

use crate::bpf::uapi::*;
use crate::lower::MapKind;

use super::maps::IndexModel;
use super::sets::{SetHit, SetModel};
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
    /// A pop/push/pull the message model cannot hold: more than [`REWRITE_LIMIT`] bytes
    /// of a rewritten message, or a pull of a rewritten message wider than the VM's
    /// scratch window.
    #[error("{what} at {start}..+{len} of a {size}-byte message is beyond what the VM models")]
    RewriteNotModelled {
        what: &'static str,
        start: u32,
        len: u32,
        size: u32,
    },
}

/// The most bytes the model of a rewritten message holds (past them the message's bytes
/// are not modelled; a message of `len = 4294967295` is still popped to its first bytes).
pub(super) const REWRITE_LIMIT: usize = 1 << 20;

/// A message after `bpf_msg_pop_data` or `bpf_msg_push_data` changed it: its first
/// bytes (the given payload as the program left it, then what pushes inserted; bytes
/// past the given payload read as zeros, as the test cases' convention has it) and its
/// size. A pull of it copies bytes into the run's scratch region, where the program may
/// write them; `sync` puts them back.
#[derive(Clone, Debug)]
pub(super) struct Rewrite {
    pub(super) known: Vec<u8>,
    pub(super) size: u32,
    /// The bytes `start..end` of the message sit in the scratch region.
    pub(super) window: Option<(u32, u32)>,
}

impl Rewrite {
    /// Copies the scratch window (which the program may have written) back.
    pub(super) fn sync(&mut self, scratch: u64) {
        if let Some((start, end)) = self.window {
            let (start, end) = (start as usize, end as usize);
            if self.known.len() < end {
                self.known.resize(end, 0);
            }
            // SAFETY: a window is at most the scratch region's length (checked by the
            // pull that made it), and the region lives for the whole run.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    scratch as *const u8,
                    self.known[start..end].as_mut_ptr(),
                    end - start,
                )
            };
        }
    }

    /// The message's bytes (zeros past the known ones), if the model holds them all.
    pub(super) fn bytes(&self) -> Option<Vec<u8>> {
        let size = self.size as usize;
        if size > REWRITE_LIMIT {
            return None;
        }
        let mut b = self.known.clone();
        b.resize(size, 0);
        Some(b)
    }
}

pub(super) struct RunState {
    pub(super) ctx: u64,
    pub(super) buf: u64,
    pub(super) buf_len: usize,
    pub(super) size: u32,
    pub(super) maps: Vec<MapKind>,
    pub(super) counters: u64,
    pub(super) index: Arc<IndexModel>,
    /// Where the index values of this run start (`IndexEntry::VALUE_SIZE` bytes per
    /// entry).
    pub(super) index_values: u64,
    pub(super) index_filled: bool,
    /// The ready flag ARRAY of this run.
    pub(super) ready: u64,
    pub(super) ready_slots: usize,
    /// The set maps (see `sets`), the two value cells a lookup points at (0 and
    /// `SET_MEMBER`) and the ready flag ARRAY of this run.
    pub(super) sets: Arc<SetModel>,
    pub(super) set_cells: u64,
    /// This run's copy of `SetModel::values`.
    pub(super) set_values: u64,
    pub(super) sets_ready: u64,
    pub(super) sets_ready_slots: usize,
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
    /// The sender's own sockhash key, and its peer's.
    pub(super) own_key: SockKey,
    /// The message after a pop or push (none before the first).
    pub(super) rewrite: Option<Rewrite>,
    /// The region a pull of a rewritten message copies bytes into.
    pub(super) scratch: u64,
    pub(super) scratch_len: usize,
    /// From this pull on (counting from 0), a pull of bytes the message does not give
    /// succeeds (they read as zeros): the second run of [`Vm::run`](super::Vm::run), for
    /// a reply to such a message; the pulls before it fail as in the first run.
    pub(super) unseen_readable_from: Option<usize>,
    pub(super) apply: Option<u32>,
    pub(super) cork: Option<u32>,
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
    /// The message's size now: after a pop or push, the rewritten message's.
    fn msg_size(&self) -> u32 {
        self.rewrite.as_ref().map_or(self.size, |r| r.size)
    }

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

    /// The message as a [`Rewrite`], made from the given bytes (as the program may have
    /// written them) on the first pop or push; the scratch window synced back.
    fn rewrite(&mut self) -> &mut Rewrite {
        let scratch = self.scratch;
        let (buf, buf_len, size) = (self.buf, self.buf_len, self.size);
        let r = self.rewrite.get_or_insert_with(|| {
            let n = buf_len.min(size as usize);
            let mut known = vec![0u8; n];
            // SAFETY: buf holds buf_len bytes for the whole run.
            unsafe { std::ptr::copy_nonoverlapping(buf as *const u8, known.as_mut_ptr(), n) };
            Rewrite {
                known,
                size,
                window: None,
            }
        });
        r.sync(scratch);
        r.window = None;
        r
    }

    /// data = data_end: the kernel recomputes both after a pop or push; the program must
    /// pull before it reads again.
    fn empty_window(&self) {
        // SAFETY: ctx is the 80-byte context of this run.
        unsafe {
            ((self.ctx + SK_MSG_MD_DATA as u64) as *mut u64).write_unaligned(self.scratch);
            ((self.ctx + SK_MSG_MD_DATA_END as u64) as *mut u64).write_unaligned(self.scratch);
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
            // An ARRAY of one entry: the whole value of every counter.
            MapKind::Counters { chunk: 0 } => Ok(slot(key, 1)?.map_or(0, |_| st.counters)),
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
                Ok(st.index.slots.get(&k).map_or(0, |&at| {
                    st.index_values + (IndexEntry::VALUE_SIZE * at) as u64
                }))
            }
            MapKind::SetsReady => {
                Ok(slot(key, st.sets_ready_slots)?.map_or(0, |k| st.sets_ready + 4 * k as u64))
            }
            MapKind::Set { .. } => {
                let n = map.wrapping_sub(MAP_HANDLE_BASE) as u32;
                let size = st.sets.key_size(n).unwrap_or(0);
                readable(key, size)?;
                let mut k = vec![0u8; size];
                // SAFETY: checked non-null; the key lives in the program's stack or the
                // message (a payload slice), `size` bytes the verifier would check.
                unsafe { std::ptr::copy_nonoverlapping(key as *const u8, k.as_mut_ptr(), size) };
                Ok(match st.sets.lookup(n, &k, st.index_filled) {
                    SetHit::Miss => 0,
                    SetHit::Zero => st.set_cells,
                    SetHit::Member => st.set_cells + 1,
                    SetHit::Value(at) => st.set_values + at as u64,
                })
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
        let size = st.msg_size();
        let unseen = st.rewrite.is_none() && end as usize > st.buf_len;
        if flags == 0
            && start < end
            && end <= size
            && (st.rewrite.is_some()
                || (unseen
                    && st
                        .unseen_readable_from
                        .is_some_and(|from| st.pulls.len() >= from)))
        {
            // A rewritten message: its bytes start..end go to the scratch region.
            let (scratch, scratch_len) = (st.scratch, st.scratch_len);
            let r = st.rewrite();
            if (end - start) as usize > scratch_len {
                return Err(HelperError::RewriteNotModelled {
                    what: "a pull",
                    start,
                    len: end - start,
                    size,
                });
            }
            let mut bytes = vec![0u8; (end - start) as usize];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = r.known.get(start as usize + i).copied().unwrap_or(0);
            }
            r.window = Some((start, end));
            // SAFETY: the scratch region holds scratch_len bytes; ctx is 80 bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), scratch as *mut u8, bytes.len());
                ((st.ctx + SK_MSG_MD_DATA as u64) as *mut u64).write_unaligned(scratch);
                ((st.ctx + SK_MSG_MD_DATA_END as u64) as *mut u64)
                    .write_unaligned(scratch + bytes.len() as u64);
            }
            st.pulls.push(Pull {
                start,
                end,
                flags,
                result: 0,
            });
            return Ok(0);
        }
        let result = if flags != 0 || end <= start || start >= size || end > size {
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
        // The sender and its peer are in the sockhash (both ends enforced, every socket
        // under its own key); any other key finds no socket.
        let known = key == st.own_key || key == st.own_key.peer();
        let ret = if known && flags & !BPF_F_INGRESS == 0 {
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
        // u32 arguments, as the helper's prototype says. The kernel refuses flags, a start
        // past the last byte and an end past the message.
        let (start, len) = (start as u32, len as u32);
        let size = st.msg_size();
        // The whole message, what `discard` pops, always goes (even an empty one, which
        // the kernel never hands the program).
        let whole = start == 0 && len == size;
        if flags != 0 || !whole && (start >= size || start as u64 + len as u64 > size as u64) {
            return Ok((-EINVAL) as u64);
        }
        let r = st.rewrite();
        let (s, e) = (start as usize, start as usize + len as usize);
        if s < r.known.len() {
            let e = e.min(r.known.len());
            r.known.drain(s..e);
        }
        r.size -= len;
        st.empty_window();
        Ok(0)
    })
}

fn h_msg_push_data(msg: u64, start: u64, len: u64, flags: u64, _: u64) -> u64 {
    with_state(BPF_FUNC_msg_push_data, |st| {
        st.check_ctx(msg)?;
        let (start, len) = (start as u32, len as u32);
        let size = st.msg_size();
        if flags != 0 || start > size || size as u64 + len as u64 > u32::MAX as u64 {
            return Ok((-EINVAL) as u64);
        }
        if len == 0 {
            return Ok(0);
        }
        let r = st.rewrite();
        if start as usize + len as usize > REWRITE_LIMIT {
            return Err(HelperError::RewriteNotModelled {
                what: "a push",
                start,
                len,
                size,
            });
        }
        // The kernel's new bytes are whatever its fresh page holds; zeros here.
        if r.known.len() < start as usize {
            r.known.resize(start as usize, 0);
        }
        let at = start as usize;
        r.known
            .splice(at..at, std::iter::repeat(0u8).take(len as usize));
        r.size += len;
        st.empty_window();
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
    (BPF_FUNC_msg_push_data, h_msg_push_data),
    (BPF_FUNC_get_current_uid_gid, h_get_current_uid_gid),
    (BPF_FUNC_get_current_pid_tgid, h_get_current_pid_tgid),
    (BPF_FUNC_get_current_cgroup_id, h_get_current_cgroup_id),
    (BPF_FUNC_get_current_comm, h_get_current_comm),
    (BPF_FUNC_ringbuf_output, h_ringbuf_output),
];
