//! Name resolution and type checking: AST to the typed HIR (`hir`), with a
//! codespan diagnostic for every ill-typed construct and warnings for dead rules.
//!
//! The checker never panics and never stops at the first error: it reports every
//! problem it can find, then returns the HIR only if there was no error.
//!
//! One `Checker` walks the policy; its methods live with their job:
//! - this module: the items in order, the default, the counters;
//! - `names`: declarations and what a name or path refers to (fields from `crate::fields`);
//! - `values`: expressions as compile-time values (`Val`) or field references (`FieldRef`);
//! - `compare`: conditions and comparisons; `membership`: `in`, `starts with` and the
//!   address, payload and comm tests;
//! - `action`: rules and their actions; `test_case`: in-file test cases;
//! - `lints`: warnings about rules that never match or are never reached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::diag::{Code, Diag};
use crate::hir::{self, Action, CounterInfo, CounterKind, Decision, Verdict};
use crate::syntax::ast;
use crate::syntax::{parse, Span};

use names::Binding;

/// The farthest payload byte a rule may look at (`payload[i..j]` needs `j <= MAX_PAYLOAD_END`).
/// The program pulls at most this many bytes into the data window.
pub const MAX_PAYLOAD_END: u32 = 4096;
/// The longest payload slice or `starts with` string.
pub const MAX_SLICE_LEN: u32 = 64;
/// The longest string `comm` can equal (TASK_COMM_LEN 16 including the NUL).
pub const MAX_COMM_LEN: usize = 15;

/// Parses and checks a policy. `Some(policy)` when there is no error; the diagnostics
/// (errors and warnings) either way.
pub fn check(source: &str) -> (Option<hir::Policy>, Vec<Diag>) {
    check_in(source, None)
}

/// [`check`] a policy whose set files (`set NAME = file "..."`) are relative to
/// `base_dir` (the policy file's directory; `None`: the working directory).
pub fn check_in(source: &str, base_dir: Option<&Path>) -> (Option<hir::Policy>, Vec<Diag>) {
    let (ast, mut diags) = parse(source);
    let syntax_ok = diags.iter().all(|d| !d.is_error());
    let mut c = Checker::new(source);
    c.base_dir = base_dir.map(Path::to_path_buf);
    let policy = c.policy(&ast);
    let check_diags = c.diags;
    // A malformed literal stands in the AST as a placeholder (see `syntax::lexer::lex`);
    // whatever the checker says about it would only repeat the lexer's error.
    let bad_literals: Vec<Span> = diags
        .iter()
        .filter(|d| {
            matches!(
                d.code,
                Code::IntTooLarge | Code::BadAddress | Code::BadString
            )
        })
        .map(|d| d.span)
        .collect();
    // The lexer's spans are disjoint and in source order: binary search for the first
    // one ending after the diagnostic's start, and see whether it starts before its end.
    let hides = |d: &Diag| {
        let (start, end) = (d.span.start, d.span.end.max(d.span.start + 1));
        let i = bad_literals.partition_point(|s| s.end.max(s.start + 1) <= start);
        bad_literals.get(i).is_some_and(|s| s.start < end)
    };
    diags.extend(check_diags.into_iter().filter(|d| !hides(d)));
    let ok = syntax_ok && diags.iter().all(|d| !d.is_error());
    (if ok { Some(policy) } else { None }, diags)
}

/// Checks a parsed policy. The HIR is only meaningful when no error was reported.
pub fn check_ast(source: &str, policy: &ast::Policy) -> (hir::Policy, Vec<Diag>) {
    let mut c = Checker::new(source);
    let p = c.policy(policy);
    (p, c.diags)
}

mod action;
mod compare;
mod lints;
mod membership;
mod names;
mod set_file;
mod test_case;
mod text;
mod values;

struct Checker {
    line_starts: Vec<usize>,
    diags: Vec<Diag>,
    names: HashMap<String, Binding>,
    named_counters: HashMap<String, usize>,
    named_order: Vec<(String, u32)>,
    /// Where relative set file paths start (`None`: the working directory).
    base_dir: Option<PathBuf>,
    /// The sets read from files, in declaration order (`hir::Policy::file_sets`).
    file_sets: Vec<hir::FileSet>,
    /// Their elements, by the same index.
    loaded_sets: Vec<set_file::LoadedSet>,
}

impl Checker {
    fn new(source: &str) -> Checker {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Checker {
            line_starts,
            diags: Vec::new(),
            names: HashMap::new(),
            named_counters: HashMap::new(),
            named_order: Vec::new(),
            base_dir: None,
            file_sets: Vec::new(),
            loaded_sets: Vec::new(),
        }
    }

    fn line(&self, span: Span) -> u32 {
        let idx = match self.line_starts.binary_search(&span.start) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        idx as u32 + 1
    }

    fn err(&mut self, d: Diag) {
        self.diags.push(d);
    }

    // ------------------------------------------------------------------ items

    fn policy(&mut self, p: &ast::Policy) -> hir::Policy {
        let mut rules = Vec::with_capacity(p.items.len());
        let mut default: Option<(Decision, Span)> = None;
        let mut tests_ast = Vec::new();
        let mut last_rule_or_default = 0usize;
        let mut default_index = None;
        for (i, item) in p.items.iter().enumerate() {
            match item {
                ast::Item::Const { name, value, span } => self.declare(name, value, *span, false),
                ast::Item::Set { name, value, span } => self.declare(name, value, *span, true),
                ast::Item::Rule(r) => {
                    last_rule_or_default = i;
                    if let Some(rule) = self.rule(r, rules.len()) {
                        rules.push(rule);
                    }
                }
                ast::Item::Default { action, span } => {
                    if let Some((_, first)) = default_index {
                        self.err(
                            Diag::new(Code::SecondDefault, "a second `default`", *span)
                                .label("second default here")
                                .secondary(first, "first default here")
                                .help("keep one `default` line"),
                        );
                        continue;
                    }
                    last_rule_or_default = i;
                    default_index = Some((i, *span));
                    match self.action(action) {
                        Some(Action::Decide(d)) => default = Some((d, *span)),
                        Some(_) => self.err(
                            Diag::new(Code::DefaultNotVerdict, "`default` needs a verdict", action.span)
                                .label("not a verdict")
                                .help("write `default pass;` or `default drop;` (count and log go in rules)"),
                        ),
                        None => {}
                    }
                }
                ast::Item::Test(t) => tests_ast.push(t),
            }
        }
        if let Some((i, span)) = default_index {
            self.default_position_warning(span, i < last_rule_or_default);
        }
        self.dead_rule_warnings(&rules, default.as_ref().map(|d| d.1));

        let mut counters: Vec<CounterInfo> =
            Vec::with_capacity(rules.len() + self.named_order.len() + 1);
        counters.extend(rules.iter().map(|r: &hir::Rule| CounterInfo {
            name: rule_counter_name(r.counter),
            kind: CounterKind::Rule,
            line: r.line,
        }));
        // Named counters come after the rules: renumber the provisional slots.
        let base = counters.len();
        for r in &mut rules {
            if let Action::Count { counter } = &mut r.action {
                *counter += base;
            }
        }
        for (name, line) in &self.named_order {
            counters.push(CounterInfo {
                name: name.clone(),
                kind: CounterKind::Named,
                line: *line,
            });
        }
        let default_counter = counters.len();
        let (decision, span) = match default {
            Some((d, s)) => (d, Some(s)),
            None => (
                Decision {
                    verdict: Verdict::Pass,
                    apply_bytes: None,
                },
                None,
            ),
        };
        counters.push(CounterInfo {
            name: "default".into(),
            kind: CounterKind::Default,
            line: span.map(|s| self.line(s)).unwrap_or(0),
        });
        let tests = self.tests(&tests_ast);
        hir::Policy {
            rules,
            default: hir::DefaultRule {
                decision,
                span,
                counter: default_counter,
            },
            counters,
            tests,
            file_sets: std::mem::take(&mut self.file_sets),
        }
    }
}

/// `rule{index}`, the name of a rule's counter (one per rule: without the formatting
/// machinery).
fn rule_counter_name(index: usize) -> String {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = index;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(4 + digits.len() - start);
    s.push_str("rule");
    s.extend(digits[start..].iter().map(|&d| char::from(d)));
    s
}
