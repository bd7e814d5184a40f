//! The eBPF instruction set: one enum, its encoder and its disassembler.

pub mod insn;
pub mod uapi;

pub use insn::*;
