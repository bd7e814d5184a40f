//! The message as the program sees it: the 80-byte `struct sk_msg_md` laid out as the
//! kernel's (field offsets from `bpf::uapi`), with `data`/`data_end` pointing into the
//! VM's copy of the message bytes.

use std::net::IpAddr;

use skpc_abi::SockKey;

use crate::bpf::uapi::*;
use crate::hir::Message;

use super::VmError;

/// The size of `struct sk_msg_md`.
pub(super) const CONTEXT_SIZE: usize = 80;

/// The 80-byte `struct sk_msg_md` of `msg` as the kernel presents it.
pub(super) fn context(
    msg: &Message,
    data: u64,
    window: u64,
) -> Result<[u8; CONTEXT_SIZE], VmError> {
    let mut c = [0u8; CONTEXT_SIZE];
    let put32 = |c: &mut [u8; CONTEXT_SIZE], off: i16, v: u32| {
        c[off as usize..off as usize + 4].copy_from_slice(&v.to_ne_bytes())
    };
    c[SK_MSG_MD_DATA as usize..SK_MSG_MD_DATA as usize + 8].copy_from_slice(&data.to_ne_bytes());
    c[SK_MSG_MD_DATA_END as usize..SK_MSG_MD_DATA_END as usize + 8]
        .copy_from_slice(&(data + window).to_ne_bytes());
    put32(&mut c, SK_MSG_MD_FAMILY, msg.family);
    let (v4, v6) = (skpc_abi::AF_INET, skpc_abi::AF_INET6);
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
            (family, ip) => return Err(VmError::InconsistentAddress { family, ip }),
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

/// The sender's own sockhash key, as the SOCK_OPS program stores it: the addresses as
/// network-order words, the ports in host order; a socket whose two addresses are
/// IPv4-mapped is keyed as AF_INET.
pub(super) fn own_key(msg: &Message) -> SockKey {
    let word = |o: &[u8]| u32::from_ne_bytes([o[0], o[1], o[2], o[3]]);
    let words = |ip: IpAddr| -> [u32; 4] {
        match ip {
            IpAddr::V4(a) => [word(&a.octets()), 0, 0, 0],
            IpAddr::V6(a) => {
                let o = a.octets();
                [
                    word(&o[0..4]),
                    word(&o[4..8]),
                    word(&o[8..12]),
                    word(&o[12..16]),
                ]
            }
        }
    };
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let (family, local, remote) = match (mapped(msg.local_ip), mapped(msg.remote_ip)) {
        (Some(l), Some(r)) if msg.family == skpc_abi::AF_INET6 => (skpc_abi::AF_INET, l, r),
        _ => (msg.family, msg.local_ip, msg.remote_ip),
    };
    SockKey {
        family,
        local_ip: words(local),
        remote_ip: words(remote),
        local_port: msg.local_port as u32,
        remote_port: msg.remote_port as u32,
    }
}
