//! A small BTF and BTF.ext encoder (and a decoder, for tests and tooling).
//!
//! Only the kinds the object writer needs are supported: INT, PTR, ARRAY,
//! STRUCT, FUNC, FUNC_PROTO, VAR and DATASEC. Layout follows
//! `include/uapi/linux/btf.h` and libbpf's `.BTF.ext` format, little endian.

use std::collections::HashMap;

pub const BTF_MAGIC: u16 = 0xeb9f;
pub const BTF_VERSION: u8 = 1;
/// Size of `struct btf_header`.
pub const BTF_HEADER_LEN: u32 = 24;
/// Size of the `.BTF.ext` header clang emits (with the CO-RE relocation fields).
pub const BTF_EXT_HEADER_LEN: u32 = 32;

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;

/// `BTF_INT_SIGNED`.
pub const INT_SIGNED: u32 = 1;

/// `BTF_FUNC_GLOBAL`.
pub const FUNC_GLOBAL: u32 = 1;
/// `BTF_VAR_GLOBAL_ALLOCATED`.
pub const VAR_GLOBAL_ALLOCATED: u32 = 1;

/// Size of one `bpf_func_info` record.
pub const FUNC_INFO_REC_SIZE: u32 = 8;
/// Size of one `bpf_line_info` record.
pub const LINE_INFO_REC_SIZE: u32 = 16;

/// Builder for a `.BTF` section. Type ids start at 1 (0 is `void`) and are
/// handed out in call order, so the same calls give the same bytes.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<u8>,
    count: u32,
    strings: Vec<u8>,
    string_offsets: HashMap<String, u32>,
}

impl Default for Btf {
    fn default() -> Self {
        Self::new()
    }
}

fn put(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn info(kind: u32, vlen: u32) -> u32 {
    debug_assert!(vlen <= 0xffff);
    (kind << 24) | (vlen & 0xffff)
}

impl Btf {
    pub fn new() -> Self {
        Btf {
            types: Vec::new(),
            count: 0,
            strings: vec![0],
            string_offsets: HashMap::new(),
        }
    }

    /// Number of types added (the largest type id).
    pub fn type_count(&self) -> u32 {
        self.count
    }

    /// Offset of `s` in the string section, adding it on first use. The empty
    /// string is offset 0. NUL bytes cannot be represented and are dropped.
    pub fn add_string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&off) = self.string_offsets.get(s) {
            return off;
        }
        let off = self.strings.len() as u32;
        if s.as_bytes().contains(&0) {
            self.strings.extend(s.bytes().filter(|&b| b != 0));
        } else {
            self.strings.extend_from_slice(s.as_bytes());
        }
        self.strings.push(0);
        self.string_offsets.insert(s.to_string(), off);
        off
    }

    fn header(&mut self, name: &str, info: u32, size_or_type: u32) -> u32 {
        let name_off = self.add_string(name);
        put(&mut self.types, name_off);
        put(&mut self.types, info);
        put(&mut self.types, size_or_type);
        self.count += 1;
        self.count
    }

    /// INT of `size` bytes, `bits` wide, with `encoding` (0 or [`INT_SIGNED`]).
    pub fn add_int(&mut self, name: &str, size: u32, bits: u32, encoding: u32) -> u32 {
        let id = self.header(name, info(KIND_INT, 0), size);
        put(&mut self.types, (encoding << 24) | bits);
        id
    }

    pub fn add_ptr(&mut self, target: u32) -> u32 {
        self.header("", info(KIND_PTR, 0), target)
    }

    pub fn add_array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
        let id = self.header("", info(KIND_ARRAY, 0), 0);
        put(&mut self.types, elem);
        put(&mut self.types, index);
        put(&mut self.types, nelems);
        id
    }

    /// STRUCT of `size` bytes; members are (name, type id, bit offset).
    pub fn add_struct(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let id = self.header(name, info(KIND_STRUCT, members.len() as u32), size);
        for &(mname, ty, bit_off) in members {
            let off = self.add_string(mname);
            put(&mut self.types, off);
            put(&mut self.types, ty);
            put(&mut self.types, bit_off);
        }
        id
    }

    /// FUNC_PROTO returning `ret`; params are (name, type id).
    pub fn add_func_proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
        let id = self.header("", info(KIND_FUNC_PROTO, params.len() as u32), ret);
        for &(pname, ty) in params {
            let off = self.add_string(pname);
            put(&mut self.types, off);
            put(&mut self.types, ty);
        }
        id
    }

    pub fn add_func(&mut self, name: &str, proto: u32, linkage: u32) -> u32 {
        self.header(name, info(KIND_FUNC, linkage), proto)
    }

    pub fn add_var(&mut self, name: &str, ty: u32, linkage: u32) -> u32 {
        let id = self.header(name, info(KIND_VAR, 0), ty);
        put(&mut self.types, linkage);
        id
    }

    /// DATASEC of `size` bytes; vars are (VAR type id, offset, size).
    pub fn add_datasec(&mut self, name: &str, size: u32, vars: &[(u32, u32, u32)]) -> u32 {
        let id = self.header(name, info(KIND_DATASEC, vars.len() as u32), size);
        for &(ty, off, sz) in vars {
            put(&mut self.types, ty);
            put(&mut self.types, off);
            put(&mut self.types, sz);
        }
        id
    }

    /// The `.BTF` section bytes: header, type section, string section.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(BTF_VERSION);
        out.push(0); // flags
        put(&mut out, BTF_HEADER_LEN);
        put(&mut out, 0); // type_off
        put(&mut out, self.types.len() as u32); // type_len
        put(&mut out, self.types.len() as u32); // str_off
        put(&mut out, self.strings.len() as u32); // str_len
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// One `bpf_func_info` record as stored in an ELF file (`insn_off` in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncInfoRec {
    pub insn_off: u32,
    pub type_id: u32,
}

/// One `bpf_line_info` record as stored in an ELF file (`insn_off` in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineInfoRec {
    pub insn_off: u32,
    pub file_name_off: u32,
    pub line_off: u32,
    pub line_col: u32,
}

/// Records of one ELF section in `.BTF.ext`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtSection<T> {
    /// Offset of the section name in `.BTF`'s string table.
    pub sec_name_off: u32,
    pub records: Vec<T>,
}

/// Contents of a `.BTF.ext` section (func_info and line_info; no CO-RE relocations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BtfExt {
    pub func_info: Vec<ExtSection<FuncInfoRec>>,
    pub line_info: Vec<ExtSection<LineInfoRec>>,
}

impl BtfExt {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut func = Vec::new();
        put(&mut func, FUNC_INFO_REC_SIZE);
        for sec in self.func_info.iter().filter(|s| !s.records.is_empty()) {
            put(&mut func, sec.sec_name_off);
            put(&mut func, sec.records.len() as u32);
            for r in &sec.records {
                put(&mut func, r.insn_off);
                put(&mut func, r.type_id);
            }
        }
        let mut line = Vec::new();
        if self.line_info.iter().any(|s| !s.records.is_empty()) {
            put(&mut line, LINE_INFO_REC_SIZE);
            for sec in self.line_info.iter().filter(|s| !s.records.is_empty()) {
                put(&mut line, sec.sec_name_off);
                put(&mut line, sec.records.len() as u32);
                for r in &sec.records {
                    put(&mut line, r.insn_off);
                    put(&mut line, r.file_name_off);
                    put(&mut line, r.line_off);
                    put(&mut line, r.line_col);
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(BTF_VERSION);
        out.push(0);
        put(&mut out, BTF_EXT_HEADER_LEN);
        put(&mut out, 0); // func_info_off
        put(&mut out, func.len() as u32);
        put(&mut out, func.len() as u32); // line_info_off
        put(&mut out, line.len() as u32);
        put(&mut out, (func.len() + line.len()) as u32); // core_relo_off
        put(&mut out, 0); // core_relo_len
        out.extend_from_slice(&func);
        out.extend_from_slice(&line);
        out
    }
}

// ---------------------------------------------------------------- decoding

/// A decoded BTF type (just enough structure to check what the encoder wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtfType {
    Int {
        name: String,
        size: u32,
        bits: u32,
        encoding: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        index: u32,
        nelems: u32,
    },
    Struct {
        name: String,
        size: u32,
        /// (name, type, bit offset)
        members: Vec<(String, u32, u32)>,
    },
    FuncProto {
        ret: u32,
        params: Vec<(String, u32)>,
    },
    Func {
        name: String,
        proto: u32,
        linkage: u32,
    },
    Var {
        name: String,
        ty: u32,
        linkage: u32,
    },
    Datasec {
        name: String,
        size: u32,
        /// (var type, offset, size)
        vars: Vec<(u32, u32, u32)>,
    },
    /// Any kind this decoder does not model; the raw kind number.
    Other {
        kind: u32,
    },
}

/// Decoded `.BTF`: `types[0]` is type id 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBtf {
    pub types: Vec<BtfType>,
    pub strings: Vec<u8>,
}

impl DecodedBtf {
    /// String at `off` in the string section.
    pub fn string_at(&self, off: u32) -> Option<String> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// Type with id `id` (1-based).
    pub fn get(&self, id: u32) -> Option<&BtfType> {
        self.types.get((id as usize).checked_sub(1)?)
    }
}

/// Why a `.BTF` or `.BTF.ext` section could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfDecodeError {
    #[error("bad {section} magic")]
    BadMagic { section: &'static str },
    #[error("truncated at offset {offset}")]
    Truncated { offset: usize },
    #[error("unsupported BTF kind {0}")]
    UnsupportedKind(u32),
    /// A header or record points outside its section (which part, in the message).
    #[error("{0}")]
    Malformed(&'static str),
}

fn rd(b: &[u8], off: usize) -> Result<u32, BtfDecodeError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or(BtfDecodeError::Truncated { offset: off })
}

/// Decode a `.BTF` section produced by [`Btf::to_bytes`] (or clang, for the
/// kinds listed in [`BtfType`]).
pub fn decode_btf(data: &[u8]) -> Result<DecodedBtf, BtfDecodeError> {
    if data.len() < BTF_HEADER_LEN as usize || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
        return Err(BtfDecodeError::BadMagic { section: ".BTF" });
    }
    let hdr_len = rd(data, 4)? as usize;
    let type_off = hdr_len + rd(data, 8)? as usize;
    let type_len = rd(data, 12)? as usize;
    let str_off = hdr_len + rd(data, 16)? as usize;
    let str_len = rd(data, 20)? as usize;
    let types_b = data
        .get(type_off..type_off + type_len)
        .ok_or(BtfDecodeError::Malformed("type section out of bounds"))?;
    let strings = data
        .get(str_off..str_off + str_len)
        .ok_or(BtfDecodeError::Malformed("string section out of bounds"))?
        .to_vec();
    let s = |off: u32| -> Result<String, BtfDecodeError> {
        let rest = strings
            .get(off as usize..)
            .ok_or(BtfDecodeError::Malformed("bad string offset"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfDecodeError::Malformed("unterminated"))?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut types = Vec::new();
    let mut p = 0usize;
    while p < types_b.len() {
        let name = s(rd(types_b, p)?)?;
        let inf = rd(types_b, p + 4)?;
        let sz = rd(types_b, p + 8)?;
        p += 12;
        let kind = (inf >> 24) & 0x1f;
        let vlen = (inf & 0xffff) as usize;
        let t = match kind {
            KIND_INT => {
                let v = rd(types_b, p)?;
                p += 4;
                BtfType::Int {
                    name,
                    size: sz,
                    bits: v & 0xff,
                    encoding: (v >> 24) & 0xf,
                }
            }
            KIND_PTR => BtfType::Ptr { target: sz },
            KIND_ARRAY => {
                let t = BtfType::Array {
                    elem: rd(types_b, p)?,
                    index: rd(types_b, p + 4)?,
                    nelems: rd(types_b, p + 8)?,
                };
                p += 12;
                t
            }
            KIND_STRUCT => {
                let mut members = Vec::new();
                for _ in 0..vlen {
                    members.push((
                        s(rd(types_b, p)?)?,
                        rd(types_b, p + 4)?,
                        rd(types_b, p + 8)?,
                    ));
                    p += 12;
                }
                BtfType::Struct {
                    name,
                    size: sz,
                    members,
                }
            }
            KIND_FUNC_PROTO => {
                let mut params = Vec::new();
                for _ in 0..vlen {
                    params.push((s(rd(types_b, p)?)?, rd(types_b, p + 4)?));
                    p += 8;
                }
                BtfType::FuncProto { ret: sz, params }
            }
            KIND_FUNC => BtfType::Func {
                name,
                proto: sz,
                linkage: vlen as u32,
            },
            KIND_VAR => {
                let linkage = rd(types_b, p)?;
                p += 4;
                BtfType::Var {
                    name,
                    ty: sz,
                    linkage,
                }
            }
            KIND_DATASEC => {
                let mut vars = Vec::new();
                for _ in 0..vlen {
                    vars.push((rd(types_b, p)?, rd(types_b, p + 4)?, rd(types_b, p + 8)?));
                    p += 12;
                }
                BtfType::Datasec {
                    name,
                    size: sz,
                    vars,
                }
            }
            // Kinds with no trailing data (FWD, TYPEDEF, modifiers, FLOAT, TYPE_TAG).
            7..=11 | 16 | 18 => BtfType::Other { kind },
            _ => return Err(BtfDecodeError::UnsupportedKind(kind)),
        };
        types.push(t);
    }
    Ok(DecodedBtf { types, strings })
}

/// Decode a `.BTF.ext` section (func_info and line_info only).
pub fn decode_btf_ext(data: &[u8]) -> Result<BtfExt, BtfDecodeError> {
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
        return Err(BtfDecodeError::BadMagic {
            section: ".BTF.ext",
        });
    }
    let hdr_len = rd(data, 4)? as usize;
    let mut ext = BtfExt::default();
    for (which, off_at) in [(0, 8usize), (1, 16usize)] {
        let off = hdr_len + rd(data, off_at)? as usize;
        let len = rd(data, off_at + 4)? as usize;
        if len == 0 {
            continue;
        }
        let b = data
            .get(off..off + len)
            .ok_or(BtfDecodeError::Malformed("info out of bounds"))?;
        let rec_size = rd(b, 0)? as usize;
        let mut p = 4;
        while p < b.len() {
            let sec_name_off = rd(b, p)?;
            let n = rd(b, p + 4)? as usize;
            p += 8;
            if which == 0 {
                let mut records = Vec::new();
                for _ in 0..n {
                    records.push(FuncInfoRec {
                        insn_off: rd(b, p)?,
                        type_id: rd(b, p + 4)?,
                    });
                    p += rec_size;
                }
                ext.func_info.push(ExtSection {
                    sec_name_off,
                    records,
                });
            } else {
                let mut records = Vec::new();
                for _ in 0..n {
                    records.push(LineInfoRec {
                        insn_off: rd(b, p)?,
                        file_name_off: rd(b, p + 4)?,
                        line_off: rd(b, p + 8)?,
                        line_col: rd(b, p + 12)?,
                    });
                    p += rec_size;
                }
                ext.line_info.push(ExtSection {
                    sec_name_off,
                    records,
                });
            }
        }
    }
    Ok(ext)
}
