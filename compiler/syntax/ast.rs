//! The abstract syntax tree: what the user wrote, every node with its span.
//! Nothing here is resolved or typed; that is `check`'s job.

use super::lexer::IpLit;
use super::span::{Span, Spanned};

pub type Ident = Spanned<Name>;

/// The text of a name. The field names (`remote`, `port`, ...) are the lexer's static
/// strings: a policy names fields in every rule, and a string per use was a good part
/// of the parse time.
pub type Name = std::borrow::Cow<'static, str>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Const {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Set {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Rule(Rule),
    Default {
        action: Action,
        span: Span,
    },
    Test(TestCase),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub cond: Option<Cond>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionKind {
    Pass,
    Drop,
    Discard,
    /// `reply STRING`: the sender reads STRING back instead of the message leaving.
    Reply(Expr),
    Redirect {
        ingress: bool,
        target: Target,
    },
    Cork(Expr),
    Count(Ident),
    Log,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    /// `for N`: apply_bytes. Boxed: rare, and an `Action` is a parser stack symbol
    /// (grammar/skp.lalrpop says why those stay small).
    pub apply_bytes: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Sock(Expr),
    Peer(Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A condition. `and`/`or` chains are flat lists, so that long chains do not make a
/// deep tree (no pass recurses once per operand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CondKind {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>),
    Cmp {
        lhs: Expr,
        op: Spanned<CmpOp>,
        rhs: Expr,
    },
    In {
        lhs: Expr,
        rhs: Expr,
    },
    StartsWith {
        lhs: Expr,
        rhs: Expr,
    },
    EndsWith {
        lhs: Expr,
        rhs: Expr,
    },
    /// A bare value used as a condition: `true`, `false`, or a mistake the checker reports.
    Value(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub kind: CondKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExprKind {
    /// An integer; `unit` is the `KiB`/`MiB`/`GiB` multiplier (applied by the checker,
    /// which reports overflow at this span).
    Int {
        value: u64,
        unit: Option<u64>,
    },
    Bool(bool),
    Ip(IpLit),
    Str(Vec<u8>),
    /// `a`, `local.port`, `remote.ip`: a field or a declared name.
    Path(Vec<Ident>),
    /// `payload[i]`
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    /// `payload[i..j]` (half-open)
    Slice {
        base: Box<Expr>,
        start: Box<Expr>,
        end: Box<Expr>,
    },
    /// `a..b` (inclusive, in sets and after `in`)
    Range {
        lo: Box<Expr>,
        hi: Box<Expr>,
    },
    /// `{a, b, c}`
    Set(Vec<Expr>),
    /// `file "path"`: a set read from a file, one element a line (only as the value of
    /// a `set` declaration).
    File(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// `test "name" { field = value; ... expect ACTION; }`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub name: Spanned<Vec<u8>>,
    pub stmts: Vec<TestStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestStmt {
    Assign {
        field: Vec<Ident>,
        value: Expr,
        span: Span,
    },
    Expect {
        action: Action,
        span: Span,
    },
}

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        Expr { kind, span }
    }
}

impl Cond {
    pub fn new(kind: CondKind, span: Span) -> Cond {
        Cond { kind, span }
    }
}
