//! One insta snapshot per invalid (or suspicious) policy: the diagnostics exactly as
//! `skpc check` prints them (file:line:col, the source line, the span underlined, the
//! help). `every_code_is_covered` makes sure that every code of `diag::Code` appears in
//! at least one case, and the docs test that docs/language.md lists exactly those codes.

use std::collections::BTreeSet;

/// `skpc check` of a policy named policy.skp in the working directory (where set files
/// such as tests/fixtures/feed.txt are found).
fn check(src: &str) -> (Option<skpc::hir::Policy>, Vec<skpc::diag::Diag>) {
    skpc::compile::check("policy.skp", src)
}
use skpc::diag::{render_plain, Code};

fn snapshot(name: &str, src: &str) {
    let (policy, diags) = check(src);
    assert!(!diags.is_empty(), "{name}: expected diagnostics");
    let has_error = diags.iter().any(|d| d.is_error());
    assert_eq!(
        policy.is_none(),
        has_error,
        "{name}: a policy comes back exactly when there is no error"
    );
    let rendered = render_plain("policy.skp", src, &diags);
    let description: String = src.chars().take(400).collect();
    insta::with_settings!({ description => description, omit_expression => true }, {
        insta::assert_snapshot!(name, rendered);
    });
}

macro_rules! cases {
    ($($name:ident => $src:expr;)*) => {
        /// Every case, for the coverage test.
        const CASES: &[(&str, &str)] = &[$((stringify!($name), $src)),*];
        $(
            #[test]
            fn $name() {
                snapshot(stringify!($name), $src);
            }
        )*
    };
}

cases! {
    // ------------------------------------------------------------- lexer (E0001-E0004)
    lex_unexpected_character => "drop if len > 1 @ 2;\n";
    lex_unexpected_characters_each_reported => "drop if len > 1;\n$pass;\ndrop if uid == 0 ^ 1;\n";
    lex_run_of_unexpected_characters => "drop if len > 1 @@@;\n";
    lex_huge_decimal_literal => "drop if len > 99999999999999999999999999;\n";
    lex_huge_hex_literal => "drop if cgroup == 0x1_0000_0000_0000_0000;\n";
    lex_bad_ipv4_address => "drop if remote.ip == 10.0.0.256;\n";
    lex_bad_ipv6_address => "drop if remote.ip == fd00::1::2;\n";
    lex_cidr_prefix_too_long_v4 => "drop if remote.ip in 10.0.0.0/33;\n";
    lex_cidr_prefix_too_long_v6 => "drop if remote.ip in fd00::/129;\n";
    lex_bad_escape => "drop if payload starts with \"GET\\q\";\n";
    lex_bad_hex_escape => "drop if payload[0..2] == \"\\xZZ\";\n";
    lex_unterminated_string => "drop if payload starts with \"GET ;\npass;\n";

    // ------------------------------------------------------------------ syntax (E0005)
    syntax_several_errors_recovered_at_semicolons =>
        "drop if == 1;\npass if len >;\nredirect to 3;\ndrop if len > 1 len < 2;\nlog;\n";
    syntax_assignment_instead_of_comparison => "drop if remote.port = 6379;\n";
    syntax_missing_semicolon => "drop if len > 1\npass;\n";
    syntax_missing_if => "drop port == 22;\n";
    syntax_unit_in_wrong_case => "drop if len > 64kib;\n";
    syntax_stray_semicolon => "drop if len > 1;;\n";
    syntax_unexpected_end_of_file => "drop if len > 1 and\n";
    syntax_unclosed_test_block => "test \"t\" {\n    remote.port = 1;\n    expect pass;\n";
    syntax_const_without_name => "const = 5;\n";
    syntax_redirect_without_target => "redirect ingress;\n";

    // --------------------------------------------------------------- nesting (E0006)
    deep_nesting_parentheses => concat!(
        "drop if ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((",
        "len > 1",
        "))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))));\n"
    );
    deep_nesting_nots => concat!(
        "drop if not not not not not not not not not not not not not not not not not not not not ",
        "not not not not not not not not not not not not not not not not not not not not not not ",
        "not not not not not not not not not not not not not not not not not not not not not not ",
        "not not not not not not not not not not len > 1;\n"
    );

    // --------------------------------------------------------------- names (E01xx)
    unknown_field_did_you_mean => "drop if remtoe.port == 6379;\n";
    unknown_field_no_suggestion => "drop if socket.owner == 0;\n";
    unknown_field_on_local => "drop if local.mac == 1;\n";
    unknown_name_did_you_mean => "const REDIS = 6379;\ndrop if port == REDSI;\n";
    unknown_name => "drop if port == postgres;\n";
    duplicate_name => "const web = 80;\nset web = {80, 443};\n";
    field_name_declared => "const port = 6379;\n";
    declaration_of_a_field => "const size = len;\n";
    set_element_is_a_field => "drop if len in {1, uid};\n";

    // --------------------------------------------------------------- types (E02xx)
    port_compared_with_address => "drop if port == 10.0.0.1;\n";
    address_compared_with_port_number => "drop if remote.ip == 6379;\n";
    string_compared_with_integer => "drop if len == \"big\";\n";
    payload_byte_compared_with_string => "drop if payload[0] == \"G\";\n";
    family_compared_with_number => "drop if family == 4;\n";
    constants_of_different_kinds => "drop if 1 == \"one\";\n";
    in_with_constant_on_the_left => "drop if 80 in {80, 443};\n";
    in_with_a_single_number => "drop if port in 80;\n";
    starts_with_a_number => "drop if payload starts with 71;\n";
    index_a_non_payload_field => "drop if uid[0] == 1;\n";
    slice_bound_is_a_string_syntax => "drop if payload[0..\"four\"] == \"GET \";\n";
    slice_bound_is_a_field => "drop if payload[0..uid] == \"GET \";\n";
    redirect_key_is_a_bare_address => "redirect to sock 10.0.0.1;\n";
    second_default_after_a_bad_one => "default log;\ndefault drop;\n";
    cork_with_a_string => "cork \"16\";\n";
    port_literal_over_65535 => "drop if port == 65536;\n";
    port_range_over_65535 => "drop if remote.port in 60000..70000;\n";
    payload_byte_over_255 => "drop if payload[0] == 256;\n";
    uid_over_32_bits => "drop if uid == 4294967296;\n";
    ipv6_cidr_against_ipv4_only_field => "drop if remote.ip4 in fd00::/8;\n";
    ipv4_address_against_ipv6_only_field => "drop if local.ip6 == 127.0.0.1;\n";
    ipv6_in_set_against_ipv4_only_field => "set lan = {10.0.0.0/8, fd00::/8};\ndrop if remote.ip4 in lan;\n";
    ordering_on_an_address => "drop if remote.ip < 10.0.0.1;\n";
    equality_with_a_prefix => "drop if remote.ip == 10.0.0.0/8;\n";
    ordering_on_comm => "drop if comm >= \"a\";\n";
    empty_payload_slice => "drop if payload[4..4] == \"\";\n";
    reversed_payload_slice => "drop if payload[8..4] == \"abcd\";\n";
    payload_slice_too_long => "drop if payload[0..100] == \"x\";\n";
    payload_slice_beyond_window => "drop if payload[4090..4100] == \"0123456789\";\n";
    payload_index_beyond_window => "drop if payload[4096] == 1;\n";
    starts_with_too_long => concat!(
        "drop if payload starts with ",
        "\"0123456789012345678901234567890123456789012345678901234567890123456789\";\n"
    );
    slice_and_string_lengths_differ => "drop if payload[0..4] == \"GET\";\n";
    redirect_key_is_a_string => "redirect to sock \"backend\";\n";
    redirect_key_is_an_address => "const BACKEND = 10.0.0.1;\nredirect to sock BACKEND;\n";
    redirect_key_is_a_payload_byte => "redirect to sock payload[0];\n";
    redirect_slot_out_of_range => "redirect to sock 64;\n";
    cork_zero_bytes => "cork 0;\n";
    apply_bytes_over_4gib => "pass for 4GiB;\n";
    for_on_count => "count big for 10 if len > 1000;\n";
    discard_for_n => "discard for 10;\n";
    reply_not_a_string => "reply 42 if len > 1;\n";
    reply_empty => "const NOTHING = \"\";\nreply NOTHING;\n";
    reply_too_long => include_str!("fixtures/reply_too_long.skp");
    reply_for_n => "reply \"-ERR denied\\r\\n\" for 10;\n";
    reversed_range => "drop if remote.port in 8099..8000;\n";
    bare_field_as_condition => "drop if len;\n";
    bare_family_as_condition => "drop if inet6;\n";
    const_holding_a_set => "const web = {80, 443};\n";
    set_holding_one_value => "set web = 80;\n";
    prefix_with_host_bits => "drop if remote.ip in 10.1.2.3/8;\n";
    ipv6_prefix_with_host_bits => "drop if remote.ip in fd00::1/8;\n";
    comm_longer_than_15_bytes => "drop if comm == \"a-very-long-process-name\";\n";
    comparing_two_fields => "drop if local.port == remote.port;\n";
    in_a_field => "drop if uid in gid;\n";
    unit_overflows_64_bits => "drop if len > 99999999999GiB;\n";
    starts_with_on_a_number_field => "drop if len starts with \"x\";\n";
    whole_payload_compared => "drop if payload == \"GET / HTTP/1.1\";\n";
    whole_payload_in_set => "drop if payload in {\"a\", \"b\"};\n";

    // --------------------------------------------------------- policy structure (E03xx)
    default_with_count => "drop if len > 1;\ndefault count x;\n";
    two_defaults => "default pass;\ndefault drop;\n";
    duplicate_test_name => "test \"t\" { expect pass; }\ntest \"t\" { expect drop; }\n";
    test_with_two_expects => "test \"t\" {\n    expect pass;\n    expect drop;\n}\n";
    test_without_expect => "test \"t\" {\n    remote.port = 80;\n}\n";
    test_sets_a_field_twice => "test \"t\" {\n    remote.port = 80;\n    remote.port = 81;\n    expect pass;\n}\n";
    test_sets_unknown_field_did_you_mean => "test \"t\" {\n    remote.prot = 80;\n    expect pass;\n}\n";
    test_sets_either_port => "test \"t\" {\n    port = 80;\n    expect pass;\n}\n";
    test_field_not_constant => "test \"t\" {\n    remote.port = local.port;\n    expect pass;\n}\n";
    test_port_too_large => "test \"t\" {\n    remote.port = 70000;\n    expect pass;\n}\n";
    test_payload_not_a_string => "test \"t\" {\n    payload = 42;\n    expect pass;\n}\n";
    test_len_shorter_than_payload => "test \"t\" {\n    len = 2;\n    payload = \"GET \";\n    expect pass;\n}\n";
    test_ipv6_in_ipv4_case => "test \"t\" {\n    family = inet;\n    remote.ip = ::1;\n    expect pass;\n}\n";
    test_address_is_a_prefix => "test \"t\" {\n    remote.ip = 10.0.0.0/8;\n    expect pass;\n}\n";
    test_family_is_a_number => "test \"t\" {\n    family = 2;\n    expect pass;\n}\n";
    test_comm_too_long => "test \"t\" {\n    comm = \"a-very-long-process-name\";\n    expect pass;\n}\n";
    test_expects_count => "test \"t\" {\n    expect count x;\n}\n";
    test_expects_field_slot => "test \"t\" {\n    expect redirect to sock uid;\n}\n";

    // --------------------------------------------------------------- warnings (W0xxx)
    never_matching_false => "drop if false;\n";
    never_matching_out_of_range => "drop if len > 4294967295;\n";
    never_matching_contradiction => "drop if len > 5000 and len < 10;\n";
    never_matching_empty_set => "drop if remote.port in {};\n";
    shadowed_rule => "drop;\npass if port == 80;\n";
    shadowed_by_always_true_condition => "pass if len >= 0;\ndrop if port == 22;\ndefault drop;\n";
    default_not_last => "default drop;\npass if port == 80;\n";
    egress_redirect_to_peer => "redirect to peer if remote.ip == 127.0.0.1;\n";

    // ------------------------------------------------------------ sets read from files
    set_file_missing => "set feed = file \"tests/fixtures/no-such-feed.txt\";\ndrop if remote.ip in feed;\n";
    set_file_bad_line => "set feed = file \"tests/fixtures/bad-feed.txt\";\ndrop if remote.ip in feed;\n";
    set_file_misused => "set feed = file \"tests/fixtures/feed.txt\";\nset more = {feed, 10.1.0.0/16};\ndrop if comm in feed;\ndrop if remote.port in feed;\n";

    // ------------------------------------------------------------------- protocols
    ends_with_on_comm => "drop if comm ends with \"d\";\n";
    empty_protocol_string => "drop if http.host == \"\";\n";
    protocol_string_never_fits => "drop if redis.command == \"flushall\";\ndrop if http.method == \"AVERYLONGMETHODNAMEXX\";\ndrop if tls.sni ends with \".Example.COM\";\n";
    // ----------------------------------------------------------------------- mixed
    errors_and_warnings_together =>
        "const REDIS = 6379;\ndrop if prot == REDIS;\ndrop if len > 5000 and len < 10;\nredirect to sock 99;\n";
}

/// E0401: policies too large to write inline. 5000 rules of one domain suffix and a
/// length each (rules of code: a suffix alone is rule-index data, `text_index`, but not
/// with another test), and 3000 rules of code (a `cgroup` range is no index key, nor a
/// residual checked after the lookup: a u64) whose
/// branches would all be pending at once; 66 sets that are a map each (the kernel lets
/// a program use 64 maps).
fn over_budget_cases() -> Vec<(&'static str, String)> {
    let suffix_rules: String = (0..5000)
        .map(|i| format!("drop if http.host ends with \".h{i}.example.com\" and len > 9;\n"))
        .collect();
    let chain: String = (0..3000)
        .map(|i| {
            format!(
                "drop if cgroup >= {} and payload[3] == {};\n",
                1000 + i,
                i % 256
            )
        })
        .collect();
    // 66 sets of 65 process names, each a map of its own: over the kernel's 64 maps.
    let mut sets = String::new();
    for k in 0..66 {
        let names: Vec<String> = (0..65).map(|i| format!("\"c{k}x{i}\"")).collect();
        sets.push_str(&format!("set names{k} = {{ {} }};\n", names.join(", ")));
    }
    for k in 0..66 {
        sets.push_str(&format!("drop if comm in names{k} and cgroup > {k};\n"));
    }
    vec![
        ("over_budget_host_suffix_rules", suffix_rules),
        ("over_budget_pending_branches", chain),
        ("over_budget_too_many_maps", sets),
    ]
}

#[test]
fn over_the_verifiers_budget() {
    for (name, src) in over_budget_cases() {
        let (policy, diags) = check(&src);
        assert!(policy.is_none(), "{name}: refused");
        assert!(
            diags.iter().any(|d| d.code == Code::VerifierBudget),
            "{name}"
        );
        // `skpc build` refuses it the same way.
        let built = skpc::compile::compile("policy.skp", &src).map(|_| ());
        assert_eq!(built.unwrap_err(), diags, "{name}: build and check agree");
        snapshot(name, &src);
    }
}

#[test]
fn every_code_is_covered() {
    let mut seen = BTreeSet::new();
    for (_, src) in over_budget_cases() {
        for d in check(&src).1 {
            seen.insert(d.code);
        }
    }
    for (_, src) in CASES {
        for d in check(src).1 {
            seen.insert(d.code);
        }
    }
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| !seen.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "codes without a case: {missing:?}");
    assert!(CASES.len() >= 45);
}

/// The rows of docs/language.md's table of diagnostic codes: (code, meaning).
fn documented_codes() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/language.md");
    let text = std::fs::read_to_string(path).expect("docs/language.md");
    let section = text
        .split("\n## Diagnostics\n")
        .nth(1)
        .expect("a Diagnostics section");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
            let code = cells.first()?.strip_prefix("| ")?;
            let is_code = code.len() == 5
                && (code.starts_with('E') || code.starts_with('W'))
                && code[1..].bytes().all(|b| b.is_ascii_digit());
            (is_code && cells.len() >= 2).then(|| (code.to_string(), cells[1].to_string()))
        })
        .collect()
}

#[test]
fn the_docs_table_lists_every_code_with_its_summary() {
    let documented = documented_codes();
    let listed: Vec<(String, String)> = Code::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), c.summary().to_string()))
        .collect();
    assert_eq!(
        documented, listed,
        "docs/language.md's table and diag::Code"
    );
}

#[test]
fn every_diagnostic_names_file_line_and_column_and_most_say_how_to_fix() {
    for (name, src) in CASES {
        let (_, diags) = check(src);
        for d in &diags {
            let one = render_plain("policy.skp", src, std::slice::from_ref(d));
            assert!(one.contains("┌─ policy.skp:"), "{name}: {one}");
            assert!(
                d.help.is_some() || d.code == Code::UnexpectedChar && d.message == "invalid token",
                "{name}: {} has no help",
                d.code
            );
        }
    }
}

#[test]
fn several_syntax_errors_are_all_reported() {
    let (_, src) = CASES
        .iter()
        .find(|(name, _)| *name == "syntax_several_errors_recovered_at_semicolons")
        .unwrap();
    let (_, diags) = check(src);
    let lines: Vec<usize> = diags
        .iter()
        .map(|d| src[..d.span.start].matches('\n').count() + 1)
        .collect();
    assert_eq!(lines, vec![1, 2, 3, 4], "{diags:?}");
}
