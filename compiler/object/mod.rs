//! The ELF object writer: program sections, BTF-defined maps, relocations.
