//! Kernel tests of the ELF object writer: objects from `skpc::object::write_object`
//! load through aya and through libbpf (`bpftool prog loadall`), both relocate a
//! global-data map's value address to the offset the code asks for, and the kernel
//! keeps the `.BTF.ext` line info.

mod common;

use std::process::Command;

use aya::programs::{SkMsg, SockOps};
use skpc::bpf::uapi::{
    BPF_FUNC_map_lookup_elem, BPF_FUNC_msg_redirect_hash, BPF_FUNC_msg_redirect_map,
    BPF_FUNC_ringbuf_output, BPF_FUNC_tail_call, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_TYPE_RINGBUF, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_SOCKMAP,
};
use skpc::object::{write_object, LineInfo, MapDef, MapRef, ObjectSpec, ProgramSpec};

// ------------------------------------------------------------- raw encoding
// A tiny local encoder so this test does not depend on the instruction module.

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

/// Builds a program slot by slot, with one LineInfo per instruction.
struct Prog {
    code: Vec<u8>,
    map_refs: Vec<MapRef>,
    lines: Vec<LineInfo>,
    line: u32,
}

impl Prog {
    fn new() -> Prog {
        Prog {
            code: Vec::new(),
            map_refs: Vec::new(),
            lines: Vec::new(),
            line: 0,
        }
    }
    fn slot(&self) -> usize {
        self.code.len() / 8
    }
    fn emit(&mut self, i: [u8; 8], text: &str) -> &mut Self {
        self.line += 1;
        self.lines.push(LineInfo {
            slot: self.slot(),
            file: "test.skp".into(),
            line: self.line,
            col: 1,
            text: text.into(),
        });
        self.code.extend_from_slice(&i);
        self
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.emit(insn(0xb7, dst, 0, 0, imm), &format!("r{dst} = {imm}"))
    }
    fn mov_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.emit(insn(0xbf, dst, src, 0, 0), &format!("r{dst} = r{src}"))
    }
    fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.emit(insn(0x07, dst, 0, 0, imm), &format!("r{dst} += {imm}"))
    }
    /// *(u64 *)(r10 + off) = 0
    fn st_dw0(&mut self, off: i16) -> &mut Self {
        self.emit(
            insn(0x7a, R10, 0, off, 0),
            &format!("*(u64 *)(r10 {off}) = 0"),
        )
    }
    /// *(u32 *)(r10 + off) = 0
    fn st_w0(&mut self, off: i16) -> &mut Self {
        self.emit(
            insn(0x62, R10, 0, off, 0),
            &format!("*(u32 *)(r10 {off}) = 0"),
        )
    }
    fn ld_map(&mut self, dst: u8, map: usize, name: &str) -> &mut Self {
        self.map_refs.push(MapRef {
            slot: self.slot(),
            map,
        });
        self.emit(insn(0x18, dst, 1, 0, 0), &format!("r{dst} = map {name}"));
        self.code.extend_from_slice(&[0u8; 8]);
        self
    }
    /// dst = &value(map)[off] (ld_imm64, src_reg = BPF_PSEUDO_MAP_VALUE, as clang
    /// leaves a global's address: the offset in the first imm).
    fn ld_value(&mut self, dst: u8, map: usize, off: i32) -> &mut Self {
        self.map_refs.push(MapRef {
            slot: self.slot(),
            map,
        });
        self.emit(
            insn(0x18, dst, 2, 0, off),
            &format!("r{dst} = &counts + {off}"),
        );
        self.code.extend_from_slice(&[0u8; 8]);
        self
    }
    /// lock *(u64 *)(dst + off) += src
    fn atomic_add(&mut self, dst: u8, src: u8, off: i16) -> &mut Self {
        self.emit(
            insn(0xdb, dst, src, off, 0),
            &format!("lock *(u64 *)(r{dst} {off}) += r{src}"),
        )
    }
    fn call(&mut self, helper: i32) -> &mut Self {
        self.emit(
            insn(0x85, 0, 0, 0, helper),
            &format!("call helper {helper}"),
        )
    }
    fn exit(&mut self) -> &mut Self {
        self.emit(insn(0x95, 0, 0, 0, 0), "exit")
    }
    fn build(&mut self, section: &str, name: &str, with_lines: bool) -> ProgramSpec {
        ProgramSpec {
            section: section.into(),
            name: name.into(),
            code: self.code.clone(),
            map_refs: self.map_refs.clone(),
            lines: if with_lines {
                self.lines.clone()
            } else {
                Vec::new()
            },
        }
    }
}

const SOCKS: usize = 0;
const HASH: usize = 1;
const COUNTERS: usize = 2;
const EVENTS: usize = 3;
const PROGS: usize = 4;
const COUNTS: usize = 5;

fn maps() -> Vec<MapDef> {
    let m = |name: &str, map_type, key_size, value_size, max_entries| MapDef {
        name: name.into(),
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
        pinning: 0,
        data_var: None,
    };
    vec![
        m("skp_socks", BPF_MAP_TYPE_SOCKMAP, 4, 4, 64),
        m("skp_hash", BPF_MAP_TYPE_SOCKHASH, 44, 8, 64),
        m("skp_counters", BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, 8),
        m("skp_events", BPF_MAP_TYPE_RINGBUF, 0, 0, 262144),
        m("skp_progs", BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 4),
        MapDef {
            data_var: Some("counts".into()),
            ..m(".data.counts", BPF_MAP_TYPE_ARRAY, 4, 32, 1)
        },
    ]
}

/// counts[1].messages += 1; counts[1].bytes += 1; return 1; (through the value's
/// address, no lookup)
fn count(lines: bool) -> ProgramSpec {
    Prog::new()
        .ld_value(R1, COUNTS, 16)
        .mov_imm(R2, 1)
        .atomic_add(R1, R2, 0)
        .atomic_add(R1, R2, 8)
        .mov_imm(R0, 1)
        .exit()
        .build("sk_msg", "skp_count", lines)
}

/// The value address `bpftool prog dump xlated` shows for the program `selector`
/// (`id N` or `pinned PATH`): `map[id:M][0]+OFF` of the first ld_imm64.
fn value_address(bpftool: &std::path::Path, selector: &[&str]) -> String {
    let dump = common::run_ok(
        Command::new(bpftool)
            .args(["prog", "dump", "xlated"])
            .args(selector),
    );
    let at = dump
        .find("map[id:")
        .unwrap_or_else(|| panic!("no map address in {dump}"));
    let rest = &dump[at..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// return bpf_msg_redirect_map(msg, &skp_socks, 0, 0);
fn verdict(lines: bool) -> ProgramSpec {
    Prog::new()
        .ld_map(R2, SOCKS, "skp_socks")
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(BPF_FUNC_msg_redirect_map)
        .exit()
        .build("sk_msg", "skp_verdict", lines)
}

/// v = map_lookup_elem(&skp_counters, &(u32){0}); if (v) read *v; return 1;
fn lookup(lines: bool) -> ProgramSpec {
    let mut p = Prog::new();
    p.st_w0(-4)
        .mov_reg(R2, R10)
        .add_imm(R2, -4)
        .ld_map(R1, COUNTERS, "skp_counters")
        .call(BPF_FUNC_map_lookup_elem);
    p.emit(insn(0x15, R0, 0, 1, 0), "if r0 == 0 goto +1");
    p.emit(insn(0x79, R1, R0, 0, 0), "r1 = *(u64 *)(r0 + 0)");
    p.mov_imm(R0, 1).exit().build("sk_msg", "skp_lookup", lines)
}

/// tail_call(msg, &skp_progs, 0); ringbuf_output(&skp_events, &(u64){0}, 8, 0);
/// return msg_redirect_hash(msg, &skp_hash, &(key[44]){0}, 0);
fn all_maps(lines: bool) -> ProgramSpec {
    let mut p = Prog::new();
    p.mov_reg(R6, R1)
        .ld_map(R2, PROGS, "skp_progs")
        .mov_imm(R3, 0)
        .call(BPF_FUNC_tail_call)
        .st_dw0(-8)
        .ld_map(R1, EVENTS, "skp_events")
        .mov_reg(R2, R10)
        .add_imm(R2, -8)
        .mov_imm(R3, 8)
        .mov_imm(R4, 0)
        .call(BPF_FUNC_ringbuf_output);
    for off in [-56, -48, -40, -32, -24] {
        p.st_dw0(off);
    }
    p.st_w0(-16)
        .mov_reg(R1, R6)
        .ld_map(R2, HASH, "skp_hash")
        .mov_reg(R3, R10)
        .add_imm(R3, -56)
        .mov_imm(R4, 0)
        .call(BPF_FUNC_msg_redirect_hash)
        .exit()
        .build("sk_msg", "skp_all", lines)
}

fn sockops(lines: bool) -> ProgramSpec {
    Prog::new()
        .mov_imm(R0, 1)
        .exit()
        .build("sockops", "skp_sockops", lines)
}

fn spec(lines: bool) -> ObjectSpec {
    ObjectSpec {
        license: "GPL".into(),
        maps: maps(),
        data_sections: vec![],
        programs: vec![
            verdict(lines),
            lookup(lines),
            all_maps(lines),
            count(lines),
            sockops(lines),
        ],
    }
}

const SK_MSG_PROGS: [&str; 4] = ["skp_verdict", "skp_lookup", "skp_all", "skp_count"];

fn load_with_aya(bytes: &[u8]) -> aya::Ebpf {
    let mut ebpf = aya::EbpfLoader::new()
        .load(bytes)
        .unwrap_or_else(|e| panic!("aya rejected the object: {e:?}"));
    for name in SK_MSG_PROGS {
        let p: &mut SkMsg = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("aya found no program {name}"))
            .try_into()
            .unwrap();
        p.load()
            .unwrap_or_else(|e| panic!("loading {name} with aya: {e:?}"));
    }
    let p: &mut SockOps = ebpf
        .program_mut("skp_sockops")
        .expect("aya found no program skp_sockops")
        .try_into()
        .unwrap();
    p.load()
        .unwrap_or_else(|e| panic!("loading skp_sockops with aya: {e:?}"));
    for m in maps() {
        assert!(ebpf.map(&m.name).is_some(), "aya created no map {}", m.name);
    }
    ebpf
}

#[test]
fn aya_loads_objects() {
    if !common::kernel_or_skip("aya_loads_objects") {
        return;
    }
    for lines in [false, true] {
        load_with_aya(&write_object(&spec(lines)));
    }
}

fn bpftool_loadall(bpftool: &std::path::Path, bytes: &[u8]) -> common::PinDir {
    let obj = common::TempFile::with_contents("skpc_obj", "o", bytes);
    let pins = common::PinDir::new("skpc_test");
    common::run_ok(
        Command::new(bpftool)
            .args(["prog", "loadall"])
            .arg(&obj.path)
            .arg(&pins.path),
    );
    for name in SK_MSG_PROGS.iter().chain(&["skp_sockops"]) {
        assert!(
            pins.join(name).exists(),
            "bpftool pinned no program {name} in {}",
            pins.path.display()
        );
    }
    pins
}

#[test]
fn bpftool_loads_objects() {
    let Some(bpftool) = common::bpftool_or_skip("bpftool_loads_objects") else {
        return;
    };
    for lines in [false, true] {
        let pins = bpftool_loadall(&bpftool, &write_object(&spec(lines)));
        let show = common::run_ok(
            Command::new(&bpftool)
                .args(["prog", "show", "pinned"])
                .arg(pins.join("skp_verdict")),
        );
        assert!(show.contains("sk_msg"), "{show}");
        assert!(show.contains("skp_verdict"), "{show}");
        let show = common::run_ok(
            Command::new(&bpftool)
                .args(["prog", "show", "pinned"])
                .arg(pins.join("skp_sockops")),
        );
        assert!(show.contains("sock_ops"), "{show}");
        // libbpf made `.data.counts` the value's map and kept the offset.
        let counts =
            common::run_ok(Command::new(&bpftool).args(["map", "show", "name", ".data.counts"]));
        assert!(
            counts.contains("value 32B") && counts.contains("max_entries 1"),
            "{counts}"
        );
        let count = pins.join("skp_count");
        let addr = value_address(&bpftool, &["pinned", &count.to_string_lossy()]);
        assert!(addr.ends_with("][0]+16"), "{addr}");
    }
}

#[test]
fn aya_relocates_a_global_data_value_address() {
    let Some(bpftool) = common::bpftool_or_skip("aya_relocates_a_global_data_value_address") else {
        return;
    };
    let mut ebpf = load_with_aya(&write_object(&spec(false)));
    let map = ebpf.map(".data.counts").expect("aya created .data.counts");
    let aya::maps::Map::Array(data) = map else {
        panic!("`.data.counts` is not an ARRAY: {map:?}");
    };
    let info = data.info().expect("map info");
    assert_eq!((info.value_size(), info.max_entries()), (32, 1));
    let map_id = info.id();
    let p: &mut SkMsg = ebpf.program_mut("skp_count").unwrap().try_into().unwrap();
    let id = p.info().expect("program info").id();
    let addr = value_address(&bpftool, &["id", &id.to_string()]);
    assert_eq!(addr, format!("map[id:{map_id}][0]+16"));
}

/// Every source line of `prog` shows up in `dump` (bpftool's `linum` dump,
/// lines like `; r3 = 0 [file:test.skp line_num:3 line_col:1]`).
fn assert_lines_in_dump(prog: &ProgramSpec, dump: &str) {
    assert!(!prog.lines.is_empty());
    for l in &prog.lines {
        let text = format!("; {}", l.text);
        let line = format!("line_num:{}", l.line);
        let file = format!("file:{}", l.file);
        assert!(
            dump.lines()
                .any(|d| d.starts_with(&text) && d.contains(&line) && d.contains(&file)),
            "line {} {:?} missing from the dump of {}:\n{dump}",
            l.line,
            l.text,
            prog.name
        );
    }
}

#[test]
fn line_info_reaches_the_kernel_via_bpftool() {
    let Some(bpftool) = common::bpftool_or_skip("line_info_reaches_the_kernel_via_bpftool") else {
        return;
    };
    let spec = spec(true);
    let pins = bpftool_loadall(&bpftool, &write_object(&spec));
    for prog in &spec.programs {
        let dump = common::run_ok(
            Command::new(&bpftool)
                .args(["prog", "dump", "xlated", "pinned"])
                .arg(pins.join(&prog.name))
                .arg("linum"),
        );
        assert_lines_in_dump(prog, &dump);
    }
}

#[test]
fn line_info_reaches_the_kernel_via_aya() {
    let Some(bpftool) = common::bpftool_or_skip("line_info_reaches_the_kernel_via_aya") else {
        return;
    };
    let spec = spec(true);
    let mut ebpf = load_with_aya(&write_object(&spec));
    let prog = &spec.programs[0];
    let p: &mut SkMsg = ebpf.program_mut(&prog.name).unwrap().try_into().unwrap();
    let id = p.info().expect("program info").id();
    let dump = common::run_ok(
        Command::new(&bpftool)
            .args(["prog", "dump", "xlated", "id"])
            .arg(id.to_string())
            .arg("linum"),
    );
    assert_lines_in_dump(prog, &dump);
}

#[test]
fn helpers_unique_names_differ() {
    let a = common::unique_name("x");
    let b = common::unique_name("x");
    assert_ne!(a, b);
    assert!(a.starts_with(&format!("x_{}_", std::process::id())));
}
