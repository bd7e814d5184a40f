//! The VM's models (skpc::vm), checked with hand-written programs: the context layout
//! and byte orders, the data window and msg_pull_data, the redirect, apply/cork, process
//! and map helpers, and the misbehaviour it must catch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skpc::bpf::uapi::*;
use skpc::bpf::{AluOp, Endian, Insn, JmpOp, Reg, Size, Src};
use skpc::hir::{Message, SockSlot, Target, Verdict};
use skpc::lower::MapSpec;
use skpc::vm::{Redirect, RunConfig, Vm, VmOutcome};

/// The maps of a policy with a log rule (sockmap, sockhash, counters, progs, events).
fn maps() -> Vec<MapSpec> {
    skpc::compile::compile("m.skp", "log if len > 1;\ncount c if len > 2;")
        .expect("compiles")
        .lowered
        .maps
}

fn run_with(code: &[Insn], msg: &Message, window: u32) -> Result<VmOutcome, String> {
    let vm = Vm::from_insns(code, &maps()).map_err(|e| e.to_string())?;
    vm.run(msg, &RunConfig { window })
        .map_err(|e| e.to_string())
}

fn run(code: &[Insn], msg: &Message) -> Result<VmOutcome, String> {
    run_with(code, msg, 16 * 1024)
}

use Reg::*;

fn mov(dst: Reg, imm: i32) -> Insn {
    Insn::Alu64 {
        op: AluOp::Mov,
        dst,
        src: Src::Imm(imm),
    }
}
fn movr(dst: Reg, src: Reg) -> Insn {
    Insn::Alu64 {
        op: AluOp::Mov,
        dst,
        src: Src::Reg(src),
    }
}
fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
    Insn::Ldx {
        size,
        dst,
        src,
        off,
    }
}
fn call(helper: i32) -> Insn {
    Insn::Call { helper }
}

/// r0 = (u32) ctx[off]; exit.
fn read_field(off: i16) -> Vec<Insn> {
    vec![ldx(Size::W, R0, R1, off), Insn::Exit]
}

/// The program's return value, which is an error for anything but 0/1, so these tests
/// read fields by comparing them and returning 1 on a match.
fn field_is(off: i16, want: u32, msg: &Message) -> bool {
    let code = vec![
        ldx(Size::W, R2, R1, off),
        mov(R0, 0),
        Insn::Jmp32 {
            op: JmpOp::Jne,
            dst: R2,
            src: Src::Imm(want as i32),
            off: 1,
        },
        mov(R0, 1),
        Insn::Exit,
    ];
    run(&code, msg).expect("runs").ret == 1
}

#[test]
fn context_fields_have_the_kernels_byte_orders() {
    let m = Message {
        local_port: 40000,
        remote_port: 43019,
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        remote_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 9)),
        len: 77,
        payload: vec![0; 10],
        ..Message::default()
    };
    // remote_port: the 16-bit network-order port in the upper half: 43019 reads 0x0ba80000.
    assert!(field_is(SK_MSG_MD_REMOTE_PORT, 0x0ba8_0000, &m));
    assert!(field_is(SK_MSG_MD_REMOTE_PORT, (43019u32).to_be(), &m));
    assert!(field_is(SK_MSG_MD_LOCAL_PORT, 40000, &m));
    assert!(field_is(SK_MSG_MD_FAMILY, 2, &m));
    assert!(field_is(SK_MSG_MD_SIZE, 77, &m));
    // Addresses in network order: the first octet is the lowest byte of the LE word.
    assert!(field_is(
        SK_MSG_MD_LOCAL_IP4,
        u32::from_le_bytes([10, 1, 2, 3]),
        &m
    ));
    assert!(field_is(
        SK_MSG_MD_REMOTE_IP4,
        u32::from_le_bytes([192, 168, 0, 9]),
        &m
    ));
    assert!(field_is(SK_MSG_MD_REMOTE_IP6, 0, &m));
    // bswap32 of remote_port gives the port.
    let code = vec![
        ldx(Size::W, R2, R1, SK_MSG_MD_REMOTE_PORT),
        Insn::End {
            dst: R2,
            endian: Endian::ToBe,
            bits: 32,
        },
        mov(R0, 0),
        Insn::Jmp32 {
            op: JmpOp::Jne,
            dst: R2,
            src: Src::Imm(43019),
            off: 1,
        },
        mov(R0, 1),
        Insn::Exit,
    ];
    assert_eq!(run(&code, &m).unwrap().ret, 1);
}

#[test]
fn ipv6_context_has_mapped_and_loopback4_ip4_fields() {
    let mapped = Message {
        family: AF_INET6 as u32,
        local_ip: IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        remote_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..Message::default()
    };
    assert!(field_is(SK_MSG_MD_FAMILY, 10, &mapped));
    assert!(field_is(
        SK_MSG_MD_LOCAL_IP6 + 8,
        u32::from_le_bytes([0, 0, 0xff, 0xff]),
        &mapped
    ));
    assert!(field_is(
        SK_MSG_MD_LOCAL_IP6 + 12,
        u32::from_le_bytes([10, 0, 0, 1]),
        &mapped
    ));
    assert!(field_is(
        SK_MSG_MD_LOCAL_IP4,
        u32::from_le_bytes([10, 0, 0, 1]),
        &mapped
    ));
    assert!(field_is(
        SK_MSG_MD_REMOTE_IP6 + 12,
        u32::from_le_bytes([0, 0, 0, 1]),
        &mapped
    ));
    // A plain IPv6 socket's ip4 fields read LOOPBACK4_IPV6 (127.0.0.6), not zero.
    assert!(field_is(
        SK_MSG_MD_REMOTE_IP4,
        u32::from_le_bytes([127, 0, 0, 6]),
        &mapped
    ));
}

#[test]
fn inconsistent_messages_are_refused() {
    let m = Message {
        family: AF_INET as u32,
        local_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..Message::default()
    };
    assert!(run(&read_field(SK_MSG_MD_FAMILY), &m)
        .unwrap_err()
        .contains("inconsistent"));
    let m = Message {
        len: 2,
        payload: vec![1, 2, 3],
        ..Message::default()
    };
    assert!(run(&read_field(SK_MSG_MD_FAMILY), &m).is_err());
}

/// r0 = data_end - data (the window's size), as 1 if it equals `want`.
fn window_is(want: i32) -> Vec<Insn> {
    vec![
        ldx(Size::DW, R2, R1, SK_MSG_MD_DATA),
        ldx(Size::DW, R3, R1, SK_MSG_MD_DATA_END),
        Insn::Alu64 {
            op: AluOp::Sub,
            dst: R3,
            src: Src::Reg(R2),
        },
        mov(R0, 0),
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R3,
            src: Src::Imm(want),
            off: 1,
        },
        mov(R0, 1),
        Insn::Exit,
    ]
}

#[test]
fn the_initial_window_is_the_first_chunk() {
    let m = |n: usize| Message {
        len: n as u32,
        payload: vec![7; n],
        ..Message::default()
    };
    assert_eq!(run(&window_is(100), &m(100)).unwrap().ret, 1);
    assert_eq!(run(&window_is(16384), &m(20000)).unwrap().ret, 1);
    assert_eq!(run_with(&window_is(0), &m(3000), 0).unwrap().ret, 1);
    assert_eq!(run_with(&window_is(3000), &m(3000), 3000).unwrap().ret, 1);
    assert_eq!(run_with(&window_is(10), &m(3000), 10).unwrap().ret, 1);
    // `len` beyond the payload: bytes the rules cannot see. The window ends with the
    // payload, a pull past it fails as one past the message's end does.
    let big = Message {
        len: 5000,
        payload: b"GET".to_vec(),
        ..Message::default()
    };
    assert_eq!(run(&window_is(3), &big).unwrap().ret, 1);
    let out = run_with(&pull(0, 4, 0, -22, 0), &big, 0).unwrap();
    assert_eq!((out.ret, out.pulls[0].result), (1, -22));
    assert_eq!(run_with(&pull(0, 3, 0, 0, 3), &big, 0).unwrap().ret, 1);
}

/// pull(start, end, flags); then r0 = 1 if the helper returned `ret` and the window is
/// `size` bytes from data.
fn pull(start: i32, end: i32, flags: i32, ret: i32, size: i32) -> Vec<Insn> {
    vec![
        movr(R6, R1),
        mov(R2, start),
        mov(R3, end),
        mov(R4, flags),
        call(BPF_FUNC_msg_pull_data),
        mov(R7, 0),
        Insn::Jmp32 {
            op: JmpOp::Jne,
            dst: R0,
            src: Src::Imm(ret),
            off: 5,
        },
        ldx(Size::DW, R2, R6, SK_MSG_MD_DATA),
        ldx(Size::DW, R3, R6, SK_MSG_MD_DATA_END),
        Insn::Alu64 {
            op: AluOp::Sub,
            dst: R3,
            src: Src::Reg(R2),
        },
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R3,
            src: Src::Imm(size),
            off: 1,
        },
        mov(R7, 1),
        movr(R0, R7),
        Insn::Exit,
    ]
}

#[test]
fn pull_data_follows_the_kernel() {
    let m = Message {
        len: 3000,
        payload: (0..3000).map(|i| i as u8).collect(),
        ..Message::default()
    };
    let ok = |code: Vec<Insn>, window: u32| {
        let out = run_with(&code, &m, window).unwrap();
        (out.ret, out.pulls)
    };
    // From a sendfile window of 0: exactly [0, 100) becomes readable.
    let (r, pulls) = ok(pull(0, 100, 0, 0, 100), 0);
    assert_eq!(r, 1);
    assert_eq!((pulls[0].start, pulls[0].end, pulls[0].result), (0, 100, 0));
    // A pull inside a larger window shrinks it to exactly [start, end).
    assert_eq!(ok(pull(10, 20, 0, 0, 10), 3000).0, 1);
    // The whole message.
    assert_eq!(ok(pull(0, 3000, 0, 0, 3000), 0).0, 1);
    // Past the end, empty, reversed, with flags: -EINVAL and the window unchanged.
    assert_eq!(ok(pull(0, 3001, 0, -22, 0), 0).0, 1);
    assert_eq!(ok(pull(0, 3001, 0, -22, 3000), 3000).0, 1);
    assert_eq!(ok(pull(5, 5, 0, -22, 0), 0).0, 1);
    assert_eq!(ok(pull(9, 5, 0, -22, 0), 0).0, 1);
    assert_eq!(ok(pull(3000, 3001, 0, -22, 0), 0).0, 1);
    assert_eq!(ok(pull(0, 10, 1, -22, 0), 0).0, 1);
    // The pulled bytes are the message's.
    let code = vec![
        movr(R6, R1),
        mov(R2, 0),
        mov(R3, 200),
        mov(R4, 0),
        call(BPF_FUNC_msg_pull_data),
        ldx(Size::DW, R2, R6, SK_MSG_MD_DATA),
        ldx(Size::B, R3, R2, 199),
        mov(R0, 0),
        Insn::Jmp32 {
            op: JmpOp::Jne,
            dst: R3,
            src: Src::Imm(199),
            off: 1,
        },
        mov(R0, 1),
        Insn::Exit,
    ];
    assert_eq!(run_with(&code, &m, 0).unwrap().ret, 1);
}

#[test]
fn reads_outside_the_message_fault() {
    let m = Message {
        len: 4,
        payload: b"abcd".to_vec(),
        ..Message::default()
    };
    let code = vec![
        ldx(Size::DW, R2, R1, SK_MSG_MD_DATA),
        ldx(Size::W, R0, R2, 2),
        Insn::Exit,
    ];
    assert!(run(&code, &m).unwrap_err().contains("faulted"));
}

#[test]
fn redirects_apply_and_cork_make_the_decision() {
    let m = Message::default();
    let redirect = |key: i32, flags: i32| {
        vec![
            Insn::LdMap { dst: R2, map: 0 },
            mov(R3, key),
            mov(R4, flags),
            call(BPF_FUNC_msg_redirect_map),
            Insn::Exit,
        ]
    };
    let out = run(&redirect(3, 1), &m).unwrap();
    assert_eq!(
        out.decision.verdict,
        Verdict::Redirect {
            ingress: true,
            target: Target::Sock(SockSlot::Const(3))
        }
    );
    assert_eq!(out.redirect, Some((Redirect::Map { key: 3, flags: 1 }, 1)));
    // A flag other than BPF_F_INGRESS, or a slot past the sockmap: SK_DROP.
    assert_eq!(
        run(&redirect(3, 2), &m).unwrap().decision.verdict,
        Verdict::Drop
    );
    assert_eq!(
        run(&redirect(64, 0), &m).unwrap().decision.verdict,
        Verdict::Drop
    );
    // The wrong map: an error, not a verdict.
    let wrong = vec![
        Insn::LdMap { dst: R2, map: 2 },
        mov(R3, 0),
        mov(R4, 0),
        call(BPF_FUNC_msg_redirect_map),
        Insn::Exit,
    ];
    assert!(run(&wrong, &m).unwrap_err().contains("skp_socks"));

    let apply_cork = vec![
        movr(R6, R1),
        mov(R2, 4096),
        call(BPF_FUNC_msg_apply_bytes),
        movr(R1, R6),
        mov(R2, 16),
        call(BPF_FUNC_msg_cork_bytes),
        mov(R0, 1),
        Insn::Exit,
    ];
    let out = run(&apply_cork, &m).unwrap();
    assert_eq!(out.decision.verdict, Verdict::Cork(16));
    assert_eq!(out.decision.apply_bytes, Some(4096));
    assert_eq!(
        out.calls,
        vec![BPF_FUNC_msg_apply_bytes, BPF_FUNC_msg_cork_bytes]
    );
}

#[test]
fn pop_of_the_whole_message_is_a_discard_and_nothing_else_is_modelled() {
    let m = Message {
        payload: b"hello".to_vec(),
        len: 5,
        ..Message::default()
    };
    // What `discard` generates: r3 = size, then pop(ctx, 0, size, 0) and SK_PASS.
    let pop = |start: i32, len: Option<i32>, flags: i32| {
        let r3 = match len {
            None => ldx(Size::W, R3, R1, SK_MSG_MD_SIZE),
            Some(n) => mov(R3, n),
        };
        vec![
            r3,
            mov(R2, start),
            mov(R4, flags),
            call(BPF_FUNC_msg_pop_data),
            mov(R0, 1),
            Insn::Exit,
        ]
    };
    let out = run(&pop(0, None, 0), &m).unwrap();
    assert_eq!(out.decision.verdict, Verdict::Discard);
    assert_eq!(out.decision.apply_bytes, None);
    assert_eq!(out.calls, vec![BPF_FUNC_msg_pop_data]);
    // A popped message that the program then drops is a drop.
    let mut then_drop = pop(0, None, 0);
    then_drop[4] = mov(R0, 0);
    assert_eq!(run(&then_drop, &m).unwrap().decision.verdict, Verdict::Drop);
    // A partial pop then SK_PASS sends a rewritten message on to the peer, which no
    // verdict of the language does: refused, not guessed.
    for code in [pop(0, Some(4), 0), pop(1, Some(4), 0)] {
        let e = run(&code, &m).unwrap_err();
        assert!(e.contains("rewritten message passed"), "{e}");
    }
    // A flag, a start past the end, an end past the message: -EINVAL, nothing popped.
    for code in [pop(0, None, 1), pop(5, Some(0), 0), pop(2, Some(4), 0)] {
        assert_eq!(run(&code, &m).unwrap().decision.verdict, Verdict::Pass);
    }
}

/// What `reply` generates, on messages shorter, as long as and longer than the reply:
/// pop or push, pull, write, redirect to the sender's own key with BPF_F_INGRESS.
#[test]
fn reply_rewrites_and_redirects_to_the_sender() {
    let policy =
        "const DENIED = \"-ERR denied\\r\\n\";\nreply DENIED if payload starts with \"FLUSH\";";
    let lowered = skpc::compile::compile("r.skp", policy)
        .expect("compiles")
        .lowered;
    let vm = Vm::new(&lowered).unwrap();
    for (payload, window) in [
        (&b"FLUSH"[..], 16 * 1024),
        (b"FLUSHALL\r\n\r\n\r", 16 * 1024),
        (
            b"FLUSHALL and a good deal more than thirteen bytes",
            16 * 1024,
        ),
        (b"FLUSHALL and a good deal more than thirteen bytes", 0),
    ] {
        for family in ["v4", "v6", "mapped"] {
            let mut m = Message {
                payload: payload.to_vec(),
                len: payload.len() as u32,
                ..Message::default()
            };
            match family {
                "v6" => {
                    m.family = skpc_abi::AF_INET6;
                    m.local_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
                    m.remote_ip = IpAddr::V6("fd00::7".parse().unwrap());
                }
                "mapped" => {
                    m.family = skpc_abi::AF_INET6;
                    m.local_ip = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
                    m.remote_ip = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
                }
                _ => {}
            }
            let out = vm.run(&m, &RunConfig { window }).unwrap();
            assert_eq!(
                out.decision.verdict,
                Verdict::Reply(b"-ERR denied\r\n".to_vec()),
                "{payload:?} {family}"
            );
            assert!(out.calls.contains(&BPF_FUNC_msg_redirect_hash));
        }
    }
    // A message the rule does not match passes untouched.
    let m = Message {
        payload: b"PING".to_vec(),
        len: 4,
        ..Message::default()
    };
    assert_eq!(
        vm.run(&m, &RunConfig::default()).unwrap().decision.verdict,
        Verdict::Pass
    );
    // A message exactly as long as the reply whose bytes are not all given: the pull
    // of the whole message reaches unseen bytes, which the reply overwrites anyway.
    let m = Message {
        payload: b"FLUSH".to_vec(),
        len: 13,
        ..Message::default()
    };
    let out = vm.run(&m, &RunConfig::default()).unwrap();
    assert_eq!(
        out.decision.verdict,
        Verdict::Reply(b"-ERR denied\r\n".to_vec())
    );
    // But a rule that tests unseen bytes is still false (and the default passes).
    let lowered =
        skpc::compile::compile("r.skp", "reply \"ab\" if payload[5] == 0;\ndefault drop;")
            .expect("compiles")
            .lowered;
    let m = Message {
        payload: b"xy".to_vec(),
        len: 6,
        ..Message::default()
    };
    let out = Vm::new(&lowered)
        .unwrap()
        .run(&m, &RunConfig::default())
        .unwrap();
    assert_eq!(out.decision.verdict, Verdict::Drop);
    // A longer message whose bytes are not all given: popped to the reply all the same.
    let m = Message {
        payload: b"FLUSHALL".to_vec(),
        len: u32::MAX,
        ..Message::default()
    };
    let out = vm.run(&m, &RunConfig::default()).unwrap();
    assert_eq!(
        out.decision.verdict,
        Verdict::Reply(b"-ERR denied\r\n".to_vec())
    );
}

/// pop/push/pull on the message model, and a redirect to a key that is neither the
/// sender's nor its peer's: the kernel finds no socket and drops.
#[test]
fn push_pop_pull_and_a_foreign_key() {
    let m = Message {
        payload: b"abcdef".to_vec(),
        len: 6,
        ..Message::default()
    };
    // push(2, 3): "ab\0\0\0cdef"; pop(0, 1): "b\0\0\0cdef"; pull(0, 8); write 'X' at 1;
    // then redirect ingress to the sender's own key, built by hand.
    let own = skpc::eval::peer_key(&m).peer();
    let mut code = vec![
        movr(R6, R1),
        mov(R2, 2),
        mov(R3, 3),
        mov(R4, 0),
        call(BPF_FUNC_msg_push_data),
        movr(R1, R6),
        mov(R2, 0),
        mov(R3, 1),
        mov(R4, 0),
        call(BPF_FUNC_msg_pop_data),
        movr(R1, R6),
        mov(R2, 0),
        mov(R3, 8),
        mov(R4, 0),
        call(BPF_FUNC_msg_pull_data),
        ldx(Size::DW, R2, R6, SK_MSG_MD_DATA),
        Insn::St {
            size: Size::B,
            dst: R2,
            off: 1,
            imm: b'X' as i32,
        },
    ];
    let key_words = own.to_bytes();
    for (i, w) in key_words.chunks(4).enumerate() {
        code.push(Insn::St {
            size: Size::W,
            dst: R10,
            off: -48 + 4 * i as i16,
            imm: i32::from_ne_bytes([w[0], w[1], w[2], w[3]]),
        });
    }
    let redirect = |code: &mut Vec<Insn>| {
        code.extend([
            movr(R1, R6),
            Insn::LdMap { dst: R2, map: 1 },
            movr(R3, R10),
            Insn::Alu64 {
                op: AluOp::Add,
                dst: R3,
                src: Src::Imm(-48),
            },
            mov(R4, BPF_F_INGRESS as i32),
            call(BPF_FUNC_msg_redirect_hash),
            Insn::Exit,
        ])
    };
    let mut good = code.clone();
    redirect(&mut good);
    let out = run(&good, &m).unwrap();
    assert_eq!(out.decision.verdict, Verdict::Reply(b"bX\0\0cdef".to_vec()));
    // The same with a key one port off: no socket, SK_DROP.
    let mut bad = code.clone();
    bad.push(Insn::St {
        size: Size::W,
        dst: R10,
        off: -48 + 36,
        imm: 4242,
    });
    redirect(&mut bad);
    let out = run(&bad, &m).unwrap();
    assert_eq!(out.decision.verdict, Verdict::Drop);
    assert_eq!(out.ret, SK_DROP as u64);
}

#[test]
fn only_sk_pass_and_sk_drop_are_verdicts() {
    let m = Message::default();
    assert_eq!(
        run(&[mov(R0, 0), Insn::Exit], &m).unwrap().decision.verdict,
        Verdict::Drop
    );
    assert_eq!(
        run(&[mov(R0, 1), Insn::Exit], &m).unwrap().decision.verdict,
        Verdict::Pass
    );
    assert!(run(&[mov(R0, 2), Insn::Exit], &m)
        .unwrap_err()
        .contains("returned 2"));
}

#[test]
fn process_helpers_read_the_message() {
    let m = Message {
        uid: 7,
        gid: 9,
        pid: 4242,
        cgroup: 1 << 40,
        comm: b"curl".to_vec(),
        ..Message::default()
    };
    let cmp64 = |helper: i32, want: u64| {
        let code = vec![
            call(helper),
            Insn::LdImm64 { dst: R2, imm: want },
            movr(R3, R0),
            mov(R0, 0),
            Insn::Jmp {
                op: JmpOp::Jne,
                dst: R3,
                src: Src::Reg(R2),
                off: 1,
            },
            mov(R0, 1),
            Insn::Exit,
        ];
        run(&code, &m).unwrap().ret == 1
    };
    assert!(cmp64(BPF_FUNC_get_current_uid_gid, (9 << 32) | 7));
    assert!(cmp64(BPF_FUNC_get_current_pid_tgid, (4242 << 32) | 4242));
    assert!(cmp64(BPF_FUNC_get_current_cgroup_id, 1 << 40));
    // comm: NUL-padded to the buffer's size.
    let code = vec![
        Insn::St {
            size: Size::DW,
            dst: R10,
            off: -16,
            imm: -1,
        },
        Insn::St {
            size: Size::DW,
            dst: R10,
            off: -8,
            imm: -1,
        },
        movr(R1, R10),
        Insn::Alu64 {
            op: AluOp::Add,
            dst: R1,
            src: Src::Imm(-16),
        },
        mov(R2, 16),
        call(BPF_FUNC_get_current_comm),
        ldx(Size::DW, R2, R10, -16),
        Insn::LdImm64 {
            dst: R3,
            imm: u64::from_le_bytes(*b"curl\0\0\0\0"),
        },
        mov(R0, 0),
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R2,
            src: Src::Reg(R3),
            off: 3,
        },
        ldx(Size::DW, R2, R10, -8),
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R2,
            src: Src::Imm(0),
            off: 1,
        },
        mov(R0, 1),
        Insn::Exit,
    ];
    assert_eq!(run(&code, &m).unwrap().ret, 1);
}

#[test]
fn counters_are_memory_the_program_can_bump() {
    let m = Message {
        len: 10,
        payload: vec![0; 10],
        ..Message::default()
    };
    // The counters map is an ARRAY of one value: key 0 gives all the counters, one
    // (messages, bytes) pair after the other. Returns 0 after storing through the
    // pointer, 1 if the lookup gave NULL.
    let code = |key: i32| {
        vec![
            Insn::LdMap { dst: R1, map: 2 },
            Insn::St {
                size: Size::W,
                dst: R10,
                off: -8,
                imm: key,
            },
            movr(R2, R10),
            Insn::Alu64 {
                op: AluOp::Add,
                dst: R2,
                src: Src::Imm(-8),
            },
            call(BPF_FUNC_map_lookup_elem),
            Insn::Jmp {
                op: JmpOp::Jeq,
                dst: R0,
                src: Src::Imm(0),
                off: 3,
            },
            Insn::St {
                size: Size::DW,
                dst: R0,
                off: 16 + 8,
                imm: 99,
            },
            mov(R0, 0),
            Insn::Exit,
            mov(R0, 1),
            Insn::Exit,
        ]
    };
    let out = run(&code(0), &m).unwrap();
    assert_eq!(out.ret, 0);
    assert_eq!(out.counters[1], (0, 99));
    // A key past the end gives NULL.
    assert_eq!(run(&code(1), &m).unwrap().ret, 1);
}

#[test]
fn counters_are_bumped_in_place_with_atomic_adds() {
    let m = Message {
        len: 10,
        payload: vec![0; 10],
        ..Message::default()
    };
    let add = |off: i16, src: Reg| Insn::AtomicAdd {
        size: Size::DW,
        dst: R3,
        src,
        off,
    };
    // r3 = &counters[1]; a jump over the first add (the VM runs each as several
    // instructions: the jumps around them must still land where they did), then the
    // message and its 10 bytes, twice; r0, r1 and r2 (the VM's scratch candidates) and
    // r10 keep their values.
    let code = vec![
        ldx(Size::W, R5, R1, 68),
        mov(R0, 7),
        mov(R1, 5),
        movr(R2, R10),
        Insn::LdMapValue {
            dst: R3,
            map: 2,
            off: 16,
        },
        mov(R4, 1),
        Insn::Jmp {
            op: JmpOp::Jeq,
            dst: R4,
            src: Src::Imm(1),
            off: 1,
        },
        add(0, R0),
        add(0, R4),
        add(8, R5),
        add(0, R4),
        add(8, R5),
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R2,
            src: Src::Reg(R10),
            off: 3,
        },
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: R1,
            src: Src::Imm(5),
            off: 2,
        },
        Insn::Alu64 {
            op: AluOp::Add,
            dst: R0,
            src: Src::Imm(-6),
        },
        Insn::Exit,
        mov(R0, 9),
        Insn::Exit,
    ];
    let out = run(&code, &m).unwrap();
    assert_eq!(out.ret, 1, "r0, r1 and r10 as they were");
    assert_eq!(out.counters[0], (0, 0));
    assert_eq!(out.counters[1], (2, 20));
    // A counter outside the value is a fault, as the verifier would refuse it.
    let past = vec![
        Insn::LdMapValue {
            dst: R3,
            map: 2,
            off: 16 * 100,
        },
        mov(R4, 1),
        add(0, R4),
        mov(R0, 1),
        Insn::Exit,
    ];
    assert!(run(&past, &m).is_err());
}

#[test]
fn programs_the_vm_cannot_run_faithfully_are_refused() {
    let m = Message::default();
    // Backward jump (a loop): rbpf has no instruction limit.
    let looped = vec![
        mov(R0, 1),
        Insn::Jmp {
            op: JmpOp::Jeq,
            dst: R0,
            src: Src::Imm(1),
            off: -2,
        },
        Insn::Exit,
    ];
    assert!(run(&looped, &m).unwrap_err().contains("backwards"));
    // gotol (BPF_JMP32 | BPF_JA) is not in rbpf 0.4: within 16 bits it runs as `ja`,
    // beyond that it is refused.
    let gotol = vec![Insn::Gotol { imm: 1 }, mov(R0, 0), mov(R0, 1), Insn::Exit];
    assert_eq!(run(&gotol, &m).unwrap().ret, 1);
    let far = vec![Insn::Gotol { imm: 40_000 }, mov(R0, 1), Insn::Exit];
    assert!(run(&far, &m).unwrap_err().contains("gotol"));
    // A 64-bit compare with a negative immediate: rbpf zero-extends it.
    let neg = vec![
        mov(R0, 1),
        Insn::Jmp {
            op: JmpOp::Jeq,
            dst: R0,
            src: Src::Imm(-1),
            off: 0,
        },
        Insn::Exit,
    ];
    assert!(run(&neg, &m).unwrap_err().contains("negative"));
    // Writing the context.
    let store = vec![
        Insn::St {
            size: Size::W,
            dst: R1,
            off: SK_MSG_MD_SIZE,
            imm: 5,
        },
        mov(R0, 1),
        Insn::Exit,
    ];
    assert!(run(&store, &m).unwrap_err().contains("read-only"));
    // An unknown helper.
    assert!(run(&[call(BPF_FUNC_ktime_get_ns), mov(R0, 1), Insn::Exit], &m).is_err());
}

#[test]
fn log_records_are_collected() {
    let c = skpc::compile::compile("l.skp", "log if uid == 0;").unwrap();
    let vm = Vm::new(&c.lowered).unwrap();
    let m = Message {
        uid: 0,
        len: 5,
        payload: b"hello".to_vec(),
        remote_port: 443,
        ..Message::default()
    };
    let out = vm.run(&m, &RunConfig::default()).unwrap();
    assert_eq!(out.events.len(), 1);
    let e = &out.events[0];
    assert_eq!(
        (e.rule, e.uid, e.size, e.remote_port, e.local_port),
        (0, 0, 5, 443, 40000)
    );
    assert_eq!(&e.comm[..7], b"client\0");
    assert_eq!(out.events, skpc::eval::eval(&c.policy, &m).events);
}
