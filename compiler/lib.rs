//! skpc: compile socket-layer policies (`.skp`) straight to eBPF for the SK_MSG hook.
//!
//! The passes, each a module with one job, data flowing one way:
//! `syntax` (tokens, AST with spans) -> `check` (names, types: the typed HIR)
//! -> `lower` (HIR to BPF instructions) -> `object` (ELF writer).
//! `bpf` is the instruction set itself: one enum, `encode`, `disassemble`.

pub mod bpf;
pub mod check;
pub mod compile;
pub mod diag;
pub mod eval;
pub mod fields;
pub mod hir;
pub mod lower;
pub mod object;
pub mod syntax;
pub mod vm;
