//! The eBPF instruction set: one enum, its encoder and its disassembler.
