//! Membership and prefix tests: `in` a set, range or prefix, `starts with`, and the
//! address, payload and comm tests they (and `==`) turn into.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::values::{operand_kind, FieldRef, Operand, Val};
use super::Checker;
use super::{MAX_COMM_LEN, MAX_SLICE_LEN};
use crate::diag::{Code, Diag};
use crate::hir::ranges::normalize;
use crate::hir::{self, Cond, End, IntField, Net, Test, TextOp};
use crate::syntax::lexer::IpLit;
use crate::syntax::Span;

impl Checker {
    pub(super) fn addr_test(
        &mut self,
        field: FieldRef,
        fs: Span,
        ips: &[(IpLit, Span)],
    ) -> Option<Cond> {
        let FieldRef::Addr {
            local,
            remote,
            v4,
            v6,
            mapped,
        } = field
        else {
            return None;
        };
        let mut nets = Vec::new();
        let mut ok = true;
        for (ip, span) in ips {
            let net = match *ip {
                IpLit::V4(a, p) => {
                    if !v4 {
                        self.err(
                            Diag::new(
                                Code::WrongFamily,
                                "an IPv4 address against an IPv6-only field",
                                *span,
                            )
                            .label("IPv4")
                            .secondary(fs, "this field holds IPv6 addresses")
                            .help("use `local.ip`/`remote.ip` (both families) or an IPv6 address"),
                        );
                        ok = false;
                        continue;
                    }
                    let prefix = p.unwrap_or(32);
                    let addr = u32::from(a);
                    if addr & !hir::mask32(prefix) != 0 {
                        self.host_bits_error(
                            *span,
                            &IpAddr::V4(Ipv4Addr::from(addr & hir::mask32(prefix))),
                            prefix,
                        );
                        ok = false;
                        continue;
                    }
                    Net::V4 { addr, prefix }
                }
                IpLit::V6(a, p) => {
                    if !v6 {
                        self.err(
                            Diag::new(Code::WrongFamily, "an IPv6 address or prefix against an IPv4-only field", *span)
                                .label("IPv6")
                                .secondary(fs, "this field holds IPv4 addresses")
                                .help("use `local.ip`/`remote.ip` (both families), or an IPv4 address or prefix"),
                        );
                        ok = false;
                        continue;
                    }
                    let prefix = p.unwrap_or(128);
                    let addr = u128::from(a);
                    if addr & !hir::mask128(prefix) != 0 {
                        self.host_bits_error(
                            *span,
                            &IpAddr::V6(Ipv6Addr::from(addr & hir::mask128(prefix))),
                            prefix,
                        );
                        ok = false;
                        continue;
                    }
                    Net::V6 { addr, prefix }
                }
            };
            nets.push(net);
        }
        if !ok {
            return None;
        }
        nets.sort();
        nets.dedup();
        let test = |end, nets| Cond::Test(Test::Addr { end, nets, mapped });
        Some(match (local, remote) {
            (true, false) => test(End::Local, nets),
            (false, true) => test(End::Remote, nets),
            (true, true) => Cond::Or(vec![
                test(End::Local, nets.clone()),
                test(End::Remote, nets),
            ]),
            (false, false) => Cond::Or(Vec::new()),
        })
    }

    fn host_bits_error(&mut self, span: Span, net: &IpAddr, prefix: u8) {
        self.err(
            Diag::new(Code::HostBitsSet, "the prefix has host bits set", span)
                .label("bits beyond the prefix length are not zero")
                .help(format!("did you mean `{net}/{prefix}`?")),
        );
    }

    pub(super) fn payload_alts(
        &mut self,
        offset: u32,
        len: u32,
        alts: Vec<(Vec<u8>, Span)>,
    ) -> Option<Cond> {
        let mut out = Vec::new();
        for (s, span) in alts {
            if s.len() as u32 != len {
                self.err(
                    Diag::new(
                        Code::SliceLengthMismatch,
                        format!(
                            "a {}-byte string against a {len}-byte payload slice",
                            s.len()
                        ),
                        span,
                    )
                    .label(format!("{} bytes", s.len()))
                    .help(format!(
                        "make the slice `payload[{offset}..{}]` or the string {len} bytes long",
                        offset as u64 + s.len() as u64
                    )),
                );
                return None;
            }
            out.push(s);
        }
        out.sort();
        out.dedup();
        Some(Cond::Test(Test::Payload { offset, alts: out }))
    }

    pub(super) fn comm_test(&mut self, alts: Vec<(Vec<u8>, Span)>, prefix: bool) -> Option<Cond> {
        let mut out = Vec::new();
        for (s, span) in alts {
            if s.len() > MAX_COMM_LEN || s.contains(&0) {
                self.err(
                    Diag::new(Code::BadComm, "a process name has at most 15 bytes and no NUL", span)
                        .label(format!("{} bytes", s.len()))
                        .help("the kernel keeps the first 15 bytes of the name: shorten it (use `starts with` for a prefix)"),
                );
                return None;
            }
            out.push(s);
        }
        out.sort();
        out.dedup();
        Some(Cond::Test(Test::Comm { alts: out, prefix }))
    }

    pub(super) fn membership(
        &mut self,
        l: Operand,
        ls: Span,
        r: Operand,
        rs: Span,
    ) -> Option<Cond> {
        if let (Operand::Field(field), Operand::Const(Val::FileSet(id))) = (&l, &r) {
            return self.file_membership(*field, ls, *id, rs);
        }
        let field = match l {
            Operand::Field(f) => f,
            Operand::Const(v) => {
                self.err(
                    Diag::new(
                        Code::TypeMismatch,
                        format!("`in` needs a field on the left, not {}", v.kind()),
                        ls,
                    )
                    .label("a constant")
                    .help("write `FIELD in SET`, e.g. `remote.port in {80, 443}`"),
                );
                return None;
            }
        };
        let elems: Vec<(Val, Span)> = match r {
            Operand::Const(Val::Set(items)) => items,
            Operand::Const(v @ (Val::Range(..) | Val::Ip(_))) => vec![(v, rs)],
            Operand::Const(other) => {
                self.err(
                    Diag::new(Code::TypeMismatch, format!("`in` needs a set, range or prefix, not {}", other.kind()), rs)
                        .label(format!("this is {}", other.kind()))
                        .help("write a set `{80, 443}`, a range `8000..8099` or a prefix `10.0.0.0/8`; for one value use `==`"),
                );
                return None;
            }
            Operand::Field(_) => {
                self.err(
                    Diag::new(
                        Code::TwoFields,
                        "`in` needs a constant set on the right",
                        rs,
                    )
                    .label("this is a field")
                    .help("write a set `{...}`, a range or a prefix"),
                );
                return None;
            }
        };
        match field {
            FieldRef::EitherPort => {
                let a = self.int_membership(IntField::LocalPort, ls, &elems)?;
                let b = self.int_membership(IntField::RemotePort, ls, &elems)?;
                Some(Cond::Or(vec![a, b]))
            }
            FieldRef::Int(f) => self.int_membership(f, ls, &elems),
            FieldRef::Family => {
                let mut ranges = Vec::new();
                for (v, s) in &elems {
                    match v {
                        Val::Family(f) => ranges.push((*f as u64, *f as u64)),
                        other => {
                            return self.mismatch(
                                &field,
                                ls,
                                &other.clone(),
                                *s,
                                "list families: `{inet, inet6}`",
                            )
                        }
                    }
                }
                Some(Cond::Test(Test::Int {
                    field: IntField::Family,
                    ranges: normalize(ranges),
                }))
            }
            FieldRef::Addr { .. } => {
                let mut ips = Vec::new();
                for (v, s) in &elems {
                    match v {
                        Val::Ip(ip) => ips.push((*ip, *s)),
                        other => {
                            return self.mismatch(
                                &field,
                                ls,
                                &other.clone(),
                                *s,
                                "list addresses or prefixes: `{10.0.0.0/8, ::1}`",
                            )
                        }
                    }
                }
                if ips.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.addr_test(field, ls, &ips)
            }
            FieldRef::PayloadSlice { offset, len } => {
                let strs = self.strings(&field, ls, &elems)?;
                if strs.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.payload_alts(offset, len, strs)
            }
            FieldRef::Comm => {
                let strs = self.strings(&field, ls, &elems)?;
                if strs.is_empty() {
                    return Some(Cond::Const(false));
                }
                self.comm_test(strs, false)
            }
            FieldRef::Text(t) => {
                let strs = self.strings(&field, ls, &elems)?;
                self.text_test(t, ls, TextOp::Eq, strs)
            }
            FieldRef::Proto(p) => {
                self.err(
                    Diag::new(
                        Code::TypeMismatch,
                        format!("`{}` is true or false; `in` does not apply", p.name()),
                        ls,
                    )
                    .label("a boolean")
                    .help(format!(
                        "use it as a condition on its own: `{} and ...`",
                        p.name()
                    )),
                );
                None
            }
            FieldRef::Payload => {
                self.err(
                    Diag::new(
                        Code::WholePayload,
                        "the whole payload cannot be tested with `in`",
                        ls,
                    )
                    .label("unbounded")
                    .help("take a slice first: `payload[0..4] in {\"GET \", \"PUT \"}`"),
                );
                None
            }
        }
    }

    pub(super) fn strings(
        &mut self,
        field: &FieldRef,
        fs: Span,
        elems: &[(Val, Span)],
    ) -> Option<Vec<(Vec<u8>, Span)>> {
        let mut out = Vec::new();
        for (v, s) in elems {
            match v {
                Val::Str(b) => out.push((b.clone(), *s)),
                other => {
                    self.mismatch(
                        field,
                        fs,
                        &other.clone(),
                        *s,
                        "list strings: `{\"GET \", \"PUT \"}`",
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// `FIELD in NAME` with a set read from a file: the test of its elements, each test
    /// wrapped in `Test::InFile` (the contents may change while the program runs).
    fn file_membership(&mut self, field: FieldRef, fs: Span, id: usize, rs: Span) -> Option<Cond> {
        let elems = self.loaded_sets.get(id)?.elems.clone();
        let cond = match field {
            FieldRef::Int(IntField::Family | IntField::PayloadByte(_)) => None,
            FieldRef::Int(_) | FieldRef::EitherPort | FieldRef::Addr { .. } => {
                Some(if elems.is_empty() {
                    // An empty file is an empty set now, not `false`: it may fill up.
                    match field {
                        FieldRef::Addr { .. } => self.addr_test(field, fs, &[])?,
                        _ => self.membership(
                            Operand::Field(field),
                            fs,
                            Operand::Const(Val::Set(elems)),
                            rs,
                        )?,
                    }
                } else {
                    self.membership(
                        Operand::Field(field),
                        fs,
                        Operand::Const(Val::Set(elems)),
                        rs,
                    )?
                })
            }
            _ => None,
        };
        let Some(cond) = cond else {
            self.err(
                Diag::new(
                    Code::FileSetMisuse,
                    format!("a set read from a file holds addresses or integers, which {} is not", field.kind()),
                    fs,
                )
                .label("tested against a set file")
                .secondary(rs, "read from a file")
                .help("test an address field (`remote.ip`), a port, `uid`, `gid`, `pid`, `cgroup` or `len`"),
            );
            return None;
        };
        fn wrap(c: Cond, set: usize) -> Cond {
            match c {
                Cond::Test(t) => Cond::Test(Test::InFile {
                    set,
                    of: Box::new(t),
                }),
                Cond::And(cs) => Cond::And(cs.into_iter().map(|c| wrap(c, set)).collect()),
                Cond::Or(cs) => Cond::Or(cs.into_iter().map(|c| wrap(c, set)).collect()),
                Cond::Not(c) => Cond::Not(Box::new(wrap(*c, set))),
                Cond::Const(b) => Cond::Const(b),
            }
        }
        Some(wrap(cond, id))
    }

    fn int_membership(&mut self, field: IntField, fs: Span, elems: &[(Val, Span)]) -> Option<Cond> {
        let mut ranges = Vec::new();
        for (v, s) in elems {
            match v {
                Val::Range(lo, hi) => {
                    let lo = self.int_value(field, fs, &Val::Int(*lo), *s)?;
                    let hi = self.int_value(field, fs, &Val::Int(*hi), *s)?;
                    ranges.push((lo, hi));
                }
                other => {
                    let n = self.int_value(field, fs, other, *s)?;
                    ranges.push((n, n));
                }
            }
        }
        Some(Cond::Test(Test::Int {
            field,
            ranges: normalize(ranges),
        }))
    }

    pub(super) fn starts_with(
        &mut self,
        l: Operand,
        ls: Span,
        r: Operand,
        rs: Span,
    ) -> Option<Cond> {
        let prefixes = self.string_alts(r, rs, "starts with")?;
        match l {
            Operand::Field(FieldRef::Payload) => {
                // One test per length, holding every prefix of that length: a large
                // set of one length is then one lookup (`lower::sets`).
                let mut by_len: std::collections::BTreeMap<usize, Vec<Vec<u8>>> =
                    std::collections::BTreeMap::new();
                for (p, span) in prefixes {
                    if p.len() as u32 > MAX_SLICE_LEN {
                        self.err(
                            Diag::new(Code::PayloadTooFar, format!("a {}-byte prefix is longer than the supported {MAX_SLICE_LEN}", p.len()), span)
                                .label("too long")
                                .help(format!("test at most {MAX_SLICE_LEN} bytes at a time; split it into slices joined with `and`")),
                        );
                        return None;
                    }
                    by_len.entry(p.len()).or_default().push(p);
                }
                let mut alts: Vec<Cond> = by_len
                    .into_values()
                    .map(|mut same| {
                        same.sort_unstable();
                        same.dedup();
                        Cond::Test(Test::Payload {
                            offset: 0,
                            alts: same,
                        })
                    })
                    .collect();
                Some(if alts.len() == 1 {
                    alts.pop()?
                } else {
                    Cond::Or(alts)
                })
            }
            Operand::Field(FieldRef::Comm) => self.comm_test(prefixes, true),
            Operand::Field(FieldRef::Text(t)) => {
                self.text_test(t, ls, TextOp::StartsWith, prefixes)
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(
                        Code::StartsWithNotApplicable,
                        format!("`starts with` does not apply to {kind}"),
                        ls,
                    )
                    .label("not a byte string")
                    .help("`starts with` tests `payload`, `comm` or a protocol's string field"),
                );
                None
            }
        }
    }
}
