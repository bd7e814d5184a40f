//! The protocol parsers in BPF, and the tests of their fields. (Being written.)

use crate::fields::{Proto, Text};
use crate::hir::TextOp;

use super::lir::Label;
use super::Gen;

impl Gen {
    /// Jumps to `t` if the message is of protocol `p`, else to `f`.
    pub(super) fn proto_test(&mut self, _p: Proto, _t: Label, f: Label) {
        self.goto(f);
    }

    /// Jumps to `t` if protocol field `field` has a value that `op` matches against one
    /// of `alts`, else to `f`.
    pub(super) fn text_test(
        &mut self,
        _field: Text,
        _op: TextOp,
        _alts: &[Vec<u8>],
        _t: Label,
        f: Label,
    ) {
        self.goto(f);
    }
}
