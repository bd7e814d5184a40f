//! One small policy per language construct (docs/language.md), shared by the assembly
//! snapshots (tests/asm_snapshots.rs) and the kernel load tests (tests/kernel_load.rs).
#![allow(dead_code)]

pub const CONSTRUCTS: &[(&str, &str)] = &[
    ("pass", "pass;"),
    ("drop", "drop if len > 4096;"),
    ("default_drop", "pass if remote.port == 443;\ndefault drop;"),
    ("redirect_sock", "redirect to sock 3 if remote.port == 80;"),
    ("redirect_ingress_sock", "redirect ingress to sock 0 if local.port == 9000;"),
    ("redirect_sock_field", "redirect to sock uid if uid < 64;"),
    ("redirect_peer", "redirect ingress to peer if remote.ip == 127.0.0.1;"),
    ("redirect_peer_egress", "redirect to peer if remote.ip == 127.0.0.1;"),
    ("pass_for", "pass for 1MiB if remote.port == 443;"),
    ("drop_for", "drop for 64KiB if len > 1000;"),
    ("redirect_for", "redirect to sock 1 for 4KiB if port == 8080;"),
    ("cork", "cork 16 if len < 16 and remote.port == 5432;"),
    ("discard", "discard if payload starts with \"PING\";"),
    ("default_discard", "pass if remote.port == 443;\ndefault discard;"),
    ("reply", "reply \"-ERR denied\\r\\n\" if payload starts with \"*1\\r\\n$8\\r\\nFLUSHALL\";"),
    ("default_reply", "const DENIED = \"HTTP/1.1 403 Forbidden\\r\\ncontent-length: 0\\r\\n\\r\\n\";\npass if remote.port == 443;\ndefault reply DENIED;"),
    ("count", "count big if len > 64KiB;\ncount big if len > 1MiB;\ncount small if len < 100;"),
    ("log", "log if uid != 0 and port == 22;"),
    ("family", "drop if family == inet6;"),
    ("family_set", "pass if family in {inet, inet6};\ndefault drop;"),
    ("len_ranges", "drop if len in {1..10, 100..200, 4096};"),
    ("local_ip", "drop if local.ip == 10.1.2.3;"),
    ("remote_ip6", "drop if remote.ip == 2001:db8::1;"),
    ("ip_either", "drop if ip == 192.168.1.1;"),
    ("ip4_field", "drop if remote.ip4 in 10.0.0.0/8;"),
    ("ip6_field", "drop if local.ip6 in fe80::/10;"),
    ("cidr_set", "set lan = {10.0.0.0/8, 192.168.0.0/16, fd00::/8, ::1};\ndrop if remote.ip in lan;"),
    ("port_either", "drop if port == 6379;"),
    ("port_ne", "pass if port != 22;\ndefault drop;"),
    ("port_compare", "drop if remote.port < 1024 and local.port >= 32768;"),
    ("port_set_large", "drop if remote.port in {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 1000..2000};"),
    ("payload_byte", "drop if payload[0] == 0x16;"),
    ("payload_slice", "drop if payload[0..4] == \"SET \";"),
    ("payload_slice_far", "drop if payload[100..116] == \"0123456789abcdef\";"),
    ("payload_slice_set", "pass if payload[0..4] in {\"GET \", \"PUT \", \"HEAD\"};\ndefault drop;"),
    ("starts_with", "drop if payload starts with \"DELETE /admin\";"),
    ("uid_gid_pid", "drop if uid == 1000 or gid == 1000 or pid == 1;"),
    ("cgroup", "drop if cgroup == 0x100000000;"),
    ("comm", "drop if comm == \"curl\";"),
    ("comm_prefix", "drop if comm starts with \"python\";"),
    ("not_and_or", "drop if not (port == 80 or port == 443) and (len > 100 or payload[0] == 1);"),
    ("const_and_set", "const REDIS = 6379;\nset web = {80, 443, 8000..8099};\ndrop if port == REDIS;\npass if remote.port in web;"),
    ("literals", "drop if len == 1_000 or len == 0x10 or len == 2KiB or len == 1GiB;"),
    ("strings_escapes", "drop if payload[0..6] == \"a\\r\\n\\t\\x00\\\"\";"),
    ("proto_presence", "count web if http;\ncount cache if redis == true;\ncount db if pg and remote.port == 5432;\ndrop if tls == false and remote.port == 443;"),
    ("proto_eq", "drop if http.method == \"DELETE\";\ndrop if pg.user == \"postgres\";"),
    ("proto_ne", "drop if http and http.host != \"api.example.com\";"),
    ("proto_in", "drop if redis.command in {\"FLUSHALL\", \"FLUSHDB\", \"CONFIG\"};\ndrop if pg.database in {\"template0\", \"template1\"};"),
    ("proto_starts_with", "drop if http.path starts with \"/admin\";\ndiscard if redis.key starts with {\"session:\", \"cache:\"};"),
    ("proto_ends_with", "pass if tls.sni ends with \".example.com\";\ndrop if http.host ends with {\".internal\", \".local\"};\ndefault drop;"),
    ("proto_case_folded", "drop if redis.command == \"FLUSHALL\" or http.host == \"api.example.com\" or tls.sni starts with \"admin.\";"),
    (
        "proto_all_fields",
        r#"const FORBIDDEN = "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n";
count web if http;
count cache if redis;
count db if pg;
count tls_hello if tls;
reply FORBIDDEN if http.method in {"DELETE", "PUT", "PATCH"} and http.path starts with "/admin";
drop if http.method == "TRACE" or http.path ends with ".php";
pass if http.host ends with {".example.com", ".example.org"} and http.path starts with "/static/";
drop if http and http.host != "api.example.com" and remote.port == 8080;
reply "-ERR denied\r\n" if redis.command in {"FLUSHALL", "FLUSHDB", "CONFIG", "DEBUG"};
discard if redis.command == "DEL" and redis.key starts with "session:";
drop if redis.key ends with ":lock" and redis.command != "GET";
drop if pg.user == "postgres" and not remote.ip in 10.0.0.0/8;
drop if pg.database in {"template0", "template1"};
pass if pg.user starts with "app_" and pg.database ends with "_prod";
reply "\x15\x03\x03\x00\x02\x02\x70" if tls and not tls.sni ends with {".example.com", ".example.org"};
pass for 1MiB if tls.sni == "bulk.example.com";
drop if tls.sni starts with "admin.";
default pass;
"#,
    ),
    ("test_cases", "drop if port == 6379 and len > 4096;\ntest \"big\" { remote.port = 6379; len = 5000; expect drop; }"),
    (
        "spec_example",
        r#"const REDIS = 6379;
set web = {80, 443, 8000..8099};
set lan = {10.0.0.0/8, 192.168.0.0/16, fd00::/8};
count big_writes if len > 64KiB;
drop if port == REDIS and len > 4096;
drop if remote.ip in lan and payload[0..4] == "SET ";
redirect to sock 3 if remote.port in web and payload starts with "GET ";
redirect ingress to sock 0 if local.port == 9000;
redirect to peer if remote.ip == 127.0.0.1;
pass for 1MiB if remote.port == 443;
cork 16 if len < 16 and remote.port == 5432;
log if uid != 0 and port == 22;
default pass;
"#,
    ),
];

/// A generated policy of `n` rules mixing port, address, set and payload rules.
pub fn generated_policy(n: usize) -> String {
    let mut s = String::with_capacity(n * 48);
    for i in 0..n {
        let port = 1024 + (i * 7) % 60000;
        match i % 4 {
            0 => s.push_str(&format!("drop if port == {port};\n")),
            1 => s.push_str(&format!(
                "drop if remote.ip == 10.{}.{}.{};\n",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )),
            2 => s.push_str(&format!(
                "drop if remote.ip in 172.{}.{}.0/24 and local.port == {port};\n",
                16 + (i >> 16) % 16,
                (i >> 8) & 255
            )),
            _ => s.push_str(&format!(
                "drop if remote.port in {{{port}, {}}};\n",
                port + 1
            )),
        }
    }
    s.push_str("default pass;\n");
    s
}

/// Port and address rules grouped by kind: runs of `port ==`, of `remote.ip ==`, of
/// `remote.ip in /28 and local.port ==` and of `remote.port ==`. The binary searches of
/// the first runs must not multiply the verifier's work on the rules after them.
pub fn grouped_policy(n: usize) -> String {
    let mut kinds: [String; 4] = Default::default();
    for i in 0..n {
        let port = 1024 + (i * 7919) % 30000;
        let line = match i % 4 {
            0 => format!("drop if port == {port};\n"),
            1 => format!(
                "drop if remote.ip == 10.{}.{}.{};\n",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            ),
            2 => format!(
                "drop if remote.ip in 192.168.{}.{}/28 and local.port == {port};\n",
                (i >> 4) & 255,
                (i & 15) << 4
            ),
            _ => format!("drop if remote.port == {port};\n"),
        };
        kinds[i % 4].push_str(&line);
    }
    kinds.concat()
}
