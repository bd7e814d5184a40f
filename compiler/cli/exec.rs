//! `skpc exec`.

use std::process::ExitCode;

use clap::Args;

use skpc::diag::ColorChoice;

use crate::Input;

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub input: Input,
}

pub fn run(args: ExecArgs, _color: ColorChoice) -> anyhow::Result<ExitCode> {
    let _ = args.input.read()?;
    anyhow::bail!("`skpc exec` is not built yet")
}
