//! The eBPF instruction set: one enum (`insn`), its encoder and strict decoder (`wire`),
//! its disassembler (`disasm`), and the kernel UAPI constants (`uapi`).

mod disasm;
pub mod insn;
pub mod uapi;
mod wire;

pub use disasm::{disassemble, disassemble_at};
pub use insn::*;
pub use wire::{decode_all, encode_all};

#[cfg(test)]
mod tests;
