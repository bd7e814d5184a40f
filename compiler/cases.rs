//! A policy's own test cases (`test "name" { ...; expect ...; }`), run on the compiled
//! bytecode in the user-space VM ([`crate::vm`]) and on the reference evaluator
//! ([`crate::eval`]): the results `skpc test` prints.
//!
//! Every case runs twice: with the data window a plain `send` gives (the whole message
//! up to the window) and with an empty one (`sendfile`: nothing readable until the
//! program pulls). Both must give the expected verdict. Each run is also checked against
//! the reference evaluator; a disagreement is a bug in skpc, not in the policy.

use crate::compile::Compiled;
use crate::eval::{self, EvalOutcome};
use crate::hir::{Decision, Policy, TestCase};
use crate::vm::{RunConfig, Vm, VmError, VmOutcome};

/// How a run offered the message's bytes to the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A plain `send`: this many bytes readable before the program pulls.
    Send { window: u32 },
    /// `sendfile`: no bytes readable before the program pulls them.
    Sendfile,
}

impl Delivery {
    /// The initial data window of this delivery.
    pub fn window(self) -> u32 {
        match self {
            Delivery::Send { window } => window,
            Delivery::Sendfile => 0,
        }
    }
}

/// What one run of a case gave.
#[derive(Debug)]
pub enum Outcome {
    /// The program ran in the VM; `reference` is what the evaluator says it should do.
    /// Boxed: the two are large next to the failure's message.
    Ran {
        vm: Box<VmOutcome>,
        reference: Box<EvalOutcome>,
    },
    /// The compiled program failed in the VM (a bug in skpc): the VM's reason.
    VmFailed(VmError),
}

/// One case's result: the first run that failed, or the last run when all passed.
#[derive(Debug)]
pub struct CaseResult<'p> {
    /// The case as written: name, line, message, expected decision.
    pub case: &'p TestCase,
    pub delivery: Delivery,
    pub outcome: Outcome,
}

impl CaseResult<'_> {
    pub fn name(&self) -> &str {
        &self.case.name
    }

    /// The line of the `test` block.
    pub fn line(&self) -> u32 {
        self.case.line
    }

    pub fn expected(&self) -> &Decision {
        &self.case.expect
    }

    /// What the compiled program decided; None if it failed in the VM.
    pub fn vm_decision(&self) -> Option<&Decision> {
        match &self.outcome {
            Outcome::Ran { vm, .. } => Some(&vm.decision),
            Outcome::VmFailed(_) => None,
        }
    }

    /// What the reference evaluator decided; None if the program failed in the VM (the
    /// evaluator is then not consulted).
    pub fn reference_decision(&self) -> Option<&Decision> {
        match &self.outcome {
            Outcome::Ran { reference, .. } => Some(&reference.decision),
            Outcome::VmFailed(_) => None,
        }
    }

    /// Whether the VM and the evaluator agree on the decision, the counters and the log
    /// records (false if the program failed in the VM).
    pub fn agree(&self) -> bool {
        match &self.outcome {
            Outcome::Ran { vm, reference } => {
                reference.decision == vm.decision
                    && reference.counters == vm.counters
                    && reference.events == vm.events
            }
            Outcome::VmFailed(_) => false,
        }
    }

    /// The program decided as the case expects, and the evaluator agrees.
    pub fn passed(&self) -> bool {
        self.vm_decision() == Some(self.expected()) && self.agree()
    }

    /// Why the program could not be run in the VM, if it could not.
    pub fn error(&self) -> Option<&VmError> {
        match &self.outcome {
            Outcome::VmFailed(why) => Some(why),
            Outcome::Ran { .. } => None,
        }
    }
}

/// The cases whose name contains `filter` (all of them without one), in file order.
pub fn select<'p>(policy: &'p Policy, filter: Option<&str>) -> Vec<&'p TestCase> {
    policy
        .tests
        .iter()
        .filter(|t| filter.map_or(true, |f| t.name.contains(f)))
        .collect()
}

/// Runs `cases` (of `compiled`'s policy) with an initial data window of `window` bytes
/// and again as a sendfile, one result per case, in order. Err: the compiled program
/// cannot be loaded into the VM at all (the VM's reason).
pub fn run<'p>(
    compiled: &Compiled,
    cases: &[&'p TestCase],
    window: u32,
) -> Result<Vec<CaseResult<'p>>, VmError> {
    let vm = Vm::new(&compiled.lowered)?;
    Ok(cases
        .iter()
        .map(|&case| run_case(&compiled.policy, &vm, case, window))
        .collect())
}

/// Runs one case as a send with `window` bytes readable, then (if that passed) as a
/// sendfile; the first run that fails, or the last.
fn run_case<'p>(policy: &Policy, vm: &Vm, case: &'p TestCase, window: u32) -> CaseResult<'p> {
    let sent = run_once(policy, vm, case, Delivery::Send { window });
    // A window of 0 is what a sendfile gives already: one run is enough.
    if !sent.passed() || window == 0 {
        return sent;
    }
    run_once(policy, vm, case, Delivery::Sendfile)
}

fn run_once<'p>(
    policy: &Policy,
    vm: &Vm,
    case: &'p TestCase,
    delivery: Delivery,
) -> CaseResult<'p> {
    let config = RunConfig {
        window: delivery.window(),
    };
    let outcome = match vm.run(&case.message, &config) {
        Ok(vm) => Outcome::Ran {
            vm: Box::new(vm),
            reference: Box::new(eval::eval(policy, &case.message)),
        },
        Err(e) => Outcome::VmFailed(e),
    };
    CaseResult {
        case,
        delivery,
        outcome,
    }
}
