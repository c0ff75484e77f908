//! The state trie: a hexary sparse Merkle tree over 256-bit paths, so that the
//! state root costs O(log n) per changed key instead of a rehash of the whole
//! state per block (and per miner template).
//!
//! A leaf is `(path, value hash)` where the path is keccak256 of the borsh
//! state key. The tree is the sparse Merkle tree of depth 64 nibbles with the
//! usual compression (as in Diem's Jellyfish tree): a subtree holding one leaf
//! *is* that leaf, wherever it sits; a subtree holding two or more is an
//! internal node with up to 16 children. The shape therefore depends only on
//! the set of leaves, never on the order they were inserted in, which is what
//! lets a snapshot be checked piece by piece ([`summarize`], [`combine`]).
//!
//! Hashes: a leaf is `keccak(0x00 ‖ path ‖ value hash)`, a node is
//! `keccak(0x01 ‖ bitmap ‖ child hashes in nibble order)`, the empty tree is
//! `keccak("")`.
//!
//! Only internal nodes are stored (keyed by their [`Prefix`]); leaves live in
//! the state table. An update is pure: [`update`] reads through a
//! [`NodeSource`] and returns the node writes, which the caller commits in
//! the same SQL transaction as the block. That is also how a reorg or a
//! miner template evaluates a root without touching the stored tree.
//!
//! Why our own tree rather than the `jmt` crate: jmt versions every node and
//! collects stale ones, while the chain already keeps per-block undo data and
//! rolls the state back through it, so an in-place tree keyed by position is
//! all we need; and jmt restores a snapshot only from ordered chunks whose
//! right edge a lying peer can truncate without being caught, where prefix
//! chunks here are each checked on their own and in any order.
//!
//! The other candidates fit no better. `trie-db` (Parity's Ethereum-style
//! Merkle Patricia trie) keys nodes by hash in a reference-counted node
//! database, so each block leaves stale nodes that only a journal with
//! reference counts (what parity-db/kvdb do) can collect; we would rebuild
//! that on SQLite, and its extension nodes cross prefix boundaries, so a
//! fixed-depth prefix is not always a node and chunks could not be checked
//! against per-prefix summaries. Nervos' `sparse-merkle-tree` is binary:
//! about four times as many stored nodes per changed key as a hexary tree,
//! and it has no per-prefix summary or chunked restore either. What is
//! left to write is small (this file) and property-tested against a
//! from-scratch rebuild.

use std::collections::HashMap;

use borsh::{BorshDeserialize, BorshSerialize};
use rayon::prelude::*;
use sha3::{Digest, Keccak256};

use crate::crypto::{Hash, keccak256, keccak256_concat};

/// Nibbles in a path.
pub const PATH_NIBBLES: usize = 64;

/// Below this many leaves (or changes), the root's sixteen subtrees are
/// built on one thread: handing them to rayon costs more than it saves.
const PARALLEL_MIN: usize = 256;

/// The root of a tree without leaves.
pub fn empty_root() -> Hash {
    keccak256(b"")
}

pub fn leaf_hash(path: &Hash, value: &Hash) -> Hash {
    keccak256_concat(&[&[0u8], &path.0, &value.0])
}

/// The nibble of `path` at `index` (0 is the high half of the first byte).
pub fn nibble(path: &Hash, index: usize) -> u8 {
    let b = path.0[index / 2];
    if index.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0x0f
    }
}

/// A position in the tree: the first `len` nibbles of a path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Prefix {
    len: u8,
    bytes: [u8; 32],
}

impl Prefix {
    pub const ROOT: Prefix = Prefix {
        len: 0,
        bytes: [0; 32],
    };

    /// The first `len` nibbles of `path`.
    pub fn of(path: &Hash, len: usize) -> Prefix {
        let mut p = Prefix::ROOT;
        for i in 0..len.min(PATH_NIBBLES) {
            p = p.child(nibble(path, i));
        }
        p
    }

    /// The prefix of `depth` nibbles whose nibbles, read as a base-16
    /// number, are `index` (the order of [`combine`]'s summaries).
    pub fn at_index(depth: usize, index: u64) -> Prefix {
        let mut p = Prefix::ROOT;
        for i in (0..depth).rev() {
            p = p.child(((index >> (4 * i)) & 0x0f) as u8);
        }
        p
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn child(&self, n: u8) -> Prefix {
        debug_assert!(n < 16 && self.len() < PATH_NIBBLES);
        let mut out = *self;
        let i = self.len();
        if i.is_multiple_of(2) {
            out.bytes[i / 2] |= n << 4;
        } else {
            out.bytes[i / 2] |= n;
        }
        out.len += 1;
        out
    }

    pub fn contains(&self, path: &Hash) -> bool {
        Prefix::of(path, self.len()) == *self
    }

    /// The smallest path under this prefix (for range scans).
    pub fn first_path(&self) -> Hash {
        Hash(self.bytes)
    }

    /// Storage key: the length, then the nibbles packed two to a byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.len().div_ceil(2));
        out.push(self.len);
        out.extend_from_slice(&self.bytes[..self.len().div_ceil(2)]);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Prefix> {
        let (&len, rest) = bytes.split_first()?;
        let len = len as usize;
        if len > PATH_NIBBLES || rest.len() != len.div_ceil(2) {
            return None;
        }
        let mut p = Prefix {
            len: len as u8,
            bytes: [0; 32],
        };
        p.bytes[..rest.len()].copy_from_slice(rest);
        // Padding nibbles must be zero, so that one prefix has one encoding.
        (Prefix::of(&Hash(p.bytes), len) == p).then_some(p)
    }
}

/// What a parent holds for one of its 16 slots (and what a subtree is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Child {
    #[default]
    Empty,
    /// A subtree with exactly one leaf.
    Leaf { path: Hash, value: Hash },
    /// A subtree with two or more leaves: the hash of its stored node.
    Node(Hash),
}

impl Child {
    pub fn hash(&self) -> Option<Hash> {
        match self {
            Child::Empty => None,
            Child::Leaf { path, value } => Some(leaf_hash(path, value)),
            Child::Node(h) => Some(*h),
        }
    }

    /// The root hash of a tree whose top is this child.
    pub fn root_hash(&self) -> Hash {
        self.hash().unwrap_or_else(empty_root)
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Child::Empty)
    }
}

/// An internal node.
///
/// The children are boxed: sixteen inline children are 1,040 bytes, and a
/// node moves several times per update (into the writes, between the
/// writes of the root's subtrees, into the tree), which with a million
/// accounts made those copies and the growth of the tree's map cost more
/// than the hashing. Boxed, a move is a pointer and the map holds small
/// entries. Borsh encodes a box as its contents, so the stored format is
/// the same.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Node {
    pub children: Box<[Child; 16]>,
}

impl Node {
    pub fn hash(&self) -> Hash {
        let mut bitmap = 0u16;
        for (i, c) in self.children.iter().enumerate() {
            if !c.is_empty() {
                bitmap |= 1 << i;
            }
        }
        let mut h = Keccak256::new();
        h.update([1u8]);
        h.update(bitmap.to_be_bytes());
        for c in self.children.iter() {
            if let Some(ch) = c.hash() {
                h.update(ch.0);
            }
        }
        Hash(h.finalize().into())
    }
}

/// Where an update reads the nodes it does not change. `Sync`, because the
/// root's subtrees are updated on all cores.
pub trait NodeSource: Sync {
    fn node(&self, prefix: &Prefix) -> Option<&Node>;
}

/// Node writes: `Some` stores the node at that prefix, `None` deletes it.
pub type NodeWrites = HashMap<Prefix, Option<Node>>;

/// The outcome of [`update`]: the new top of the tree and the node writes
/// that get there.
#[derive(Debug, Default)]
pub struct Update {
    pub root: Child,
    pub writes: NodeWrites,
}

/// One change: a leaf's path and its new value hash (`None` removes it).
pub type LeafChange = (Hash, Option<Hash>);

/// Applies `changes` (sorted by path, one per path) to the tree whose top is
/// `root` and whose nodes `source` holds. Reads only the nodes on the
/// changed paths.
pub fn update(source: &dyn NodeSource, root: Child, changes: &[LeafChange]) -> Update {
    debug_assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
    let mut writes = NodeWrites::new();
    let root = update_child(source, &mut writes, Prefix::ROOT, root, changes);
    Update { root, writes }
}

/// The subtree of `leaves` (sorted by path, all under `prefix`), with the
/// nodes that represent it written to `writes`.
pub fn build(writes: &mut NodeWrites, prefix: Prefix, leaves: &[(Hash, Hash)]) -> Child {
    match leaves {
        [] => Child::Empty,
        [(path, value)] => Child::Leaf {
            path: *path,
            value: *value,
        },
        _ if prefix.is_empty() && leaves.len() >= PARALLEL_MIN => {
            let children = subtrees_in_parallel(
                writes,
                leaves,
                |l| &l.0,
                |n, group, w| build(w, Prefix::ROOT.child(n), group),
            )
            .map(|(_, c)| c);
            finish(&Empty, writes, prefix, children)
        }
        _ => {
            let mut children = [Child::Empty; 16];
            for (n, group) in groups(leaves, prefix.len(), |l| &l.0) {
                children[n as usize] = build(writes, prefix.child(n), group);
            }
            finish(&Empty, writes, prefix, children)
        }
    }
}

/// What the subtree of `leaves` under `prefix` is, without keeping nodes.
pub fn summarize(prefix: Prefix, leaves: &[(Hash, Hash)]) -> Child {
    build(&mut NodeWrites::new(), prefix, leaves)
}

/// The top of the tree from the summaries of every prefix `depth` nibbles
/// long, in index order (`16^depth` of them), writing the nodes above that
/// depth to `writes`. `None` if the count is wrong.
pub fn combine(writes: &mut NodeWrites, depth: usize, summaries: &[Child]) -> Option<Child> {
    if summaries.len() as u64 != 16u64.checked_pow(depth as u32)? {
        return None;
    }
    let mut level = summaries.to_vec();
    for d in (0..depth).rev() {
        level = level
            .chunks(16)
            .enumerate()
            .map(|(i, group)| {
                let children: [Child; 16] = group.try_into().expect("chunks of 16");
                finish(&Empty, writes, Prefix::at_index(d, i as u64), children)
            })
            .collect();
    }
    Some(level[0])
}

/// A tree held in memory: its top and its internal nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trie {
    nodes: HashMap<Prefix, Node>,
    root: Child,
}

impl Trie {
    /// A tree from stored nodes. Without a node at the root the tree holds
    /// at most one leaf, which only the leaves can tell: `single` is it.
    pub fn from_nodes(nodes: HashMap<Prefix, Node>, single: Option<(Hash, Hash)>) -> Trie {
        let root = match nodes.get(&Prefix::ROOT) {
            Some(n) => Child::Node(n.hash()),
            None => single.map_or(Child::Empty, |(path, value)| Child::Leaf { path, value }),
        };
        Trie { nodes, root }
    }

    pub fn root(&self) -> Child {
        self.root
    }

    pub fn root_hash(&self) -> Hash {
        self.root.root_hash()
    }

    /// Stored internal nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The internal nodes and where they are.
    pub fn nodes(&self) -> impl Iterator<Item = (&Prefix, &Node)> {
        self.nodes.iter()
    }

    pub fn update(&self, changes: &[LeafChange]) -> Update {
        update(self, self.root, changes)
    }

    /// Applies an [`Update`] computed against this tree (or against a
    /// [`Layered`] view whose writes it includes).
    pub fn apply(&mut self, root: Child, writes: NodeWrites) {
        for (prefix, node) in writes {
            match node {
                Some(n) => self.nodes.insert(prefix, n),
                None => self.nodes.remove(&prefix),
            };
        }
        self.root = root;
    }
}

impl NodeSource for Trie {
    fn node(&self, prefix: &Prefix) -> Option<&Node> {
        self.nodes.get(prefix)
    }
}

/// Pending writes over a tree, read as one.
pub struct Layered<'a> {
    pub base: &'a Trie,
    pub writes: &'a NodeWrites,
}

impl NodeSource for Layered<'_> {
    fn node(&self, prefix: &Prefix) -> Option<&Node> {
        match self.writes.get(prefix) {
            Some(n) => n.as_ref(),
            None => self.base.node(prefix),
        }
    }
}

struct Empty;

impl NodeSource for Empty {
    fn node(&self, _: &Prefix) -> Option<&Node> {
        None
    }
}

fn lookup<'a>(source: &'a dyn NodeSource, writes: &'a NodeWrites, p: &Prefix) -> Option<&'a Node> {
    match writes.get(p) {
        Some(n) => n.as_ref(),
        None => source.node(p),
    }
}

fn update_child(
    source: &dyn NodeSource,
    writes: &mut NodeWrites,
    prefix: Prefix,
    current: Child,
    changes: &[LeafChange],
) -> Child {
    if changes.is_empty() {
        return current;
    }
    match current {
        Child::Node(_) => {
            let node = lookup(source, writes, &prefix)
                .unwrap_or_else(|| panic!("trie node {prefix:?} is referenced but not stored"));
            let mut children = *node.children;
            if prefix.is_empty() && changes.len() >= PARALLEL_MIN {
                let children_before = children;
                // Disjoint subtrees: each reads only nodes under its own
                // nibble, so none needs another's writes.
                let updated = subtrees_in_parallel(
                    writes,
                    changes,
                    |c| &c.0,
                    |n, group, w| {
                        update_child(
                            source,
                            w,
                            Prefix::ROOT.child(n),
                            children_before[n as usize],
                            group,
                        )
                    },
                );
                for (i, (touched, child)) in updated.into_iter().enumerate() {
                    if touched {
                        children[i] = child;
                    }
                }
            } else {
                for (n, group) in groups(changes, prefix.len(), |c| &c.0) {
                    let i = n as usize;
                    children[i] = update_child(source, writes, prefix.child(n), children[i], group);
                }
            }
            finish(source, writes, prefix, children)
        }
        Child::Empty | Child::Leaf { .. } => {
            let mut leaves: Vec<(Hash, Hash)> = changes
                .iter()
                .filter_map(|(p, v)| v.map(|v| (*p, v)))
                .collect();
            if let Child::Leaf { path, value } = current
                && changes.binary_search_by(|c| c.0.cmp(&path)).is_err()
            {
                let at = leaves.partition_point(|l| l.0 < path);
                leaves.insert(at, (path, value));
            }
            build(writes, prefix, &leaves)
        }
    }
}

/// The child a node with these children amounts to, storing or deleting
/// the node at `prefix` as needed.
fn finish(
    source: &dyn NodeSource,
    writes: &mut NodeWrites,
    prefix: Prefix,
    children: [Child; 16],
) -> Child {
    let mut present = children.iter().filter(|c| !c.is_empty());
    let collapsed = match (present.next(), present.next()) {
        (None, _) => Some(Child::Empty),
        (Some(leaf @ Child::Leaf { .. }), None) => Some(*leaf),
        _ => None,
    };
    match collapsed {
        Some(child) => {
            if lookup(source, writes, &prefix).is_some() {
                writes.insert(prefix, None);
            }
            child
        }
        None => {
            let node = Node {
                children: Box::new(children),
            };
            let hash = node.hash();
            writes.insert(prefix, Some(node));
            Child::Node(hash)
        }
    }
}

/// Runs `f` on the root's sixteen groups of `items` (sorted by path) on
/// all cores, each with writes of its own that are merged into `writes`.
/// Returns, per nibble, whether it had items and the child `f` made.
fn subtrees_in_parallel<T: Sync>(
    writes: &mut NodeWrites,
    items: &[T],
    path: impl Fn(&T) -> &Hash + Sync,
    f: impl Fn(u8, &[T], &mut NodeWrites) -> Child + Sync,
) -> [(bool, Child); 16] {
    let parts: Vec<(u8, &[T])> = groups(items, 0, &path).collect();
    let done: Vec<(u8, Child, NodeWrites)> = parts
        .into_par_iter()
        .map(|(n, group)| {
            let mut w = NodeWrites::new();
            let child = f(n, group, &mut w);
            (n, child, w)
        })
        .collect();
    let mut out = [(false, Child::Empty); 16];
    for (n, child, w) in done {
        out[n as usize] = (true, child);
        writes.extend(w);
    }
    out
}

/// Splits items sorted by path into runs sharing the nibble at `depth`.
fn groups<T>(
    items: &[T],
    depth: usize,
    path: impl Fn(&T) -> &Hash,
) -> impl Iterator<Item = (u8, &[T])> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let n = nibble(path(first), depth);
        let end = rest.partition_point(|x| nibble(path(x), depth) <= n);
        let (group, tail) = rest.split_at(end);
        rest = tail;
        Some((n, group))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn h(i: u64) -> Hash {
        keccak256(&i.to_be_bytes())
    }

    /// The definition, computed directly from the leaf set.
    fn reference(leaves: &BTreeMap<Hash, Hash>) -> Hash {
        let v: Vec<(Hash, Hash)> = leaves.iter().map(|(k, v)| (*k, *v)).collect();
        summarize(Prefix::ROOT, &v).root_hash()
    }

    fn apply(trie: &mut Trie, changes: &BTreeMap<Hash, Option<Hash>>) {
        let list: Vec<LeafChange> = changes.iter().map(|(k, v)| (*k, *v)).collect();
        let u = trie.update(&list);
        trie.apply(u.root, u.writes);
    }

    /// A trie rebuilt from its leaves stores exactly the same nodes.
    fn rebuilt(leaves: &BTreeMap<Hash, Hash>) -> Trie {
        let v: Vec<(Hash, Hash)> = leaves.iter().map(|(k, v)| (*k, *v)).collect();
        let mut writes = NodeWrites::new();
        let root = build(&mut writes, Prefix::ROOT, &v);
        let mut t = Trie::default();
        t.apply(root, writes);
        t
    }

    #[test]
    fn empty_single_and_collapse() {
        let mut t = Trie::default();
        assert_eq!(t.root_hash(), empty_root());
        apply(&mut t, &BTreeMap::from([(h(1), Some(h(10)))]));
        assert_eq!(t.root_hash(), leaf_hash(&h(1), &h(10)));
        assert_eq!(t.node_count(), 0, "a single leaf needs no node");
        apply(&mut t, &BTreeMap::from([(h(2), Some(h(20)))]));
        assert!(t.node_count() >= 1);
        apply(&mut t, &BTreeMap::from([(h(2), None)]));
        assert_eq!(t.root_hash(), leaf_hash(&h(1), &h(10)));
        assert_eq!(
            t.node_count(),
            0,
            "deleting back to one leaf removes every node"
        );
        apply(&mut t, &BTreeMap::from([(h(1), None)]));
        assert_eq!(t.root_hash(), empty_root());
    }

    #[test]
    fn prefix_encoding_round_trips_and_rejects_junk() {
        let p = Prefix::of(&h(7), 5);
        assert_eq!(Prefix::decode(&p.encode()), Some(p));
        assert_eq!(Prefix::decode(&Prefix::ROOT.encode()), Some(Prefix::ROOT));
        assert_eq!(Prefix::decode(&[]), None);
        assert_eq!(Prefix::decode(&[65]), None);
        assert_eq!(Prefix::decode(&[1, 0x0f]), None, "non-zero padding");
        assert_eq!(Prefix::at_index(2, 0x3a), Prefix::ROOT.child(3).child(0xa));
        assert!(p.contains(&h(7)));
    }

    #[test]
    fn summaries_combine_to_the_root() {
        let leaves: BTreeMap<Hash, Hash> = (0..300).map(|i| (h(i), h(i + 1000))).collect();
        let v: Vec<(Hash, Hash)> = leaves.iter().map(|(k, v)| (*k, *v)).collect();
        for depth in 0..=2 {
            let summaries: Vec<Child> = (0..16u64.pow(depth as u32))
                .map(|i| {
                    let p = Prefix::at_index(depth, i);
                    let under: Vec<_> = v.iter().copied().filter(|l| p.contains(&l.0)).collect();
                    summarize(p, &under)
                })
                .collect();
            let top = combine(&mut NodeWrites::new(), depth, &summaries).unwrap();
            assert_eq!(top.root_hash(), reference(&leaves), "depth {depth}");
        }
        assert!(combine(&mut NodeWrites::new(), 1, &[Child::Empty; 3]).is_none());
    }

    /// Big batches go through the parallel paths (the root's subtrees on
    /// all cores), small ones through the sequential one: same nodes.
    #[test]
    fn parallel_updates_and_builds_equal_sequential_ones() {
        let first: BTreeMap<Hash, Option<Hash>> = (0..2000).map(|i| (h(i), Some(h(i)))).collect();
        // Deletes, changes and inserts, across every root nibble.
        let second: BTreeMap<Hash, Option<Hash>> = (1000..2600)
            .map(|i| (h(i), (i % 3 != 0).then(|| h(i + 7))))
            .collect();
        assert!(first.len() >= PARALLEL_MIN && second.len() >= PARALLEL_MIN);
        let mut big = Trie::default();
        apply(&mut big, &first);
        apply(&mut big, &second);

        let mut small = Trie::default();
        let mut leaves = BTreeMap::new();
        for changes in [&first, &second] {
            let list: Vec<_> = changes.iter().collect();
            for batch in list.chunks(PARALLEL_MIN / 4) {
                apply(&mut small, &batch.iter().map(|(k, v)| (**k, **v)).collect());
            }
            for (k, v) in changes {
                match v {
                    Some(v) => leaves.insert(*k, *v),
                    None => leaves.remove(k),
                };
            }
        }
        assert_eq!(big, small);
        assert_eq!(big, rebuilt(&leaves));
        assert!(big.node_count() > 16);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of batches gives the root (and the very nodes) of the
        /// final leaf set, whatever the order the leaves came in.
        #[test]
        fn incremental_equals_rebuild(batches in prop::collection::vec(
            prop::collection::vec((0u64..200, prop::option::of(0u64..5)), 0..40), 1..8)) {
            let mut trie = Trie::default();
            let mut leaves = BTreeMap::new();
            for batch in batches {
                let changes: BTreeMap<Hash, Option<Hash>> =
                    batch.into_iter().map(|(k, v)| (h(k), v.map(h))).collect();
                for (k, v) in &changes {
                    match v { Some(v) => { leaves.insert(*k, *v); } None => { leaves.remove(k); } }
                }
                apply(&mut trie, &changes);
                prop_assert_eq!(trie.root_hash(), reference(&leaves));
            }
            prop_assert_eq!(&trie, &rebuilt(&leaves));
        }

        /// An update read through pending writes equals applying both.
        #[test]
        fn layered_updates_compose(a in prop::collection::vec((0u64..100, prop::option::of(0u64..5)), 1..30),
                                   b in prop::collection::vec((0u64..100, prop::option::of(0u64..5)), 1..30)) {
            let base: BTreeMap<Hash, Option<Hash>> = (0..50).map(|i| (h(i), Some(h(i)))).collect();
            let mut trie = Trie::default();
            apply(&mut trie, &base);
            let ca: Vec<LeafChange> = a.iter().map(|(k, v)| (h(*k), v.map(h))).collect::<BTreeMap<_, _>>().into_iter().collect();
            let cb: Vec<LeafChange> = b.iter().map(|(k, v)| (h(*k), v.map(h))).collect::<BTreeMap<_, _>>().into_iter().collect();
            let ua = trie.update(&ca);
            let ub = update(&Layered { base: &trie, writes: &ua.writes }, ua.root, &cb);
            let mut writes = ua.writes;
            writes.extend(ub.writes);
            let mut layered = trie.clone();
            layered.apply(ub.root, writes);
            let mut seq = trie.clone();
            let u = seq.update(&ca); seq.apply(u.root, u.writes);
            let u = seq.update(&cb); seq.apply(u.root, u.writes);
            prop_assert_eq!(layered, seq);
        }
    }
}
