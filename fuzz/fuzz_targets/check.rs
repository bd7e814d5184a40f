//! Fuzz target `check`: arbitrary bytes (as lossy UTF-8) through the lexer, the parser
//! and the checker, then through the diagnostic renderer. Nothing may panic, and a
//! policy comes back exactly when there is no error.
//!
//! `cargo +nightly fuzz run check -- -dict=fuzz/skp.dict` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let (policy, diags) = skpc::check::check(&source);
    assert_eq!(policy.is_some(), !diags.iter().any(|d| d.is_error()));
    let _ = skpc::diag::render_plain("fuzz.skp", &source, &diags);
});
