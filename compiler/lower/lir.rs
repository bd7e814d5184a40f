//! LIR: BPF instructions with symbolic jump targets, the IR between the policy lowering
//! and the final instruction list. It exists so that code can be generated without
//! knowing distances, cleaned up (jump threading, dead code), and then assembled with
//! jumps of any length (a conditional jump beyond 16 bits becomes an inverted short jump
//! over a `gotol`).

use crate::bpf::{Insn, JmpOp, Reg, Src};

/// A jump target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lir {
    /// A straight-line instruction (never a jump).
    Insn(Insn),
    /// Conditional jump; `wide` compares 64 bits, else the low 32 (BPF_JMP32).
    /// `keep`: the cleanup must not invert it over a following `goto` (see `Gen::exit_unless`:
    /// the order of its two successors is the order the verifier explores them in).
    Jmp {
        op: JmpOp,
        wide: bool,
        dst: Reg,
        src: Src,
        target: Label,
        keep: bool,
    },
    Goto(Label),
    Label(Label),
    /// What the following code is for (for line info and listings).
    Mark(Mark),
}

/// What a stretch of the verdict program is for: a rule (also the first rule of a run or
/// an indexed block compiled together), the default, or the shared verdict tails. It
/// stands for a source line (`Lowered::line_of`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    /// Rule `i` of the policy.
    Rule(usize),
    /// The default decision.
    Default,
    /// The verdict tails the rules jump to (counting and deciding): no source line.
    Tails,
    /// The parser of a protocol, run in the prologue; it stands for the first rule that
    /// reads the protocol.
    Parser {
        proto: crate::fields::Proto,
        rule: usize,
    },
    /// The rest of the prologue after the parsers (context fields cached for the
    /// rules): no source line.
    Prologue,
}

impl Lir {
    fn ends_block(&self) -> bool {
        matches!(self, Lir::Goto(_) | Lir::Insn(Insn::Exit))
    }
}

/// The assembled program: instructions and, per instruction index, the mark in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    pub insns: Vec<Insn>,
    pub marks: Vec<Option<Mark>>,
}

/// Removes code no jump reaches, jumps to the next instruction, and jumps to jumps.
///
/// Every pass works in place on the one vector, with dense tables indexed by label
/// number (labels are small integers): a policy of 100k rules has millions of items and
/// the passes run a few times, so a fresh vector and hash set per pass showed up as most
/// of the compile time (page faults and hashing).
pub fn cleanup(code: Vec<Lir>) -> Vec<Lir> {
    let mut code = code;
    let labels = code
        .iter()
        .filter_map(|x| match x {
            Lir::Label(l) | Lir::Goto(l) | Lir::Jmp { target: l, .. } => Some(l.0 as usize + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut tables = Tables {
        forward: vec![NO_LABEL; labels],
        seen: vec![0; labels],
        used: vec![false; labels],
    };
    loop {
        let before = code.len();
        thread_jumps(&mut code, &mut tables);
        drop_unreachable(&mut code, &tables.used);
        drop_jumps_to_next(&mut code);
        invert_jumps_over_gotos(&mut code);
        if code.len() == before {
            return code;
        }
    }
}

/// No label (an empty slot of [`Tables::forward`]).
const NO_LABEL: u32 = u32::MAX;

/// Scratch tables of the cleanup passes, one slot per label number.
struct Tables {
    /// label -> the `goto` target right after it, or [`NO_LABEL`].
    forward: Vec<u32>,
    /// Stamp of the last resolution that passed the label (cycle protection).
    seen: Vec<u32>,
    /// Whether some jump targets the label.
    used: Vec<bool>,
}

/// Where a label really leads: follow labels and `goto`s (with cycle protection).
/// Also fills `t.used` with the labels that jumps target afterwards (the same pass).
fn thread_jumps(code: &mut [Lir], t: &mut Tables) {
    // label -> the first real item after it; scanned backwards, so `next` is the first
    // item after `i` that is neither a label nor a mark.
    t.forward.fill(NO_LABEL);
    let mut next: Option<Label> = None;
    let mut any = false;
    for item in code.iter().rev() {
        match item {
            Lir::Label(l) => {
                if let Some(target) = next {
                    // In source order the last definition of a label wins; scanning
                    // backwards that is the first one seen.
                    if t.forward[l.0 as usize] == NO_LABEL {
                        t.forward[l.0 as usize] = target.0;
                        any = true;
                    }
                }
            }
            Lir::Mark(_) => {}
            Lir::Goto(target) => next = Some(*target),
            _ => next = None,
        }
    }
    t.used.fill(false);
    if any {
        t.seen.fill(0);
    }
    let mut stamp = 0u32;
    let Tables {
        forward,
        seen,
        used,
    } = t;
    let mut resolve = |l: Label| {
        if forward[l.0 as usize] == NO_LABEL {
            return l;
        }
        stamp += 1;
        let mut l = l.0 as usize;
        while forward[l] != NO_LABEL {
            if seen[l] == stamp {
                break;
            }
            seen[l] = stamp;
            l = forward[l] as usize;
        }
        Label(l as u32)
    };
    for item in code.iter_mut() {
        if let Lir::Goto(target) | Lir::Jmp { target, .. } = item {
            if any {
                *target = resolve(*target);
            }
            used[target.0 as usize] = true;
        }
    }
}

/// Drops code after a `goto`/`exit` up to the next label that a jump targets (`used`, as
/// [`thread_jumps`] leaves it), unused labels, and marks with no code after them.
fn drop_unreachable(code: &mut Vec<Lir>, used: &[bool]) {
    let mut live = true;
    let mut w = 0;
    for i in 0..code.len() {
        let keep = match &code[i] {
            Lir::Label(l) if used[l.0 as usize] => {
                live = true;
                true
            }
            Lir::Label(_) => false,
            Lir::Mark(_) => true,
            item if live => {
                live = !item.ends_block();
                true
            }
            _ => false,
        };
        if !keep {
            continue;
        }
        // Marks with no code after them are noise.
        if w > 0 && matches!((&code[w - 1], &code[i]), (Lir::Mark(_), Lir::Mark(_))) {
            w -= 1;
        }
        if w != i {
            code[w] = code[i].clone();
        }
        w += 1;
    }
    code.truncate(w);
}

fn drop_jumps_to_next(code: &mut Vec<Lir>) {
    let mut w = 0;
    for i in 0..code.len() {
        // Items after `i` are still in place (`w <= i`).
        if let Lir::Goto(t) | Lir::Jmp { target: t, .. } = code[i] {
            let falls_to = code[i + 1..]
                .iter()
                .take_while(|x| matches!(x, Lir::Label(_) | Lir::Mark(_)))
                .any(|x| *x == Lir::Label(t));
            if falls_to {
                continue;
            }
        }
        if w != i {
            code[w] = code[i].clone();
        }
        w += 1;
    }
    code.truncate(w);
}

/// `if c goto L; goto X; L:` becomes `if !c goto X; L:`.
fn invert_jumps_over_gotos(code: &mut Vec<Lir>) {
    let mut w = 0;
    let mut i = 0;
    while i < code.len() {
        // Items from `i` on are still in place (`w <= i`).
        if let (
            Lir::Jmp {
                op,
                wide,
                dst,
                src,
                target,
                keep: false,
            },
            Some(Lir::Goto(x)),
            Some(Lir::Label(l)),
        ) = (&code[i], code.get(i + 1), code.get(i + 2))
        {
            if let (true, Some(inverse)) = (target == l, op.negate()) {
                let inverted = Lir::Jmp {
                    op: inverse,
                    wide: *wide,
                    dst: *dst,
                    src: *src,
                    target: *x,
                    keep: false,
                };
                code[w] = inverted;
                w += 1;
                i += 2;
                continue;
            }
        }
        if w != i {
            code[w] = code[i].clone();
        }
        w += 1;
        i += 1;
    }
    code.truncate(w);
}

/// The farthest a jump may reach in its 16-bit form. The kernel rewrites many
/// instructions into several after verification (context accesses, inlined map
/// lookups) and re-targets jumps; a jump near the 16-bit limit before that rewrite
/// overflows after it and the load fails (EFAULT, seen at ~32k instructions). A quarter
/// of the range leaves room for four-fold growth.
pub const MAX_SHORT_JUMP: i64 = i16::MAX as i64 / 4;

/// Resolves labels to offsets. Jumps start short; any that reaches beyond
/// [`MAX_SHORT_JUMP`] is made long (`gotol`) and the layout recomputed until nothing
/// changes (lengths only grow, so this ends).
pub fn assemble(code: &[Lir]) -> Assembled {
    // Dense tables (labels are small integers): this runs a few times over programs of
    // up to a million instructions.
    let max_label = code
        .iter()
        .filter_map(|x| match x {
            Lir::Label(l) | Lir::Goto(l) | Lir::Jmp { target: l, .. } => Some(l.0 as usize),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut long = vec![false; code.len()];
    let mut pos = vec![0usize; code.len()];
    let mut labels = vec![0usize; max_label + 1];
    loop {
        // Slot position of every item and label.
        let mut slot = 0usize;
        for (i, item) in code.iter().enumerate() {
            pos[i] = slot;
            slot += match item {
                Lir::Insn(insn) => insn.slots(),
                Lir::Jmp { .. } if long[i] => 2,
                Lir::Jmp { .. } | Lir::Goto(_) => 1,
                Lir::Label(l) => {
                    labels[l.0 as usize] = slot;
                    0
                }
                Lir::Mark(_) => 0,
            };
        }
        let target = |l: &Label| labels[l.0 as usize] as i64;
        let mut grew = false;
        for (i, item) in code.iter().enumerate() {
            let from = pos[i] as i64 + 1;
            let fits = |off: i64| off.abs() <= MAX_SHORT_JUMP;
            if let Lir::Jmp { target: t, .. } | Lir::Goto(t) = item {
                if !long[i] && !fits(target(t) - from) {
                    long[i] = true;
                    grew = true;
                }
            }
        }
        if grew {
            continue;
        }
        let mut out = Assembled {
            insns: Vec::with_capacity(code.len()),
            marks: Vec::with_capacity(slot),
        };
        let mut mark = None;
        let push = |out: &mut Assembled, insn: Insn, mark: Option<Mark>| {
            for _ in 0..insn.slots() {
                out.marks.push(mark);
            }
            out.insns.push(insn);
        };
        for (i, item) in code.iter().enumerate() {
            let from = pos[i] as i64 + 1;
            match item {
                Lir::Insn(insn) => push(&mut out, *insn, mark),
                Lir::Mark(m) => mark = Some(*m),
                Lir::Label(_) => {}
                Lir::Goto(t) if long[i] => push(
                    &mut out,
                    Insn::Gotol {
                        imm: (target(t) - from) as i32,
                    },
                    mark,
                ),
                Lir::Goto(t) => push(
                    &mut out,
                    Insn::Ja {
                        off: (target(t) - from) as i16,
                    },
                    mark,
                ),
                Lir::Jmp {
                    op,
                    wide,
                    dst,
                    src,
                    target: t,
                    ..
                } if long[i] => {
                    // if !cond goto +1; gotol target
                    let inverse = op.negate().unwrap_or(*op);
                    let skip = Insn::Jmp {
                        op: inverse,
                        dst: *dst,
                        src: *src,
                        off: 1,
                    };
                    let skip = if *wide {
                        skip
                    } else {
                        Insn::Jmp32 {
                            op: inverse,
                            dst: *dst,
                            src: *src,
                            off: 1,
                        }
                    };
                    push(&mut out, skip, mark);
                    push(
                        &mut out,
                        Insn::Gotol {
                            imm: (target(t) - (from + 1)) as i32,
                        },
                        mark,
                    );
                }
                Lir::Jmp {
                    op,
                    wide: true,
                    dst,
                    src,
                    target: t,
                    ..
                } => push(
                    &mut out,
                    Insn::Jmp {
                        op: *op,
                        dst: *dst,
                        src: *src,
                        off: (target(t) - from) as i16,
                    },
                    mark,
                ),
                Lir::Jmp {
                    op,
                    wide: false,
                    dst,
                    src,
                    target: t,
                    ..
                } => push(
                    &mut out,
                    Insn::Jmp32 {
                        op: *op,
                        dst: *dst,
                        src: *src,
                        off: (target(t) - from) as i16,
                    },
                    mark,
                ),
            }
        }
        return out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::AluOp;

    fn mov(imm: i32) -> Lir {
        Lir::Insn(Insn::Alu64 {
            op: AluOp::Mov,
            dst: Reg::R0,
            src: Src::Imm(imm),
        })
    }

    #[test]
    fn short_jumps_get_offsets() {
        let l = Label(1);
        let code = vec![
            Lir::Jmp {
                op: JmpOp::Jeq,
                wide: true,
                dst: Reg::R1,
                src: Src::Imm(0),
                target: l,
                keep: false,
            },
            mov(1),
            Lir::Label(l),
            Lir::Insn(Insn::Exit),
        ];
        let a = assemble(&code);
        assert_eq!(
            a.insns[0],
            Insn::Jmp {
                op: JmpOp::Jeq,
                dst: Reg::R1,
                src: Src::Imm(0),
                off: 1
            }
        );
    }

    #[test]
    fn far_conditional_jumps_become_gotol() {
        let l = Label(1);
        let mut code = vec![Lir::Jmp {
            op: JmpOp::Jeq,
            wide: false,
            dst: Reg::R1,
            src: Src::Imm(0),
            target: l,
            keep: false,
        }];
        code.extend(std::iter::repeat_n(mov(1), 40_000));
        code.push(Lir::Label(l));
        code.push(Lir::Insn(Insn::Exit));
        let a = assemble(&code);
        assert_eq!(
            a.insns[0],
            Insn::Jmp32 {
                op: JmpOp::Jne,
                dst: Reg::R1,
                src: Src::Imm(0),
                off: 1
            }
        );
        assert_eq!(a.insns[1], Insn::Gotol { imm: 40_000 });
    }

    #[test]
    fn cleanup_threads_and_removes_dead_code() {
        let (a, b) = (Label(1), Label(2));
        let code = vec![
            Lir::Jmp {
                op: JmpOp::Jeq,
                wide: true,
                dst: Reg::R1,
                src: Src::Imm(0),
                target: a,
                keep: false,
            },
            mov(0),
            Lir::Insn(Insn::Exit),
            mov(7), // unreachable
            Lir::Label(a),
            Lir::Goto(b),
            Lir::Label(b),
            mov(1),
            Lir::Insn(Insn::Exit),
        ];
        let out = cleanup(code);
        assert!(!out.contains(&mov(7)));
        assert!(out.contains(&Lir::Jmp {
            op: JmpOp::Jeq,
            wide: true,
            dst: Reg::R1,
            src: Src::Imm(0),
            target: b,
            keep: false,
        }));
        assert!(!out.iter().any(|x| matches!(x, Lir::Goto(_))));
    }
}
