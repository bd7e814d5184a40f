//! Policy generators shared by the benchmarks (benches/compile.rs, benches/kernel.rs).
//!
//! Every generated rule is a `drop` rule that the benchmark traffic never matches: ports
//! come from the C anchor's permutation of 1024..=31023 (below the ephemeral range that
//! loopback connections use), addresses from 10.0.0.0/8 and 192.168.0.0/16 (never
//! 127.0.0.1), payload strings start with an upper-case letter (the traffic is `x`s).

#![allow(dead_code)]

use std::fmt::Write;

/// The anchor's port permutation (anchors/sk_msg_c/gen_rules.sh): the `k`-th port of
/// `P = 1024 + (i * 7919) % 30000` for i = 0, 1, ..., skipping the guard port 6379.
/// Distinct for k < 29999; repeats after that.
pub struct AnchorPorts {
    i: u64,
}

impl AnchorPorts {
    pub fn new() -> AnchorPorts {
        AnchorPorts { i: 0 }
    }
}

impl Iterator for AnchorPorts {
    type Item = u16;
    fn next(&mut self) -> Option<u16> {
        loop {
            let p = 1024 + (self.i * 7919) % 30000;
            self.i += 1;
            if p != 6379 {
                return Some(p as u16);
            }
        }
    }
}

/// The skpc equivalent of the anchor's `rules_N`: `drop if port == P;` for the first `n`
/// ports of the permutation (`port` is either end, like the C's `lp == P || rp == P`).
pub fn port_chain(n: usize) -> String {
    let mut s = String::with_capacity(n * 24);
    for p in AnchorPorts::new().take(n) {
        writeln!(s, "drop if port == {p};").unwrap();
    }
    s
}

/// The C the anchor's gen_rules.sh writes for `rules_N`, with the prelude of
/// policy.bpf.c that it needs (context reads, byte swap), as one translation unit.
/// Self-contained: `SEC` and `bpf_ntohl` are defined here as libbpf's headers define
/// them, so only `linux/bpf.h` is needed.
pub fn port_chain_c(n: usize) -> String {
    let mut s = String::from(
        "/* rules_N of the sk_msg anchor (gen_rules.sh), as one translation unit. */\n\
         #include <linux/bpf.h>\n\
         #define SEC(name) __attribute__((section(name), used))\n\
         #define bpf_ntohl(x) __builtin_bswap32(x)\n\
         char LICENSE[] SEC(\"license\") = \"GPL\";\n\
         static __attribute__((always_inline)) __u32 ctx_u32(const __u32 *f) { return *(const volatile __u32 *)f; }\n\
         static __attribute__((always_inline)) __u32 msg_local_port(const struct sk_msg_md *m) { return ctx_u32(&m->local_port); }\n\
         static __attribute__((always_inline)) __u32 msg_remote_port(const struct sk_msg_md *m) { return bpf_ntohl(ctx_u32(&m->remote_port)); }\n",
    );
    writeln!(
        s,
        "\nSEC(\"sk_msg\")\nint rules_{n}(struct sk_msg_md *msg)\n{{"
    )
    .unwrap();
    s.push_str("\t__u32 lp = msg_local_port(msg);\n\t__u32 rp = msg_remote_port(msg);\n\n");
    for p in AnchorPorts::new().take(n) {
        writeln!(s, "\tif (lp == {p} || rp == {p})\n\t\treturn SK_DROP;").unwrap();
    }
    s.push_str("\treturn SK_PASS;\n}\n");
    s
}

/// An address in 10.0.0.0/8 from a number (never 127.x).
fn ten(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Port and address rules, in turn: `port == P`, `remote.ip == 10.a.b.c`,
/// `remote.ip in 192.168.x.y/28 and local.port == P`, `remote.port == P`. The policy the
/// kernel bench loads and sends through for 10 .. 100k rules.
pub fn port_addr(n: usize) -> String {
    let mut s = String::with_capacity(n * 48);
    let mut ports = AnchorPorts::new();
    for i in 0..n {
        match i % 4 {
            0 => writeln!(s, "drop if port == {};", ports.next().unwrap()),
            1 => writeln!(s, "drop if remote.ip == {};", ten(i)),
            2 => writeln!(
                s,
                "drop if remote.ip in 192.168.{}.{}/28 and local.port == {};",
                (i >> 4) & 255,
                (i & 15) << 4,
                ports.next().unwrap()
            ),
            _ => writeln!(s, "drop if remote.port == {};", ports.next().unwrap()),
        }
        .unwrap();
    }
    s
}

/// The rules of [`port_addr`], grouped by kind (all `port ==` rules, then all
/// `remote.ip ==`, ...): the same policy, but as long runs of one kind of rule.
pub fn port_addr_grouped(n: usize) -> String {
    let mut kinds: [String; 4] = Default::default();
    for (i, line) in port_addr(n).lines().enumerate() {
        kinds[i % 4].push_str(line);
        kinds[i % 4].push('\n');
    }
    kinds.concat()
}

/// Port, address, set and payload rules, in turn (the compile-time bench): two declared
/// sets, then rules that use ports, addresses, prefixes, sets (declared and inline),
/// payload prefixes, payload slices and lengths.
pub fn mixed(n: usize) -> String {
    let mut s = String::with_capacity(n * 56 + 256);
    s.push_str("set web = {80, 443, 8000..8099};\n");
    s.push_str("set lan = {10.0.0.0/8, 172.16.0.0/12, fd00::/8};\n");
    let mut ports = AnchorPorts::new();
    for i in 0..n {
        match i % 8 {
            0 => writeln!(s, "drop if port == {};", ports.next().unwrap()),
            1 => writeln!(s, "drop if remote.ip == {};", ten(i)),
            2 => writeln!(
                s,
                "drop if remote.ip in 192.168.{}.0/24 and local.port == {};",
                (i >> 3) & 255,
                ports.next().unwrap()
            ),
            3 => {
                let p = ports.next().unwrap();
                writeln!(s, "drop if remote.port in {{{p}, {}, {}}};", p + 2, p + 4)
            }
            4 => writeln!(s, "drop if payload starts with \"K{i:07}\";"),
            5 => writeln!(
                s,
                "drop if remote.port in web and payload[0..4] == \"Q{:03}\";",
                i % 1000
            ),
            6 => writeln!(
                s,
                "drop if remote.ip in lan and remote.port == {} and len > {};",
                ports.next().unwrap(),
                1000 + i % 5000
            ),
            _ => writeln!(s, "drop if remote.ip6 == fd00::{:x};", i & 0xffff),
        }
        .unwrap();
    }
    s.push_str("default pass;\n");
    s
}
