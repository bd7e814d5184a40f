//! The subcommands that do more than call one library function, one module each.

pub mod exec;
pub mod run;
pub mod test;
pub mod test_kernel;
