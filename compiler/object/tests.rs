use super::btf::{decode_btf, decode_btf_ext, BtfType, DecodedBtf};
use super::*;
use crate::bpf::uapi::{BPF_ALU64, BPF_CALL, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV};
use object::read::{Object as _, ObjectSection as _, ObjectSymbol as _};

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

fn code(insns: &[[u8; 8]]) -> Vec<u8> {
    insns.concat()
}

const MOV64_IMM: u8 = BPF_ALU64 | BPF_MOV | BPF_K;
const EXIT: u8 = BPF_JMP | BPF_EXIT;
const CALL: u8 = BPF_JMP | BPF_CALL;

fn ret1() -> Vec<u8> {
    code(&[insn(MOV64_IMM, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)])
}

/// r1 = ctx(r6); r2 = map; r3 = 0; r4 = 0; call 60; exit
fn redirect() -> Vec<u8> {
    code(&[
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(LD_IMM64, 2, 1, 0, 0),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_IMM, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, 60),
        insn(EXIT, 0, 0, 0, 0),
    ])
}

fn maps() -> Vec<MapDef> {
    vec![
        MapDef {
            name: "skp_socks".into(),
            map_type: 15,
            key_size: 4,
            value_size: 4,
            max_entries: 64,
            map_flags: 0,
            pinning: 0,
            data_var: None,
        },
        MapDef {
            name: "skp_events".into(),
            map_type: BPF_MAP_TYPE_RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: 262144,
            map_flags: 0,
            pinning: 0,
            data_var: None,
        },
        MapDef {
            name: "skp_hash".into(),
            map_type: 18,
            key_size: 44,
            value_size: 8,
            max_entries: 64,
            map_flags: 1,
            pinning: 0,
            data_var: None,
        },
    ]
}

fn line(slot: usize, line: u32, text: &str) -> LineInfo {
    LineInfo {
        slot,
        file: "policy.skp".into(),
        line,
        col: 3,
        text: text.into(),
    }
}

fn spec() -> ObjectSpec {
    ObjectSpec {
        license: "GPL".into(),
        maps: maps(),
        data_sections: vec![],
        programs: vec![
            ProgramSpec {
                section: "sk_msg".into(),
                name: "skp_verdict".into(),
                code: redirect(),
                map_refs: vec![MapRef { slot: 1, map: 0 }],
                lines: vec![
                    line(3, 7, "redirect to skp_socks[0]\n"),
                    line(1, 5, "load map"),
                    line(2, 6, "second half of ld_imm64: dropped"),
                    line(1, 99, "duplicate slot: dropped"),
                    line(40, 99, "past the end: dropped"),
                ],
            },
            ProgramSpec {
                section: "sockops".into(),
                name: "skp_sockops".into(),
                code: ret1(),
                map_refs: vec![],
                lines: vec![],
            },
            ProgramSpec {
                section: "sk_msg".into(),
                name: "skp_second".into(),
                code: ret1(),
                map_refs: vec![],
                lines: vec![line(0, 1, "pass")],
            },
        ],
    }
}

fn section_data<'a>(file: &'a object::File<'a>, name: &str) -> &'a [u8] {
    file.section_by_name(name)
        .unwrap_or_else(|| panic!("no section {name}"))
        .data()
        .unwrap()
}

fn sh_flags(s: &object::read::Section<'_, '_>) -> u64 {
    match s.flags() {
        SectionFlags::Elf { sh_flags } => sh_flags,
        f => panic!("not ELF flags: {f:?}"),
    }
}

#[test]
fn elf_header_and_sections() {
    let bytes = write_object(&spec());
    let file = object::File::parse(&*bytes).unwrap();
    assert_eq!(file.format(), BinaryFormat::Elf);
    assert_eq!(file.architecture(), Architecture::Bpf);
    assert!(file.is_little_endian());
    assert!(file.is_64());
    assert_eq!(file.kind(), object::ObjectKind::Relocatable);
    // e_machine 247 at offset 18
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 247);

    let ax = (object::elf::SHF_ALLOC | object::elf::SHF_EXECINSTR) as u64;
    let wa = (object::elf::SHF_ALLOC | object::elf::SHF_WRITE) as u64;
    let sk_msg = file.section_by_name("sk_msg").unwrap();
    assert_eq!(sh_flags(&sk_msg), ax);
    assert_eq!(sk_msg.align(), 8);
    let mut expect = redirect();
    expect.extend(ret1());
    assert_eq!(sk_msg.data().unwrap(), &expect[..]);
    let sockops = file.section_by_name("sockops").unwrap();
    assert_eq!(sh_flags(&sockops), ax);
    assert_eq!(sockops.data().unwrap(), &ret1()[..]);
    // Programs sharing a section name share one section.
    assert_eq!(
        file.sections().filter(|s| s.name() == Ok("sk_msg")).count(),
        1
    );

    let lic = file.section_by_name("license").unwrap();
    assert_eq!(sh_flags(&lic), wa);
    assert_eq!(lic.data().unwrap(), b"GPL\0");

    let m = file.section_by_name(".maps").unwrap();
    assert_eq!(sh_flags(&m), wa);
    // sockmap: 4 fields, ringbuf: 2, sockhash with flags: 5
    assert_eq!(m.data().unwrap(), &[0u8; (4 + 2 + 5) * 8][..]);

    for name in [".BTF", ".BTF.ext"] {
        let s = file.section_by_name(name).unwrap();
        assert_eq!(sh_flags(&s), 0, "{name}");
        assert_eq!(s.kind(), SectionKind::Other, "{name}");
    }
}

#[test]
fn symbols() {
    let bytes = write_object(&spec());
    let file = object::File::parse(&*bytes).unwrap();
    let sym = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"))
    };
    let sec_name = |s: &object::read::Symbol<'_, '_>| {
        file.section_by_index(s.section_index().unwrap())
            .unwrap()
            .name()
            .unwrap()
            .to_string()
    };
    for (name, sec, value, size) in [
        ("skp_verdict", "sk_msg", 0, 48),
        ("skp_second", "sk_msg", 48, 16),
        ("skp_sockops", "sockops", 0, 16),
    ] {
        let s = sym(name);
        assert_eq!(s.kind(), SymbolKind::Text, "{name}");
        assert!(s.is_global(), "{name}");
        assert_eq!(sec_name(&s), sec, "{name}");
        assert_eq!((s.address(), s.size()), (value, size), "{name}");
    }
    for (name, value, size) in [
        ("skp_socks", 0, 32),
        ("skp_events", 32, 16),
        ("skp_hash", 48, 40),
    ] {
        let s = sym(name);
        assert_eq!(s.kind(), SymbolKind::Data, "{name}");
        assert!(s.is_global(), "{name}");
        assert_eq!(sec_name(&s), ".maps", "{name}");
        assert_eq!((s.address(), s.size()), (value, size), "{name}");
    }
    let l = sym("LICENSE");
    assert_eq!(l.kind(), SymbolKind::Data);
    assert_eq!(sec_name(&l), "license");
    assert_eq!(l.size(), 4);
}

#[test]
fn relocations() {
    let bytes = write_object(&spec());
    let file = object::File::parse(&*bytes).unwrap();
    let rel = file.section_by_name(".relsk_msg").unwrap();
    assert_eq!(
        match rel.flags() {
            SectionFlags::Elf { sh_flags } => sh_flags,
            _ => 0,
        } & object::elf::SHF_INFO_LINK as u64,
        object::elf::SHF_INFO_LINK as u64
    );
    let sk_msg = file.section_by_name("sk_msg").unwrap();
    let relocs: Vec<_> = sk_msg.relocations().collect();
    assert_eq!(relocs.len(), 1);
    let (off, r) = &relocs[0];
    assert_eq!(*off, 8);
    assert_eq!(
        r.flags(),
        RelocationFlags::Elf {
            r_type: object::elf::R_BPF_64_64
        }
    );
    assert!(!r.has_implicit_addend() || r.addend() == 0);
    let object::RelocationTarget::Symbol(idx) = r.target() else {
        panic!("relocation target {:?}", r.target())
    };
    assert_eq!(file.symbol_by_index(idx).unwrap().name(), Ok("skp_socks"));
    assert_eq!(
        file.section_by_name("sockops")
            .unwrap()
            .relocations()
            .count(),
        0
    );
    assert!(file.section_by_name(".relsockops").is_none());
}

fn decoded(bytes: &[u8]) -> DecodedBtf {
    let file = object::File::parse(bytes).unwrap();
    decode_btf(section_data(&file, ".BTF")).unwrap()
}

/// Follow a `__uint(name, value)` member: PTR -> ARRAY of int, nelems = value.
fn uint_member(btf: &DecodedBtf, ty: u32) -> u32 {
    let BtfType::Ptr { target } = btf.get(ty).unwrap() else {
        panic!("not a PTR: {:?}", btf.get(ty))
    };
    let BtfType::Array { elem, nelems, .. } = btf.get(*target).unwrap() else {
        panic!("not an ARRAY")
    };
    assert!(matches!(btf.get(*elem), Some(BtfType::Int { name, size: 4, .. }) if name == "int"));
    *nelems
}

#[test]
fn btf_maps_and_datasecs() {
    let btf = decoded(&write_object(&spec()));
    let var = |name: &str| {
        let (i, t) = btf
            .types
            .iter()
            .enumerate()
            .find(|(_, t)| matches!(t, BtfType::Var { name: n, .. } if n == name))
            .unwrap_or_else(|| panic!("no VAR {name}"));
        let BtfType::Var { ty, linkage, .. } = t else {
            unreachable!()
        };
        assert_eq!(*linkage, 1, "{name}: global allocated");
        (i as u32 + 1, *ty)
    };
    let fields = |name: &str| -> Vec<(String, u32)> {
        let (_, st) = var(name);
        let BtfType::Struct {
            name: sname,
            size,
            members,
        } = btf.get(st).unwrap()
        else {
            panic!("{name}: not a struct")
        };
        assert_eq!(sname, "", "anonymous struct");
        assert_eq!(*size, members.len() as u32 * 8);
        members
            .iter()
            .enumerate()
            .map(|(i, (m, ty, off))| {
                assert_eq!(*off, i as u32 * 64);
                (m.clone(), uint_member(&btf, *ty))
            })
            .collect()
    };
    let f = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(n, x)| (n.to_string(), *x)).collect()
    };
    assert_eq!(
        fields("skp_socks"),
        f(&[
            ("type", 15),
            ("max_entries", 64),
            ("key_size", 4),
            ("value_size", 4)
        ])
    );
    assert_eq!(
        fields("skp_events"),
        f(&[("type", 27), ("max_entries", 262144)])
    );
    assert_eq!(
        fields("skp_hash"),
        f(&[
            ("type", 18),
            ("max_entries", 64),
            ("key_size", 44),
            ("value_size", 8),
            ("map_flags", 1)
        ])
    );

    let datasec = |name: &str| {
        btf.types
            .iter()
            .find_map(|t| match t {
                BtfType::Datasec {
                    name: n,
                    size,
                    vars,
                } if n == name => Some((*size, vars.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no DATASEC {name}"))
    };
    let (size, vars) = datasec(".maps");
    assert_eq!(size, 88);
    assert_eq!(
        vars,
        vec![
            (var("skp_socks").0, 0, 32),
            (var("skp_events").0, 32, 16),
            (var("skp_hash").0, 48, 40)
        ]
    );
    let (size, vars) = datasec("license");
    assert_eq!(size, 4);
    assert_eq!(vars, vec![(var("LICENSE").0, 0, 4)]);
}

#[test]
fn btf_funcs() {
    let btf = decoded(&write_object(&spec()));
    for (name, ctx) in [
        ("skp_verdict", "sk_msg_md"),
        ("skp_second", "sk_msg_md"),
        ("skp_sockops", "bpf_sock_ops"),
    ] {
        let BtfType::Func { proto, linkage, .. } = btf
            .types
            .iter()
            .find(|t| matches!(t, BtfType::Func { name: n, .. } if n == name))
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(*linkage, 1, "{name}: global");
        let BtfType::FuncProto { ret, params } = btf.get(*proto).unwrap() else {
            panic!("not a FUNC_PROTO")
        };
        assert!(matches!(btf.get(*ret), Some(BtfType::Int { name, .. }) if name == "int"));
        assert_eq!(params.len(), 1);
        assert_eq!(params[0].0, "ctx");
        let BtfType::Ptr { target } = btf.get(params[0].1).unwrap() else {
            panic!("ctx is not a pointer")
        };
        assert!(
            matches!(btf.get(*target), Some(BtfType::Struct { name: n, .. }) if n == ctx),
            "{name}"
        );
    }
}

#[test]
fn btf_ext_func_and_line_info() {
    let bytes = write_object(&spec());
    let file = object::File::parse(&*bytes).unwrap();
    let btf = decode_btf(section_data(&file, ".BTF")).unwrap();
    let ext = decode_btf_ext(section_data(&file, ".BTF.ext")).unwrap();
    let func_id = |name: &str| {
        btf.types
            .iter()
            .position(|t| matches!(t, BtfType::Func { name: n, .. } if n == name))
            .unwrap() as u32
            + 1
    };
    let secs: Vec<String> = ext
        .func_info
        .iter()
        .map(|s| btf.string_at(s.sec_name_off).unwrap())
        .collect();
    assert_eq!(secs, ["sk_msg", "sockops"]);
    let fi: Vec<(u32, u32)> = ext.func_info[0]
        .records
        .iter()
        .map(|r| (r.insn_off, r.type_id))
        .collect();
    assert_eq!(
        fi,
        [(0, func_id("skp_verdict")), (48, func_id("skp_second"))]
    );
    assert_eq!(ext.func_info[1].records.len(), 1);
    assert_eq!(ext.func_info[1].records[0].type_id, func_id("skp_sockops"));

    // Only sk_msg has lines.
    assert_eq!(ext.line_info.len(), 1);
    assert_eq!(
        btf.string_at(ext.line_info[0].sec_name_off).unwrap(),
        "sk_msg"
    );
    let li: Vec<(u32, String, String, u32)> = ext.line_info[0]
        .records
        .iter()
        .map(|r| {
            (
                r.insn_off,
                btf.string_at(r.file_name_off).unwrap(),
                btf.string_at(r.line_off).unwrap(),
                r.line_col,
            )
        })
        .collect();
    let file = "policy.skp".to_string();
    assert_eq!(
        li,
        [
            (0, file.clone(), "load map".into(), line_col(5, 3)),
            (8, file.clone(), "load map".into(), line_col(5, 3)),
            (
                24,
                file.clone(),
                "redirect to skp_socks[0]".into(),
                (7 << 10) | 3
            ),
            (48, file, "pass".into(), line_col(1, 3)),
        ]
    );
}

#[test]
fn no_maps_no_lines() {
    let spec = ObjectSpec {
        license: "GPL".into(),
        maps: vec![],
        data_sections: vec![],
        programs: vec![ProgramSpec {
            section: "sk_msg".into(),
            name: "pass".into(),
            code: ret1(),
            ..Default::default()
        }],
    };
    let bytes = write_object(&spec);
    let file = object::File::parse(&*bytes).unwrap();
    assert!(file.section_by_name(".maps").is_none());
    let btf = decode_btf(section_data(&file, ".BTF")).unwrap();
    assert!(!btf
        .types
        .iter()
        .any(|t| matches!(t, BtfType::Datasec { name, .. } if name == ".maps")));
    let ext = decode_btf_ext(section_data(&file, ".BTF.ext")).unwrap();
    assert_eq!(ext.func_info.len(), 1);
    assert!(ext.line_info.is_empty());
}

#[test]
fn deterministic() {
    let a = write_object(&spec());
    let b = write_object(&spec());
    assert_eq!(a, b);
    let c = write_object(&spec().clone());
    assert_eq!(a, c);
    // A different spec gives different bytes.
    let mut s = spec();
    s.maps[0].max_entries = 128;
    assert_ne!(a, write_object(&s));
}

#[test]
#[should_panic(expected = "not an ld_imm64")]
fn map_ref_must_point_at_ld_imm64() {
    let mut s = spec();
    s.programs[0].map_refs[0].slot = 0;
    write_object(&s);
}

#[test]
fn line_col_packing() {
    assert_eq!(line_col(7, 3), 7 << 10 | 3);
    assert_eq!(line_col(1, 5000), 1 << 10 | 0x3ff);
}
