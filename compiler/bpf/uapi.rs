//! Kernel UAPI constants, spelled as in `include/uapi/linux/bpf.h` and
//! `include/uapi/linux/bpf_common.h`.
//!
//! Only what skpc emits or decodes is here; the values are ABI and never change.
#![allow(non_upper_case_globals)]

// ---- instruction classes (code & 0x07) ----
pub const BPF_LD: u8 = 0x00;
pub const BPF_LDX: u8 = 0x01;
pub const BPF_ST: u8 = 0x02;
pub const BPF_STX: u8 = 0x03;
pub const BPF_ALU: u8 = 0x04;
pub const BPF_JMP: u8 = 0x05;
pub const BPF_JMP32: u8 = 0x06;
pub const BPF_ALU64: u8 = 0x07;

// ---- load/store size (code & 0x18) ----
pub const BPF_W: u8 = 0x00;
pub const BPF_H: u8 = 0x08;
pub const BPF_B: u8 = 0x10;
pub const BPF_DW: u8 = 0x18;

// ---- load/store mode (code & 0xe0) ----
pub const BPF_IMM: u8 = 0x00;
pub const BPF_MEM: u8 = 0x60;
/// Atomic read-modify-write (`lock *(u64 *)(r0 + 0) += r1`); decoded as unsupported.
pub const BPF_ATOMIC: u8 = 0xc0;

// ---- operand source (code & 0x08) ----
pub const BPF_K: u8 = 0x00;
pub const BPF_X: u8 = 0x08;

// ---- ALU operations (code & 0xf0) ----
pub const BPF_ADD: u8 = 0x00;
pub const BPF_SUB: u8 = 0x10;
pub const BPF_MUL: u8 = 0x20;
pub const BPF_DIV: u8 = 0x30;
pub const BPF_OR: u8 = 0x40;
pub const BPF_AND: u8 = 0x50;
pub const BPF_LSH: u8 = 0x60;
pub const BPF_RSH: u8 = 0x70;
pub const BPF_NEG: u8 = 0x80;
pub const BPF_MOD: u8 = 0x90;
pub const BPF_XOR: u8 = 0xa0;
pub const BPF_MOV: u8 = 0xb0;
pub const BPF_ARSH: u8 = 0xc0;
pub const BPF_END: u8 = 0xd0;

// ---- BPF_END source bit: byte order to convert to ----
pub const BPF_TO_LE: u8 = 0x00;
pub const BPF_TO_BE: u8 = 0x08;

// ---- jump operations (code & 0xf0) ----
pub const BPF_JA: u8 = 0x00;
pub const BPF_JEQ: u8 = 0x10;
pub const BPF_JGT: u8 = 0x20;
pub const BPF_JGE: u8 = 0x30;
pub const BPF_JSET: u8 = 0x40;
pub const BPF_JNE: u8 = 0x50;
pub const BPF_JSGT: u8 = 0x60;
pub const BPF_JSGE: u8 = 0x70;
pub const BPF_CALL: u8 = 0x80;
pub const BPF_EXIT: u8 = 0x90;
pub const BPF_JLT: u8 = 0xa0;
pub const BPF_JLE: u8 = 0xb0;
pub const BPF_JSLT: u8 = 0xc0;
pub const BPF_JSLE: u8 = 0xd0;

// ---- ld_imm64 src_reg values ----
/// `src_reg` of ld_imm64: imm is a map fd (a relocation in an ELF object).
pub const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `src_reg` of ld_imm64: imm is a map fd, insn[1].imm an offset into its value.
pub const BPF_PSEUDO_MAP_VALUE: u8 = 2;
/// `src_reg` of BPF_CALL: a bpf-to-bpf call (imm = relative insn offset).
pub const BPF_PSEUDO_CALL: u8 = 1;

// ---- helper function ids (enum bpf_func_id) ----
pub const BPF_FUNC_map_lookup_elem: i32 = 1;
pub const BPF_FUNC_map_update_elem: i32 = 2;
pub const BPF_FUNC_ktime_get_ns: i32 = 5;
pub const BPF_FUNC_tail_call: i32 = 12;
pub const BPF_FUNC_get_current_pid_tgid: i32 = 14;
pub const BPF_FUNC_get_current_uid_gid: i32 = 15;
pub const BPF_FUNC_get_current_comm: i32 = 16;
pub const BPF_FUNC_sock_map_update: i32 = 53;
pub const BPF_FUNC_msg_redirect_map: i32 = 60;
pub const BPF_FUNC_msg_apply_bytes: i32 = 61;
pub const BPF_FUNC_msg_cork_bytes: i32 = 62;
pub const BPF_FUNC_msg_pull_data: i32 = 63;
pub const BPF_FUNC_sock_hash_update: i32 = 70;
pub const BPF_FUNC_msg_redirect_hash: i32 = 71;
pub const BPF_FUNC_get_current_cgroup_id: i32 = 80;
pub const BPF_FUNC_msg_push_data: i32 = 90;
pub const BPF_FUNC_msg_pop_data: i32 = 91;
pub const BPF_FUNC_ringbuf_output: i32 = 130;

/// `(id, name)` of every helper above, for the disassembler (`call bpf_msg_pull_data#63`).
pub const HELPERS: &[(i32, &str)] = &[
    (BPF_FUNC_map_lookup_elem, "map_lookup_elem"),
    (BPF_FUNC_map_update_elem, "map_update_elem"),
    (BPF_FUNC_ktime_get_ns, "ktime_get_ns"),
    (BPF_FUNC_tail_call, "tail_call"),
    (BPF_FUNC_get_current_pid_tgid, "get_current_pid_tgid"),
    (BPF_FUNC_get_current_uid_gid, "get_current_uid_gid"),
    (BPF_FUNC_get_current_comm, "get_current_comm"),
    (BPF_FUNC_sock_map_update, "sock_map_update"),
    (BPF_FUNC_msg_redirect_map, "msg_redirect_map"),
    (BPF_FUNC_msg_apply_bytes, "msg_apply_bytes"),
    (BPF_FUNC_msg_cork_bytes, "msg_cork_bytes"),
    (BPF_FUNC_msg_pull_data, "msg_pull_data"),
    (BPF_FUNC_sock_hash_update, "sock_hash_update"),
    (BPF_FUNC_msg_redirect_hash, "msg_redirect_hash"),
    (BPF_FUNC_get_current_cgroup_id, "get_current_cgroup_id"),
    (BPF_FUNC_msg_push_data, "msg_push_data"),
    (BPF_FUNC_msg_pop_data, "msg_pop_data"),
    (BPF_FUNC_ringbuf_output, "ringbuf_output"),
];

/// Name of a helper (without the `bpf_` prefix), if it is one skpc knows.
pub fn helper_name(id: i32) -> Option<&'static str> {
    HELPERS.iter().find(|&&(i, _)| i == id).map(|&(_, n)| n)
}

// ---- SK_MSG verdicts (enum sk_action) ----
pub const SK_DROP: i32 = 0;
pub const SK_PASS: i32 = 1;

// ---- flags ----
/// `bpf_msg_redirect_{map,hash}` flag: deliver to the ingress queue of the target.
pub const BPF_F_INGRESS: u64 = 1;
/// `bpf_map_update_elem` flags, shared with the runtime.
pub use skpc_abi::{BPF_ANY, BPF_EXIST, BPF_NOEXIST};

// ---- struct sk_msg_md field offsets (the SK_MSG program's ctx, r1) ----
//
// Byte orders, as the kernel presents them:
// * `remote_ip4`, `local_ip4`, `remote_ip6[4]`, `local_ip6[4]`: network byte order
//   (the u32 loaded on little-endian holds the address bytes in memory order).
// * `remote_port`: network-order port in the *upper* 16 bits of the 32-bit word on
//   little-endian (i.e. the u32 is `htonl(port)`): `bswap32` (be32) yields the port
//   in host order in the low 16 bits.
// * `local_port`: host byte order, in the low 16 bits.
// * `family`: host order (AF_INET = 2, AF_INET6 = 10).
// * `data`, `data_end`: 64-bit pointers, read with a u64 load.
pub const SK_MSG_MD_DATA: i16 = 0;
pub const SK_MSG_MD_DATA_END: i16 = 8;
pub const SK_MSG_MD_FAMILY: i16 = 16;
pub const SK_MSG_MD_REMOTE_IP4: i16 = 20;
pub const SK_MSG_MD_LOCAL_IP4: i16 = 24;
pub const SK_MSG_MD_REMOTE_IP6: i16 = 28;
pub const SK_MSG_MD_LOCAL_IP6: i16 = 44;
pub const SK_MSG_MD_REMOTE_PORT: i16 = 60;
pub const SK_MSG_MD_LOCAL_PORT: i16 = 64;
pub const SK_MSG_MD_SIZE: i16 = 68;
pub const SK_MSG_MD_SK: i16 = 72;

// ---- struct bpf_sock_ops field offsets (the SOCK_OPS program's ctx, r1) ----
//
// `op` at 0, then the union { args[4]; reply; replylong[4] } at 4..20. Same byte
// orders as sk_msg_md: addresses and `remote_port` network order, `local_port` host.
pub const BPF_SOCK_OPS_OP: i16 = 0;
pub const BPF_SOCK_OPS_FAMILY: i16 = 20;
pub const BPF_SOCK_OPS_REMOTE_IP4: i16 = 24;
pub const BPF_SOCK_OPS_LOCAL_IP4: i16 = 28;
pub const BPF_SOCK_OPS_REMOTE_IP6: i16 = 32;
pub const BPF_SOCK_OPS_LOCAL_IP6: i16 = 48;
pub const BPF_SOCK_OPS_REMOTE_PORT: i16 = 64;
pub const BPF_SOCK_OPS_LOCAL_PORT: i16 = 68;

// ---- sock_ops `op` values ----
pub const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: i32 = 4;
pub const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: i32 = 5;

// ---- address families ----
// Defined once in skpc_abi (the runtime and the evaluator compare `sk_msg_md.family`
// with them); here typed as the immediates the generated code compares and stores.
pub const AF_INET: i32 = skpc_abi::AF_INET as i32;
pub const AF_INET6: i32 = skpc_abi::AF_INET6 as i32;

// ---- map types (enum bpf_map_type) ----
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
pub const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
pub const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

// ---- map flags (`map_flags` of BPF_MAP_CREATE) ----
/// Entries are allocated on update: required by LPM_TRIE maps.
pub const BPF_F_NO_PREALLOC: u32 = 1;

// ---- libbpf map definitions (enum libbpf_pin_type, `libbpf.h`) ----
/// The `pinning` attribute of a BTF map definition: libbpf (and aya) pin the map under
/// its name, and reuse a map already pinned there.
pub const LIBBPF_PIN_BY_NAME: u32 = 1;

// ---- program types (enum bpf_prog_type) ----
pub const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
pub const BPF_PROG_TYPE_SK_MSG: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names() {
        assert_eq!(helper_name(63), Some("msg_pull_data"));
        assert_eq!(helper_name(71), Some("msg_redirect_hash"));
        assert_eq!(helper_name(9999), None);
        // ids are unique
        for (i, (a, _)) in HELPERS.iter().enumerate() {
            assert!(HELPERS[i + 1..].iter().all(|(b, _)| a != b));
        }
    }

    #[test]
    fn ctx_layouts_are_u32_aligned_and_ordered() {
        let md = [
            SK_MSG_MD_DATA,
            SK_MSG_MD_DATA_END,
            SK_MSG_MD_FAMILY,
            SK_MSG_MD_REMOTE_IP4,
            SK_MSG_MD_LOCAL_IP4,
            SK_MSG_MD_REMOTE_IP6,
            SK_MSG_MD_LOCAL_IP6,
            SK_MSG_MD_REMOTE_PORT,
            SK_MSG_MD_LOCAL_PORT,
            SK_MSG_MD_SIZE,
            SK_MSG_MD_SK,
        ];
        assert!(md.windows(2).all(|w| w[0] < w[1] && w[0] % 4 == 0));
        assert_eq!(SK_MSG_MD_LOCAL_IP6 - SK_MSG_MD_REMOTE_IP6, 16);
        assert_eq!(SK_MSG_MD_SK % 8, 0);
        assert_eq!(BPF_SOCK_OPS_LOCAL_IP6 - BPF_SOCK_OPS_REMOTE_IP6, 16);
        assert_eq!(BPF_SOCK_OPS_REMOTE_PORT - BPF_SOCK_OPS_LOCAL_IP6, 16);
    }
}
