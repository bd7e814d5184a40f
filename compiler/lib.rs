//! skpc: compile socket-layer policies (`.skp`) straight to eBPF for the SK_MSG hook.
//!
//! The passes, each a module with one job, data flowing one way:
//! `syntax` (tokens, AST with spans) -> `check` (names, types: the typed HIR)
//! -> `lower` (HIR to BPF instructions) -> `object` (ELF writer).
//! `bpf` is the instruction set itself: one enum, `encode`, `disassemble`.
//! `cases` runs a policy's test cases on the VM and the evaluator; `report` is check or
//! compile with the diagnostics on stderr, for the command line.

pub mod bpf;
pub mod cases;
pub mod check;
pub mod compile;
pub mod diag;
pub mod eval;
pub mod fields;
pub mod hir;
pub mod lower;
pub mod object;
pub mod report;
pub mod syntax;
pub mod vm;
