//! Runs of rules (compiler/lower/runs.rs) against the reference evaluator: long lists of
//! same-decision rules over ports, lengths and IPv4 addresses and prefixes, overlapping
//! on purpose, so that the keyed search must find the *first* matching rule for its
//! counter. Decisions and every counter must agree on every message, with and without
//! counters, and in the branch-free mode of large policies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skpc::hir::Message;
use skpc::lower::Options;
use skpc::vm::{RunConfig, Vm};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PORTS: [u16; 6] = [80, 443, 8080, 6379, 22, 40000];

fn rule(rng: &mut Rng) -> String {
    let port = PORTS[rng.below(6) as usize];
    match rng.below(7) {
        0 => format!("port == {port}"),
        1 => format!("remote.port in {{{port}, {}}}", port.wrapping_add(1)),
        2 => format!(
            "local.port in {}..{}",
            port.saturating_sub(3),
            port.saturating_add(3)
        ),
        3 => format!("remote.ip == 10.0.{}.{}", rng.below(3), rng.below(4)),
        4 => match rng.below(3) {
            0 => "remote.ip in 10.0.0.0/16".to_string(),
            1 => format!("remote.ip in 10.0.{}.0/24", rng.below(3)),
            _ => format!("remote.ip in 10.0.{}.0/30", rng.below(3)),
        },
        5 => format!("len in {{{}..{}}}", rng.below(50), 50 + rng.below(100)),
        _ => format!(
            "ip in 10.{}.0.0/16 or len == {}",
            rng.below(2),
            rng.below(40)
        ),
    }
}

fn message(rng: &mut Rng) -> Message {
    let v4 = Ipv4Addr::new(
        10,
        rng.below(2) as u8,
        rng.below(3) as u8,
        rng.below(5) as u8,
    );
    let inet6 = rng.below(4) == 0;
    let (family, remote_ip, local_ip) = if inet6 {
        let r = if rng.below(2) == 0 {
            IpAddr::V6(v4.to_ipv6_mapped())
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        (
            skpc_abi::AF_INET6,
            r,
            IpAddr::V6(Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped()),
        )
    } else {
        (
            skpc_abi::AF_INET,
            IpAddr::V4(v4),
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
        )
    };
    let pick = |rng: &mut Rng| {
        PORTS[rng.below(6) as usize]
            .wrapping_add(rng.below(5) as u16)
            .wrapping_sub(2)
    };
    Message {
        family,
        local_ip,
        remote_ip,
        local_port: pick(rng),
        remote_port: pick(rng),
        len: rng.below(200) as u32,
        ..Message::default()
    }
}

fn check_policy(src: &str, rng: &mut Rng, messages: usize) {
    for counters in [true, false] {
        let c = skpc::compile::compile_with(
            "runs.skp",
            src,
            Options {
                counters,
                ..Options::default()
            },
        )
        .unwrap_or_else(|d| panic!("does not compile: {d:?}\n{src}"));
        let vm = Vm::new(&c.lowered).expect("the VM takes the program");
        for _ in 0..messages {
            let msg = message(rng);
            let got = vm
                .run(&msg, &RunConfig::default())
                .unwrap_or_else(|e| panic!("VM: {e}\n{src}"));
            let want = skpc::eval::eval(&c.policy, &msg);
            assert_eq!(got.decision, want.decision, "decision for {msg:?}\n{src}");
            if counters {
                assert_eq!(got.counters, want.counters, "counters for {msg:?}\n{src}");
            }
        }
    }
}

#[test]
fn runs_agree_with_the_evaluator() {
    let mut rng = Rng(0x05ee_d0f2_u64);
    for _ in 0..60 {
        let n = 4 + rng.below(40) as usize;
        let mut src = String::new();
        for i in 0..n {
            // Mostly one decision (long runs), sometimes a change that ends a run.
            let action = if rng.below(10) == 0 { "pass" } else { "drop" };
            src.push_str(&format!("{action} if {};  # {i}\n", rule(&mut rng)));
        }
        src.push_str(if rng.below(2) == 0 {
            "default pass;\n"
        } else {
            "default drop;\n"
        });
        check_policy(&src, &mut rng, 40);
    }
}

#[test]
fn large_runs_agree_with_the_evaluator() {
    // Over 1000 rules: the branch-free mode and the snapshot of the context too.
    let mut rng = Rng(0xbead_cafe);
    for _ in 0..2 {
        let mut src = String::new();
        for _ in 0..1200 {
            src.push_str(&format!("drop if {};\n", rule(&mut rng)));
        }
        check_policy(&src, &mut rng, 150);
    }
}

/// Indexed blocks (compiler/lower/index.rs): 100 and more same-decision rules of the
/// kind above go into the `skp_index` map. Their keys overlap heavily (a few ports and
/// addresses), so most messages match several rules and the first must count; `count`
/// rules, another decision and rules that stay code (`len`, `or len`) sit around them.
#[test]
fn indexed_runs_agree_with_the_evaluator() {
    let mut rng = Rng(0x1de7_0b10);
    for _ in 0..8 {
        let mut src = String::new();
        for _ in 0..rng.below(3) {
            src.push_str(&format!("count c if {};\n", rule(&mut rng)));
        }
        for block in 0..1 + rng.below(2) {
            if block > 0 {
                src.push_str(&format!("pass if {};\n", rule(&mut rng)));
            }
            for _ in 0..100 + rng.below(60) {
                src.push_str(&format!("drop if {};\n", rule(&mut rng)));
            }
        }
        src.push_str(if rng.below(2) == 0 {
            "default pass;\n"
        } else {
            "default drop;\n"
        });
        let c = skpc::compile::compile("runs.skp", &src).expect("compiles");
        assert!(!c.lowered.index.is_empty(), "no indexed block in\n{src}");
        check_policy(&src, &mut rng, 60);
    }
}
