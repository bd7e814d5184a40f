//! Policies of every shape at any size, for the verifier-budget property test
//! (tests/kernel_budget.rs) and the bench's `budget` part (benches/kernel.rs): each
//! shape is one way a policy grows (rules of code, inline sets of each kind, protocol
//! fields, mixes), and `load_verified` loads a compiled object and returns the kernel's
//! verified_insns for the policy program.
#![allow(dead_code)]

/// A shape: its name, the policy of `n` elements (rules or set values), and the largest
/// size the kernel test runs by default (what CI affords: a thousand rules of code take
/// seconds to build in a debug build and to verify).
pub type Shape = (&'static str, fn(usize) -> String, usize);

/// Every shape.
pub const SHAPES: &[Shape] = &[
    ("uid_payload_rules", uid_payload_rules, 1000),
    ("port_len_rules", port_len_rules, 300),
    ("ip4_prefix_set", ip4_prefix_set, 3000),
    ("ip6_prefix_set", ip6_prefix_set, 1000),
    ("port_set", port_set, 1000),
    ("uid_set", uid_set, 1000),
    ("payload_string_set", payload_string_set, 1000),
    ("http_host_set", http_host_set, 3000),
    ("comm_set", comm_set, 3000),
    ("sni_long_set", sni_long_set, 3000),
    ("sni_suffix_set", sni_suffix_set, 3000),
    ("comm_prefix_set", comm_prefix_set, 3000),
    ("proto_field_rules", proto_field_rules, 3000),
    ("log_rules", log_rules, 300),
    ("count_rules", count_rules, 300),
    ("discard_rules", discard_rules, 300),
    ("mixed_rules", mixed_rules, 3000),
    ("port_addr_len_rules", port_addr_len_rules, 1000),
    ("port_uid_rules", port_uid_rules, 1000),
];

/// A deterministic pseudo-random sequence (splitmix64): the same policy every run.
pub struct Seq(u64);

impl Seq {
    pub fn new(seed: u64) -> Seq {
        Seq(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `drop if uid == X and payload[3] == Y;`: rules no index can hold.
pub fn uid_payload_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "drop if uid == {} and payload[3] == {};\n",
                1000 + i,
                i % 256
            )
        })
        .collect()
}

/// `drop if remote.port == P and len > N;`: port rules with a test the index cannot hold.
pub fn port_len_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "drop if remote.port == {} and len > {};\n",
                1 + i % 65000,
                8 + i % 900
            )
        })
        .collect()
}

/// `drop if remote.port == P and uid > N;`: port rules keyed on the port, their `uid`
/// range checked after the lookup (issue 11; code before, refused at 10,000 rules).
pub fn port_uid_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "drop if remote.port == {} and uid > {};\n",
                1 + i % 60000,
                i % 1000
            )
        })
        .collect()
}

fn set_rule(name: &str, values: Vec<String>, test: &str) -> String {
    format!(
        "set {name} = {{ {} }};\ndrop if {test} in {name};\n",
        values.join(", ")
    )
}

/// One rule over a set of `n` distinct random IPv4 /24 prefixes (the blocklist).
pub fn ip4_prefix_set(n: usize) -> String {
    let mut seq = Seq::new(24);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n.min(1 << 24) {
        seen.insert((seq.next() as u32) >> 8);
    }
    let values = seen
        .into_iter()
        .map(|p| format!("{}.{}.{}.0/24", p >> 16, (p >> 8) & 0xff, p & 0xff))
        .collect();
    set_rule("blocklist", values, "remote.ip")
}

/// One rule over a set of `n` IPv6 /64 prefixes.
pub fn ip6_prefix_set(n: usize) -> String {
    let values = (0..n)
        .map(|i| format!("2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff))
        .collect();
    set_rule("blocklist6", values, "remote.ip")
}

/// One rule over a set of `n` scattered ports (every third, so that they stay apart).
pub fn port_set(n: usize) -> String {
    let values = (0..n.min(21_845))
        .map(|i| (1 + 3 * i).to_string())
        .collect();
    set_rule("ports", values, "remote.port")
}

/// One rule over a set of `n` scattered uids.
pub fn uid_set(n: usize) -> String {
    let values = (0..n).map(|i| (1000 + 7 * i).to_string()).collect();
    set_rule("users", values, "uid")
}

/// One rule over a set of `n` 8-byte payload strings.
pub fn payload_string_set(n: usize) -> String {
    let values = (0..n).map(|i| format!("\"K{i:07}\"")).collect();
    set_rule("keys", values, "payload[0..8]")
}

/// One rule over a set of `n` HTTP hosts (the HTTP parser and a string search, or a
/// HASH lookup of the host past `MAP_ABOVE_TEXT`).
pub fn http_host_set(n: usize) -> String {
    let values = (0..n).map(|i| format!("\"h{i}.example.com\"")).collect();
    set_rule("hosts", values, "http.host")
}

/// One rule over a set of `n` process names (compares, or a HASH lookup past
/// `MAP_ABOVE_COMM`).
pub fn comm_set(n: usize) -> String {
    let values = (0..n).map(|i| format!("\"p{i}\"")).collect();
    set_rule("names", values, "comm")
}

/// One rule over a set of `n` TLS server names of 146-152 bytes: the longest key a
/// string set map copies (152 bytes, the most rounds of its loop), and one name longer
/// than that, compared in code.
pub fn sni_long_set(n: usize) -> String {
    let mut values: Vec<String> = (0..n)
        .map(|i| format!("\"{}{i:07}.example\"", "a".repeat(131 + i % 7)))
        .collect();
    values.push(format!("\"{}.example\"", "b".repeat(200)));
    set_rule("names", values, "tls.sni")
}

/// One rule over `n` domain suffixes of TLS server names (compares, or an LPM trie of
/// the reversed suffixes past `MAP_ABOVE_TEXT`): a domain blocklist.
pub fn sni_suffix_set(n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| format!("\".d{i}.example\"")).collect();
    format!("drop if tls.sni ends with {{ {} }};\n", values.join(", "))
}

/// One rule over `n` process name prefixes (compares, or an LPM trie past
/// `MAP_ABOVE_COMM`).
pub fn comm_prefix_set(n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| format!("\"p{i}-\"")).collect();
    format!("drop if comm starts with {{ {} }};\n", values.join(", "))
}

/// `n` sets of 65 process names (each a map of its own), one rule each; the `uid` test
/// keeps the rules out of the rule index, so every set is looked up.
pub fn comm_sets(n: usize) -> String {
    let mut src = String::new();
    for k in 0..n {
        let names: Vec<String> = (0..65).map(|i| format!("\"c{k}x{i}\"")).collect();
        src.push_str(&format!("set names{k} = {{ {} }};\n", names.join(", ")));
    }
    for k in 0..n {
        src.push_str(&format!("drop if comm in names{k} and uid > {k};\n"));
    }
    src
}

/// `n` rules over the protocols' fields, all four parsers: from 256 on, four text groups
/// of the rule index (compiler/lower/text_index.rs).
pub fn proto_field_rules(n: usize) -> String {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("drop if http.host == \"h{i}.example.com\";\n"),
            1 => format!("drop if redis.key starts with \"k{i}:\";\n"),
            2 => format!("drop if pg.user == \"u{i}\";\n"),
            _ => format!("drop if tls.sni ends with \".d{i}.example\";\n"),
        })
        .collect()
}

/// `log if uid == X and remote.port == P;`: non-terminal rules writing a log record.
pub fn log_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "log if uid == {} and remote.port == {};\n",
                1000 + i,
                1 + i % 60000
            )
        })
        .collect()
}

/// `count hits if remote.port == P and len > N;`: non-terminal counting rules.
pub fn count_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "count hits{} if remote.port == {} and len > {};\n",
                i % 16,
                1 + i % 60000,
                i % 900
            )
        })
        .collect()
}

/// `discard if payload starts with "CMDi";`: payload prefixes answered by emptying.
pub fn discard_rules(n: usize) -> String {
    (0..n)
        .map(|i| format!("discard if payload starts with \"CMD{i}\";\n"))
        .collect()
}

/// `n` rules of eight kinds in turn: ports, addresses, prefixes with ports, uid, len,
/// payload bytes, payload prefixes, comm; `drop`, `discard` and `log` rules, one block
/// of several decisions in the rule index.
pub fn mixed_rules(n: usize) -> String {
    let mut seq = Seq::new(8);
    (0..n)
        .map(|i| {
            let r = seq.next();
            let port = 1 + r % 60000;
            match i % 8 {
                0 => format!("drop if remote.port == {port};\n"),
                1 => format!(
                    "drop if remote.ip == 10.{}.{}.{};\n",
                    r >> 8 & 0xff,
                    r >> 16 & 0xff,
                    r >> 24 & 0xff
                ),
                2 => format!(
                    "drop if remote.ip in 192.168.{}.0/24 and local.port == {port};\n",
                    r & 0xff
                ),
                3 => format!(
                    "drop if uid == {} and remote.port == {port};\n",
                    r % 100_000
                ),
                4 => format!("drop if remote.port == {port} and len > {};\n", r % 1000),
                5 => format!("drop if payload[{}] == {};\n", r % 32, r >> 8 & 0xff),
                6 => format!("discard if payload starts with \"CMD{}\";\n", r % 10_000),
                _ => format!(
                    "log if comm == \"p{}\" and remote.port == {port};\n",
                    r % 1000
                ),
            }
        })
        .collect()
}

/// Port and address rules of four kinds (ports, addresses, prefixes with ports, port
/// pairs), each with `and len > 7`, which the rule index cannot hold: rules of code,
/// branch-free above 1000 (the 10k policy of tests/kernel_load.rs).
pub fn port_addr_len_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            let port = 1024 + (i * 7) % 60000;
            let test = match i % 4 {
                0 => format!("port == {port}"),
                1 => format!(
                    "remote.ip == 10.{}.{}.{}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                ),
                2 => format!(
                    "remote.ip in 172.{}.{}.0/24 and local.port == {port}",
                    16 + (i >> 16) % 16,
                    (i >> 8) & 255
                ),
                _ => format!("remote.port in {{{port}, {}}}", port + 1),
            };
            format!("drop if {test} and len > 7;\n")
        })
        .collect()
}

/// Loads every program of `object` through aya (the verifier's statistics only) and
/// returns the policy program's verified_insns, or the kernel's refusal.
pub fn load_verified(object: &[u8]) -> Result<u32, String> {
    use aya::programs::{SkMsg, SockOps};
    let mut ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(object)
        .map_err(|e| format!("aya rejected the object: {e}"))?;
    for prog in ["skp_verdict", "skp_entry"] {
        let p: &mut SkMsg = ebpf
            .program_mut(prog)
            .ok_or(format!("no program {prog}"))?
            .try_into()
            .map_err(|e| format!("{prog}: {e}"))?;
        p.load()
            .map_err(|e| format!("the verifier rejected {prog}: {e:#?}"))?;
    }
    let s: &mut SockOps = ebpf
        .program_mut("skp_sockops")
        .ok_or("no program skp_sockops")?
        .try_into()
        .map_err(|e| format!("skp_sockops: {e}"))?;
    s.load()
        .map_err(|e| format!("the verifier rejected skp_sockops: {e:#?}"))?;
    let p: &SkMsg = ebpf
        .program("skp_verdict")
        .ok_or("no skp_verdict")?
        .try_into()
        .map_err(|e| format!("skp_verdict: {e}"))?;
    p.info()
        .map_err(|e| format!("prog info: {e}"))?
        .verified_instruction_count()
        .ok_or_else(|| "the kernel reports no verified_insns".to_string())
}

/// The object skpc would write for `src` without holding it to the budget (for
/// calibration: does the kernel really reject what skpc refuses?), with its estimate.
pub fn unchecked_object(src: &str) -> Option<(Vec<u8>, u64)> {
    let policy = skpc::check::check(src).0?;
    let lowered = skpc::lower::lower(&policy);
    let estimate = skpc::lower::budget::estimate(&lowered.verdict).estimate;
    let spec = skpc::compile::object_spec(&lowered, "policy.skp", src);
    Some((skpc::object::write_object_owned(spec), estimate))
}

/// The verifier's reason in a rejected load's log (its sentence on too many jumps or
/// instructions), else the log's end.
pub fn kernel_reason(e: &str) -> String {
    for known in [
        "The sequence of",
        "BPF program is too large",
        "too many states",
        "The total number of maps",
    ] {
        if let Some(at) = e.find(known) {
            let sentence: String = e[at..].chars().take_while(|&c| c != '\n').collect();
            return sentence
                .trim_end_matches(['\\', 'n', ',', ' ', '"'])
                .to_string();
        }
    }
    tail(e, 100)
}

/// The last `n` characters of a long error (the verifier's log ends with the reason).
pub fn tail(e: &str, n: usize) -> String {
    let chars: Vec<char> = e.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}
