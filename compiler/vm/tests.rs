//! The VM's model of the rule index (`skp_index`, `skp_index_ports`, `skp_index_ready`):
//! lookups find what the runtime writes (`Lowered::index`, `Lowered::port_index`), a
//! program whose index the runtime has not filled fails closed, and what the model cannot
//! represent is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skpc_abi::{IndexEntry, PortEntry, AF_INET, AF_INET6};

use super::*;
use crate::bpf::uapi::*;
use crate::bpf::{AluOp, Insn, JmpOp, Reg, Size, Src};
use crate::compile::{compile, compile_with, Compiled};
use crate::hir::{Message, Verdict};
use crate::lower::Options;

/// One indexed block: 50 `drop if port == 1000+i` (rules 0..50: the port array, a
/// local.port and a remote.port tuple), 50 `drop if remote.ip == 10.0.1.i` (rules
/// 50..100: the hash map), a rule that stays code (100), and `default pass`.
fn mixed_policy() -> String {
    let mut src: String = (0..50)
        .map(|i| format!("drop if port == {};\n", 1000 + i))
        .collect();
    for i in 0..50 {
        src.push_str(&format!("drop if remote.ip == 10.0.1.{i};\n"));
    }
    src.push_str("drop if payload starts with \"X\";\ndefault pass;\n");
    src
}

fn compiled(src: &str, counters: bool) -> Compiled {
    compile_with(
        "index.skp",
        src,
        Options {
            counters,
            ..Options::default()
        },
    )
    .expect("compiles")
}

fn msg(local_port: u16, remote_port: u16, payload: &[u8]) -> Message {
    Message {
        family: AF_INET,
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        local_port,
        remote_port,
        len: payload.len() as u32,
        payload: payload.to_vec(),
        ..Message::default()
    }
}

fn to(m: Message, remote: [u8; 4], v6: bool) -> Message {
    let remote = Ipv4Addr::from(remote);
    if v6 {
        Message {
            family: AF_INET6,
            local_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            remote_ip: IpAddr::V6(remote.to_ipv6_mapped()),
            ..m
        }
    } else {
        Message {
            remote_ip: IpAddr::V4(remote),
            ..m
        }
    }
}

fn decide(vm: &Vm, m: &Message) -> VmOutcome {
    vm.run(m, &RunConfig::default()).expect("runs")
}

fn map_at(c: &Compiled, kind: MapKind) -> u32 {
    c.lowered
        .maps
        .iter()
        .position(|m| m.kind == kind)
        .unwrap_or_else(|| panic!("no {} map", kind.name())) as u32
}

#[test]
fn the_policy_is_indexed() {
    let c = compiled(&mixed_policy(), true);
    // `port == P` is a local.port and a remote.port slot; each address one hash key.
    assert_eq!(c.lowered.port_index.len(), 100);
    assert_eq!(c.lowered.index.len(), 50);
    for kind in [MapKind::Index, MapKind::IndexPorts, MapKind::IndexReady] {
        map_at(&c, kind);
    }
}

#[test]
fn lookups_in_a_filled_index_find_the_first_rule_of_the_message() {
    for counters in [true, false] {
        let c = compiled(&mixed_policy(), counters);
        let vm = Vm::new(&c.lowered).expect("loads");
        assert_eq!(vm.index_state(), IndexState::Filled);
        for (m, rule) in [
            (msg(1042, 50000, b"hello"), Some(42)),
            (msg(50000, 1049, b"hello"), Some(49)),
            // Both ends in the port array: the first rule decides and counts.
            (msg(1030, 1003, b"hello"), Some(3)),
            (to(msg(5, 6, b"hello"), [10, 0, 1, 7], false), Some(57)),
            (to(msg(5, 6, b"hello"), [10, 0, 1, 7], true), Some(57)),
            // A port and an address: the port's rule comes first.
            (to(msg(1010, 6, b"hello"), [10, 0, 1, 1], true), Some(10)),
            // A miss in the index, then the rule after it that stays code.
            (msg(5, 6, b"Xyz"), Some(100)),
            (to(msg(999, 1050, b"hello"), [10, 0, 1, 50], true), None),
        ] {
            let out = decide(&vm, &m);
            let want = if rule.is_some() {
                Verdict::Drop
            } else {
                Verdict::Pass
            };
            assert_eq!(out.decision.verdict, want, "{m:?}");
            assert_eq!(out.decision, crate::eval::eval(&c.policy, &m).decision);
            if counters {
                let slot = rule.unwrap_or(c.policy.default.counter);
                let mut expect = vec![(0, 0); c.policy.counters.len()];
                expect[slot] = (1, m.len as u64);
                assert_eq!(out.counters, expect, "{m:?}");
            }
        }
    }
}

#[test]
fn a_program_whose_index_is_not_filled_drops_every_message() {
    for counters in [true, false] {
        let c = compiled(&mixed_policy(), counters);
        let vm = Vm::new(&c.lowered)
            .expect("loads")
            .with_index_state(IndexState::Empty);
        assert_eq!(vm.index_state(), IndexState::Empty);
        for m in [
            msg(5, 6, b"hello"),
            msg(1042, 6, b"hello"),
            to(msg(5, 6, b"hello"), [10, 0, 1, 7], true),
            msg(5, 6, b"Xyz"),
        ] {
            // The policy passes the first message; an empty index must not.
            let out = decide(&vm, &m);
            assert_eq!(out.ret, 0, "{m:?}");
            assert_eq!(out.decision.verdict, Verdict::Drop, "{m:?}");
            assert!(out.counters.iter().all(|&c| c == (0, 0)), "nothing counts");
            // Fail closed before any rule: only the flag was looked up.
            assert_eq!(out.calls, vec![BPF_FUNC_map_lookup_elem]);
        }
        // The same program with the index filled passes the first message.
        let filled = vm.with_index_state(IndexState::Filled);
        assert_eq!(
            decide(&filled, &msg(5, 6, b"hello")).decision.verdict,
            Verdict::Pass
        );
    }
}

#[test]
fn an_ipv6_block_is_looked_up_with_ipv6_keys() {
    let src: String = (0..70)
        .map(|i| format!("drop if remote.ip6 == fd00::{:x};\n", i + 1))
        .collect();
    let c = compiled(&src, true);
    assert_eq!(c.lowered.index.len(), 70);
    let vm = Vm::new(&c.lowered).expect("loads");
    let m6 = |last: u16| Message {
        family: AF_INET6,
        local_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        remote_ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)),
        len: 3,
        payload: b"abc".to_vec(),
        ..Message::default()
    };
    let out = decide(&vm, &m6(0x20));
    assert_eq!(out.decision.verdict, Verdict::Drop);
    assert_eq!(out.counters[0x1f], (1, 3));
    assert_eq!(decide(&vm, &m6(0x47)).decision.verdict, Verdict::Pass);
}

fn mov(dst: Reg, imm: i32) -> Insn {
    Insn::Alu64 {
        op: AluOp::Mov,
        dst,
        src: Src::Imm(imm),
    }
}

/// Looks `key` (words) up in map `map` and runs `then` with r0 the value pointer; a
/// NULL result returns 0.
fn lookup(map: u32, key: &[u32], then: Vec<Insn>) -> Vec<Insn> {
    let mut code = vec![];
    for (w, v) in key.iter().enumerate() {
        code.push(Insn::St {
            size: Size::W,
            dst: Reg::R10,
            off: -24 + 4 * w as i16,
            imm: *v as i32,
        });
    }
    code.extend([
        Insn::LdMap { dst: Reg::R1, map },
        Insn::Alu64 {
            op: AluOp::Mov,
            dst: Reg::R2,
            src: Src::Reg(Reg::R10),
        },
        Insn::Alu64 {
            op: AluOp::Add,
            dst: Reg::R2,
            src: Src::Imm(-24),
        },
        Insn::Call {
            helper: BPF_FUNC_map_lookup_elem,
        },
        Insn::Jmp {
            op: JmpOp::Jne,
            dst: Reg::R0,
            src: Src::Imm(0),
            off: 2,
        },
        mov(Reg::R0, 0),
        Insn::Exit,
    ]);
    code.extend(then);
    code
}

/// Returns 1 if the value r0 points at is `want`, else 0.
fn value_is(want: u32) -> Vec<Insn> {
    vec![
        Insn::Ldx {
            size: Size::W,
            dst: Reg::R1,
            src: Reg::R0,
            off: 0,
        },
        mov(Reg::R0, 0),
        Insn::Jmp32 {
            op: JmpOp::Jne,
            dst: Reg::R1,
            src: Src::Imm(want as i32),
            off: 1,
        },
        mov(Reg::R0, 1),
        Insn::Exit,
    ]
}

/// Stores 7 where r0 points, returns 1.
fn store() -> Vec<Insn> {
    vec![
        Insn::St {
            size: Size::W,
            dst: Reg::R0,
            off: 0,
            imm: 7,
        },
        mov(Reg::R0, 1),
        Insn::Exit,
    ]
}

/// The return value, or the error's text (VmError holds rbpf's io::Error: no `==`).
fn ret(c: &Compiled, code: &[Insn], state: IndexState) -> Result<u64, String> {
    let data = IndexData {
        entries: &c.lowered.index,
        ports: &c.lowered.port_index,
    };
    Vm::from_parts(code, &c.lowered.maps, data)
        .map_err(|e| e.to_string())?
        .with_index_state(state)
        .run(&msg(1, 2, b""), &RunConfig::default())
        .map(|o| o.ret)
        .map_err(|e| e.to_string())
}

#[test]
fn a_hash_hit_points_at_the_entrys_value_and_a_store_there_is_refused() {
    let c = compiled(&mixed_policy(), true);
    let index = map_at(&c, MapKind::Index);
    let e = c.lowered.index[0];
    assert_eq!(e.rule, 50);
    let code = lookup(index, &e.key, value_is(50));
    assert_eq!(ret(&c, &code, IndexState::Filled), Ok(1), "found, value 50");
    assert_eq!(ret(&c, &code, IndexState::Empty), Ok(0), "not found");
    // Without the entries, the same key misses.
    let vm = Vm::from_insns(&code, &c.lowered.maps).expect("loads");
    assert_eq!(decide(&vm, &msg(1, 2, b"")).ret, 0);
    // Another key misses.
    let mut other = e.key;
    other[1] ^= 0x0100_0000;
    assert_eq!(
        ret(&c, &lookup(index, &other, value_is(0)), IndexState::Filled),
        Ok(0)
    );

    // A store into the value would outlive the message in the kernel.
    let e = ret(&c, &lookup(index, &e.key, store()), IndexState::Filled).unwrap_err();
    assert!(e.to_string().contains("wrote into skp_index"), "{e}");
}

#[test]
fn the_port_array_holds_its_entries_and_zero_everywhere_else() {
    let c = compiled(&mixed_policy(), true);
    let ports = map_at(&c, MapKind::IndexPorts);
    let slots = c.lowered.maps[ports as usize].max_entries;
    let e = c.lowered.port_index[0];
    assert!(e.value > 0);
    let entry = lookup(ports, &[e.slot], value_is(e.value));
    assert_eq!(
        ret(&c, &entry, IndexState::Filled),
        Ok(1),
        "the entry's value"
    );
    // Unfilled, the slot is there and holds 0, as the kernel creates the array.
    let zero = lookup(ports, &[e.slot], value_is(0));
    assert_eq!(ret(&c, &zero, IndexState::Empty), Ok(1));
    // Another slot holds 0; past the end there is none.
    let free = (0..slots)
        .find(|s| c.lowered.port_index.iter().all(|e| e.slot != *s))
        .expect("a slot without an entry");
    let zero = lookup(ports, &[free], value_is(0));
    assert_eq!(ret(&c, &zero, IndexState::Filled), Ok(1));
    assert_eq!(
        ret(
            &c,
            &lookup(ports, &[slots], value_is(0)),
            IndexState::Filled
        ),
        Ok(0)
    );
    // Stores into the array, an entry or a zero slot, are refused.
    for slot in [e.slot, free] {
        let e = ret(&c, &lookup(ports, &[slot], store()), IndexState::Filled).unwrap_err();
        assert!(e.to_string().contains("skp_index_ports"), "{e}");
    }
}

#[test]
fn index_maps_the_model_does_not_implement_are_refused() {
    let c = compiled(&mixed_policy(), true);
    let insns = &c.lowered.verdict.insns;
    let maps = &c.lowered.maps;
    let at = |k: MapKind| map_at(&c, k) as usize;
    let load = |maps: &[MapSpec], entries: &[IndexEntry], ports: &[PortEntry]| {
        Vm::from_parts(insns, maps, IndexData { entries, ports }).map(|_| ())
    };
    let (entries, ports) = (&c.lowered.index[..], &c.lowered.port_index[..]);
    if let Err(e) = load(maps, entries, ports) {
        panic!("the compiled maps and index load: {e}");
    }

    let changed = |kind: MapKind, f: &dyn Fn(&mut MapSpec)| {
        let mut m = maps.clone();
        f(&mut m[at(kind)]);
        m
    };
    for (maps, what) in [
        (
            changed(MapKind::Index, &|m| m.key_size = 16),
            "skp_index is map type",
        ),
        (
            changed(MapKind::Index, &|m| m.map_type = BPF_MAP_TYPE_ARRAY),
            "skp_index is",
        ),
        (
            changed(MapKind::Index, &|m| m.max_entries = 10),
            "could not fill it",
        ),
        (
            changed(MapKind::IndexReady, &|m| m.map_type = BPF_MAP_TYPE_HASH),
            "skp_index_ready is",
        ),
        (
            changed(MapKind::IndexPorts, &|m| m.value_size = 8),
            "skp_index_ports is",
        ),
        (
            changed(MapKind::IndexPorts, &|m| m.max_entries = 100),
            "past the end",
        ),
    ] {
        let e = load(&maps, entries, ports).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    let mut no_flag = maps.clone();
    no_flag.remove(at(MapKind::IndexReady));
    assert!(load(&no_flag, entries, ports).is_err());

    let mut twice = entries.to_vec();
    twice[1] = IndexEntry {
        rule: 5,
        ..twice[0]
    };
    let e = load(maps, &twice, ports).unwrap_err();
    assert!(e.to_string().contains("two entries"), "{e}");
    let mut twice = ports.to_vec();
    twice[1].slot = twice[0].slot;
    let e = load(maps, entries, &twice).unwrap_err();
    assert!(e.to_string().contains("two entries for slot"), "{e}");

    // Entries but no map to hold them.
    let plain = compile("p.skp", "drop if port == 1;").expect("compiles");
    let (pi, pm) = (&plain.lowered.verdict.insns, &plain.lowered.maps);
    let data = |entries, ports| IndexData { entries, ports };
    assert!(Vm::from_parts(pi, pm, data(entries, &[])).is_err());
    assert!(Vm::from_parts(pi, pm, data(&[], ports)).is_err());
}

#[test]
fn a_lookup_in_a_map_the_model_does_not_implement_fails_the_run() {
    // bpf_map_lookup_elem on the sockmap: no model, so an error, not a guess.
    let c = compile("p.skp", "drop if port == 1;").expect("compiles");
    let code = lookup(
        map_at(&c, MapKind::Sockmap),
        &[0],
        vec![mov(Reg::R0, 1), Insn::Exit],
    );
    let vm = Vm::from_insns(&code, &c.lowered.maps).expect("loads");
    let e = vm.run(&msg(1, 2, b""), &RunConfig::default()).unwrap_err();
    assert!(e.to_string().contains("not modelled"), "{e}");
    assert!(
        matches!(
            e,
            VmError::Helper {
                refusal: HelperError::LookupNotModelled { map: "skp_socks" },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_fault_keeps_rbpfs_error_as_its_source() {
    // A load past the message's four bytes: rbpf refuses it at run time.
    let code = [
        Insn::Ldx {
            size: Size::DW,
            dst: Reg::R2,
            src: Reg::R1,
            off: SK_MSG_MD_DATA,
        },
        Insn::Ldx {
            size: Size::W,
            dst: Reg::R0,
            src: Reg::R2,
            off: 2,
        },
        Insn::Exit,
    ];
    let vm = Vm::from_insns(&code, &[]).expect("loads");
    let e = vm
        .run(&msg(1, 2, b"abcd"), &RunConfig::default())
        .unwrap_err();
    assert!(matches!(e, VmError::Fault(_)), "{e:?}");
    let source = std::error::Error::source(&e).expect("rbpf's error is the source");
    assert!(e.to_string().ends_with(&source.to_string()), "{e}");
}
