//! The few raw bpf(2) commands the runtime issues itself: socket map updates with a
//! 64-bit value (aya passes a 4-byte fd, but the kernel reads `value_size` bytes, and
//! skp_peers has 8), batch updates that fill the rule index (aya 0.13 has no batch
//! operations), the cgroup links of the SOCK_OPS program (aya 0.13 cannot update a
//! link's program), and the `*_GET_NEXT_ID` walks that tests use to prove that nothing
//! is left in the kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_DELETE_ELEM: i64 = 3;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_OBJ_PIN: i64 = 6;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_PROG_DETACH: i64 = 9;
const BPF_PROG_GET_NEXT_ID: i64 = 11;
const BPF_MAP_GET_NEXT_ID: i64 = 12;
/// `BPF_SK_MSG_VERDICT`.
const BPF_SK_MSG_VERDICT: u64 = 7;
const BPF_MAP_UPDATE_BATCH: i64 = 26;
const BPF_LINK_CREATE: i64 = 28;
const BPF_LINK_UPDATE: i64 = 29;
const BPF_LINK_GET_NEXT_ID: i64 = 31;
/// `BPF_CGROUP_SOCK_OPS`.
const BPF_CGROUP_SOCK_OPS: u64 = 3;
/// `BPF_F_REPLACE`: BPF_LINK_UPDATE only if the link still runs the program it names.
const BPF_F_REPLACE: u64 = 1 << 2;

pub(crate) use skpc_abi::BPF_ANY;
/// The kernel's internal `ENOTSUPP` (524), which leaks to user space from map
/// operations a map type does not implement.
pub(crate) const ENOTSUPP: i32 = 524;

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded union bpf_attr of the size we pass; the kernel
    // reads (and for some commands writes) within it, and reads user pointers in it
    // that point to live buffers of the sizes the map expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Puts socket `sock` into the socket map `map` under `key` (any key size).
pub(crate) fn sockmap_update(
    map: BorrowedFd<'_>,
    key: &[u8],
    sock: BorrowedFd<'_>,
    flags: u64,
) -> io::Result<()> {
    let value: u64 = sock.as_raw_fd() as u64;
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = &value as *const u64 as u64;
    attr[3] = flags;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Sets `key` to `value` in `map` (sizes as the map was created with).
pub(crate) fn map_update(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_ptr() as u64;
    attr[3] = flags;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// BPF_MAP_UPDATE_BATCH (Linux 5.6+): sets every entry in one call; `keys` and `values`
/// hold them back to back, `key_size` and `value_size` bytes each (the map's sizes:
/// the kernel reads that many per entry). On error, also how many entries went in
/// before it (the kernel stops at the first failure).
pub(crate) fn map_update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
    elem_flags: u64,
) -> Result<(), (u32, io::Error)> {
    let count = keys.len().checked_div(key_size).unwrap_or(0);
    if key_size == 0
        || keys.len() != count * key_size
        || values.len() != count * value_size
        || u32::try_from(count).is_err()
    {
        return Err((0, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // union bpf_attr, batch: in_batch, out_batch, keys, values, count (u32) and
    // map_fd (u32), elem_flags, flags.
    let mut attr = [0u64; 16];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = count as u64 | ((map.as_raw_fd() as u32 as u64) << 32);
    attr[5] = elem_flags;
    match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(_) => Ok(()),
        // The kernel writes back how many it processed.
        Err(e) => Err((attr[4] as u32, e)),
    }
}

/// Deletes `key` from `map`.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(|_| ())
}

/// How many keys `map` (with keys of `key_size` bytes) holds, walked with
/// `BPF_MAP_GET_NEXT_KEY` (entries may come and go during the walk: a snapshot-ish count).
pub(crate) fn map_count(map: BorrowedFd<'_>, key_size: usize) -> usize {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0;
    let mut first = true;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = map.as_raw_fd() as u32 as u64;
        // A null key asks for the first one.
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).is_err() {
            return count;
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// The value of `key` in `map`, into `value` (which must hold the kernel's whole value:
/// for a per-CPU map, the value size rounded up to 8 bytes, once per possible CPU).
pub(crate) fn map_lookup_into(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &mut [u64],
) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
}

/// The u32 value of `key` in `map` (an ARRAY of u32, such as `skp_sets`).
pub(crate) fn map_lookup_u32(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<u32> {
    let mut value = [0u32; 1];
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| value[0])
}

/// Whether `key` is in `map` (a socket map's user-space value is the 8-byte cookie).
pub(crate) fn map_has(map: BorrowedFd<'_>, key: &[u8]) -> bool {
    let mut value = [0u64; 1];
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).is_ok()
}

/// An SK_MSG program attached to a socket map as its BPF_SK_MSG_VERDICT (PROG_ATTACH:
/// aya's `SkMsg::attach` wants a typed `SockHash` whose value is a 4-byte fd, but
/// skp_peers has 8-byte values). Detached on drop.
pub(crate) struct SkMsgAttachment {
    map: OwnedFd,
    prog: OwnedFd,
}

impl SkMsgAttachment {
    pub(crate) fn attach(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<SkMsgAttachment> {
        let prog = prog.try_clone_to_owned()?;
        let map = map.try_clone_to_owned()?;
        let mut attr = [0u64; 16];
        attr[0] = (map.as_raw_fd() as u32 as u64) | ((prog.as_raw_fd() as u32 as u64) << 32);
        attr[1] = BPF_SK_MSG_VERDICT;
        bpf(BPF_PROG_ATTACH, &mut attr)?;
        Ok(SkMsgAttachment { map, prog })
    }
}

impl Drop for SkMsgAttachment {
    fn drop(&mut self) {
        let mut attr = [0u64; 16];
        attr[0] =
            (self.map.as_raw_fd() as u32 as u64) | ((self.prog.as_raw_fd() as u32 as u64) << 32);
        attr[1] = BPF_SK_MSG_VERDICT;
        let _ = bpf(BPF_PROG_DETACH, &mut attr);
    }
}

/// A SOCK_OPS program attached to a cgroup through a bpf_link (BPF_LINK_CREATE, Linux
/// 5.7+; it coexists with other programs on the cgroup). aya's `SockOps::attach` makes
/// the same link but hands out no way to change its program; this one can
/// ([`CgroupLink::replace`]). Closing the link's descriptor (the drop) detaches it.
pub(crate) struct CgroupLink {
    link: OwnedFd,
}

impl CgroupLink {
    pub(crate) fn sock_ops(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<CgroupLink> {
        // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags (u32 each).
        let mut attr = [0u64; 16];
        attr[0] = (prog.as_raw_fd() as u32 as u64) | ((cgroup.as_raw_fd() as u32 as u64) << 32);
        attr[1] = BPF_CGROUP_SOCK_OPS;
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: the kernel returned a new descriptor (O_CLOEXEC) that nothing else owns.
        Ok(CgroupLink {
            link: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// BPF_LINK_UPDATE: the link runs `new` instead of `old`, in one step for every
    /// socket of the cgroup (the kernel swaps the program in the cgroup's effective
    /// array). Fails, changing nothing, if the link does not run `old`.
    pub(crate) fn replace(&self, old: BorrowedFd<'_>, new: BorrowedFd<'_>) -> io::Result<()> {
        // union bpf_attr, link_update: link_fd, new_prog_fd, flags, old_prog_fd.
        let mut attr = [0u64; 16];
        attr[0] = (self.link.as_raw_fd() as u32 as u64) | ((new.as_raw_fd() as u32 as u64) << 32);
        attr[1] = BPF_F_REPLACE | ((old.as_raw_fd() as u32 as u64) << 32);
        bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
    }
}

/// Pins the BPF object `fd` (a program or a map) at `path` on a bpffs.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // union bpf_attr, obj: pathname (u64), bpf_fd, file_flags.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Whether a BPF object with this id still exists: walks the kernel's id list with
/// `*_GET_NEXT_ID`. Deliberately not `*_GET_FD_BY_ID`: opening a PROG_ARRAY that is
/// being torn down takes a new user reference, and dropping it a second time schedules
/// the array's clear twice, which leaks the map in the kernel (seen on 6.18).
fn exists(cmd: i64, id: u32) -> bool {
    let mut attr = [0u64; 16];
    attr[0] = id.saturating_sub(1) as u64;
    match bpf(cmd, &mut attr) {
        Ok(_) => (attr[0] >> 32) as u32 == id,
        Err(_) => false,
    }
}

/// Whether the program with this id is still in the kernel.
pub fn prog_exists(id: u32) -> bool {
    exists(BPF_PROG_GET_NEXT_ID, id)
}

/// Whether the map with this id is still in the kernel.
pub fn map_exists(id: u32) -> bool {
    exists(BPF_MAP_GET_NEXT_ID, id)
}

/// Whether the link with this id is still in the kernel.
pub fn link_exists(id: u32) -> bool {
    exists(BPF_LINK_GET_NEXT_ID, id)
}
