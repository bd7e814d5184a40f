//! LIR: BPF instructions with symbolic jump targets, the IR between the policy lowering
//! and the final instruction list. It exists so that code can be generated without
//! knowing distances, cleaned up (jump threading, dead code), and then assembled with
//! jumps of any length (a conditional jump beyond 16 bits becomes an inverted short jump
//! over a `gotol`).

use std::collections::{HashMap, HashSet};

use crate::bpf::{Insn, JmpOp, Reg, Src};

/// A jump target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lir {
    /// A straight-line instruction (never a jump).
    Insn(Insn),
    /// Conditional jump; `wide` compares 64 bits, else the low 32 (BPF_JMP32).
    Jmp {
        op: JmpOp,
        wide: bool,
        dst: Reg,
        src: Src,
        target: Label,
    },
    Goto(Label),
    Label(Label),
    /// The following code belongs to source rule `rule` (index into the listing's notes).
    Mark(u32),
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
    pub marks: Vec<Option<u32>>,
}

/// Removes code no jump reaches, jumps to the next instruction, and jumps to jumps.
pub fn cleanup(code: Vec<Lir>) -> Vec<Lir> {
    let mut code = code;
    loop {
        let before = code.len();
        code = thread_jumps(code);
        code = drop_unreachable(code);
        code = drop_jumps_to_next(code);
        code = invert_jumps_over_gotos(code);
        if code.len() == before {
            return code;
        }
    }
}

/// Where a label really leads: follow labels and `goto`s (with cycle protection).
fn thread_jumps(code: Vec<Lir>) -> Vec<Lir> {
    // label -> the first real item after it
    let mut forward: HashMap<Label, Label> = HashMap::new();
    for (i, item) in code.iter().enumerate() {
        if let Lir::Label(l) = item {
            let next = code[i + 1..]
                .iter()
                .find(|x| !matches!(x, Lir::Label(_) | Lir::Mark(_)));
            if let Some(Lir::Goto(t)) = next {
                forward.insert(*l, *t);
            }
        }
    }
    let resolve = |mut l: Label| {
        let mut seen = HashSet::new();
        while let Some(t) = forward.get(&l) {
            if !seen.insert(l) {
                break;
            }
            l = *t;
        }
        l
    };
    code.into_iter()
        .map(|item| match item {
            Lir::Goto(t) => Lir::Goto(resolve(t)),
            Lir::Jmp {
                op,
                wide,
                dst,
                src,
                target,
            } => Lir::Jmp {
                op,
                wide,
                dst,
                src,
                target: resolve(target),
            },
            other => other,
        })
        .collect()
}

fn drop_unreachable(code: Vec<Lir>) -> Vec<Lir> {
    let used: HashSet<Label> = code
        .iter()
        .filter_map(|x| match x {
            Lir::Goto(t) | Lir::Jmp { target: t, .. } => Some(*t),
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(code.len());
    let mut live = true;
    for item in code {
        match &item {
            Lir::Label(l) if used.contains(l) => {
                live = true;
                out.push(item);
            }
            Lir::Label(_) => {}
            Lir::Mark(_) => out.push(item),
            _ if live => {
                live = !item.ends_block();
                out.push(item);
            }
            _ => {}
        }
    }
    // Marks with no code after them are noise.
    let mut cleaned: Vec<Lir> = Vec::with_capacity(out.len());
    for item in out {
        if let (Some(Lir::Mark(_)), Lir::Mark(_)) = (cleaned.last(), &item) {
            cleaned.pop();
        }
        cleaned.push(item);
    }
    cleaned
}

fn drop_jumps_to_next(code: Vec<Lir>) -> Vec<Lir> {
    let mut out = Vec::with_capacity(code.len());
    for (i, item) in code.iter().enumerate() {
        if let Lir::Goto(t) | Lir::Jmp { target: t, .. } = item {
            let falls_to = code[i + 1..]
                .iter()
                .take_while(|x| matches!(x, Lir::Label(_) | Lir::Mark(_)))
                .any(|x| *x == Lir::Label(*t));
            if falls_to {
                continue;
            }
        }
        out.push(item.clone());
    }
    out
}

/// `if c goto L; goto X; L:` becomes `if !c goto X; L:`.
fn invert_jumps_over_gotos(code: Vec<Lir>) -> Vec<Lir> {
    let mut out: Vec<Lir> = Vec::with_capacity(code.len());
    let mut i = 0;
    while i < code.len() {
        if let (
            Lir::Jmp {
                op,
                wide,
                dst,
                src,
                target,
            },
            Some(Lir::Goto(x)),
            Some(Lir::Label(l)),
        ) = (&code[i], code.get(i + 1), code.get(i + 2))
        {
            if let (true, Some(inverse)) = (target == l, op.negate()) {
                out.push(Lir::Jmp {
                    op: inverse,
                    wide: *wide,
                    dst: *dst,
                    src: *src,
                    target: *x,
                });
                i += 2;
                continue;
            }
        }
        out.push(code[i].clone());
        i += 1;
    }
    out
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
        let mut out = Assembled::default();
        let mut mark = None;
        let push = |out: &mut Assembled, insn: Insn, mark: Option<u32>| {
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
            target: b
        }));
        assert!(!out.iter().any(|x| matches!(x, Lir::Goto(_))));
    }
}
