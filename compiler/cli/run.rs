//! `skpc run`.

use std::process::ExitCode;

use clap::Args;

use skpc::diag::ColorChoice;

use crate::Input;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: Input,
}

pub fn run(args: RunArgs, _color: ColorChoice) -> anyhow::Result<ExitCode> {
    let _ = args.input.read()?;
    anyhow::bail!("`skpc run` is not built yet")
}
