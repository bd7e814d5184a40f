//! Every diagnostic code, once: its stable string (documented in docs/language.md, where
//! a test holds the table to this list), its severity and a one-line summary.

use super::Severity;

/// Declares [`Code`] and its table from one row per code, so that a code cannot have a
/// string or a severity in one place and another elsewhere.
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $severity:ident, $summary:literal;)*) => {
        /// A diagnostic code. `as_str` is the stable code users see (`E0202`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[$doc])* $name,)*
        }

        impl Code {
            /// Every code, in the order of the documentation's table.
            pub const ALL: &'static [Code] = &[$(Code::$name),*];

            /// The code as users see it: `E0202`, `W0001`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $code,)*
                }
            }

            pub fn severity(self) -> Severity {
                match self {
                    $(Code::$name => Severity::$severity,)*
                }
            }

            /// What the code means, as the documentation's table says it.
            pub fn summary(self) -> &'static str {
                match self {
                    $(Code::$name => $summary,)*
                }
            }
        }
    };
}

codes! {
    UnexpectedChar = "E0001", Error, "a character (or run of characters) that is not part of the language";
    IntTooLarge = "E0002", Error, "an integer literal larger than 2⁶⁴-1";
    BadAddress = "E0003", Error, "an invalid IP address, or a CIDR prefix length out of range";
    BadString = "E0004", Error, "a bad string: unknown escape or missing closing quote";
    Syntax = "E0005", Error, "a syntax error (recovered at the next `;`, so several are reported)";
    TooDeep = "E0006", Error, "nesting deeper than 64 levels";
    UnknownField = "E0101", Error, "unknown field (a dotted path), with a did-you-mean";
    UnknownName = "E0102", Error, "unknown name (not a field or a declared name), with a did-you-mean";
    DuplicateName = "E0103", Error, "a name declared twice";
    FieldDeclared = "E0104", Error, "declaring a field name";
    FieldNotConstant = "E0105", Error, "a field where a constant is needed: in a declaration or a set";
    SetFileUnreadable = "E0106", Error, "a set file (`set NAME = file \"...\"`) that cannot be read: missing, not a regular file, over 256 MiB";
    SetFileLine = "E0107", Error, "a malformed line in a set file, with its file, line and column";
    FileSetMisuse = "E0108", Error, "a set read from a file used other than as `FIELD in NAME` with an address, port or integer field";
    TypeMismatch = "E0201", Error, "a type mismatch: operands of different kinds, `in`/`starts with`/index/byte count with the wrong kind";
    OutOfRange = "E0202", Error, "an integer outside the field's range";
    WrongFamily = "E0203", Error, "an address of the wrong family for an `ip4`/`ip6` field";
    OperatorNotApplicable = "E0204", Error, "an operator that does not apply: ordering on addresses/strings/family, `==` with a prefix";
    EmptySlice = "E0205", Error, "an empty or reversed payload slice";
    PayloadTooFar = "E0206", Error, "payload access beyond the window or longer than 64 bytes";
    SliceLengthMismatch = "E0207", Error, "a payload slice compared with a string of another length";
    RedirectKeyNotInteger = "E0208", Error, "a redirect key that is not an integer (constant or integer field)";
    NoSuchSlot = "E0209", Error, "a sockmap slot that does not exist (≥ 64)";
    ByteCountOutOfRange = "E0210", Error, "a byte count out of 1..=4294967295 for `for`/`cork`";
    ForOnNonVerdict = "E0211", Error, "`for N` on an action that is not a verdict";
    ReversedRange = "E0212", Error, "a reversed range";
    NotACondition = "E0213", Error, "a value used as a condition";
    WrongDeclaration = "E0214", Error, "`const` holding a set, or `set` holding one value";
    HostBitsSet = "E0215", Error, "a prefix with host bits set (with the corrected prefix)";
    BadComm = "E0216", Error, "a process name over 15 bytes or with a NUL";
    TwoFields = "E0217", Error, "two fields compared, or `in` a field";
    SizeOverflow = "E0218", Error, "a size with unit that overflows 64 bits";
    StartsWithNotApplicable = "E0219", Error, "`starts with` on a field that is not `payload` or `comm`";
    WholePayload = "E0220", Error, "the whole payload compared (take a slice or use `starts with`)";
    DiscardFor = "E0221", Error, "`discard for N`: a discard empties the message, which `for N` (apply_bytes) must not be combined with";
    EndsWithNotApplicable = "E0222", Error, "`ends with` on a field that is not a protocol string field";
    EmptyText = "E0223", Error, "an empty string compared with a protocol field (a field with a value is never empty)";
    ReplyNotString = "E0230", Error, "`reply` with a value that is not a string";
    EmptyReply = "E0231", Error, "`reply \"\"`: an empty reply (write `discard` to answer nothing)";
    ReplyTooLong = "E0232", Error, "a reply longer than 4096 bytes";
    ReplyFor = "E0233", Error, "`reply ... for N`: a reply rewrites the message, which `for N` (apply_bytes) must not be combined with";
    DefaultNotVerdict = "E0301", Error, "`default` without a verdict";
    SecondDefault = "E0302", Error, "a second `default`";
    DuplicateTestName = "E0303", Error, "two test cases with the same name";
    ExpectNotVerdict = "E0304", Error, "an `expect` that is not a verdict, or a redirect to a field slot";
    TwoExpects = "E0305", Error, "a test case with two `expect`s";
    NoExpect = "E0306", Error, "a test case without `expect`";
    TestFieldSetTwice = "E0307", Error, "a test case setting a field twice";
    TestFieldUnknown = "E0308", Error, "a test case setting something that is not a message field (an unknown name, or `port`/`ip`), with a did-you-mean";
    TestValueNotConstant = "E0309", Error, "a test case field given a value that is not a constant";
    TestValueWrongKind = "E0310", Error, "a test case field given a value of the wrong kind";
    TestIntTooLarge = "E0311", Error, "a test case integer larger than the field holds";
    TestCommTooLong = "E0312", Error, "a test case `comm` over 15 bytes or with a NUL";
    TestLenBelowPayload = "E0313", Error, "a test case `len` below the payload's length";
    TestIpv6InInet = "E0314", Error, "an IPv6 address in a test case with `family = inet`";
    VerifierBudget = "E0401", Error, "a policy the kernel's verifier would reject: its estimated processed instructions, program size or run of pending branches over the kernel's limits (names the rules that cost most)";
    NeverMatches = "W0001", Warning, "a rule that can never match: its condition is always false (constant, out of the field's range, an empty set, or integer tests of one field that exclude each other)";
    NeverReached = "W0002", Warning, "a rule (or the `default`) that is never reached: an earlier terminal rule matches every message";
    DefaultNotLast = "W0003", Warning, "`default` not the last rule (rules after it still come first)";
    EgressToPeer = "W0004", Warning, "`redirect to peer` without `ingress`: the bytes leave through the peer socket, back to the sender";
    TextNeverFits = "W0005", Warning, "a string a protocol field can never hold: longer than the parser's bound, or letters in the other case of a case-folded field";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tests compare codes with the documented strings: `assert_eq!(d.code, "E0202")`.
impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        for (i, a) in Code::ALL.iter().enumerate() {
            let s = a.as_str();
            let letter = match a.severity() {
                Severity::Error => b'E',
                Severity::Warning => b'W',
            };
            assert!(s.len() == 5 && s.as_bytes()[0] == letter, "{s}");
            assert!(s[1..].bytes().all(|b| b.is_ascii_digit()), "{s}");
            assert!(
                Code::ALL[i + 1..].iter().all(|b| b.as_str() != s),
                "{s} twice"
            );
        }
    }
}
