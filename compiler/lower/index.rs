//! Indexed rule blocks: many rules of exact tests with one decision become entries of
//! a kernel HASH map (`skpc_abi::INDEX_NAME`), looked up once per *tuple*, so that a
//! message costs the same whether the block has 100 rules or 100,000.
//!
//! This is tuple space search (Srinivasan et al., 1999), the classifier of Open vSwitch:
//! every `and` of port and address tests (one DNF term of a rule) is an exact key over a
//! fixed set of fields with fixed prefix lengths, its *tuple*. A message is looked up
//! once per tuple of the block, with its own field values masked to the tuple's prefix
//! lengths. Each entry holds the first rule that has the key, and the smallest rule
//! index found over all tuples is the rule that decides: that keeps first-match order
//! and per-rule counters exact. A HASH lookup is inlined by the verifier; an LPM trie
//! lookup is a call that walks the trie, and cannot key a port and a prefix together.
//!
//! The rules of a block need not be consecutive: within a run of terminal rules with one
//! decision (a *segment*) the verdict is the same whichever rule matches first, so the
//! rules that can be indexed are indexed, and the others (`rest`) are compiled to code in
//! their order; the smallest matching index over both decides and counts. Rules of one
//! protocol field and strings are looked up in set maps of their own (`text_index`).
//!
//! Blocks of several decisions (`mixed_block`). Where rules of different decisions and
//! `count`/`log` rules alternate, so that no segment has `MIN_INDEXED_RULES` rules, the
//! rules between the blocks of one kind form *mixed* blocks: pieces without an
//! unconditional rule, of at most `MAX_BLOCK_DECISIONS` decisions, taken when they have
//! at most one rule of code per `MAX_MIXED_CODE_SHARE` indexed rules. Their terminal rules are looked up in tuples of their own,
//! each slot's `then` the number of its rule's decision in the block (`Mixed`); a tuple
//! whose rules share a decision knows it without reading the slot, and a port tuple of
//! one decision stays an array slot. The program keeps the smallest
//! `rule << DECISION_BITS | decision` found in one register, without a branch, so that
//! one minimum gives both the rule that decides and its decision; the terminal rules of
//! code lower it when they match. Their `count`/`log` rules have tuples of their own,
//! looked up next, as in a block of them alone, except that a rule acts only if it comes
//! before the best terminal rule (a branch-free compare with the register); then a few
//! compares on the decision bits send the rule to its decision's tail, which counts it
//! (`lower::mixed`). First-match order and every counter stay exact.
//!
//! Key words are the context words as a 32-bit load sees them (addresses network order,
//! `remote_port` in the upper half), masked to the prefix; payload slices
//! (`payload[o..o+n] == "..."`, `payload starts with`, `payload[i] == b`) as little-endian
//! words of their bytes, zero-padded; and the sender's `uid`, `gid`, `pid` (a word each),
//! `cgroup` (two) and exact `comm` (four: the 16 bytes `bpf_get_current_comm` writes),
//! which the program fetches once per block before the lookups (the helpers clobber
//! r1-r5). The program only loads, masks and stores, and the entries are computed here,
//! once. A message too short for a slice skips that tuple's lookup.
//!
//! A rule is indexed on its keyable conjuncts; range tests of one more field that fits a
//! u32 and the program reads cheaply (`len`, `uid`, `gid`, `pid`, `local.port`,
//! `remote.port`: `index_keys`) are its *residual*, one range checked after the lookup
//! against the entry's slot for the rule (the slot holds the rule and its range,
//! `skpc_abi::IndexSlot`, whose `len_min`/`len_max` hold the range of whichever field).
//! A tuple is its components and its residual field (`Tuple::residual`): all slots of
//! its entries compare that one field, so `port == 80 and uid > 1000` and `port == 80
//! and len > 100` are keyed in two tuples of one port. An entry has `IndexEntry::SLOTS`
//! slots in rule order, so rules with one key and different residuals are tried in
//! order and the first whose range holds is the key's first match. A key with more
//! rules has more entries, *pages*: page `p` has the tuple id `id | p << PAGE_SHIFT`,
//! and the program looks the next page up only when the key has it (a fixed value size
//! keeps the lookup's code fixed; a tuple's code has as many pages as its fullest key).
//! A rule that would need a slot past `MAX_PAGES` pages stays code (in `rest`). A rule
//! without a residual ends a key's slots (the rules after it with that key are dead).
//! Conjuncts shared by many rules (`remote.ip in lan`) are keyed as a cross product.
//!
//! A tuple of one port, or of one or two payload bytes, without residuals, is not hashed:
//! its key is a slot of the port array (`skpc_abi::INDEX_PORTS_NAME`) holding the first
//! rule with that value (plus one).
//!
//! A hash tuple has a *gate*: 65536 slots of the port array, one per value of 16 bits of
//! one of its components (the port; else the low 16 bits of a uid, gid, pid or cgroup;
//! else the first two bytes of a payload slice; else of a comm; else the first 16 bits
//! of an address, masked to its prefix), each holding the first rule
//! whose key has that value (plus one). A message whose value no key of the tuple has
//! skips the hash lookup for an inlined array load: most messages match no rule.

use std::collections::{BTreeMap, HashMap};

use skpc_abi::{IndexEntry, IndexSlot, PortEntry, PORTS_PER_TUPLE};

use crate::hir::{self, Action, Cond, Decision, IntField};

#[cfg(test)]
use super::index_keys::comm_words;
pub(super) use super::index_keys::{gate_mask, gate_value, mask_word, Component};
use super::index_keys::{gate_rank, rule_keys, settle, RuleKey, ANY_LEN};
use super::text_index::{self, TextGroup, TextIndex};

/// A segment is indexed when it has at least this many indexable rules. Below it, code
/// (a binary search, see `runs`) is as fast as the lookups and needs no map.
pub(super) const MIN_INDEXED_RULES: usize = 64;
/// Tuples per block at most: each costs one map lookup per message. 48: the 32 offsets of
/// `payload[i] == b` rules, with the ports, addresses and slices of a mixed policy (the
/// budget shape `mixed_rules` has 40).
pub(super) const MAX_TUPLES: usize = 48;
/// Hashed tuples per block at most (the others are array slots: a port or one or two
/// payload bytes, one inlined array load). A hashed lookup's ways through (gate, pages,
/// residuals) cost the verifier more than `budget` counts past 16 of them in a block.
const MAX_HASHED_TUPLES: usize = 16;
/// Entries (pages of `IndexEntry::SLOTS` rules) one key may have: a message looks up
/// one more per page its key has.
pub(super) const MAX_PAGES: usize = 16;
/// Where the page number goes in a key's first word (the tuple ids stay below it).
pub(super) const PAGE_SHIFT: u32 = 24;
/// Rules one key may have.
const MAX_KEY_RULES: usize = IndexEntry::SLOTS * MAX_PAGES;
/// In a block of several decisions the best rule is kept as `rule << DECISION_BITS |
/// decision` (`lookup`): one branch-free minimum gives both.
pub(super) const DECISION_BITS: u32 = 3;
/// Decisions one such block may have; rules with others stay code.
const MAX_BLOCK_DECISIONS: usize = 1 << DECISION_BITS;
/// Such a block has at most one rule of code per this many indexed rules.
const MAX_MIXED_CODE_SHARE: usize = 4;

/// One lookup: the tuple id (the first key word) and the fields that fill the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tuple {
    pub id: u32,
    pub components: Vec<Component>,
    /// A tuple of one port is looked up in the port array (`skpc_abi::INDEX_PORTS_NAME`)
    /// at `slot * PORTS_PER_TUPLE + port`, not in the hash map.
    pub port_slot: Option<u32>,
    /// The most rules a key of the tuple has (the lookup checks this many slots, in
    /// pages of `IndexEntry::SLOTS`).
    pub slots: usize,
    /// The field whose range some slot of the tuple has to check (the slots'
    /// `len_min`/`len_max` hold its range), if any. A tuple is its components and this
    /// field (`len` when None): rules of one key and different residual fields are in
    /// different tuples.
    pub residual: Option<IntField>,
    /// A hash tuple's gate: the component whose `gate_value` selects the slot, and
    /// the tuple's port-array slot range (non-zero where some key has that value).
    pub gate: Option<(Component, u32)>,
    /// In a block of several decisions (`Mixed`): the number of the decision every rule
    /// of the tuple takes, if they share one (the lookup adds it to the rule without
    /// reading the slot's `then`, and a port tuple can be an array slot).
    pub decision: Option<u32>,
}

impl Tuple {
    /// Whether keys of `components` with residual field `field` go in this tuple.
    fn holds(&self, components: &[Component], field: IntField) -> bool {
        self.components == components && self.residual.unwrap_or(IntField::Len) == field
    }
}

/// What tells tuples apart: the components and the residual field (`Tuple::residual`).
pub(super) type Shape = (Vec<Component>, IntField);

/// The shape of a key's tuple.
fn shape_of(k: &RuleKey) -> (&[Component], IntField) {
    (&k.0, k.2 .0)
}

/// A segment whose indexable rules are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Block {
    pub first: usize,
    pub last: usize,
    /// The segment's decision; None for a run of `count`/`log` rules, where every
    /// matching rule acts (see `effects_fit`), and for a block of several (`mixed`).
    pub decision: Option<Decision>,
    pub tuples: Vec<Tuple>,
    /// The rules of `first..=last` that are not in the index, in order.
    pub rest: Vec<usize>,
    /// How many rules of the segment are in the index.
    pub indexed: usize,
    /// The groups of protocol-field rules, looked up after the tuples (`text_index`).
    pub text: Vec<TextGroup>,
    /// A block of rules of several decisions and `count`/`log` rules (`decision` is
    /// None, `tuples` are those of the terminal rules).
    pub mixed: Option<Mixed>,
}

/// What a block of several decisions adds (see `mixed_block`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mixed {
    /// The decisions of its indexed terminal rules: a terminal slot's `then` is the
    /// number of its rule's decision here (below `1 << DECISION_BITS`).
    pub decisions: Vec<Decision>,
    /// The tuples of its `count`/`log` rules, looked up after the terminal ones: a
    /// rule acts if it is before the best terminal rule found.
    pub effects: Vec<Tuple>,
}

impl Block {
    /// One line for listings, e.g. `lines 1-1000: 1000 rules in the index, 0 as code;
    /// lookups: local.port | remote.ip/32 | local.port+remote.ip/28`.
    pub(super) fn describe(&self, policy: &hir::Policy) -> String {
        let line = |r: usize| policy.rules.get(r).map_or(0, |r| r.line);
        let effects = self.mixed.iter().flat_map(|m| &m.effects);
        let mut tuples: Vec<String> = self
            .tuples
            .iter()
            .chain(effects)
            .map(|t| {
                let parts: Vec<String> = t.components.iter().map(|c| c.describe()).collect();
                let mut notes = Vec::new();
                if t.port_slot.is_some() {
                    notes.push("array".to_string());
                }
                if let Some((c, _)) = t.gate {
                    notes.push(format!("{} gate", c.describe()));
                }
                if let Some(f) = t.residual {
                    notes.push(format!("{} checked", f.name()));
                }
                if t.slots > 1 {
                    notes.push(format!("{} rules per key", t.slots));
                }
                let place = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                };
                format!("#{} {}{place}", t.id, parts.join("+"))
            })
            .collect();
        tuples.extend(self.text.iter().map(TextGroup::describe));
        format!(
            "lines {}-{}: {} rules in the index, {} as code{}; lookups: {}",
            line(self.first),
            line(self.last),
            self.indexed,
            self.rest.len(),
            match (&self.decision, &self.mixed) {
                (_, Some(m)) => format!(
                    " ({} decisions and count/log: the first matching terminal rule decides, \
                     the count/log rules before it act)",
                    m.decisions.len()
                ),
                (None, None) => " (count/log: every matching rule acts)".to_string(),
                (Some(_), None) => String::new(),
            },
            tuples.join(" | ")
        )
    }
}

/// What indexing a policy gives: the blocks, and every entry of the map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Index {
    pub blocks: Vec<Block>,
    /// The hash map's entries, sorted by key.
    pub entries: Vec<IndexEntry>,
    /// The port array's non-zero slots, sorted by slot.
    pub port_entries: Vec<PortEntry>,
    /// Port tuples over all blocks (the port array has this many times 65536 slots).
    pub port_tuples: u32,
    /// The blocks' protocol-field rules (`text_index`).
    pub text: TextIndex,
}

impl Index {
    /// Whether rule `r` is data of the index (keyed in a block, or in a block's text
    /// group): its tests are never code, so a large set it tests needs no map of its own.
    pub(super) fn indexed(&self, r: usize) -> bool {
        let at = self.blocks.partition_point(|b| b.last < r);
        self.blocks
            .get(at)
            .is_some_and(|b| b.first <= r && b.rest.binary_search(&r).is_err())
    }
}

/// Key words of a key without its tuple id.
type KeyWords = [u32; IndexEntry::KEY_WORDS];

/// Finds the indexed blocks of a policy. Segments are maximal runs of terminal rules with
/// one decision, or of non-terminal (`count`, `log`) rules; those with at least
/// `MIN_INDEXED_RULES` indexable rules become blocks.
pub(super) fn plan(policy: &hir::Policy) -> Index {
    let rules = &policy.rules;
    let mut index = Index::default();
    // Entries of all blocks, keyed by the key words: the smallest rule wins.
    // A hash: the entries are sorted once at the end (a tree of a million 36-byte keys
    // cost a tenth of `skpc build` in searches).
    let mut entries: HashMap<KeyWords, Vec<IndexSlot>> = HashMap::new();
    let mut ports: BTreeMap<u32, u32> = BTreeMap::new();
    let mut ids = Ids {
        next_tuple: 1,
        next_port_slot: 0,
        text: TextIndex::default(),
    };
    let mut i = 0;
    // Where the rules that no block of one kind holds start.
    let mut stretch = 0;
    while i < rules.len() {
        let d = match &rules[i].action {
            Action::Decide(d) => Some(d),
            Action::Count { .. } | Action::Log => None,
        };
        let mut j = i + 1;
        while j < rules.len()
            && match d {
                Some(_) => rules[j].action == rules[i].action,
                None => !rules[j].action.is_terminal(),
            }
        {
            j += 1;
        }
        // A cheap count first: most segments of most policies are short.
        if j - i >= MIN_INDEXED_RULES {
            if let Some(block) = block(policy, i, j, d, &mut ids, &mut entries, &mut ports) {
                let mut places = (&mut ids, &mut entries, &mut ports);
                mixed_blocks(policy, stretch, i, &mut places, &mut index.blocks);
                index.blocks.push(block);
                stretch = j;
            }
        }
        i = j;
    }
    let mut places = (&mut ids, &mut entries, &mut ports);
    mixed_blocks(policy, stretch, rules.len(), &mut places, &mut index.blocks);
    index.entries = entries
        .into_iter()
        .flat_map(|(key, used)| {
            let pages: Vec<Vec<IndexSlot>> =
                used.chunks(IndexEntry::SLOTS).map(<[_]>::to_vec).collect();
            pages.into_iter().enumerate().map(move |(p, page)| {
                let mut slots = [IndexSlot::EMPTY; IndexEntry::SLOTS];
                slots[..page.len()].copy_from_slice(&page);
                let mut key = key;
                key[0] |= (p as u32) << PAGE_SHIFT;
                IndexEntry { key, slots }
            })
        })
        .collect();
    index.entries.sort_unstable_by_key(|e| e.key);
    index.port_entries = ports
        .into_iter()
        .map(|(slot, rule)| PortEntry {
            slot,
            value: rule + 1,
        })
        .collect();
    index.port_tuples = ids.next_port_slot;
    index.text = ids.text;
    index
}

/// Tuple ids, port-array slots and text groups handed out so far (unique over the policy).
struct Ids {
    next_tuple: u32,
    next_port_slot: u32,
    text: TextIndex,
}

/// The block of segment `first..end`, if enough of its rules can be indexed. `d`: the
/// segment's decision; None for a run of `count`/`log` rules.
fn block(
    policy: &hir::Policy,
    first: usize,
    end: usize,
    d: Option<&Decision>,
    ids: &mut Ids,
    entries: &mut HashMap<KeyWords, Vec<IndexSlot>>,
    ports: &mut BTreeMap<u32, u32>,
) -> Option<Block> {
    let (mut keyed, mut rest, mut tuples) = keyed_rules(policy, first, end, d, false);
    if d.is_none() && !logs_in_order(policy, &keyed, &rest) {
        // The `log` rules as code, in rule order, after the lookups.
        (keyed, rest, tuples) = keyed_rules(policy, first, end, d, true);
    }
    // Rules of protocol fields, out of `rest` (`text_index`).
    let taken = text_index::take(policy, &mut rest, d, &ids.text);
    let indexable = keyed.len() + taken.rules.len();
    // The tuple ids must stay below the page bits (16 per 64 rules: never, in practice).
    if indexable < MIN_INDEXED_RULES || ids.next_tuple + (MAX_TUPLES as u32) >= 1 << PAGE_SHIFT {
        return None;
    }
    let terminal = d.is_some();
    let mut tuples = new_tuples(tuples, &keyed, terminal, None, ids);
    let then = |r: usize| match policy.rules[r].action {
        Action::Decide(_) => IndexSlot::NOTHING,
        Action::Count { counter } => counter as u32,
        Action::Log => IndexSlot::LOG,
    };
    let overflow = fill(policy, &keyed, &mut tuples, terminal, &then, entries, ports);
    let indexed = keyed.len() - overflow.len() + taken.rules.len();
    rest.extend(overflow);
    rest.sort_unstable();
    Some(Block {
        first,
        last: end - 1,
        decision: d.cloned(),
        tuples,
        rest,
        indexed,
        text: taken.join(&mut ids.text),
        mixed: None,
    })
}

/// Where the blocks being planned put what they add: the ids, the entries, the ports.
type Places<'a> = (
    &'a mut Ids,
    &'a mut HashMap<KeyWords, Vec<IndexSlot>>,
    &'a mut BTreeMap<u32, u32>,
);

/// The blocks of several decisions (`mixed_block`) in rules `first..end`, which no
/// block of one kind holds: pieces between unconditional rules (which end every block)
/// with at most `MAX_BLOCK_DECISIONS` decisions each.
fn mixed_blocks(
    policy: &hir::Policy,
    first: usize,
    end: usize,
    places: &mut Places,
    blocks: &mut Vec<Block>,
) {
    let mut start = first;
    let mut decisions: Vec<&Decision> = Vec::new();
    for r in first..=end {
        let rule = policy.rules.get(r).filter(|_| r < end);
        let cut = match rule {
            None => true,
            Some(rule) if rule.cond == Cond::Const(true) => true,
            Some(rule) => match &rule.action {
                Action::Decide(d) if !decisions.contains(&d) => {
                    if decisions.len() == MAX_BLOCK_DECISIONS {
                        true
                    } else {
                        decisions.push(d);
                        false
                    }
                }
                _ => false,
            },
        };
        if !cut {
            continue;
        }
        if r - start >= MIN_INDEXED_RULES {
            if let Some(b) = mixed_block(policy, start, r, places) {
                blocks.push(b);
            }
        }
        // An unconditional rule is code; a rule of one decision too many starts a block.
        decisions.clear();
        start = r;
        if let Some(rule) = rule {
            if rule.cond == Cond::Const(true) {
                start = r + 1;
            } else if let Action::Decide(d) = &rule.action {
                decisions.push(d);
            }
        }
    }
}

/// The block of rules `first..end` of several decisions and `count`/`log` rules (none
/// unconditional, at most `MAX_BLOCK_DECISIONS` decisions), if most of them can be
/// indexed. Its terminal rules are looked up in tuples of their own, each slot's `then`
/// the number of the rule's decision; its `count`/`log` rules in others, as in a block
/// of them alone (`Mixed`).
fn mixed_block(
    policy: &hir::Policy,
    first: usize,
    end: usize,
    (ids, entries, ports): &mut Places,
) -> Option<Block> {
    // The tuple ids stay below the page bits; `rule << DECISION_BITS | decision` stays
    // below 2^31, the lookup's "no rule" (never, in practice: a program of 2^28 rules).
    if ids.next_tuple + (MAX_TUPLES as u32) >= 1 << PAGE_SHIFT
        || policy.counters.len() >= 1 << (31 - DECISION_BITS)
    {
        return None;
    }
    let mut decisions: Vec<Decision> = Vec::new();
    for r in first..end {
        if let Action::Decide(d) = &policy.rules[r].action {
            if !decisions.contains(d) {
                decisions.push(d.clone());
            }
        }
    }
    // `mixed_blocks` cuts the pieces so: every terminal rule's decision has a number.
    if decisions.len() > MAX_BLOCK_DECISIONS {
        return None;
    }
    let terminal = (first..end).filter(|&r| policy.rules[r].action.is_terminal());
    let room = (MAX_TUPLES, MAX_HASHED_TUPLES);
    let ((tk, mut rest, tt), hashed) = keyed_among(policy, terminal, true, false, room);
    let effects: Vec<usize> = (first..end)
        .filter(|&r| !policy.rules[r].action.is_terminal())
        .collect();
    let left = (MAX_TUPLES - tt.len(), MAX_HASHED_TUPLES - hashed);
    let ((mut ek, mut erest, mut et), _) =
        keyed_among(policy, effects.iter().copied(), false, false, left);
    if !logs_in_order(policy, &ek, &erest) {
        ((ek, erest, et), _) = keyed_among(policy, effects.iter().copied(), false, true, left);
    }
    rest.extend(erest);
    let keyed = tk.len() + ek.len();
    // Rules of code cost more in such a block than outside it: a terminal one that
    // matches goes on to the `count`/`log` rules, with the state its tests left, and
    // the verifier walks them once more for each (a random policy with 50 rules of code
    // in a block of 136: 57,168 processed instead of 12,882 as code). At most one in
    // `MAX_MIXED_CODE_SHARE` indexed rules.
    if keyed < MIN_INDEXED_RULES || rest.len() * MAX_MIXED_CODE_SHARE > keyed {
        return None;
    }
    let decision_of = |r: usize| match &policy.rules[r].action {
        Action::Decide(d) => decisions.iter().position(|x| x == d).unwrap_or(0) as u32,
        _ => IndexSlot::NOTHING,
    };
    let mut tuples = new_tuples(tt, &tk, true, Some(&decision_of), ids);
    let mut etuples = new_tuples(et, &ek, false, None, ids);
    let mut overflow = fill(policy, &tk, &mut tuples, true, &decision_of, entries, ports);
    let then = |r: usize| match policy.rules[r].action {
        Action::Count { counter } => counter as u32,
        _ => IndexSlot::LOG,
    };
    overflow.extend(fill(
        policy,
        &ek,
        &mut etuples,
        false,
        &then,
        entries,
        ports,
    ));
    let indexed = keyed - overflow.len();
    rest.extend(overflow);
    rest.sort_unstable();
    Some(Block {
        first,
        last: end - 1,
        decision: None,
        tuples,
        rest,
        indexed,
        text: Vec::new(),
        mixed: Some(Mixed {
            decisions,
            effects: etuples,
        }),
    })
}

/// The tuples of `components` (new ids, ports slots and gates) for the `keyed` rules
/// that use them: `terminal` rules (one of a key's rules acts) or `count`/`log` rules
/// (all of them do). `decision_of`: in a block of several decisions (`Mixed`), a
/// terminal rule's decision; a tuple of one port is an array slot only if its rules
/// share one, which the lookup then knows without reading a slot.
fn new_tuples(
    shapes: Vec<Shape>,
    keyed: &[(usize, Vec<RuleKey>)],
    terminal: bool,
    decision_of: Option<&dyn Fn(usize) -> u32>,
    ids: &mut Ids,
) -> Vec<Tuple> {
    let has_residual = |shape: &Shape| {
        keyed
            .iter()
            .flat_map(|(_, keys)| keys)
            .any(|k| shape_of(k) == (&shape.0[..], shape.1) && k.2 .1 != ANY_LEN)
    };
    // The decision of every rule of each tuple, if they share one.
    let shared = |shape: &Shape| {
        let decision_of = decision_of?;
        let mut of = keyed
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| shape_of(k) == (&shape.0[..], shape.1)))
            .map(|(r, _)| decision_of(*r));
        let first = of.next()?;
        of.all(|d| d == first).then_some(first)
    };
    shapes
        .into_iter()
        .map(|shape| {
            let id = ids.next_tuple;
            ids.next_tuple += 1;
            // `settle` gives a field other than `len` only to keys of a tuple that has
            // a residual on it.
            let residual = has_residual(&shape).then_some(shape.1);
            let decision = if terminal { shared(&shape) } else { None };
            let components = shape.0;
            let several = decision_of.is_some();
            // The port array holds a rule per port (or per value of one or two payload
            // bytes), no residual; in a run of `count` and `log` rules a key may have
            // several.
            let port_slot = (terminal
                && residual.is_none()
                && (!several || decision.is_some())
                && matches!(
                    components.as_slice(),
                    [Component::LocalPort]
                        | [Component::RemotePort]
                        | [Component::Payload { len: 1 | 2, .. }]
                ))
            .then(|| {
                ids.next_port_slot += 1;
                ids.next_port_slot - 1
            });
            let gated = components
                .iter()
                .copied()
                .filter(|&c| gate_rank(c) > 0)
                .max_by_key(|&c| gate_rank(c));
            let gate = match (port_slot, gated) {
                (None, Some(c)) => {
                    ids.next_port_slot += 1;
                    Some((c, ids.next_port_slot - 1))
                }
                _ => None,
            };
            Tuple {
                id,
                components,
                port_slot,
                slots: 1,
                residual,
                gate,
                decision,
            }
        })
        .collect()
}

/// Adds the keys of the `keyed` rules to `entries` (and `ports`) in the slots of
/// `tuples`, with `then` of each rule in its slots. Returns the rules that stay code:
/// a key of theirs has no slot left.
fn fill(
    policy: &hir::Policy,
    keyed: &[(usize, Vec<RuleKey>)],
    tuples: &mut [Tuple],
    terminal: bool,
    then: &dyn Fn(usize) -> u32,
    entries: &mut HashMap<KeyWords, Vec<IndexSlot>>,
    ports: &mut BTreeMap<u32, u32>,
) -> Vec<usize> {
    let mut overflow = Vec::new();
    for (r, keys) in keyed {
        let rule = policy.rules[*r].counter as u32;
        let then = then(*r);
        if !terminal {
            // Every matching rule acts: all of its keys get a slot, or none does (it
            // stays code); no slot covers another.
            let full = |words: &Vec<u32>, (components, field): (&[Component], IntField)| {
                let Some(t) = tuples.iter().find(|t| t.holds(components, field)) else {
                    return true;
                };
                entries
                    .get(&key_of(t.id, words))
                    .is_some_and(|slots| slots.len() == MAX_KEY_RULES)
            };
            if keys.iter().any(|k| full(&k.1, shape_of(k))) {
                overflow.push(*r);
                continue;
            }
        }
        let mut fits = true;
        for (components, words, (field, len)) in keys {
            let Some(tuple) = tuples.iter_mut().find(|t| t.holds(components, *field)) else {
                continue; // every key's tuple was added above
            };
            let port_of = |c: Component| {
                let at: usize = components
                    .iter()
                    .take_while(|&&x| x != c)
                    .map(|x| x.words())
                    .sum();
                gate_value(c, words[at])
            };
            let mut first_in_slot = |slot: u32, port: u32| {
                ports
                    .entry(slot * PORTS_PER_TUPLE + port)
                    .and_modify(|e| *e = (*e).min(rule))
                    .or_insert(rule);
            };
            if let Some(slot) = tuple.port_slot {
                first_in_slot(slot, port_of(components[0]));
                continue;
            }
            if let Some((c, slot)) = tuple.gate {
                first_in_slot(slot, port_of(c));
            }
            let slots = entries.entry(key_of(tuple.id, words)).or_default();
            if terminal
                && slots
                    .iter()
                    .any(|s| s.len_min <= len.0 && len.1 <= s.len_max)
            {
                continue; // an earlier slot matches whenever this one would
            }
            if slots.len() == MAX_KEY_RULES {
                fits = false; // the rule stays code; its other keys are still true
                continue;
            }
            slots.push(IndexSlot {
                rule,
                len_min: len.0,
                len_max: len.1,
                then,
            });
            tuple.slots = tuple.slots.max(slots.len());
        }
        if !fits {
            overflow.push(*r);
        }
    }
    overflow
}

/// The rules of segment `first..end` that can be keyed, with their keys, the others
/// (`rest`, in order), and the tuples of the keys (at most MAX_TUPLES, in order of first
/// use). In a run of `count`/`log` rules (`d` None) only rules that act once through the
/// lookups are keyed (`acts_once`), and with `logs_as_code` no `log` rule is.
type Keyed = (Vec<(usize, Vec<RuleKey>)>, Vec<usize>, Vec<Shape>);
fn keyed_rules(
    policy: &hir::Policy,
    first: usize,
    end: usize,
    d: Option<&Decision>,
    logs_as_code: bool,
) -> Keyed {
    let room = (MAX_TUPLES, MAX_HASHED_TUPLES);
    keyed_among(policy, first..end, d.is_some(), logs_as_code, room).0
}

/// `keyed_rules` of the rules `rules` (in order), all `terminal` or all `count`/`log`,
/// with at most `room.0` tuples of which at most `room.1` hashed (`MAX_HASHED_TUPLES`);
/// also how many are hashed. A tuple is an array slot (`new_tuples`) while its rules are
/// terminal, of one decision, without residual and its key one port or one or two
/// payload bytes.
fn keyed_among(
    policy: &hir::Policy,
    rules: impl Iterator<Item = usize>,
    terminal: bool,
    logs_as_code: bool,
    room: (usize, usize),
) -> (Keyed, usize) {
    let mut keyed: Vec<(usize, Vec<RuleKey>)> = Vec::new();
    let mut rest = Vec::new();
    let mut tuples: Vec<Shape> = Vec::new();
    // Per tuple: hashed, or the action of its rules (an array slot so far).
    let mut kinds: Vec<Option<&Action>> = Vec::new();
    let mut hashed = 0;
    for r in rules {
        let rule = &policy.rules[r];
        let keys = rule_keys(&rule.cond).map(|mut keys| {
            let existing = |c: &[Component]| tuples.iter().find(|t| t.0 == c).map(|t| t.1);
            settle(&mut keys, existing);
            keys
        });
        let keys = keys.filter(|keys| {
            terminal || (acts_once(keys) && !(logs_as_code && rule.action == Action::Log))
        });
        let Some(keys) = keys else {
            rest.push(r);
            continue;
        };
        // What the tuples would be with this rule.
        let mut new: Vec<(Shape, Option<&Action>)> = Vec::new();
        for (t, _, (field, len)) in &keys {
            let shape = (t.clone(), *field);
            let array = terminal
                && *len == ANY_LEN
                && matches!(
                    t.as_slice(),
                    [Component::LocalPort]
                        | [Component::RemotePort]
                        | [Component::Payload { len: 1 | 2, .. }]
                );
            let kind = array.then_some(&rule.action);
            match new.iter_mut().find(|(x, _)| *x == shape) {
                Some((_, k)) if *k != kind => *k = None,
                Some(_) => {}
                None => {
                    let was = tuples.iter().position(|x| *x == shape).map(|i| kinds[i]);
                    let kind = match was {
                        Some(k) if k != kind => None,
                        _ => kind,
                    };
                    new.push((shape, kind));
                }
            }
        }
        let added = new.iter().filter(|(t, _)| !tuples.contains(t)).count();
        let newly_hashed = new
            .iter()
            .filter(|(t, k)| {
                k.is_none()
                    && tuples
                        .iter()
                        .position(|x| x == t)
                        .map_or(true, |i| kinds[i].is_some())
            })
            .count();
        if tuples.len() + added > room.0 || hashed + newly_hashed > room.1 {
            rest.push(r);
            continue;
        }
        hashed += newly_hashed;
        for (t, k) in new {
            match tuples.iter().position(|x| *x == t) {
                Some(i) => kinds[i] = k,
                None => {
                    tuples.push(t);
                    kinds.push(k);
                }
            }
        }
        keyed.push((r, keys));
    }
    ((keyed, rest, tuples), hashed)
}

/// The key of tuple `id` with value words `words`.
fn key_of(id: u32, words: &[u32]) -> KeyWords {
    let mut key = [0u32; IndexEntry::KEY_WORDS];
    key[0] = id;
    key[1..1 + words.len()].copy_from_slice(words);
    key
}

/// Whether a message can match a `count`/`log` rule with `keys` through one slot at
/// most, so that the rule acts once: all keys in one tuple (a message gives one key per
/// tuple) and no key twice (two terms with one key and different `len` ranges).
fn acts_once(keys: &[RuleKey]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    keys.iter().all(|k| shape_of(k) == shape_of(&keys[0]))
        && keys.iter().all(|(_, w, _)| seen.insert(w))
}

/// Whether the log records of a run of `count`/`log` rules keep rule order when `keyed`
/// are looked up and `rest` are code after the lookups: the lookups go tuple by tuple,
/// the slots of one entry in rule order, so with two or more `log` rules all of them
/// are keyed in one tuple, or all are code. (A `log` rule that finds its key's slots
/// full is code too, but it comes after the rules in them, and a message has one key
/// per tuple: no other keyed `log` rule matches with it.) Counters add up in any order.
fn logs_in_order(policy: &hir::Policy, keyed: &[(usize, Vec<RuleKey>)], rest: &[usize]) -> bool {
    let is_log = |r: &usize| policy.rules[*r].action == Action::Log;
    let logs: Vec<(&[Component], IntField)> = keyed
        .iter()
        .filter(|(r, _)| is_log(r))
        .filter_map(|(_, keys)| keys.first().map(shape_of))
        .collect();
    let coded = rest.iter().filter(|r| is_log(r)).count();
    logs.len() + coded < 2 || logs.is_empty() || (coded == 0 && logs.iter().all(|t| *t == logs[0]))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::check::check;

    /// The VM decides `msg` as the evaluator does, and (with counters) counts it on
    /// `rule`'s counter (`None`: the default's) and nowhere else, as the evaluator does.
    pub(in crate::lower) fn decides_and_counts(
        c: &crate::compile::Compiled,
        vm: &crate::vm::Vm,
        msg: &crate::hir::Message,
        rule: Option<usize>,
        counters: bool,
    ) {
        let out = vm.run(msg, &crate::vm::RunConfig::default()).expect("runs");
        let want = crate::eval::eval(&c.policy, msg);
        assert_eq!(out.decision, want.decision, "{msg:?}");
        if counters {
            let slot = rule.unwrap_or(c.policy.default.counter);
            let mut expect = vec![(0, 0); c.policy.counters.len()];
            expect[slot] = (1, msg.len as u64);
            assert_eq!(out.counters, expect, "{msg:?}");
            assert_eq!(out.counters, want.counters, "{msg:?}");
        }
    }

    /// `src` compiled with or without counters.
    fn compiled(src: &str, counters: bool) -> crate::compile::Compiled {
        crate::compile::compile_with(
            "t.skp",
            src,
            crate::lower::Options {
                counters,
                ..crate::lower::Options::default()
            },
        )
        .expect("compiles")
    }

    #[test]
    fn sets_that_only_indexed_rules_test_get_no_map() {
        // 64 rules over sets of 65 names each: every name is a key of the index, so no
        // set is a map of its own; a rule of code after them keeps its set's map.
        let mut src = String::new();
        for k in 0..65 {
            let names: Vec<String> = (0..65).map(|i| format!("\"c{k}x{i}\"")).collect();
            src.push_str(&format!("set names{k} = {{ {} }};\n", names.join(", ")));
        }
        for k in 0..64 {
            src.push_str(&format!("drop if comm in names{k};\n"));
        }
        src.push_str("pass if comm in names64 and uid > 5;\n");
        let c = compiled(&src, true);
        assert_eq!(
            c.lowered.index_summary.len(),
            1,
            "{:?}",
            c.lowered.index_summary
        );
        let index = plan(&c.policy);
        assert!((0..64).all(|r| index.indexed(r)) && !index.indexed(64));
        assert_eq!(c.lowered.sets.len(), 1, "{:?}", c.lowered.sets);
    }

    fn port_addr(n: usize) -> String {
        (0..n)
            .map(|i| match i % 4 {
                0 => format!("drop if port == {};\n", 1000 + i),
                1 => format!("drop if remote.ip == 10.0.{}.{};\n", i / 256, i % 256),
                2 => format!(
                    "drop if remote.ip in 192.168.{}.{}/28 and local.port == {};\n",
                    i / 16 % 256,
                    (i % 16) * 16,
                    1000 + i
                ),
                _ => format!("drop if remote.port == {};\n", 1000 + i),
            })
            .collect()
    }

    #[test]
    fn alternating_port_and_address_rules_are_one_block_of_four_tuples() {
        let p = check(&port_addr(400)).0.expect("checks");
        let index = plan(&p);
        assert_eq!(index.blocks.len(), 1);
        let b = &index.blocks[0];
        assert_eq!((b.first, b.last, b.indexed), (0, 399, 400));
        assert!(b.rest.is_empty());
        // local.port, remote.port, remote ip /32, and local.port with a remote /28.
        assert_eq!(b.tuples.len(), 4);
        // The two single-port tuples are in the port array: `port ==` is a slot in
        // each (either end), `remote.port ==` one; the 200 address rules are hashed.
        // Gates: the 100 with a local port open that port's slot of their tuple's gate,
        // the 100 addresses in 10.0/16 one slot (10.0) of theirs.
        assert_eq!(index.port_tuples, 4);
        assert_eq!(index.port_entries.len(), 300 + 100 + 1);
        assert_eq!(index.entries.len(), 200);
        let local = b
            .tuples
            .iter()
            .find(|t| t.components == [Component::LocalPort]);
        let remote = b
            .tuples
            .iter()
            .find(|t| t.components == [Component::RemotePort]);
        let (Some(local), Some(remote)) = (local, remote) else {
            panic!("{:?}", b.tuples)
        };
        let slot = |t: &Tuple, port: u32| t.port_slot.map(|s| s * PORTS_PER_TUPLE + port);
        let value = |slot: Option<u32>| {
            index
                .port_entries
                .iter()
                .find(|e| Some(e.slot) == slot)
                .map(|e| e.value)
        };
        // Rule 4 is `drop if port == 1004`: both ends, value = rule + 1.
        assert_eq!(value(slot(local, 1004)), Some(5));
        assert_eq!(value(slot(remote, 1004)), Some(5));
        // Rule 7 is `drop if remote.port == 1007`: the remote end only.
        assert_eq!(value(slot(remote, 1007)), Some(8));
        assert_eq!(value(slot(local, 1007)), None);
        // Rule 6's key: local.port 1006 and remote.ip 192.168.0.96/28, as loaded.
        let want = [
            local.id + 3,
            1006,
            u32::from_le_bytes([192, 168, 0, 96]),
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        assert!(
            index
                .entries
                .iter()
                .any(|e| e.key == want && e.slots[0] == IndexSlot::any_len(6)),
            "{want:?}"
        );
    }

    #[test]
    fn the_first_rule_of_a_key_wins_and_other_rules_stay_code() {
        let mut src = port_addr(100);
        src.push_str("drop if port == 1000;\n"); // the same key as rule 0
        src.push_str("drop if uid > 0;\n");
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        assert_eq!(b.rest, vec![101]);
        assert_eq!(b.indexed, 101);
        assert!(index
            .port_entries
            .iter()
            .filter(|e| e.slot % PORTS_PER_TUPLE == 1000)
            .all(|e| e.value == 1));
    }

    #[test]
    fn short_segments_and_other_decisions_are_not_indexed() {
        let p = check(&port_addr(MIN_INDEXED_RULES - 1)).0.expect("checks");
        assert!(plan(&p).blocks.is_empty());
        let mut src = port_addr(100);
        src.push_str("pass if port == 1;\n");
        src.push_str(&port_addr(10));
        let p = check(&src).0.expect("checks");
        let index = plan(&p);
        assert_eq!(index.blocks.len(), 1);
        assert_eq!(index.blocks[0].last, 99);
    }

    /// 64 rules that the messages of these tests never match (local ports 2000..).
    fn filler() -> String {
        (0..MIN_INDEXED_RULES)
            .map(|i| format!("drop if local.port == {};\n", 2000 + i))
            .collect()
    }

    fn key(words: &[u32]) -> [u32; IndexEntry::KEY_WORDS] {
        let mut key = [0; IndexEntry::KEY_WORDS];
        key[..words.len()].copy_from_slice(words);
        key
    }

    #[test]
    fn payload_slices_are_key_words_and_len_tests_residuals() {
        let src = format!(
            "{}drop if payload starts with \"K0000004\";\n\
             drop if remote.port == 80 and payload[2..5] == \"abc\" and len > 100;\n",
            filler()
        );
        let index = plan(&check(&src).0.expect("checks"));
        let b = &index.blocks[0];
        assert_eq!((b.indexed, b.rest.len()), (66, 0));
        let tuple = |c: &[Component]| b.tuples.iter().find(|t| t.components == c).cloned();
        let prefix = tuple(&[Component::Payload { offset: 0, len: 8 }]).expect("a tuple");
        let want = key(&[
            prefix.id,
            u32::from_le_bytes(*b"K000"),
            u32::from_le_bytes(*b"0004"),
        ]);
        let entry = index
            .entries
            .iter()
            .find(|e| e.key == want)
            .expect("K0000004");
        assert_eq!(entry.slots[0], IndexSlot::any_len(64));
        assert_eq!(prefix.residual, None);
        let slice = [
            Component::RemotePort,
            Component::Payload { offset: 2, len: 3 },
        ];
        let slice = tuple(&slice).expect("a tuple");
        assert!(slice.residual == Some(IntField::Len) && slice.port_slot.is_none());
        let port = super::super::cond::raw_remote_port(80) as u32;
        let want = key(&[slice.id, port, u32::from_le_bytes(*b"abc\0")]);
        let entry = index
            .entries
            .iter()
            .find(|e| e.key == want)
            .expect("80, abc");
        let residual = IndexSlot {
            rule: 65,
            len_min: 101,
            len_max: u32::MAX,
            then: IndexSlot::NOTHING,
        };
        assert_eq!(
            entry.slots,
            [
                residual,
                IndexSlot::EMPTY,
                IndexSlot::EMPTY,
                IndexSlot::EMPTY
            ]
        );
    }

    /// Rules 64.. of a policy after `filler`: one key with different residuals, a
    /// residual on another key, and payload slices.
    const SHARED_KEY: &str = "drop if local.port == 5 and len > 100;\n\
        drop if local.port == 5 and len >= 10 and len <= 20;\n\
        drop if local.port == 5 and len > 200;\n\
        drop if local.port == 5 and len < 3;\n\
        drop if local.port == 5 and len == 50;\n\
        drop if local.port == 5 and len == 60;\n\
        drop if local.port == 5;\n\
        drop if remote.port == 7 and len > 1000;\n\
        drop if payload[2..6] == \"cdef\";\n\
        drop if payload starts with \"ab\";\n";

    #[test]
    fn rules_of_one_key_fill_its_slots_in_order_over_pages() {
        let p = check(&format!("{}{SHARED_KEY}", filler()))
            .0
            .expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        // Six slots: 64, 65, 67, 68 (66 is covered by 64), then a second page: 69, 70.
        assert!(b.rest.is_empty());
        let t = b
            .tuples
            .iter()
            .find(|t| t.components == [Component::LocalPort]);
        let t = t.expect("a local.port tuple");
        assert_eq!(
            (t.slots, t.residual, t.port_slot),
            (6, Some(IntField::Len), None)
        );
        let rules = |page: u32| {
            let e = index
                .entries
                .iter()
                .find(|e| e.key == key(&[t.id | page << PAGE_SHIFT, 5]));
            let e = e.unwrap_or_else(|| panic!("port 5, page {page}"));
            e.used().map(|s| s.rule).collect::<Vec<u32>>()
        };
        assert_eq!((rules(0), rules(1)), (vec![64, 65, 67, 68], vec![69, 70]));
    }

    #[test]
    fn a_rule_past_the_last_page_stays_code() {
        // 64 rules of one key with ranges that cover none of the others fill its 16
        // pages; the next one with that key is code, and in a `count` run so is every
        // key of it (it would act twice: once by its other key, once as code).
        for action in ["drop", "count a"] {
            let full: String = (0..MAX_KEY_RULES)
                .map(|i| format!("{action} if local.port == 5 and len == {i};\n"))
                .collect();
            let src = format!(
                "{full}{action} if local.port in {{5, 6}} and len == 1000;\n{action} if local.port == 7;\n"
            );
            let index = plan(&check(&src).0.expect("checks"));
            let b = &index.blocks[0];
            assert_eq!(b.rest, vec![MAX_KEY_RULES], "{action}");
            let t = &b.tuples[0];
            assert_eq!(t.slots, MAX_KEY_RULES);
            let six = index.entries.iter().any(|e| e.key == key(&[t.id, 6]));
            assert_eq!(six, action == "drop", "{action}");
        }
    }

    #[test]
    fn the_vm_finds_the_first_rule_whose_residual_holds() {
        use crate::hir::Message;
        let src = format!("{}{SHARED_KEY}default pass;\n", filler());
        for counters in [true, false] {
            let c = compiled(&src, counters);
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            let m = |local_port: u16, remote_port: u16, payload: &[u8]| Message {
                family: skpc_abi::AF_INET,
                local_port,
                remote_port,
                len: payload.len() as u32,
                payload: payload.to_vec(),
                ..Message::default()
            };
            let x = |n: usize| vec![b'x'; n];
            for (msg, rule) in [
                (m(5, 1, &x(150)), Some(64)),
                // 64's residual fails, 65's holds.
                (m(5, 1, &x(15)), Some(65)),
                (m(5, 1, &x(2)), Some(67)),
                (m(5, 1, &x(50)), Some(68)),
                // The key's second page.
                (m(5, 1, &x(60)), Some(69)),
                (m(5, 1, &x(70)), Some(70)),
                // A residual fails, a later rule of another tuple matches.
                (m(1, 7, b"abcdef"), Some(72)),
                (m(1, 7, &[b"ab".as_slice(), &x(1000)].concat()), Some(71)),
                // Too short for payload[2..6]: that lookup is skipped.
                (m(1, 1, b"abcde"), Some(73)),
                (m(1, 1, b"a"), None),
            ] {
                decides_and_counts(&c, &vm, &msg, rule, counters);
            }
        }
    }

    /// Rules 64.. of a policy after `filler`: residuals on the sender's fields and on
    /// ports, several of one key in rule order, and one that needs two fields (code).
    const RESIDUALS: &str = "drop if remote.port == 80 and uid > 10000;\n\
        drop if remote.port == 80 and uid < 1000;\n\
        drop if remote.port == 80 and uid >= 5000 and uid <= 6000;\n\
        drop if remote.port == 80 and len > 100;\n\
        drop if remote.port == 81 and gid > 7;\n\
        drop if local.port == 9 and pid > 100;\n\
        drop if remote.ip == 10.0.0.1 and local.port in 1000..2000;\n\
        drop if uid == 5 and remote.port > 1024;\n\
        drop if len > 5 and uid > 3 and local.port == 1;\n\
        drop if remote.port == 80;\n";

    #[test]
    fn a_rule_is_indexed_on_its_keys_and_checks_one_other_field_after_the_lookup() {
        let p = check(&format!("{}{RESIDUALS}", filler()))
            .0
            .expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        // Only the rule with residuals on `len` and `uid` is code.
        assert_eq!((b.indexed, b.rest.clone()), (73, vec![72]));
        let tuple = |c: &[Component], f: IntField| {
            let t = b
                .tuples
                .iter()
                .find(|t| t.components == c && t.residual == Some(f));
            t.unwrap_or_else(|| panic!("{c:?} with {f:?}"))
        };
        // One key, three uid ranges and the rule without residual, in rule order; `len`
        // is a tuple of its own.
        let uid = tuple(&[Component::RemotePort], IntField::Uid);
        let port = super::super::cond::raw_remote_port(80) as u32;
        let e = index.entries.iter().find(|e| e.key == key(&[uid.id, port]));
        let ranges: Vec<(u32, u32, u32)> = e
            .expect("port 80")
            .used()
            .map(|s| (s.rule, s.len_min, s.len_max))
            .collect();
        let want = [
            (64, 10001, u32::MAX),
            (65, 0, 999),
            (66, 5000, 6000),
            (73, 0, u32::MAX),
        ];
        assert_eq!(ranges, want);
        tuple(&[Component::RemotePort], IntField::Len);
        tuple(&[Component::RemotePort], IntField::Gid);
        tuple(&[Component::LocalPort], IntField::Pid);
        tuple(&[Component::Uid], IntField::RemotePort);
        let ip = b
            .tuples
            .iter()
            .find(|t| matches!(t.components[..], [Component::Ip4 { .. }]));
        assert_eq!(
            ip.expect("an address tuple").residual,
            Some(IntField::LocalPort)
        );
    }

    #[test]
    fn the_vm_checks_the_residual_field_of_each_tuple() {
        use crate::hir::Message;
        let src = format!("{}{RESIDUALS}default pass;\n", filler());
        for counters in [true, false] {
            let c = compiled(&src, counters);
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            let m = |remote_port: u16, uid: u32, len: u32| Message {
                remote_port,
                uid,
                len,
                ..Message::default()
            };
            let ip = |local_port: u16| Message {
                remote_ip: std::net::IpAddr::from([10, 0, 0, 1]),
                local_port,
                ..Message::default()
            };
            for (msg, rule) in [
                (m(80, 20000, 0), Some(64)),
                (m(80, 5, 0), Some(65)),
                (m(80, 5500, 0), Some(66)),
                (m(80, 2000, 200), Some(67)),
                (m(80, 2000, 10), Some(73)),
                (
                    Message {
                        gid: 8,
                        ..m(81, 700, 0)
                    },
                    Some(68),
                ),
                (
                    Message {
                        gid: 7,
                        ..m(81, 700, 0)
                    },
                    None,
                ),
                (
                    Message {
                        local_port: 9,
                        pid: 101,
                        ..m(1, 700, 0)
                    },
                    Some(69),
                ),
                (
                    Message {
                        local_port: 9,
                        pid: 100,
                        ..m(1, 700, 0)
                    },
                    None,
                ),
                (ip(1500), Some(70)),
                (ip(999), None),
                (m(2000, 5, 0), Some(71)),
                (m(1000, 5, 0), None),
                (
                    Message {
                        local_port: 1,
                        ..m(1, 4, 6)
                    },
                    Some(72),
                ),
                (
                    Message {
                        local_port: 1,
                        ..m(1, 3, 6)
                    },
                    None,
                ),
            ] {
                decides_and_counts(&c, &vm, &msg, rule, counters);
            }
        }
    }

    /// Rules 64.. of a policy after `filler`: the sender's fields as keys, alone and with
    /// ports, payload bytes and `len`.
    const SENDER: &str = "drop if uid == 1001 and payload[3] == 7;\n\
        drop if uid == 1002 and remote.port == 80;\n\
        drop if gid in {5, 6} and len > 10;\n\
        drop if pid == 77;\n\
        drop if cgroup == 0x100000002;\n\
        drop if comm == \"nginx\" and local.port == 9;\n\
        drop if comm == \"a-name-of-16-by\";\n\
        drop if comm == \"other\" or uid == 4;\n\
        drop if comm starts with \"ng\";\n\
        drop if uid > 60000;\n";

    #[test]
    fn the_senders_fields_are_key_words() {
        let p = check(&format!("{}{SENDER}", filler())).0.expect("checks");
        let index = plan(&p);
        let b = &index.blocks[0];
        // The prefix test and the range stay code.
        assert_eq!((b.indexed, b.rest.clone()), (72, vec![72, 73]));
        let tuple = |c: &[Component]| {
            b.tuples
                .iter()
                .find(|t| t.components == c)
                .cloned()
                .unwrap_or_else(|| panic!("no tuple {c:?} in {:?}", b.tuples))
        };
        let has = |words: &[u32], slot: IndexSlot| {
            index
                .entries
                .iter()
                .any(|e| e.key == key(words) && e.slots[0] == slot)
        };
        // Components in key order: the payload byte before the uid; the gate is the
        // uid's low 16 bits (a byte has 256 values).
        let t = tuple(&[Component::Payload { offset: 3, len: 1 }, Component::Uid]);
        assert_eq!(t.gate.map(|g| g.0), Some(Component::Uid));
        assert!(has(&[t.id, 7, 1001], IndexSlot::any_len(64)));
        let t = tuple(&[Component::RemotePort, Component::Uid]);
        assert_eq!(t.gate.map(|g| g.0), Some(Component::RemotePort));
        let port = super::super::cond::raw_remote_port(80) as u32;
        assert!(has(&[t.id, port, 1002], IndexSlot::any_len(65)));
        let t = tuple(&[Component::Gid]);
        assert_eq!(t.residual, Some(IntField::Len));
        let gid = IndexSlot {
            rule: 66,
            len_min: 11,
            len_max: u32::MAX,
            then: IndexSlot::NOTHING,
        };
        assert!(has(&[t.id, 5], gid) && has(&[t.id, 6], gid));
        assert!(has(
            &[tuple(&[Component::Pid]).id, 77],
            IndexSlot::any_len(67)
        ));
        // A cgroup id is two words, the low one first.
        let t = tuple(&[Component::Cgroup]);
        assert!(has(&[t.id, 2, 1], IndexSlot::any_len(68)));
        // A comm is the helper's 16 bytes: the name, NUL-padded.
        let t = tuple(&[Component::LocalPort, Component::Comm]);
        let nginx = comm_words(b"nginx");
        assert_eq!(nginx, [u32::from_le_bytes(*b"ngin"), u32::from(b'x'), 0, 0]);
        assert!(has(
            &[t.id, 9, nginx[0], nginx[1], 0, 0],
            IndexSlot::any_len(69)
        ));
        let t = tuple(&[Component::Comm]);
        let long = comm_words(b"a-name-of-16-by");
        assert!(has(
            &[t.id, long[0], long[1], long[2], long[3]],
            IndexSlot::any_len(70)
        ));
        // An `or` of two fields: a key in each tuple.
        let other = comm_words(b"other");
        assert!(has(
            &[t.id, other[0], other[1], 0, 0],
            IndexSlot::any_len(71)
        ));
        assert!(has(
            &[tuple(&[Component::Uid]).id, 4],
            IndexSlot::any_len(71)
        ));
    }

    #[test]
    fn the_vm_and_the_evaluator_agree_on_the_senders_fields() {
        use crate::hir::Message;
        let src = format!("{}{SENDER}default pass;\n", filler());
        for counters in [true, false] {
            let c = compiled(&src, counters);
            assert!(
                c.lowered.index_summary.len() == 1,
                "{:?}",
                c.lowered.index_summary
            );
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            let base = Message {
                uid: 1,
                gid: 1,
                pid: 1,
                cgroup: 1,
                comm: b"x".to_vec(),
                payload: b"abc\x07".to_vec(),
                len: 4,
                ..Message::default()
            };
            let with = |f: &dyn Fn(&mut Message)| {
                let mut m = base.clone();
                f(&mut m);
                m
            };
            for (msg, rule) in [
                (base.clone(), None),
                (with(&|m| m.uid = 1001), Some(64)),
                (with(&|m| m.payload[3] = 8), None),
                (
                    with(&|m| {
                        m.uid = 1001;
                        m.payload[3] = 8
                    }),
                    None,
                ),
                (
                    with(&|m| {
                        m.uid = 1001;
                        m.payload.truncate(3);
                        m.len = 3
                    }),
                    None,
                ),
                (
                    with(&|m| {
                        m.uid = 1002;
                        m.remote_port = 80
                    }),
                    Some(65),
                ),
                (with(&|m| m.uid = 1002), None),
                (
                    with(&|m| {
                        m.gid = 6;
                        m.len = 11
                    }),
                    Some(66),
                ),
                (with(&|m| m.gid = 6), None),
                (with(&|m| m.pid = 77), Some(67)),
                (with(&|m| m.cgroup = 0x1_0000_0002), Some(68)),
                (with(&|m| m.cgroup = 2), None),
                (
                    with(&|m| {
                        m.comm = b"nginx".to_vec();
                        m.local_port = 9
                    }),
                    Some(69),
                ),
                (with(&|m| m.comm = b"nginx".to_vec()), Some(72)),
                (with(&|m| m.comm = b"ngin".to_vec()), Some(72)),
                (with(&|m| m.comm = b"a-name-of-16-by".to_vec()), Some(70)),
                (with(&|m| m.uid = 4), Some(71)),
                (with(&|m| m.comm = b"other".to_vec()), Some(71)),
                (with(&|m| m.comm = b"othe".to_vec()), None),
                (with(&|m| m.uid = 60001), Some(73)),
                // The first matching rule counts: 64 before 73's code.
                (
                    with(&|m| {
                        m.uid = 1001;
                        m.pid = 77
                    }),
                    Some(64),
                ),
            ] {
                decides_and_counts(&c, &vm, &msg, rule, counters);
            }
        }
    }

    /// 64 `count`/`log` rules the messages of these tests never match, then rules 64..:
    /// keys shared by several rules, residuals, a rule in two tuples, a key twice.
    fn effects(filler_action: &str) -> String {
        let fill: String = (0..MIN_INDEXED_RULES)
            .map(|i| format!("{filler_action} if local.port == {};\n", 2000 + i))
            .collect();
        format!(
            "{fill}count a if uid == 5;\n\
             log if uid == 5 and len > 10;\n\
             count b if uid == 5 and len < 100;\n\
             count a if uid == 5 or uid == 6;\n\
             count b if uid == 5;\n\
             count a if port == 7;\n\
             count b if (uid == 8 and len > 10) or (uid == 8 and len > 20);\n\
             count b if uid in {{5, 9}};\n\
             count b if remote.port == 80 and comm == \"nginx\";\n\
             drop if uid == 6;\n\
             count a if uid == 6;\n"
        )
    }

    #[test]
    fn count_and_log_rules_are_a_block_where_every_rule_of_a_key_has_a_slot() {
        let p = check(&effects("count a")).0.expect("checks");
        let index = plan(&p);
        let [b] = index.blocks.as_slice() else {
            panic!("{:?}", index.blocks)
        };
        assert_eq!((b.first, b.last, b.decision.clone()), (0, 72, None));
        // 69 (two tuples: local and remote port) and 70 (uid 8 twice) stay code.
        assert_eq!(b.rest, vec![69, 70]);
        assert!(b.tuples.iter().all(|t| t.port_slot.is_none()));
        let uid = b.tuples.iter().find(|t| t.components == [Component::Uid]);
        let uid = uid.expect("a uid tuple");
        // uid 5: 64-68 and 71, a page and a half.
        assert_eq!((uid.slots, uid.residual), (6, Some(IntField::Len)));
        // `then`: the counter of `count NAME`, or LOG.
        let named = |r: usize| match p.rules[r].action {
            Action::Count { counter } => counter as u32,
            _ => IndexSlot::LOG,
        };
        assert_ne!(named(64), named(66));
        let e = index.entries.iter().find(|e| e.key == key(&[uid.id, 5]));
        let slots: Vec<(u32, u32, u32, u32)> = e
            .expect("uid 5")
            .used()
            .map(|s| (s.rule, s.len_min, s.len_max, s.then))
            .collect();
        let rule = |r: usize| p.rules[r].counter as u32;
        assert_eq!(
            slots,
            [
                (rule(64), 0, u32::MAX, named(64)),
                (rule(65), 11, u32::MAX, IndexSlot::LOG),
                (rule(66), 0, 99, named(66)),
                (rule(67), 0, u32::MAX, named(67)),
            ]
        );
        let e = index.entries.iter().find(|e| e.key == key(&[uid.id, 6]));
        let rules: Vec<u32> = e.expect("uid 6").used().map(|s| s.rule).collect();
        assert_eq!(rules, [rule(67)]);
        let e = index.entries.iter().find(|e| e.key == key(&[uid.id, 9]));
        let rules: Vec<u32> = e.expect("uid 9").used().map(|s| s.rule).collect();
        assert_eq!(rules, [rule(71)]);
        // `drop` ends the run: rule 74 is alone.
        assert!(!index
            .entries
            .iter()
            .flat_map(|e| e.used())
            .any(|s| s.rule == rule(74)));
    }

    /// `effects("log")` with its only other `log` rule a `count`: every `log` rule is in
    /// the local.port tuple.
    fn logs_in_one_tuple() -> String {
        effects("log").replace(
            "log if uid == 5 and len > 10;",
            "count a if uid == 5 and len > 10;",
        )
    }

    /// `effects("count a")` with a second `log` rule, in another tuple than rule 65's.
    fn logs_in_two_tuples() -> String {
        effects("count a").replace(
            "drop if uid == 6;",
            "log if local.port == 2001;\ndrop if uid == 6;",
        )
    }

    #[test]
    fn logs_in_two_tuples_are_code() {
        // Rule 65 (uid) and rule 73 (local.port) would send their records tuple by
        // tuple: both are code, after the lookups, in rule order (and 68 has a slot).
        let p = check(&logs_in_two_tuples()).0.expect("checks");
        let index = plan(&p);
        assert_eq!(index.blocks[0].rest, vec![65, 69, 70, 73]);
        // Logs all in one tuple (the 64 filler rules) are keyed.
        let p = check(&logs_in_one_tuple()).0.expect("checks");
        assert_eq!(plan(&p).blocks[0].rest, vec![69, 70]);
        // And when the logs are too many to be code, the run stays code.
        let p = check(&effects("log")).0.expect("checks");
        assert!(plan(&p).blocks.is_empty());
    }

    #[test]
    fn the_vm_and_the_evaluator_agree_on_count_and_log_blocks() {
        use crate::hir::Message;
        for (src, counters) in [
            (effects("count a"), true),
            (effects("count a"), false),
            (logs_in_one_tuple(), true),
            (logs_in_one_tuple(), false),
            (logs_in_two_tuples(), true),
        ] {
            let src = format!("{src}default pass;\n");
            let c = compiled(&src, counters);
            assert_eq!(c.lowered.index_summary.len(), 1);
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            let m = |uid: u32, remote_port: u16, comm: &[u8], len: usize| Message {
                uid,
                remote_port,
                local_port: if len == 30 { 2001 } else { 7 },
                comm: comm.to_vec(),
                len: len as u32,
                payload: vec![b'x'; len],
                ..Message::default()
            };
            for msg in [
                m(5, 1, b"x", 50),
                m(5, 1, b"x", 5),
                m(5, 7, b"x", 500),
                m(6, 80, b"nginx", 20),
                m(8, 1, b"x", 30),
                m(8, 1, b"x", 15),
                m(9, 1, b"x", 1),
                m(1, 80, b"nginx", 1),
                m(1, 1, b"x", 1),
            ] {
                let out = vm
                    .run(&msg, &crate::vm::RunConfig::default())
                    .expect("runs");
                let want = crate::eval::eval(&c.policy, &msg);
                assert_eq!(out.decision, want.decision, "{msg:?}");
                assert_eq!(out.events, want.events, "{msg:?}");
                if counters {
                    assert_eq!(out.counters, want.counters, "{msg:?}");
                }
            }
        }
    }

    #[test]
    fn negations_and_ranges_are_not_keys_and_payload_bytes_are() {
        let p = check(
            "drop if not port == 1;\ndrop if uid > 1000;\ndrop if port == 2 and payload[0] == 1;\n",
        )
        .0
        .expect("checks");
        assert!(rule_keys(&p.rules[0].cond).is_none());
        assert!(rule_keys(&p.rules[1].cond).is_none());
        // `port` is either end: two keys, each with the byte.
        let keys = rule_keys(&p.rules[2].cond).expect("keys");
        let byte = Component::Payload { offset: 0, len: 1 };
        assert_eq!(
            keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
            [
                vec![Component::LocalPort, byte],
                vec![Component::RemotePort, byte]
            ]
        );
    }

    /// Rules 0..128 of drop, pass, discard, `count` and `log` in turn (no run of one
    /// kind has 64 rules), then rules 128..: one key of two decisions, a `count` after
    /// the rule that decides its key, rules of code of each kind.
    fn several() -> String {
        let mut src: String = (0..128)
            .map(|i| match i % 6 {
                0 => format!("drop if remote.port == {};\n", 1000 + i),
                1 => format!("pass if local.port == {};\n", 1000 + i),
                2 => format!("count a if uid == {};\n", 1000 + i),
                3 => format!("discard if payload[0..4] == \"K{i:03}\";\n"),
                // The port of the `drop` two rules on.
                4 => format!(
                    "log if remote.port == {} and comm == \"p\";\n",
                    1000 + i + 2
                ),
                _ => format!("drop if remote.ip == 10.0.0.{i};\n"),
            })
            .collect();
        src.push_str(
            "drop if remote.port == 7 and len > 100;\n\
             pass if remote.port == 7;\n\
             count b if remote.port == 7;\n\
             pass if uid > 60000;\n\
             count b if gid > 100;\n\
             drop if uid == 60001;\n\
             drop if gid == 200;\n",
        );
        src
    }

    #[test]
    fn rules_of_several_decisions_and_counts_are_one_block() {
        let p = check(&several()).0.expect("checks");
        let index = plan(&p);
        let [b] = index.blocks.as_slice() else {
            panic!("{:?}", index.blocks)
        };
        assert_eq!((b.first, b.last, b.decision.clone()), (0, 134, None));
        // The two rules of code; every other rule is in the index.
        assert_eq!((b.rest.clone(), b.indexed), (vec![131, 132], 133));
        let m = b.mixed.as_ref().expect("a block of several decisions");
        let verdicts: Vec<hir::Verdict> = m.decisions.iter().map(|d| d.verdict.clone()).collect();
        assert_eq!(
            verdicts,
            [
                hir::Verdict::Drop,
                hir::Verdict::Pass,
                hir::Verdict::Discard
            ]
        );
        let tuple = |ts: &[Tuple], c: &[Component]| {
            ts.iter()
                .find(|t| t.components == c)
                .cloned()
                .unwrap_or_else(|| panic!("no tuple {c:?} in {ts:?}"))
        };
        // local.port: pass only, an array slot whose decision the lookup knows.
        let local = tuple(&b.tuples, &[Component::LocalPort]);
        assert_eq!((local.decision, local.port_slot.is_some()), (Some(1), true));
        // remote.port: drop and pass (rules 128, 129): hashed, the decision in `then`.
        let remote = tuple(&b.tuples, &[Component::RemotePort]);
        assert_eq!((remote.decision, remote.port_slot), (None, None));
        let port = super::super::cond::raw_remote_port(7) as u32;
        let e = index
            .entries
            .iter()
            .find(|e| e.key == key(&[remote.id, port]))
            .expect("remote.port 7");
        let slots: Vec<(u32, u32, u32)> = e.used().map(|s| (s.rule, s.len_min, s.then)).collect();
        assert_eq!(slots, [(128, 101, 0), (129, 0, 1)]);
        // The `count` and `log` rules have tuples of their own, looked up after.
        let uid = tuple(&m.effects, &[Component::Uid]);
        let e = index.entries.iter().find(|e| e.key == key(&[uid.id, 1002]));
        let e = e.expect("uid 1002");
        let counter_a = match p.rules[2].action {
            Action::Count { counter } => counter as u32,
            _ => unreachable!("rule 2 counts"),
        };
        assert_eq!(e.slots[0], {
            let mut s = IndexSlot::any_len(2);
            s.then = counter_a;
            s
        });
        let uid_60001 = index
            .entries
            .iter()
            .find(|e| e.key == key(&[tuple(&b.tuples, &[Component::Uid]).id, 60001]));
        assert_eq!(uid_60001.map(|e| e.slots[0].then), Some(0));
        let t = tuple(&m.effects, &[Component::RemotePort]);
        assert!(index
            .entries
            .iter()
            .any(|e| e.key == key(&[t.id, port]) && e.slots[0].rule == 130));
        assert!(
            b.describe(&p).contains("3 decisions and count/log"),
            "{}",
            b.describe(&p)
        );
    }

    #[test]
    fn in_a_block_of_several_decisions_the_first_matching_rule_decides_and_earlier_counts_act() {
        use crate::eval::Fired;
        use crate::hir::Message;
        let src = format!("{}default pass;\n", several());
        let base = Message {
            remote_ip: "192.168.1.1".parse().expect("an address"),
            comm: b"x".to_vec(),
            payload: b"xxxx".to_vec(),
            len: 4,
            gid: 50,
            ..Message::default()
        };
        let with = |f: &dyn Fn(&mut Message)| {
            let mut m = base.clone();
            f(&mut m);
            m
        };
        // Each message with the rule the evaluator must find (None: the default), and
        // the `count`/`log` rules that must act.
        let cases: Vec<(Message, Option<usize>, Vec<usize>)> = vec![
            (base.clone(), None, vec![]),
            (with(&|m| m.remote_port = 1006), Some(6), vec![]),
            (with(&|m| m.local_port = 1007), Some(7), vec![]),
            (with(&|m| m.payload = b"K009".to_vec()), Some(9), vec![]),
            (
                with(&|m| m.remote_ip = "10.0.0.11".parse().expect("an address")),
                Some(11),
                vec![],
            ),
            // Two rules of different decisions: the first decides.
            (
                with(&|m| {
                    m.remote_port = 1012;
                    m.local_port = 1013
                }),
                Some(12),
                vec![],
            ),
            (
                with(&|m| {
                    m.local_port = 1013;
                    m.payload = b"K015".to_vec()
                }),
                Some(13),
                vec![],
            ),
            (
                with(&|m| {
                    m.payload = b"K015".to_vec();
                    m.remote_ip = "10.0.0.11".parse().expect("an address")
                }),
                Some(11),
                vec![],
            ),
            // `count a if uid == 1014` before the drop of port 1018: it counts.
            (
                with(&|m| {
                    m.uid = 1014;
                    m.remote_port = 1018
                }),
                Some(18),
                vec![14],
            ),
            // ... and after the drop of port 1012, it does not.
            (
                with(&|m| {
                    m.uid = 1014;
                    m.remote_port = 1012
                }),
                Some(12),
                vec![],
            ),
            (with(&|m| m.uid = 1014), None, vec![14]),
            // `log if remote.port == 1018 and comm == "p"` (rule 16) before the drop.
            (
                with(&|m| {
                    m.comm = b"p".to_vec();
                    m.remote_port = 1018
                }),
                Some(18),
                vec![16],
            ),
            // One key of two decisions and a residual.
            (
                with(&|m| {
                    m.remote_port = 7;
                    m.len = 200;
                    m.payload = vec![b'x'; 200]
                }),
                Some(128),
                vec![],
            ),
            (with(&|m| m.remote_port = 7), Some(129), vec![]),
            // Rules of code: a terminal one before an indexed one decides ...
            (with(&|m| m.uid = 60001), Some(131), vec![]),
            // ... and after one, does not; a `count` of code acts before the rule.
            (
                with(&|m| {
                    m.uid = 60001;
                    m.remote_port = 1000
                }),
                Some(0),
                vec![],
            ),
            (with(&|m| m.gid = 200), Some(134), vec![132]),
            (
                with(&|m| {
                    m.gid = 200;
                    m.remote_port = 7
                }),
                Some(129),
                vec![],
            ),
        ];
        for counters in [true, false] {
            let c = compiled(&src, counters);
            assert_eq!(
                c.lowered.index_summary.len(),
                1,
                "{:?}",
                c.lowered.index_summary
            );
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            for (msg, rule, acting) in &cases {
                let want = crate::eval::eval(&c.policy, msg);
                let fired = match want.fired {
                    Fired::Rule(r) => Some(r),
                    Fired::Default => None,
                };
                assert_eq!(fired, *rule, "{msg:?}");
                let acted: Vec<usize> = (0..c.policy.rules.len())
                    .filter(|&r| !c.policy.rules[r].action.is_terminal() && want.counters[r].0 > 0)
                    .collect();
                assert_eq!(&acted, acting, "{msg:?}");
                let out = vm.run(msg, &crate::vm::RunConfig::default()).expect("runs");
                assert_eq!(out.decision, want.decision, "{msg:?}");
                assert_eq!(out.events, want.events, "{msg:?}");
                if counters {
                    assert_eq!(out.counters, want.counters, "{msg:?}");
                }
            }
        }
    }

    #[test]
    fn a_slice_past_the_readable_bytes_leaves_the_shorter_slices_looked_up() {
        // One pull for the block's lookups, the longest slice first: a message whose
        // readable bytes end before it (a test case's `len` past its payload, or a pull
        // the kernel refuses) must still have its shorter slices looked up, each as a
        // pull of its own would have made it readable.
        use crate::hir::Message;
        let long = "a".repeat(30);
        let src = format!(
            "{}drop if payload[0..2] == \"ab\";\n\
             drop if payload[0..30] == \"{long}\";\n\
             drop if payload[3] == 100;\n\
             default pass;\n",
            filler()
        );
        for counters in [true, false] {
            let c = compiled(&src, counters);
            assert_eq!(c.lowered.index_summary.len(), 1);
            let vm = crate::vm::Vm::new(&c.lowered).expect("loads");
            for (payload, rule) in [
                (&b"abcd"[..], Some(64)),
                (b"xxxd", Some(66)),
                (long.as_bytes(), Some(65)),
                (b"x", None),
            ] {
                let msg = Message {
                    payload: payload.to_vec(),
                    len: 999,
                    ..Message::default()
                };
                for window in [0, 2, 4096] {
                    let out = vm
                        .run(&msg, &crate::vm::RunConfig { window })
                        .expect("runs");
                    let want = crate::eval::eval(&c.policy, &msg);
                    let fired = match want.fired {
                        crate::eval::Fired::Rule(r) => Some(r),
                        crate::eval::Fired::Default => None,
                    };
                    assert_eq!(fired, rule, "{msg:?}");
                    assert_eq!(out.decision, want.decision, "{msg:?}, window {window}");
                    if counters {
                        assert_eq!(out.counters, want.counters, "{msg:?}, window {window}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_block_hashes_at_most_sixteen_tuples_and_more_are_array_slots() {
        // 20 one-byte payload tuples (array slots) and 20 with a uid (hashed): the
        // hashed ones past 16 stay code, the array slots do not count against them.
        let mut src = filler();
        for i in 0..20 {
            src.push_str(&format!("drop if payload[{i}] == 7;\n"));
            src.push_str(&format!("drop if uid == 5 and payload[{i}] == 7;\n"));
        }
        let index = plan(&check(&src).0.expect("checks"));
        let [b] = index.blocks.as_slice() else {
            panic!("{:?}", index.blocks)
        };
        let hashed = b.tuples.iter().filter(|t| t.port_slot.is_none()).count();
        let arrays = b.tuples.iter().filter(|t| t.port_slot.is_some()).count();
        assert_eq!((hashed, arrays), (MAX_HASHED_TUPLES, 21));
        // The uid rules of offsets 16..20: rules 64 + 2 * i + 1.
        let coded: Vec<usize> = (16..20).map(|i| 64 + 2 * i + 1).collect();
        assert_eq!(b.rest, coded);
    }
}
