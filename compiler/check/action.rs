//! Rules and their actions: verdicts, `reply STRING` (a string of 1 to 4096 bytes),
//! `for N` (refused on `discard` and `reply`), `cork N`, redirect slots, named counters.

use super::values::{operand_kind, FieldRef, Operand, Val};
use super::Checker;
use crate::diag::{Code, Diag};
use crate::hir::fold::fold;
use crate::hir::{self, Action, Cond, Decision, IntField, SockSlot, Target, Verdict};
use crate::syntax::ast::{self, ActionKind};

impl Checker {
    pub(super) fn rule(&mut self, r: &ast::Rule, index: usize) -> Option<hir::Rule> {
        let action = self.action(&r.action);
        if let Some(Action::Decide(Decision {
            verdict:
                Verdict::Redirect {
                    ingress: false,
                    target: Target::Peer,
                },
            ..
        })) = &action
        {
            self.diags.push(
                Diag::new(Code::EgressToPeer, "an egress redirect to the peer sends the bytes back to the sender", r.action.span)
                    .label("egress: out of the peer socket, to its own peer (this socket)")
                    .help("write `redirect ingress to peer` to hand the bytes to the peer's receive queue (a local bypass)"),
            );
        }
        let cond = match &r.cond {
            None => Some(Cond::Const(true)),
            Some(c) => self.cond(c),
        };
        // The HIR promises folded conditions (see `hir::fold`): later passes never fold.
        let cond = fold(cond?);
        Some(hir::Rule {
            counter: index,
            action: action?,
            cond,
            span: r.span,
            line: self.line(r.span),
        })
    }

    pub(super) fn action(&mut self, a: &ast::Action) -> Option<Action> {
        let apply_bytes = match &a.apply_bytes {
            None => None,
            Some(e) => {
                if matches!(a.kind, ActionKind::Discard) {
                    // The kernel's apply_bytes state is not meant to be combined with a
                    // rewrite of the message (pop_data empties it), so the pair is refused.
                    self.err(
                        Diag::new(
                            Code::DiscardFor,
                            "`discard` does not take `for N`",
                            e.span,
                        )
                        .label("not allowed on `discard`")
                        .help("remove `for N`: each message (each chunk of a large write) is judged and discarded on its own"),
                    );
                    return None;
                }
                if matches!(a.kind, ActionKind::Reply(_)) {
                    // A reply rewrites the message like a discard does: no apply_bytes.
                    self.err(
                        Diag::new(Code::ReplyFor, "`reply` does not take `for N`", e.span)
                            .label("not allowed on `reply`")
                            .help("remove `for N`: each message (each chunk of a large write) is judged and answered on its own"),
                    );
                    return None;
                }
                if matches!(
                    a.kind,
                    ActionKind::Cork(_) | ActionKind::Count(_) | ActionKind::Log
                ) {
                    self.err(
                        Diag::new(
                            Code::ForOnNonVerdict,
                            "only `pass`, `drop` and `redirect` take `for N`",
                            e.span,
                        )
                        .label("not allowed here")
                        .help("remove `for N`; it sets how many bytes a verdict covers"),
                    );
                    return None;
                }
                Some(self.byte_count(e, "for")?)
            }
        };
        let verdict = match &a.kind {
            ActionKind::Pass => Verdict::Pass,
            ActionKind::Drop => Verdict::Drop,
            ActionKind::Discard => Verdict::Discard,
            ActionKind::Reply(e) => Verdict::Reply(self.reply_bytes(e)?),
            ActionKind::Redirect { ingress, target } => {
                let target = match target {
                    ast::Target::Peer(_) => Target::Peer,
                    ast::Target::Sock(e) => Target::Sock(self.sock_slot(e)?),
                };
                Verdict::Redirect {
                    ingress: *ingress,
                    target,
                }
            }
            ActionKind::Cork(e) => Verdict::Cork(self.byte_count(e, "cork")?),
            ActionKind::Count(name) => {
                let slot = match self.named_counters.get(&*name.node) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.named_counters.len();
                        let line = self.line(name.span);
                        self.named_counters.insert(name.node.to_string(), slot);
                        self.named_order.push((name.node.to_string(), line));
                        slot
                    }
                };
                return Some(Action::Count { counter: slot });
            }
            ActionKind::Log => return Some(Action::Log),
        };
        Some(Action::Decide(Decision {
            verdict,
            apply_bytes,
        }))
    }

    /// The bytes of `reply STRING`: a string constant of 1 to [`hir::MAX_REPLY`] bytes.
    fn reply_bytes(&mut self, e: &ast::Expr) -> Option<Vec<u8>> {
        match self.expr(e)? {
            Operand::Const(Val::Str(s)) if s.is_empty() => {
                self.err(
                    Diag::new(Code::EmptyReply, "`reply` needs at least one byte", e.span)
                        .label("an empty string")
                        .help("to swallow the message without answering, write `discard`"),
                );
                None
            }
            Operand::Const(Val::Str(s)) if s.len() > hir::MAX_REPLY => {
                self.err(
                    Diag::new(
                        Code::ReplyTooLong,
                        format!("a reply holds at most {} bytes", hir::MAX_REPLY),
                        e.span,
                    )
                    .label(format!("{} bytes", s.len()))
                    .help(format!(
                        "shorten the reply to {} bytes or fewer",
                        hir::MAX_REPLY
                    )),
                );
                None
            }
            Operand::Const(Val::Str(s)) => Some(s),
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(Code::ReplyNotString, "`reply` needs a string", e.span)
                        .label(format!("this is {kind}"))
                        .help("write the bytes the sender should read, e.g. `reply \"-ERR denied\\r\\n\";`, or a `const` holding them"),
                );
                None
            }
        }
    }

    fn byte_count(&mut self, e: &ast::Expr, what: &str) -> Option<u32> {
        match self.expr(e)? {
            Operand::Const(Val::Int(n)) if n >= 1 && n <= u32::MAX as u64 => Some(n as u32),
            Operand::Const(Val::Int(n)) => {
                self.err(
                    Diag::new(
                        Code::ByteCountOutOfRange,
                        format!("`{what}` needs 1 to 4294967295 bytes"),
                        e.span,
                    )
                    .label(format!("{n} is out of range"))
                    .help("give a byte count between 1 and 4GiB - 1 (e.g. `1MiB`)"),
                );
                None
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(
                        Code::TypeMismatch,
                        format!("`{what}` needs a byte count"),
                        e.span,
                    )
                    .label(format!("this is {kind}"))
                    .help("write a constant number of bytes, e.g. `16` or `1MiB`"),
                );
                None
            }
        }
    }

    fn sock_slot(&mut self, e: &ast::Expr) -> Option<SockSlot> {
        match self.expr(e)? {
            Operand::Const(Val::Int(n)) if n < skpc_abi::SOCKMAP_SLOTS as u64 => {
                Some(SockSlot::Const(n as u32))
            }
            Operand::Const(Val::Int(n)) => {
                self.err(
                    Diag::new(
                        Code::NoSuchSlot,
                        format!("sockmap slot {n} does not exist"),
                        e.span,
                    )
                    .label(format!(
                        "the policy's sockmap has slots 0..{}",
                        skpc_abi::SOCKMAP_SLOTS - 1
                    ))
                    .help(format!("use a slot below {}", skpc_abi::SOCKMAP_SLOTS)),
                );
                None
            }
            Operand::Field(FieldRef::Int(f)) if !matches!(f, IntField::PayloadByte(_)) => {
                Some(SockSlot::Field(f))
            }
            other => {
                let kind = operand_kind(&other);
                self.err(
                    Diag::new(Code::RedirectKeyNotInteger, "the redirect key must be an integer", e.span)
                        .label(format!("this is {kind}"))
                        .help("write a sockmap slot number (`sock 3`), a `const`, or an integer field such as `uid`"),
                );
                None
            }
        }
    }
}
