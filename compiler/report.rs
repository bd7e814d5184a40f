//! The front of every command-line subcommand: check or compile a policy and show its
//! diagnostics on stderr (the errors, or the warnings of a policy that compiles).

use crate::compile::{self, Compiled};
use crate::diag::{self, ColorChoice};
use crate::hir::Policy;
use crate::lower;

/// Parses and type-checks `source` (named `file_name` in the diagnostics) and holds its
/// program to the verifier's budget (`compile::check`), writing every diagnostic to
/// stderr. None: it has errors (the diagnostics say which).
pub fn check(file_name: &str, source: &str, color: ColorChoice) -> Option<Policy> {
    let (policy, diags) = compile::check(file_name, source);
    diag::emit_stderr(file_name, source, &diags, color);
    policy
}

/// Compiles `source` with `options`, writing every diagnostic to stderr. None: it did
/// not compile (the diagnostics say why).
pub fn compile(
    file_name: &str,
    source: &str,
    options: lower::Options,
    color: ColorChoice,
) -> Option<Compiled> {
    match compile::compile_with(file_name, source, options) {
        Ok(compiled) => {
            diag::emit_stderr(file_name, source, &compiled.warnings, color);
            Some(compiled)
        }
        Err(diags) => {
            diag::emit_stderr(file_name, source, &diags, color);
            None
        }
    }
}
