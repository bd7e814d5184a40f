//! `skpc test`.

use std::process::ExitCode;

use clap::Args;

use skpc::diag::ColorChoice;

use crate::Input;

#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub input: Input,
}

pub fn run(args: TestArgs, _color: ColorChoice) -> anyhow::Result<ExitCode> {
    let _ = args.input.read()?;
    anyhow::bail!("`skpc test` is not built yet")
}
