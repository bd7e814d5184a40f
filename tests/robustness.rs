//! Malformed input of any kind gives diagnostics, never a panic or a hang:
//! random token soup and random bytes (proptest), and large inputs.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use skpc::check::check;
use skpc::diag::render_plain;

/// Pieces of the language: every keyword and punctuation token, field names, and
/// literals of every kind (valid and not).
const TOKENS: &[&str] = &[
    "const",
    "set",
    "test",
    "expect",
    "pass",
    "drop",
    "redirect",
    "ingress",
    "to",
    "sock",
    "peer",
    "for",
    "cork",
    "count",
    "log",
    "default",
    "if",
    "and",
    "or",
    "not",
    "in",
    "starts",
    "with",
    "true",
    "false",
    ";",
    ",",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ".",
    "..",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "len",
    "family",
    "inet",
    "inet6",
    "port",
    "ip",
    "local",
    "remote",
    "local.port",
    "remote.port",
    "local.ip",
    "remote.ip",
    "remote.ip4",
    "local.ip6",
    "uid",
    "gid",
    "pid",
    "cgroup",
    "comm",
    "payload",
    "payload[0..4]",
    "payload[3]",
    "x",
    "web",
    "REDIS",
    "0",
    "1",
    "80",
    "443",
    "6379",
    "65535",
    "65536",
    "0x1F",
    "1_000",
    "64KiB",
    "1MiB",
    "GiB",
    "99999999999999999999999",
    "18446744073709551615",
    "10.0.0.0/8",
    "127.0.0.1",
    "10.1.2.3/8",
    "300.1.1.1",
    "::1",
    "fd00::/8",
    "::ffff:1.2.3.4",
    "1::2::3",
    "\"GET \"",
    "\"\\r\\n\"",
    "\"\\x41\"",
    "\"\\q\"",
    "\"unterminated",
    "\"\"",
    "#",
    "// c\n",
    "\n",
    "@",
    "8000..8099",
    "not not",
    "((",
    "))",
];

/// Checks `src` and renders the diagnostics (which exercises every span).
fn check_and_render(src: &str) {
    let (policy, diags) = check(src);
    assert_eq!(policy.is_some(), !diags.iter().any(|d| d.is_error()));
    let _ = render_plain("fuzz.skp", src, &diags);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(
        toks in prop::collection::vec(prop::sample::select(TOKENS), 0..60),
        seps in prop::collection::vec(prop::sample::select(&[" ", "", "\n", "  "][..]), 60),
    ) {
        let mut src = String::new();
        for (t, s) in toks.iter().zip(seps.iter()) {
            src.push_str(t);
            src.push_str(s);
        }
        check_and_render(&src);
    }

    #[test]
    fn rule_shaped_soup_never_panics(
        action in prop::sample::select(&[
            "pass", "drop", "redirect to sock", "redirect ingress to peer", "cork", "count c",
            "log", "default", "pass for",
        ][..]),
        cond in prop::collection::vec(prop::sample::select(TOKENS), 0..12),
    ) {
        let src = format!("{action} if {};\ntest \"t\" {{ {} expect {action}; }}\n", cond.join(" "), cond.join(" "));
        check_and_render(&src);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_and_render(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_ascii_never_panics(s in "[ -~\n]{0,300}") {
        check_and_render(&s);
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    eprintln!("{what}: {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "{what} took {took:?}: too slow"
    );
    out
}

#[test]
fn a_hundred_thousand_rules_check() {
    let mut src = String::with_capacity(4 << 20);
    src.push_str("set web = {80, 443, 8000..8099};\n");
    for i in 0..100_000u32 {
        src.push_str(&format!(
            "drop if remote.port == {} and len > {};\n",
            i % 65536,
            i
        ));
    }
    src.push_str("count web_hits if remote.port in web;\ndefault pass;\n");
    let (policy, diags) = timed("100k rules", || check(&src));
    assert!(diags.iter().all(|d| !d.is_error()), "{:?}", &diags[..1]);
    let policy = policy.expect("100k rules check");
    assert_eq!(policy.rules.len(), 100_001);
}

#[test]
fn a_hundred_thousand_errors_are_reported() {
    let src = "drop if prot == 1;\n".repeat(100_000);
    let (policy, diags) = timed("100k errors", || check(&src));
    assert!(policy.is_none());
    assert_eq!(diags.len(), 100_000);
}

#[test]
fn nesting_ten_thousand_deep_is_a_diagnostic() {
    let src = format!(
        "drop if {}len > 1{};",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    let (policy, diags) = timed("10k parentheses", || check(&src));
    assert!(policy.is_none());
    assert_eq!(diags[0].code, "E0006");

    let src = format!("drop if {}len > 1;", "not ".repeat(10_000));
    let (_, diags) = check(&src);
    assert_eq!(diags[0].code, "E0006");

    let src = format!("set s = {}1{};", "{".repeat(10_000), "}".repeat(10_000));
    let (_, diags) = check(&src);
    assert_eq!(diags[0].code, "E0006");

    // Unbalanced: only openers.
    let src = "(".repeat(10_000);
    let (_, diags) = check(&src);
    assert_eq!(diags[0].code, "E0006");
}

#[test]
fn huge_literals_are_diagnostics() {
    let src = format!("drop if len > {};", "9".repeat(100_000));
    let (policy, diags) = timed("100k-digit integer", || check(&src));
    assert!(policy.is_none());
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].code, "E0002");

    let src = format!("drop if len > 0x{};", "f".repeat(100_000));
    assert_eq!(check(&src).1[0].code, "E0002");

    let src = format!("drop if payload starts with \"{}\";", "a".repeat(1_000_000));
    let (_, diags) = timed("1 MB string", || check(&src));
    assert_eq!(diags[0].code, "E0206");

    let src = format!("drop if remote.ip == 1{};", ".1".repeat(100_000));
    let (policy, _) = check(&src);
    assert!(policy.is_none());

    let src = format!("drop if remote.ip in ::/{};", "1".repeat(1000));
    assert_eq!(check(&src).1[0].code, "E0003");

    let src = format!("drop if {} == 1;", "x".repeat(1_000_000));
    assert_eq!(check(&src).1[0].code, "E0102");
}

#[test]
fn sets_of_sets_do_not_blow_up() {
    // Each set holds the previous one twice: 2^40 elements if repeats were kept.
    let mut src = String::from("set s0 = {1, 2};\n");
    for i in 1..=40 {
        src.push_str(&format!("set s{i} = {{s{}, s{}}};\n", i - 1, i - 1));
    }
    src.push_str("drop if port in s40;\n");
    let (policy, diags) = timed("sets of sets", || check(&src));
    assert!(diags.is_empty(), "{diags:?}");
    assert!(policy.is_some());
}

#[test]
fn ten_megabytes_of_garbage() {
    // A deterministic pseudo-random mix of printable bytes, language pieces and newlines.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // SKPC_GARBAGE_BYTES scales the input down for profiling.
    let size: usize = std::env::var("SKPC_GARBAGE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10 << 20);
    let mut src = String::with_capacity(size);
    while src.len() < size {
        let r = next();
        if r % 4 == 0 {
            src.push_str(TOKENS[(r >> 8) as usize % TOKENS.len()]);
            src.push(' ');
        } else {
            src.push((b' ' + (r >> 16) as u8 % 95) as char);
        }
        if r % 97 == 0 {
            src.push('\n');
        }
    }
    let (policy, diags) = timed("10 MB of garbage", || check(&src));
    assert!(policy.is_none());
    assert!(!diags.is_empty());

    // Ten megabytes of one repeated byte, and of NULs.
    let (_, diags) = timed("10 MB of `(`", || check(&"(".repeat(10 << 20)));
    assert_eq!(diags[0].code, "E0006");
    let (_, diags) = timed("10 MB of NUL", || check(&"\0".repeat(10 << 20)));
    assert!(!diags.is_empty());
}
