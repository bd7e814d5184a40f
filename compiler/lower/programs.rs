//! The two small programs beside the verdict program: the entry program (a tail call
//! into the policy) and the SOCK_OPS program that fills the sockhash; and the `SockKey`
//! both it and peer redirects build from their context.

use skpc_abi::SockKey;

use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use crate::hir::Cond;

use super::addr::MAPPED_WORD2;
use super::lir::{self, Assembled};
use super::maps::{MapId, Maps};
use super::{Gen, Options, STACK_READY_KEY, STACK_SOCK_KEY};

/// What the SOCK_OPS program returns: 1 is "allow" for every cgroup program (0 makes
/// the cgroup hook report -EPERM); the established callbacks do not act on it.
const SOCK_OPS_DONE: i32 = 1;

/// Which context layout a key is built from.
#[derive(Clone, Copy)]
pub(super) struct CtxLayout {
    family: i16,
    local_ip4: i16,
    remote_ip4: i16,
    local_ip6: i16,
    remote_ip6: i16,
    local_port: i16,
    remote_port: i16,
}

pub(super) const SK_MSG_LAYOUT: CtxLayout = CtxLayout {
    family: SK_MSG_MD_FAMILY,
    local_ip4: SK_MSG_MD_LOCAL_IP4,
    remote_ip4: SK_MSG_MD_REMOTE_IP4,
    local_ip6: SK_MSG_MD_LOCAL_IP6,
    remote_ip6: SK_MSG_MD_REMOTE_IP6,
    local_port: SK_MSG_MD_LOCAL_PORT,
    remote_port: SK_MSG_MD_REMOTE_PORT,
};

pub(super) const SOCK_OPS_LAYOUT: CtxLayout = CtxLayout {
    family: BPF_SOCK_OPS_FAMILY,
    local_ip4: BPF_SOCK_OPS_LOCAL_IP4,
    remote_ip4: BPF_SOCK_OPS_REMOTE_IP4,
    local_ip6: BPF_SOCK_OPS_LOCAL_IP6,
    remote_ip6: BPF_SOCK_OPS_REMOTE_IP6,
    local_port: BPF_SOCK_OPS_LOCAL_PORT,
    remote_port: BPF_SOCK_OPS_REMOTE_PORT,
};

impl Gen {
    /// Builds a `SockKey` at `STACK_SOCK_KEY` from the context in `self.ctx()`: this socket's
    /// key, or (`swapped`) its peer's. A socket whose both addresses are IPv4-mapped is
    /// keyed as AF_INET, so that a dual-stack server and an IPv4 client find each other.
    pub(super) fn sock_key(&mut self, ctx: CtxLayout, swapped: bool) {
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
}

/// The entry program: `tail_call(msg, skp_progs, 0)`; if the slot is empty (no policy
/// installed yet), pass: a drop would stick to the socket for good.
pub(super) fn entry_program(maps: Maps) -> Assembled {
    let mut g = Gen::new(Options::default(), maps);
    g.ld_map(Reg::R2, maps.progs);
    g.mov32(Reg::R3, skpc_abi::PROGS_POLICY_SLOT);
    g.call(BPF_FUNC_tail_call);
    g.ret(SK_PASS);
    lir::assemble(&g.code)
}

/// The SOCK_OPS program: on every established TCP connection (active and passive) that
/// `connections` takes (`hir::conn::taken`: some rule of the policy can act on it), put
/// the socket in the sockhash under its own `SockKey`. Every other connection stays out
/// of the sockmaps, so its sends never run the verdict program. `connections` reads only
/// connection fields, which `bpf_sock_ops` has as `sk_msg_md` has them.
///
/// With `untouched` (the map `skp_untouched`, defined when `connections` can be false),
/// every established socket left out adds 1 to its per-CPU slot: one lookup and one add
/// per connection establishment, never per message, so that `skpc exec` and `skpc run`
/// can say how many sockets no counter saw.
pub(super) fn sockops_program(
    maps: Maps,
    connections: &Cond,
    untouched: Option<MapId>,
) -> Assembled {
    let mut g = Gen::new(Options::default(), maps);
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
    let (known, taken) = (g.label(), g.label());
    g.jmp32(JmpOp::Jeq, Reg::R2, AF_INET, known);
    g.jmp32(JmpOp::Jeq, Reg::R2, AF_INET6, known);
    g.goto(done);
    g.place(known);
    let left_out = if untouched.is_some() { g.label() } else { done };
    g.sock_ops_ctx = true;
    g.cond(connections, taken, left_out);
    g.sock_ops_ctx = false;
    g.place(taken);
    g.sock_key(SOCK_OPS_LAYOUT, false);
    g.mov64(Reg::R1, Src::Reg(g.ctx()));
    g.ld_map(Reg::R2, maps.sockhash);
    g.stack_ptr(Reg::R3, STACK_SOCK_KEY);
    g.mov64(Reg::R4, Src::Imm(BPF_ANY as i32));
    g.call(BPF_FUNC_sock_hash_update);
    if let Some(map) = untouched {
        g.goto(done);
        g.place(left_out);
        // Slot 0's key in the word the verdict program keeps its ready-flag keys in.
        g.st(Size::W, Reg::R10, STACK_READY_KEY, 0);
        g.map_lookup(map, STACK_READY_KEY);
        g.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), done);
        // Not atomic, unlike the rule counters: a per-CPU slot, and a lost count of two
        // establishments interleaved on one CPU is no reason for a locked add.
        g.ldx(Size::DW, Reg::R1, Reg::R0, 0);
        g.alu64(AluOp::Add, Reg::R1, Src::Imm(1));
        g.stx(Size::DW, Reg::R0, 0, Reg::R1);
    }
    g.place(done);
    g.ret(SOCK_OPS_DONE);
    lir::assemble(&lir::cleanup(g.code))
}

/// The `bpf_sock_ops` offset of the connection field at `sk_msg_md` offset `off`: the
/// same word, in the same byte order, at another place.
pub(super) fn sock_ops_offset(off: i16) -> i16 {
    let words = [
        (SK_MSG_LAYOUT.family, SOCK_OPS_LAYOUT.family, 1),
        (SK_MSG_LAYOUT.local_ip4, SOCK_OPS_LAYOUT.local_ip4, 1),
        (SK_MSG_LAYOUT.remote_ip4, SOCK_OPS_LAYOUT.remote_ip4, 1),
        (SK_MSG_LAYOUT.local_ip6, SOCK_OPS_LAYOUT.local_ip6, 4),
        (SK_MSG_LAYOUT.remote_ip6, SOCK_OPS_LAYOUT.remote_ip6, 4),
        (SK_MSG_LAYOUT.local_port, SOCK_OPS_LAYOUT.local_port, 1),
        (SK_MSG_LAYOUT.remote_port, SOCK_OPS_LAYOUT.remote_port, 1),
    ];
    words
        .into_iter()
        .find(|(msg, _, n)| (*msg..*msg + 4 * n).contains(&off))
        .map(|(msg, ops, _)| ops + (off - msg))
        .expect("hir::conn::taken tests connection fields only")
}
