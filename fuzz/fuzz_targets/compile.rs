//! Fuzz target `compile`: arbitrary bytes as a policy through the whole pipeline
//! (parse, check, lower, assemble, ELF writer), then the policy's own test cases through
//! the user-space VM and the reference evaluator. Nothing may panic, and the VM and the
//! evaluator must agree on every test message.
//!
//! `cargo +nightly fuzz run compile` (from the repository root). Not run in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(compiled) = skpc::compile::compile("fuzz.skp", source) else {
        return;
    };
    assert!(!compiled.object.is_empty());
    let _ = skpc::compile::listing(&compiled, "fuzz.skp", source);
    // Programs the VM cannot run faithfully (a `gotol` in a huge policy) are refused
    // with an error, which is fine here.
    let Ok(vm) = skpc::vm::Vm::new(&compiled.lowered) else {
        return;
    };
    for case in &compiled.policy.tests {
        for window in [skpc::vm::DEFAULT_WINDOW, 0] {
            let out = vm
                .run(&case.message, &skpc::vm::RunConfig { window })
                .unwrap_or_else(|e| panic!("VM failed on test {:?}: {e}", case.name));
            let want = skpc::eval::eval(&compiled.policy, &case.message);
            assert_eq!(out.decision, want.decision, "test {:?}", case.name);
            assert_eq!(out.counters, want.counters, "test {:?}", case.name);
        }
    }
});
