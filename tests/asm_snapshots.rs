//! `skpc build --emit asm` listings, snapshot-tested: every example and one policy per
//! language construct. Review changes to these like code.

mod constructs;

use std::path::Path;

fn listing(name: &str, src: &str) -> String {
    let compiled = skpc::compile::compile(name, src)
        .unwrap_or_else(|d| panic!("{name} does not compile: {d:?}"));
    skpc::compile::listing(&compiled, name, src)
}

#[test]
fn construct_listings() {
    for (name, src) in constructs::CONSTRUCTS {
        let text = listing(&format!("{name}.skp"), src);
        insta::assert_snapshot!(format!("asm_construct_{name}"), text);
    }
}

#[test]
fn example_listings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "skp"))
    {
        let src = std::fs::read_to_string(path).expect("reading an example");
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("example");
        let text = listing(&format!("examples/{stem}.skp"), &src);
        insta::assert_snapshot!(format!("asm_example_{stem}"), text);
    }
}

/// Sets of strings as maps (compiler/lower/sets.rs): a protocol field (the copy of the
/// value onto the stack, folded to upper case for `redis.command`, then one HASH lookup)
/// and `comm` (the helper's buffer is the key), each one past its threshold.
#[test]
fn string_set_map_listing() {
    let list = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("\"{prefix}{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let src = format!(
        "set commands = {{ {} }};\nset names = {{ {} }};\ndrop if redis.command in commands;\ndrop if comm in names;\n",
        list("C", 129), // past MAP_ABOVE_TEXT (128)
        list("n", 65) // past MAP_ABOVE_COMM (64)
    );
    let text = listing("string_sets.skp", &src);
    assert!(text.contains("HASH keys of 12 bytes for `redis.command in 129 strings`"));
    assert!(text.contains("HASH keys of 16 bytes for `comm in 65 names`"));
    insta::assert_snapshot!("asm_string_set_maps", text);
}

#[test]
fn same_source_gives_the_same_object() {
    for (name, src) in constructs::CONSTRUCTS {
        let a = skpc::compile::compile(name, src).expect("compiles").object;
        let b = skpc::compile::compile(name, src).expect("compiles").object;
        assert_eq!(a, b, "{name}: the object is not reproducible");
    }
}

#[test]
fn listing_puts_source_lines_above_their_code() {
    let text = listing("p.skp", "drop if port == 6379 and len > 4096;\n");
    let at = text
        .find("; line 1: drop if port == 6379 and len > 4096;")
        .expect("source line in listing");
    let code = &text[at..];
    assert!(
        code.contains("0x18eb"),
        "local port 6379 as a host-order immediate:\n{text}"
    );
    assert!(
        code.contains("0xeb180000"),
        "remote port 6379 as the raw network-order word:\n{text}"
    );
}

/// An indexed block: 64 same-decision port and address rules (four tuples, one of them
/// a port and a prefix together, one IPv6), a payload-prefix key, a port key with a `len`
/// residual, a rule in the same segment that stays code (a `not`), and a rule with another
/// decision before it. The listing shows the index summary, the ready check, one lookup
/// per tuple (the payload bytes copied into the key, the length checked against the
/// entry's slot) and the code rule's compare against the best indexed rule.
#[test]
fn indexed_block_listing() {
    let mut src = String::from("pass if local.port == 22;\n");
    for i in 0..16 {
        src.push_str(&format!("drop if port == {};\n", 1000 + i));
        src.push_str(&format!("drop if remote.ip == 10.0.0.{i};\n"));
        src.push_str(&format!(
            "drop if remote.ip in 192.168.{i}.0/28 and local.port == {};\n",
            2000 + i
        ));
        src.push_str(&format!("drop if remote.ip6 == fd00::{i:x};\n"));
    }
    // A payload key, a key with a `len` residual, and a rule that stays code.
    src.push_str("drop if payload starts with \"EVIL\";\n");
    src.push_str("drop if remote.port == 443 and len > 1000;\n");
    src.push_str("drop if not port == 1 and payload starts with \"ZAP\";\n");
    let text = listing("indexed.skp", &src);
    assert!(
        text.contains("lines 2-68: 66 rules in the index, 1 as code"),
        "{text}"
    );
    assert!(text.contains("payload[0..4]"), "{text}");
    assert!(
        text.contains("remote.port (remote.port gate, len checked)"),
        "{text}"
    );
    insta::assert_snapshot!("asm_indexed_block", text);
}
