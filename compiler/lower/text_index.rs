//! Protocol-field rules as rule-index data. In a segment of terminal rules with one
//! decision (an indexed block, see `index`), the rules whose condition is one protocol
//! field compared with strings (`http.host == "..."`, `redis.key starts with "..."`,
//! `tls.sni ends with {...}`, or an `or` of such tests) are keys of a map per field and
//! operator, a *text group*, shaped as the field's set map (`sets::Shape::Text`: a HASH
//! of the value's length and folded bytes for `==`, an LPM trie of the strings' bits,
//! reversed for `ends with`), whose value is a rule's counter slot. A message costs one
//! copy of the value onto the stack and one lookup per group, whatever the number of
//! rules, and the smallest rule found over the block's lookups and its code rules
//! decides and is counted, as for the index's tuples (`Gen::keep_smaller_rule`).
//!
//! First match. A HASH key is one value: its entry holds the first rule with that
//! string. A trie finds the longest stored string the value starts (ends) with, but the
//! first rule may hold a shorter one: every value that starts with a string starts with
//! each of that string's prefixes, so the entry of a string holds the first rule over it
//! and every shorter string of the group it starts with, and one lookup finds the first
//! matching rule of the group.
//!
//! What stays code: strings the set maps do not key either (`sets::text_keyed`: longer
//! than `TEXT_KEY_MAX`, a NUL in a trie's string), the empty string, rules with other
//! conjuncts, and groups of fewer than `MIN_GROUP_KEYS` strings (code is as fast there,
//! the measurement behind `sets::MAP_ABOVE_TEXT`). A rule is data in all of its groups,
//! or code.

use crate::bpf::uapi::*;
use crate::bpf::{JmpOp, Reg, Size, Src};
use crate::fields::Text;
use crate::hir::{self, Cond, Decision, Test, TextOp};

use super::sets::{op_word, text_key, text_keyed, PlannedSet, SetMap, Shape};
use super::{Gen, STACK_TEXT_KEY};

/// A group is a map when it has at least this many strings: with fewer, its rules stay
/// code. The set maps' measurement (`sets::MAP_ABOVE_TEXT`: 143 ns as code against 170
/// ns as a map at 64 host names, 7,700 fewer instructions for the verifier) puts the
/// crossover for speed at about 128; the index's blocks start at 64 rules.
pub(super) const MIN_GROUP_KEYS: usize = super::index::MIN_INDEXED_RULES;
/// Groups per block at most: each costs a copy of the field's value (about 30
/// instructions a byte of the key) and a lookup per message.
pub(super) const MAX_GROUPS: usize = 8;
/// Groups per policy at most: each is a map, and the kernel refuses a program that uses
/// more than 64 (`MAX_USED_MAPS`, kernel/bpf/verifier.c), the others included.
pub(super) const MAX_POLICY_GROUPS: usize = 32;

/// One group of a block: rules of one field and operator, in one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TextGroup {
    pub field: Text,
    pub op: TextOp,
    /// The key's bytes after its length word (`sets::Shape::Text`).
    pub key_len: u32,
    /// Unique over the policy: tells the groups' set maps apart.
    pub group: u32,
    /// How many rules have a key in the group.
    pub rules: usize,
}

impl TextGroup {
    /// The shape of the group's set map.
    pub(super) fn shape(&self) -> Shape {
        Shape::TextRules {
            field: self.field,
            key_len: self.key_len,
            op: self.op,
            group: self.group,
        }
    }

    /// For listings: `http.host == (250 rules, 24-byte keys)`.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} {} ({} rules, {}-byte keys)",
            self.field.name(),
            op_word(self.op, "=="),
            self.rules,
            self.key_len
        )
    }
}

/// The text groups of a policy: their maps (set maps, filled by the runtime as the
/// others), and the rules they hold, which need no code and no set map of their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TextIndex {
    pub sets: Vec<PlannedSet>,
    /// Sorted.
    pub rules: Vec<usize>,
}

/// What `take` finds in a segment.
#[derive(Default)]
pub(super) struct Taken {
    pub groups: Vec<TextGroup>,
    pub sets: Vec<PlannedSet>,
    /// The rules in the groups, sorted.
    pub rules: Vec<usize>,
}

impl Taken {
    /// Adds the groups' maps and rules to the policy's (`text`, its blocks' so far, in
    /// rule order); returns the block's groups.
    pub(super) fn join(self, text: &mut TextIndex) -> Vec<TextGroup> {
        text.rules.extend(self.rules);
        text.sets.extend(self.sets);
        self.groups
    }
}

/// One string of a rule: field, operator, string.
type TextKey<'a> = (Text, TextOp, &'a [u8]);

/// The text groups of the rules `rest` (in order: a segment's rules that the index does
/// not key otherwise), which loses the rules they hold; `so_far`: the policy's groups
/// before. None in a block of `count`/`log` rules (`d` None).
pub(super) fn take(
    policy: &hir::Policy,
    rest: &mut Vec<usize>,
    d: Option<&Decision>,
    so_far: &TextIndex,
) -> Taken {
    if d.is_none() {
        return Taken::default();
    }
    let first_group = so_far.sets.len() as u32;
    let mut rules: Vec<(usize, Vec<TextKey>)> = rest
        .iter()
        .filter_map(|&r| Some((r, text_keys(&policy.rules.get(r)?.cond)?)))
        .collect();
    // The groups with enough strings, the largest first; rules with a string outside
    // them are code, which may leave another group too small: until nothing changes.
    let chosen = loop {
        let mut counts: Vec<((Text, TextOp), usize)> = Vec::new();
        for (_, keys) in &rules {
            for &(field, op, _) in keys {
                match counts.iter_mut().find(|(g, _)| *g == (field, op)) {
                    Some((_, n)) => *n += 1,
                    None => counts.push(((field, op), 1)),
                }
            }
        }
        counts.retain(|&(_, n)| n >= MIN_GROUP_KEYS);
        counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        counts.truncate(MAX_GROUPS.min(MAX_POLICY_GROUPS.saturating_sub(so_far.sets.len())));
        let chosen: Vec<(Text, TextOp)> = counts.into_iter().map(|(g, _)| g).collect();
        let before = rules.len();
        rules.retain(|(_, keys)| keys.iter().all(|&(f, o, _)| chosen.contains(&(f, o))));
        if rules.len() == before {
            break chosen;
        }
    };
    let mut taken = Taken {
        rules: rules.iter().map(|(r, _)| *r).collect(),
        ..Taken::default()
    };
    rest.retain(|r| taken.rules.binary_search(r).is_err());
    for (k, &(field, op)) in chosen.iter().enumerate() {
        // Each string with its rule's counter slot, in rule order.
        let strings: Vec<(&[u8], u32)> = rules
            .iter()
            .flat_map(|(r, keys)| {
                let slot = policy.rules[*r].counter as u32;
                keys.iter()
                    .filter(move |&&(f, o, _)| (f, o) == (field, op))
                    .map(move |&(_, _, s)| (s, slot))
            })
            .collect();
        let in_group = rules
            .iter()
            .filter(|(_, keys)| keys.iter().any(|&(f, o, _)| (f, o) == (field, op)))
            .count();
        let longest = strings
            .iter()
            .map(|(s, _)| s.len() as u32)
            .max()
            .unwrap_or(1);
        let key_len = longest.div_ceil(8).max(1) * 8;
        let group = TextGroup {
            field,
            op,
            key_len,
            group: first_group + k as u32,
            rules: in_group,
        };
        let map = group_map(field, op, key_len, &strings);
        taken.sets.push(PlannedSet {
            // For listings: the field and the operator.
            test: Test::Text {
                field,
                op,
                alts: Vec::new(),
            },
            shape: group.shape(),
            file: None,
            maps: [Some(map), None, None],
        });
        taken.groups.push(group);
    }
    taken
}

/// The strings of a rule whose condition is an `or` of tests of protocol fields with
/// strings a map keys; None for any other rule.
fn text_keys(cond: &Cond) -> Option<Vec<TextKey<'_>>> {
    fn walk<'a>(c: &'a Cond, out: &mut Vec<TextKey<'a>>) -> Option<()> {
        match c {
            Cond::Test(Test::Text { field, op, alts }) => {
                for a in alts {
                    // An empty string matches every value, which a trie of one
                    // lookup per value would need a key of length 0 for: code.
                    if a.is_empty() || !text_keyed(*op, a) {
                        return None;
                    }
                    out.push((*field, *op, a.as_slice()));
                }
                Some(())
            }
            Cond::Or(cs) => cs.iter().try_for_each(|c| walk(c, out)),
            _ => None,
        }
    }
    let mut out = Vec::new();
    walk(cond, &mut out)?;
    (!out.is_empty()).then_some(out)
}

/// The map of a group: `strings` (with their rules' counter slots, any order) as the
/// keys of the field's set map (`sets::text_key`), each with the first rule a value
/// with that key matches as its u32 value.
fn group_map(field: Text, op: TextOp, key_len: u32, strings: &[(&[u8], u32)]) -> SetMap {
    let mut entries: Vec<(Vec<u8>, u32)> = if op == TextOp::Eq {
        strings
            .iter()
            .map(|&(s, rule)| (text_key(field, s, key_len), rule))
            .collect()
    } else {
        // The trie's data: the string's bytes in the field's case, reversed for
        // `ends with`; sorted, a string comes right before the strings it is a
        // prefix of.
        let mut data: Vec<(Vec<u8>, u32)> = strings
            .iter()
            .map(|&(s, rule)| {
                let mut d = text_key(field, s, key_len);
                d.truncate(4 + s.len());
                d.drain(..4);
                if op == TextOp::EndsWith {
                    d.reverse();
                }
                (d, rule)
            })
            .collect();
        data.sort_unstable();
        data.dedup_by(|later, first| later.0 == first.0);
        // The first rule over each string and its prefixes in the group: the strings
        // on the stack are the prefixes of the current one, each with its first rule.
        let mut stack: Vec<(usize, u32)> = Vec::new();
        let mut firsts = Vec::with_capacity(data.len());
        for (i, (d, rule)) in data.iter().enumerate() {
            while stack
                .last()
                .is_some_and(|&(j, _)| !d.starts_with(&data[j].0))
            {
                stack.pop();
            }
            let first = stack.last().map_or(*rule, |&(_, r)| r.min(*rule));
            stack.push((i, first));
            firsts.push(first);
        }
        data.into_iter()
            .zip(firsts)
            .map(|((mut d, _), first)| {
                let bits = 8 * d.len() as u32;
                d.resize(key_len as usize, 0);
                let mut key = bits.to_ne_bytes().to_vec();
                key.extend(d);
                (key, first)
            })
            .collect()
    };
    // A key's first rule: the smallest slot (slots are in rule order).
    entries.sort_unstable();
    entries.dedup_by(|later, first| later.0 == first.0);
    let mut section = Vec::with_capacity(entries.len() * (4 + key_len as usize + 5));
    for (key, rule) in &entries {
        section.extend_from_slice(key);
        skpc_abi::push_set_value(&mut section, &rule.to_ne_bytes());
    }
    let trie = op != TextOp::Eq;
    SetMap {
        map_type: if trie {
            BPF_MAP_TYPE_LPM_TRIE
        } else {
            BPF_MAP_TYPE_HASH
        },
        key_size: 4 + key_len,
        value_size: 4,
        max_entries: entries.len().max(1) as u32,
        // The kernel refuses a trie that is not allocated on demand.
        flags: if trie { BPF_F_NO_PREALLOC } else { 0 },
        keys: section,
    }
}

impl Gen {
    /// The lookups of a block's text groups (after its tuples' lookups, see
    /// `indexed_block`): per group, the field's value as the key (`text_map_key`), one
    /// lookup, and the rule found kept in SLOT if smaller (with counters), or decided at
    /// once (without: every rule of the block has decision `d`).
    pub(super) fn text_index_lookups(&mut self, groups: &[TextGroup], d: &Decision) {
        for g in groups {
            let shape = g.shape();
            let map = self
                .sets
                .iter()
                .find(|(s, _)| s.shape == shape)
                .and_then(|(_, ids)| ids.buffers[0][0])
                .expect("lower_with plans a set map for every text group");
            let skip = self.label();
            self.text_map_key(g.field, g.op, g.key_len, skip, skip);
            self.map_lookup(map, STACK_TEXT_KEY);
            self.jmp64(JmpOp::Jeq, Reg::R0, Src::Imm(0), skip);
            if self.options.counters {
                self.ldx(Size::W, Reg::R1, Reg::R0, 0);
                self.keep_smaller_rule();
            } else {
                let tail = self.tail(d);
                self.goto(tail);
            }
            self.place(skip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;
    use crate::hir::Message;
    use crate::lower::index::plan;

    /// `n` rules `redis.key starts with "zN:"` no message of these tests matches.
    fn filler(n: usize) -> String {
        (0..n)
            .map(|i| format!("drop if redis.key starts with \"z{i}:\";\n"))
            .collect()
    }

    /// The entries of a group's map: key bytes and the rule each holds.
    fn entries(set: &PlannedSet) -> Vec<(Vec<u8>, u32)> {
        let m = set.maps[0].as_ref().expect("a map");
        let (keys, values) =
            skpc_abi::set_entries(&m.keys, m.key_size as usize, 4).expect("whole entries");
        keys.chunks(m.key_size as usize)
            .zip(values.chunks(4))
            .map(|(k, v)| (k.to_vec(), u32::from_ne_bytes([v[0], v[1], v[2], v[3]])))
            .collect()
    }

    /// A trie key: the string's bits, then its bytes padded to `key_len`.
    fn trie_key(s: &[u8], key_len: usize) -> Vec<u8> {
        let mut k = (8 * s.len() as u32).to_ne_bytes().to_vec();
        k.extend(s);
        k.resize(4 + key_len, 0);
        k
    }

    #[test]
    fn a_prefix_entry_holds_the_first_rule_over_it_and_its_shorter_prefixes() {
        let src = format!(
            "{}drop if redis.key starts with \"abc\";\n\
             drop if redis.key starts with \"ab\";\n\
             drop if redis.key starts with \"abcd\";\n\
             drop if redis.key starts with \"ab\";\n\
             drop if redis.key starts with \"ax\";\n",
            filler(64)
        );
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        let [b] = index.blocks.as_slice() else {
            panic!("{:?}", index.blocks)
        };
        assert_eq!((b.indexed, b.rest.len()), (69, 0));
        let [g] = b.text.as_slice() else {
            panic!("{:?}", b.text)
        };
        assert_eq!(
            (g.field, g.op, g.key_len, g.rules),
            (Text::RedisKey, TextOp::StartsWith, 8, 69)
        );
        let e = entries(&index.text.sets[0]);
        let rule_of = |s: &[u8]| e.iter().find(|(k, _)| *k == trie_key(s, 8)).map(|x| x.1);
        // A value that starts with "abcd" (rule 66) starts with "abc" (64) and "ab" (65)
        // too: 64 matches first. "ab" holds 65 (its second rule, 67, is later), and "ax"
        // only itself.
        assert_eq!(rule_of(b"abc"), Some(64));
        assert_eq!(rule_of(b"ab"), Some(65));
        assert_eq!(rule_of(b"abcd"), Some(64));
        assert_eq!(rule_of(b"ax"), Some(68));
        assert_eq!(e.len(), 64 + 4);
        assert!(index.indexed(66) && !index.indexed(69));
    }

    #[test]
    fn suffixes_are_reversed_and_equal_strings_keep_the_length_and_the_first_rule() {
        let hosts: String = (0..64)
            .map(|i| format!("drop if http.host == \"h{i}.example.com\";\n"))
            .collect();
        let suffixes: String = (0..64)
            .map(|i| format!("drop if tls.sni ends with \".d{i}.example\";\n"))
            .collect();
        let src = format!(
            "{hosts}{suffixes}drop if http.host == \"h3.example.com\";\n\
             drop if tls.sni ends with \"example\" or http.host == \"other\";\n"
        );
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        assert_eq!((b.indexed, b.rest.len()), (130, 0));
        let group = |op| {
            let k = b.text.iter().position(|g| g.op == op).expect("a group");
            (&b.text[k], entries(&index.text.sets[k]))
        };
        let (g, e) = group(TextOp::Eq);
        assert_eq!((g.field, g.key_len, g.rules), (Text::HttpHost, 16, 66));
        let mut want = 14u32.to_ne_bytes().to_vec();
        want.extend(b"h3.example.com\0\0");
        // Rule 128 has rule 3's key: the entry keeps 3.
        assert_eq!(e.iter().find(|(k, _)| *k == want).map(|x| x.1), Some(3));
        // The host in the field's case.
        let mut other = 5u32.to_ne_bytes().to_vec();
        other.extend(b"other\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(e.iter().find(|(k, _)| *k == other).map(|x| x.1), Some(129));
        let (g, e) = group(TextOp::EndsWith);
        assert_eq!((g.field, g.key_len, g.rules), (Text::TlsSni, 16, 65));
        let rule_of = |s: &[u8]| {
            let mut r = s.to_vec();
            r.reverse();
            e.iter().find(|(k, _)| *k == trie_key(&r, 16)).map(|x| x.1)
        };
        assert_eq!(rule_of(b".d7.example"), Some(71));
        assert_eq!(rule_of(b"example"), Some(129));
    }

    #[test]
    fn small_groups_other_conjuncts_and_unkeyed_strings_stay_code() {
        let long = "x".repeat(super::super::sets::TEXT_KEY_MAX as usize + 1);
        let src = format!(
            "{}drop if pg.user == \"a\";\n\
             drop if pg.user == \"b\" or redis.key starts with \"q\";\n\
             drop if redis.key == \"k\" and len > 3;\n\
             drop if redis.key starts with \"{long}\";\n\
             drop if redis.key starts with \"k\\0\";\n",
            filler(64)
        );
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        // `pg.user` has two strings: code, and with it rule 65's `redis.key` string.
        assert_eq!(b.rest, vec![64, 65, 66, 67, 68]);
        assert_eq!(b.text.len(), 1);
        // Fewer than MIN_GROUP_KEYS strings: no block at all.
        let p = check(&filler(MIN_GROUP_KEYS - 1)).0.expect("checks");
        assert!(plan(&p).blocks.is_empty());
        // A block of count rules takes none.
        let counts: String = (0..64)
            .map(|i| format!("count c if pg.user == \"u{i}\";\n"))
            .collect();
        let p = check(&counts).0.expect("checks");
        assert!(plan(&p).blocks.is_empty());
    }

    #[test]
    fn a_policy_has_at_most_max_policy_groups_maps() {
        // Segments of 64 host rules, `drop` and `pass` in turn: a group each, until the
        // policy has MAX_POLICY_GROUPS of them; the later segments are code.
        let src: String = (0..MAX_POLICY_GROUPS + 3)
            .flat_map(|k| {
                let action = if k % 2 == 0 { "drop" } else { "pass" };
                (0..64).map(move |i| format!("{action} if http.host == \"h{i}.s{k}\";\n"))
            })
            .collect();
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        assert_eq!(index.blocks.len(), MAX_POLICY_GROUPS);
        assert_eq!(index.text.sets.len(), MAX_POLICY_GROUPS);
        assert_eq!(index.text.rules.len(), 64 * MAX_POLICY_GROUPS);
        let c = crate::compile::compile("t.skp", &src).expect("compiles");
        let sets = c.lowered.maps.iter();
        let sets = sets.filter(|m| matches!(m.kind, crate::lower::MapKind::Set { .. }));
        assert_eq!(sets.count(), MAX_POLICY_GROUPS);
    }

    fn http(host: &str) -> Message {
        let payload = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
        Message {
            len: payload.len() as u32,
            payload,
            ..Message::default()
        }
    }

    fn redis(key: &str) -> Message {
        let payload = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes();
        Message {
            len: payload.len() as u32,
            payload,
            ..Message::default()
        }
    }

    #[test]
    fn the_vm_and_the_evaluator_agree_on_the_first_matching_rule_and_its_counter() {
        let hosts: String = (0..64)
            .map(|i| format!("drop if http.host == \"h{i}.example.com\";\n"))
            .collect();
        let src = format!(
            "{}{hosts}drop if redis.key starts with \"abc\";\n\
             drop if redis.key starts with \"ab\";\n\
             drop if redis.key == \"abcd\";\n\
             drop if http.host == \"h9.example.com\" and len > 1000;\n\
             drop if redis.key starts with \"abcde\";\n\
             drop if redis.key starts with \"z1\";\n\
             pass if http.host == \"h1.example.com\";\n\
             default pass;\n",
            filler(64)
        );
        for counters in [true, false] {
            let c = crate::compile::compile_with(
                "t.skp",
                &src,
                crate::lower::Options {
                    counters,
                    ..crate::lower::Options::default()
                },
            )
            .expect("compiles");
            assert!(
                c.lowered.index_summary[0].contains("redis.key starts with (68 rules"),
                "{:?}",
                c.lowered.index_summary
            );
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            for (msg, rule) in [
                (http("h5.example.com"), Some(69)),
                (http("H5.Example.COM"), Some(69)),
                (http("h5.example.co"), None),
                (http("h64.example.com"), None),
                (http("h1.example.com"), Some(65)),
                (redis("abcdef"), Some(128)),
                (redis("abd"), Some(129)),
                (redis("abcd"), Some(128)),
                (redis("ABC"), None),
                (redis("a"), None),
                (redis("z1:x"), Some(1)),
                (redis("z10:x"), Some(10)),
                (redis("z1x"), Some(133)),
            ] {
                super::super::index::tests::decides_and_counts(&c, &vm, &msg, rule, counters);
            }
        }
    }
}
