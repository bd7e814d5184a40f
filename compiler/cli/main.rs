//! The `skpc` command line. Thin: parses arguments, reads the policy, calls the library,
//! maps failures to one clear sentence and an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use skpc::diag::ColorChoice;

// The subcommands that do more than call one library function, one module each.
mod exec;
mod json;
mod metrics;
mod run;
mod set_files;
mod test;
mod test_kernel;
mod top;
mod watch;

// See Cargo.toml: large policies are allocation-bound.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skpc",
    version,
    about = "Compile socket-layer policies to eBPF (SK_MSG) and enforce them"
)]
struct Cli {
    /// When to color diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Args)]
pub(crate) struct Input {
    /// The policy file (.skp).
    #[arg(required_unless_present = "expr", conflicts_with = "expr")]
    pub(crate) file: Option<PathBuf>,
    /// Policy text given on the command line instead of a file.
    #[arg(short = 'e', long = "expr", value_name = "POLICY")]
    expr: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check a policy; diagnostics on stderr (-j: JSON on stdout); exit 1 on errors.
    Check {
        #[command(flatten)]
        input: Input,
        /// Print one JSON document on stdout instead (docs/json.md); nothing on stderr.
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Compile a policy to an eBPF ELF object (or print its assembly with --emit asm).
    Build {
        #[command(flatten)]
        input: Input,
        /// Output object (default: FILE with .o, or policy.o for -e).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// What to write: the ELF object, or the assembly listing on stdout.
        #[arg(long, value_enum, default_value_t = Emit::Obj)]
        emit: Emit,
        /// Leave out the per-rule counters (smallest program; `exec`/`run` then show none).
        #[arg(long)]
        no_counters: bool,
        /// Diagnostics (and with --emit asm the listing) as one JSON document on stdout
        /// (docs/json.md); nothing on stderr.
        #[arg(short = 'j', long)]
        json: bool,
    },

    /// Run the policy's test cases on the compiled bytecode in a user-space eBPF VM.
    Test(test::TestArgs),
    /// Run CMD with the policy enforced on every TCP socket it (and its children) opens.
    Exec(exec::ExecArgs),
    /// Enforce the policy on a cgroup until SIGINT/SIGTERM, showing live counters.
    Run(run::RunArgs),
    /// Live per-rule message and byte rates of a running `skpc run --metrics ADDR`.
    Top(top::TopArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Emit {
    Obj,
    Asm,
}

pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) text: String,
}

impl Input {
    pub(crate) fn read(&self) -> anyhow::Result<Source> {
        match (&self.expr, &self.file) {
            (Some(text), _) => Ok(Source {
                name: "<-e>".into(),
                text: text.clone(),
            }),
            (None, Some(path)) => read_policy(path),
            (None, None) => anyhow::bail!("no policy given: pass a FILE or -e 'POLICY'"),
        }
    }
}

fn read_policy(path: &Path) -> anyhow::Result<Source> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (first bad byte at offset {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(Source {
        name: path.display().to_string(),
        text,
    })
}

/// Writes to stdout; a closed pipe (`skpc build --emit asm | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Auto => ColorChoice::Auto,
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
    };
    match run(cli.command, color) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skpc: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Leaves `value` to the end of the process instead of freeing it piece by piece: the
/// command is done with it and returns right away, and freeing the policy, code and
/// object of a large policy (a million small allocations for 100k rules) costs more than
/// the exit that releases them all at once.
fn leave_for_exit<T>(value: T) {
    std::mem::forget(value);
}

fn run(command: Command, color: ColorChoice) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { input, json } => {
            let src = input.read()?;
            let policy = if json {
                let (policy, diags) = skpc::compile::check(&src.name, &src.text);
                let doc = json::check_doc(&src.name, &src.text, &diags);
                write_stdout(&(json::line(&doc) + "\n"))?;
                policy
            } else {
                skpc::report::check(&src.name, &src.text, color)
            };
            let code = if policy.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            leave_for_exit(policy);
            Ok(code)
        }
        Command::Build {
            input,
            output,
            emit,
            no_counters,
            json,
        } => {
            let src = input.read()?;
            let options = skpc::lower::Options {
                counters: !no_counters,
                ..skpc::lower::Options::default()
            };
            let compiled = if json {
                match skpc::compile::compile_with(&src.name, &src.text, options) {
                    Ok(compiled) => compiled,
                    Err(diags) => {
                        let doc = json::check_doc(&src.name, &src.text, &diags);
                        write_stdout(&(json::line(&doc) + "\n"))?;
                        return Ok(ExitCode::from(1));
                    }
                }
            } else {
                let Some(compiled) = skpc::report::compile(&src.name, &src.text, options, color)
                else {
                    return Ok(ExitCode::from(1));
                };
                compiled
            };
            match emit {
                Emit::Asm if json => {
                    let doc = json::listing_doc(&src.name, &src.text, &compiled);
                    write_stdout(&(json::line(&doc) + "\n"))?
                }
                Emit::Asm => {
                    write_stdout(&skpc::compile::listing(&compiled, &src.name, &src.text))?
                }
                Emit::Obj => {
                    let out = output.unwrap_or_else(|| match &input.file {
                        Some(f) => f.with_extension("o"),
                        None => PathBuf::from("policy.o"),
                    });
                    std::fs::write(&out, &compiled.object)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                    if compiled.policy.replies() && !json {
                        eprintln!(
                            "note: {} replies: a loader must put every socket it filters into {} under its own 4-tuple (as `skpc exec`/`skpc run` do), else the reply finds no socket and the message is dropped; see docs/runtime.md",
                            out.display(),
                            skpc_abi::SOCKHASH_NAME
                        );
                    }
                    if json {
                        // The object is in the file; stdout says how it went.
                        let doc = json::build_doc(&src.name, &src.text, &compiled);
                        write_stdout(&(json::line(&doc) + "\n"))?;
                    }
                }
            }
            leave_for_exit(compiled);
            Ok(ExitCode::SUCCESS)
        }
        Command::Test(args) => test::run(args, color),
        Command::Exec(args) => exec::run(args, color),
        Command::Run(args) => run::run(args, color),
        Command::Top(args) => top::run(args),
    }
}
