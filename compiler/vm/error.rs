//! Why the VM could not run a program, or refused what it did.

use std::net::IpAddr;

use skpc_abi::{INDEX_NAME, INDEX_PORTS_NAME, INDEX_READY_NAME};

use super::helpers::HelperError;
use super::maps::MapModelError;

/// Why a program could not be run, or misbehaved. The texts are what `skpc test` prints
/// after "the compiled program failed in the VM: ".
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    // Before any run: what the VM (rbpf 0.4 plus our checks around it) cannot execute.
    #[error("instruction {slot} loads map {map}, but the object has {maps} maps")]
    NoSuchMap { slot: usize, map: u32, maps: usize },
    #[error("instruction {slot} is a `gotol` over {offset} slots, which the VM (rbpf 0.4, 16-bit jumps) cannot run")]
    LongJump { slot: usize, offset: i32 },
    #[error("instruction {slot} compares a 64-bit register with a negative immediate, which rbpf 0.4 zero-extends")]
    NegativeImmediate { slot: usize },
    #[error("instruction {slot} jumps backwards other than a counted loop (the VM has no instruction limit)")]
    BackwardJump { slot: usize },
    #[error("instruction {slot} jumps out of the program")]
    JumpOutOfProgram { slot: usize },
    /// A map the VM cannot model (its kind, type or sizes), or index data that does not
    /// fit the maps.
    #[error(transparent)]
    MapModel(#[from] MapModelError),

    // The message given to a run.
    #[error("the message has {payload} payload bytes but size {len}")]
    PayloadLongerThanMessage { payload: usize, len: u32 },
    #[error("family {family} with address {ip}: the message is inconsistent")]
    InconsistentAddress { family: u32, ip: IpAddr },

    // rbpf itself. Its errors are io::Errors whose text is the whole story (no cause of
    // their own); the text is shown here because `skpc test` prints these errors with
    // `{}`, and the error is kept as the source for callers that want it.
    #[error("rbpf rejected the program: {0}")]
    Rejected(#[source] std::io::Error),
    #[error(transparent)]
    HelperRegistration(std::io::Error),
    #[error("the program faulted: {0}")]
    Fault(#[source] std::io::Error),
    /// The helpers' state of the run was gone when the run ended: only a bug in the VM
    /// can clear it, reported instead of a panic.
    #[error("VM state lost")]
    StateLost,

    // What the program did during the run.
    /// A helper model refused a call (the first one refused; the fault that may follow,
    /// the program using the -EFAULT it got as a pointer, is only its consequence).
    #[error("helper {helper}: {refusal}")]
    Helper {
        helper: String,
        refusal: HelperError,
    },
    #[error("the program wrote into {INDEX_NAME}, {INDEX_PORTS_NAME} or {INDEX_READY_NAME}, which the kernel would keep for later messages: the VM cannot model it")]
    IndexWritten,
    #[error("the program wrote into the read-only context at offset {offset}")]
    ContextWritten { offset: usize },
    /// Something the program did that the VM's message model does not cover.
    #[error("the VM does not model {0}")]
    Unmodelled(&'static str),
    #[error("the program returned {0}; an SK_MSG program returns SK_PASS (1) or SK_DROP (0)")]
    BadReturn(u64),
}
