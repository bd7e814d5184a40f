//! ELF object writer: turns encoded programs and map definitions into a
//! relocatable `EM_BPF` object that aya and libbpf (`bpftool prog loadall`)
//! load, shaped like what clang emits for a C source with BTF-defined maps.
//!
//! Layout of the object:
//! - one `SHF_ALLOC|SHF_EXECINSTR` section per distinct program section name
//!   (`sk_msg`, `sockops`, ...); programs that share a section name are laid
//!   out one after the other in that section, like clang does, each covered
//!   by its own global `STT_FUNC` symbol;
//! - `.rel<section>` with one `R_BPF_64_64` per map-loading `ld_imm64`;
//! - `license` with a NUL-terminated string and the global object `LICENSE`;
//! - `.maps` with one zeroed slot and one global `STT_OBJECT` per map;
//! - one zeroed data section per global-data map ([`MapDef::data_var`]), named after
//!   the map (`.data.<name>`), holding one global `STT_OBJECT`: the loaders make it an
//!   ARRAY of one value that programs address directly (`ld_imm64` of
//!   `BPF_PSEUDO_MAP_VALUE`, as clang emits for a C global in `.data`). Not `.bss.*`:
//!   libbpf takes custom `.data.*` sections but only the one `.bss`;
//! - `.BTF` with the libbpf BTF-defined map convention, a VAR per map, the
//!   `.maps` and `license` DATASECs, and FUNC_PROTO + FUNC per program;
//! - `.BTF.ext` with func_info (one per program) and line_info;
//! - any extra data sections for the loader (the rule index), not allocated.
//!
//! The output is a pure function of the [`ObjectSpec`].

pub mod btf;

use std::borrow::Cow;
use std::collections::HashMap;

use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolKind, SymbolScope,
};

use crate::bpf::uapi::{BPF_DW, BPF_IMM, BPF_LD, BPF_MAP_TYPE_RINGBUF};
use btf::{
    Btf, BtfExt, ExtSection, FuncInfoRec, LineInfoRec, FUNC_GLOBAL, INT_SIGNED,
    VAR_GLOBAL_ALLOCATED,
};

/// Size of one instruction slot.
pub const INSN_SIZE: usize = 8;
/// The opcode of `ld_imm64` (two slots; the first of a map load carries the relocation).
const LD_IMM64: u8 = BPF_LD | BPF_IMM | BPF_DW;

/// Everything that goes into one object file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectSpec {
    /// License string, e.g. "GPL" (the helpers we call are GPL-only).
    pub license: String,
    pub maps: Vec<MapDef>,
    pub programs: Vec<ProgramSpec>,
    /// Extra non-allocated data sections (name, bytes), written as given: data for the
    /// loader, such as the rule index (`skpc_abi::INDEX_SECTION`). Loaders that do not
    /// know a section skip it.
    pub data_sections: Vec<(String, Vec<u8>)>,
}

/// A BTF-defined map in `.maps`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapDef {
    /// Symbol and BTF VAR name; must be a C identifier.
    pub name: String,
    pub map_type: u32,
    /// Ignored for RINGBUF maps.
    pub key_size: u32,
    /// Ignored for RINGBUF maps.
    pub value_size: u32,
    pub max_entries: u32,
    /// Emitted only when non-zero (as clang does when the field is absent).
    pub map_flags: u32,
    /// libbpf's `pinning` attribute: `bpf::uapi::LIBBPF_PIN_BY_NAME` (aya's `map_pin_path`
    /// reuses a map pinned under its name: how a reloaded policy shares the live
    /// socket maps). Emitted only when non-zero.
    pub pinning: u32,
    /// A global-data map instead of a BTF-defined one: `name` is then its section
    /// (`.data.` and at most 9 more bytes, which the kernel's 15-byte map names keep
    /// whole), holding `value_size` zero bytes and the global object `data_var` (a C
    /// identifier) that [`ValueRef`]s relocate against. The loaders create an ARRAY of
    /// one entry of `value_size` bytes; the other fields are ignored.
    pub data_var: Option<String>,
}

/// One program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgramSpec {
    /// ELF section name: "sk_msg" or "sockops" (libbpf derives the program type from it).
    pub section: String,
    /// Global `STT_FUNC` symbol, e.g. "skp_verdict"; must be a C identifier.
    pub name: String,
    /// Encoded instructions, 8 bytes per slot (ld_imm64 = 2 slots).
    pub code: Vec<u8>,
    /// `ld_imm64` slots that load a map: `R_BPF_64_64` against the map's symbol. A
    /// reference to a global-data map ([`MapDef::data_var`]) is to its value: the
    /// relocation is against its object, and the offset into the value is in the first
    /// imm (`Insn::LdMapValue`).
    pub map_refs: Vec<MapRef>,
    /// Optional `.BTF.ext` line info.
    pub lines: Vec<LineInfo>,
}

/// A map-loading `ld_imm64` at `slot` (first of its two slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapRef {
    pub slot: usize,
    /// Index into [`ObjectSpec::maps`].
    pub map: usize,
}

/// Source position of the instruction at `slot`.
///
/// The writer normalizes line info the way the kernel wants it: entries are
/// sorted by slot, only the first entry per slot is kept, entries for slots
/// past the end or on the second half of an `ld_imm64` are dropped, and if
/// there is no entry for slot 0 the first remaining entry is copied there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineInfo {
    pub slot: usize,
    pub file: String,
    /// 1-based line (at most 2^22 - 1).
    pub line: u32,
    /// 1-based column (clamped to 1023, the 10 bits BTF has for it).
    pub col: u32,
    /// The source line text.
    pub text: String,
}

/// `line_col` as the kernel packs it.
pub fn line_col(line: u32, col: u32) -> u32 {
    (line << 10) | col.min(0x3ff)
}

/// Name of the context struct for a program section, for the FUNC_PROTO argument.
fn ctx_struct_name(section: &str) -> &'static str {
    match section.split('/').next().unwrap_or("") {
        "sockops" => "bpf_sock_ops",
        "sk_skb" | "tc" | "classifier" | "socket" | "cgroup_skb" => "__sk_buff",
        "xdp" => "xdp_md",
        _ => "sk_msg_md",
    }
}

/// Number of struct members (each 8 bytes in `.maps`) of a map's BTF struct.
fn map_fields(m: &MapDef) -> Vec<(&'static str, u32)> {
    let mut f = vec![("type", m.map_type), ("max_entries", m.max_entries)];
    if m.map_type != BPF_MAP_TYPE_RINGBUF {
        f.push(("key_size", m.key_size));
        f.push(("value_size", m.value_size));
    }
    if m.map_flags != 0 {
        f.push(("map_flags", m.map_flags));
    }
    if m.pinning != 0 {
        f.push(("pinning", m.pinning));
    }
    f
}

/// Size of a map's slot in `.maps` (= its BTF struct size).
pub fn map_slot_size(m: &MapDef) -> u32 {
    map_fields(m).len() as u32 * 8
}

/// Line info of one program (whose code is `code`), normalized for the kernel (see
/// [`LineInfo`]).
fn normalized_lines<'s>(p: &'s ProgramSpec, code: &[u8]) -> Vec<&'s LineInfo> {
    let slots = code.len() / INSN_SIZE;
    // Slots that are the second half of an ld_imm64.
    let mut second_half = vec![false; slots];
    let mut i = 0;
    while i < slots {
        if code[i * INSN_SIZE] == LD_IMM64 {
            if i + 1 < slots {
                second_half[i + 1] = true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    let mut lines: Vec<&LineInfo> = p
        .lines
        .iter()
        .filter(|l| l.slot < slots && !second_half[l.slot])
        .collect();
    lines.sort_by_key(|l| l.slot); // stable: the first entry per slot stays first
    lines.dedup_by_key(|l| l.slot);
    lines
}

fn elf_flags(sh_flags: u32) -> SectionFlags {
    SectionFlags::Elf {
        sh_flags: sh_flags as u64,
    }
}

/// Write the object. Deterministic: the same spec gives the same bytes.
///
/// Panics on an inconsistent spec (code not a multiple of 8 bytes, a map
/// reference out of range): those are compiler bugs, not user errors.
pub fn write_object(spec: &ObjectSpec) -> Vec<u8> {
    let code = spec
        .programs
        .iter()
        .map(|p| Cow::Borrowed(&p.code[..]))
        .collect();
    write(spec, code)
}

/// [`write_object`] of a spec the caller is done with: the programs' code moves into the
/// object instead of being copied (megabytes for a policy of 100k rules). Same bytes.
pub fn write_object_owned(mut spec: ObjectSpec) -> Vec<u8> {
    let code = spec
        .programs
        .iter_mut()
        .map(|p| Cow::Owned(std::mem::take(&mut p.code)))
        .collect();
    write(&spec, code)
}

/// The object of `spec`, whose programs' code is `code` (in program order; the spec's
/// own `code` fields are not read).
fn write<'a>(spec: &'a ObjectSpec, mut code: Vec<Cow<'a, [u8]>>) -> Vec<u8> {
    for (p, code) in spec.programs.iter().zip(&code) {
        assert!(
            code.len() % INSN_SIZE == 0,
            "program {}: code length {} is not a multiple of 8",
            p.name,
            code.len()
        );
        for r in &p.map_refs {
            assert!(
                r.map < spec.maps.len(),
                "program {}: map index {} out of range",
                p.name,
                r.map
            );
            assert!(
                (r.slot + 2) * INSN_SIZE <= code.len() && code[r.slot * INSN_SIZE] == LD_IMM64,
                "program {}: map reference at slot {} is not an ld_imm64",
                p.name,
                r.slot
            );
        }
    }

    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let mut btf = Btf::new();

    // ---- program sections: group programs by section name, in order of first use.
    let mut sec_order: Vec<&str> = Vec::new();
    for p in &spec.programs {
        if !sec_order.contains(&p.section.as_str()) {
            sec_order.push(&p.section);
        }
    }
    // (section id, byte offset of each program in its section)
    let mut prog_sec: Vec<(SectionId, u64)> = Vec::with_capacity(spec.programs.len());
    let mut sec_ids: HashMap<&str, SectionId> = HashMap::new();
    for name in &sec_order {
        let id = obj.add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Text);
        obj.section_mut(id).flags = elf_flags(object::elf::SHF_ALLOC | object::elf::SHF_EXECINSTR);
        sec_ids.insert(name, id);
    }
    // Line info and sizes need the code, which moves into the sections next.
    let code_len: Vec<usize> = code.iter().map(|c| c.len()).collect();
    let norm_lines: Vec<Vec<&LineInfo>> = spec
        .programs
        .iter()
        .zip(&code)
        .map(|(p, code)| normalized_lines(p, code))
        .collect();
    // Each section's data: its programs one after the other (their lengths are multiples
    // of the 8-byte alignment, so each starts where the previous one ends). A section of
    // one program takes its code as it is, borrowed or owned: no copy.
    let mut offsets = vec![0u64; spec.programs.len()];
    for name in &sec_order {
        let mut data: Option<Cow<'a, [u8]>> = None;
        for (i, p) in spec.programs.iter().enumerate() {
            if p.section != *name {
                continue;
            }
            let c = std::mem::take(&mut code[i]);
            data = Some(match data {
                None => c,
                Some(d) => {
                    offsets[i] = d.len() as u64;
                    let mut d = d.into_owned();
                    d.extend_from_slice(&c);
                    Cow::Owned(d)
                }
            });
        }
        if let Some(d) = data {
            obj.set_section_data(sec_ids[name], d, 8);
        }
    }
    for (p, &off) in spec.programs.iter().zip(&offsets) {
        prog_sec.push((sec_ids[p.section.as_str()], off));
    }

    // ---- license
    let lic_sec = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.section_mut(lic_sec).flags = elf_flags(object::elf::SHF_ALLOC | object::elf::SHF_WRITE);
    let mut lic = spec.license.as_bytes().to_vec();
    lic.retain(|&b| b != 0);
    lic.push(0);
    obj.append_section_data(lic_sec, &lic, 1);

    // ---- .maps
    let mut map_syms: Vec<SymbolId> = Vec::with_capacity(spec.maps.len());
    let mut map_offsets: Vec<u32> = Vec::with_capacity(spec.maps.len());
    let btf_maps = || spec.maps.iter().filter(|m| m.data_var.is_none());
    let maps_size: u32 = btf_maps().map(map_slot_size).sum();
    let maps_sec = if btf_maps().next().is_none() {
        None
    } else {
        let id = obj.add_section(Vec::new(), b".maps".to_vec(), SectionKind::Data);
        obj.section_mut(id).flags = elf_flags(object::elf::SHF_ALLOC | object::elf::SHF_WRITE);
        obj.append_section_data(id, &vec![0u8; maps_size as usize], 8);
        Some(id)
    };

    // ---- symbols: programs (in order), maps, LICENSE.
    for (i, (p, &(sec, off))) in spec.programs.iter().zip(&prog_sec).enumerate() {
        obj.add_symbol(Symbol {
            name: p.name.as_bytes().to_vec(),
            value: off,
            size: code_len[i] as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(sec),
            flags: SymbolFlags::None,
        });
    }
    let mut off = 0u32;
    for m in &spec.maps {
        if let Some(var) = &m.data_var {
            let sec = obj.add_section(Vec::new(), m.name.as_bytes().to_vec(), SectionKind::Data);
            obj.section_mut(sec).flags = elf_flags(object::elf::SHF_ALLOC | object::elf::SHF_WRITE);
            obj.append_section_data(sec, &vec![0u8; m.value_size as usize], 8);
            map_syms.push(obj.add_symbol(Symbol {
                name: var.as_bytes().to_vec(),
                value: 0,
                size: m.value_size as u64,
                kind: SymbolKind::Data,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Section(sec),
                flags: SymbolFlags::None,
            }));
            map_offsets.push(0);
            continue;
        }
        let size = map_slot_size(m);
        map_syms.push(obj.add_symbol(Symbol {
            name: m.name.as_bytes().to_vec(),
            value: off as u64,
            size: size as u64,
            kind: SymbolKind::Data,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(maps_sec.expect("maps section")),
            flags: SymbolFlags::None,
        }));
        map_offsets.push(off);
        off += size;
    }
    obj.add_symbol(Symbol {
        name: b"LICENSE".to_vec(),
        value: 0,
        size: lic.len() as u64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(lic_sec),
        flags: SymbolFlags::None,
    });

    // ---- relocations
    for (p, &(sec, base)) in spec.programs.iter().zip(&prog_sec) {
        let mut refs = p.map_refs.clone();
        refs.sort_by_key(|r| r.slot);
        refs.dedup_by_key(|r| r.slot);
        for r in refs {
            obj.add_relocation(
                sec,
                Relocation {
                    offset: base + (r.slot * INSN_SIZE) as u64,
                    symbol: map_syms[r.map],
                    addend: 0,
                    flags: RelocationFlags::Elf {
                        r_type: object::elf::R_BPF_64_64,
                    },
                },
            )
            .expect("R_BPF_64_64 relocation");
        }
    }

    // ---- .BTF
    let int_id = btf.add_int("int", 4, 32, INT_SIGNED);
    let index_id = btf.add_int("__ARRAY_SIZE_TYPE__", 4, 32, 0);
    let mut uint_ptrs: HashMap<u32, u32> = HashMap::new();
    let mut map_vars: Vec<(u32, u32, u32)> = Vec::new();
    let mut data_vars: Vec<(&str, u32, u32)> = Vec::new();
    for (m, &moff) in spec.maps.iter().zip(&map_offsets) {
        if let Some(var) = &m.data_var {
            // The value as u64 words: `bpftool map dump` and skeletons show numbers.
            let u64_id = btf.add_int("unsigned long long", 8, 64, 0);
            let arr = btf.add_array(u64_id, index_id, m.value_size / 8);
            let v = btf.add_var(var, arr, VAR_GLOBAL_ALLOCATED);
            data_vars.push((&m.name, v, m.value_size));
            continue;
        }
        let fields = map_fields(m);
        let mut members = Vec::with_capacity(fields.len());
        for (i, &(fname, value)) in fields.iter().enumerate() {
            let ptr = match uint_ptrs.get(&value) {
                Some(&p) => p,
                None => {
                    // PTR first, then its ARRAY, as clang orders them.
                    let ptr = btf.add_ptr(btf.type_count() + 2);
                    let arr = btf.add_array(int_id, index_id, value);
                    debug_assert_eq!(arr, ptr + 1);
                    uint_ptrs.insert(value, ptr);
                    ptr
                }
            };
            members.push((fname, ptr, i as u32 * 64));
        }
        let size = map_slot_size(m);
        let st = btf.add_struct("", size, &members);
        let var = btf.add_var(&m.name, st, VAR_GLOBAL_ALLOCATED);
        map_vars.push((var, moff, size));
    }
    let mut ctx_ptrs: HashMap<&str, u32> = HashMap::new();
    let mut func_ids: Vec<u32> = Vec::with_capacity(spec.programs.len());
    for p in &spec.programs {
        let cname = ctx_struct_name(&p.section);
        let ptr = match ctx_ptrs.get(cname) {
            Some(&p) => p,
            None => {
                let st = btf.add_struct(cname, 0, &[]);
                let ptr = btf.add_ptr(st);
                ctx_ptrs.insert(cname, ptr);
                ptr
            }
        };
        let proto = btf.add_func_proto(int_id, &[("ctx", ptr)]);
        func_ids.push(btf.add_func(&p.name, proto, FUNC_GLOBAL));
    }
    let char_id = btf.add_int("char", 1, 8, INT_SIGNED);
    let lic_arr = btf.add_array(char_id, index_id, lic.len() as u32);
    let lic_var = btf.add_var("LICENSE", lic_arr, VAR_GLOBAL_ALLOCATED);
    if maps_sec.is_some() {
        btf.add_datasec(".maps", maps_size, &map_vars);
    }
    for (name, var, size) in data_vars {
        btf.add_datasec(name, size, &[(var, 0, size)]);
    }
    btf.add_datasec(
        "license",
        lic.len() as u32,
        &[(lic_var, 0, lic.len() as u32)],
    );

    // ---- .BTF.ext (strings go into .BTF, so build it before serializing .BTF)
    let mut ext = BtfExt::default();
    for name in &sec_order {
        let sec_name_off = btf.add_string(name);
        let mut funcs = ExtSection {
            sec_name_off,
            records: Vec::new(),
        };
        let mut lines = ExtSection {
            sec_name_off,
            records: Vec::new(),
        };
        for (i, p) in spec.programs.iter().enumerate() {
            if p.section != *name {
                continue;
            }
            let base = prog_sec[i].1 as u32;
            funcs.records.push(FuncInfoRec {
                insn_off: base,
                type_id: func_ids[i],
            });
            let norm = &norm_lines[i];
            if let Some(first) = norm.first() {
                let mut push = |slot: usize, l: &LineInfo| {
                    let text = l.text.trim_end_matches(['\n', '\r']);
                    lines.records.push(LineInfoRec {
                        insn_off: base + (slot * INSN_SIZE) as u32,
                        file_name_off: btf.add_string(&l.file),
                        line_off: btf.add_string(text),
                        line_col: line_col(l.line, l.col),
                    });
                };
                if first.slot != 0 {
                    push(0, first);
                }
                for l in norm {
                    push(l.slot, l);
                }
            }
        }
        ext.func_info.push(funcs);
        ext.line_info.push(lines);
    }

    let btf_sec = obj.add_section(Vec::new(), b".BTF".to_vec(), SectionKind::Other);
    obj.section_mut(btf_sec).flags = elf_flags(0);
    obj.append_section_data(btf_sec, &btf.to_bytes(), 4);
    let ext_sec = obj.add_section(Vec::new(), b".BTF.ext".to_vec(), SectionKind::Other);
    obj.section_mut(ext_sec).flags = elf_flags(0);
    obj.append_section_data(ext_sec, &ext.to_bytes(), 4);

    for (name, bytes) in &spec.data_sections {
        let sec = obj.add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Other);
        obj.section_mut(sec).flags = elf_flags(0);
        obj.append_section_data(sec, bytes, 4);
    }

    obj.write().expect("writing the ELF object")
}

#[cfg(test)]
mod tests;
