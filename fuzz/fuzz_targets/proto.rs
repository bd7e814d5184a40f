//! Fuzz target `proto`: arbitrary bytes as a message through every reference protocol
//! parser (`skpc::eval::proto::parse`). Nothing may panic; every field found belongs to
//! the parser's protocol, appears once, is non-empty, within its `max_len` and in its
//! case; and only the parser's window counts (the bytes past it change nothing).
//!
//! `cargo +nightly fuzz run proto` (from the repository root). Not run in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skpc::eval::proto::parse;
use skpc::fields::{Case, Proto};

fuzz_target!(|data: &[u8]| {
    for proto in Proto::ALL {
        let parsed = parse(proto, data);
        let window = data.len().min(proto.window() as usize);
        assert_eq!(parsed, parse(proto, &data[..window]), "{proto:?}: past the window");
        let Some(parsed) = parsed else {
            continue;
        };
        for (i, (text, value)) in parsed.texts.iter().enumerate() {
            assert_eq!(text.proto(), proto);
            assert!(parsed.texts[..i].iter().all(|(t, _)| t != text), "{text:?} twice");
            assert!(!value.is_empty(), "{text:?} empty");
            assert!(value.len() <= text.max_len() as usize, "{text:?} too long");
            match text.case() {
                Case::Exact => {}
                Case::Upper => assert!(!value.iter().any(u8::is_ascii_lowercase)),
                Case::Lower => assert!(!value.iter().any(u8::is_ascii_uppercase)),
            }
        }
    }
});
