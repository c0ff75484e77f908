//! State snapshots: how a node joins in seconds from a verified state, how
//! an auditor checks one, and how a node is seeded offline.
//!
//! A snapshot is the state at a final height `h` (a multiple of the
//! genesis' `snapshot_interval`, at least `reorg_horizon` below the tip).
//! It travels as a [`Manifest`] and `16^depth` chunks:
//!
//! * the manifest lists, for every trie prefix `depth` nibbles long, what
//!   the subtree under it is ([`Child`]: empty, one leaf, or a node hash).
//!   [`Manifest::check`] recombines them into a root, which must equal the
//!   state root in header `h` — a header whose seal the joining node has
//!   verified;
//! * chunk `i` is every state entry under prefix `i`; [`Manifest::check_chunk`]
//!   rebuilds its subtree and compares it with the manifest's summary.
//!   Each chunk is checked on its own, so chunks are fetched from several
//!   peers in any order and a bad one names the peer that sent it.
//!
//! A serving node reads the state at `h` without holding the chain: its
//! current rows through a read-only connection, with the keys that blocks
//! after `h` changed put back to their value at `h` from undo data
//! ([`Source`]).
//!
//! The file (`zennet chain snapshot export|import`) carries the same state
//! plus every header from genesis to `h`, so it proves itself: import checks
//! the header chain's linkage and seals from this chain's genesis, the state
//! root against header `h`, and a trailing keccak256 over the whole file.
//! `zennet chain verify` recomputes the root from the stored rows.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::block::Header;
use crate::chain::{Chain, verify_header_chain};
use crate::codec::{decode, encode};
use crate::crypto::Hash;
use crate::error::{ChainError, Result};
use crate::state::{State, StateKey, StateValue, Undo};
use crate::store::Store;
use crate::trie::{self, Child, NodeWrites, Prefix};

/// Entries per chunk the depth is chosen for (on average).
pub const TARGET_CHUNK_ENTRIES: u64 = 4096;
/// Deepest manifest: 65,536 chunks (hundreds of millions of entries).
pub const MAX_DEPTH: u8 = 4;
/// Largest manifest or chunk a node accepts from a peer.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
const FILE_MAGIC: &[u8; 8] = b"ZNSNAP\x00\x01";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a zennet snapshot file (bad magic); make one with `zennet chain snapshot export`")]
    Magic,
    #[error("snapshot file is truncated or corrupt (checksum mismatch)")]
    Checksum,
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot is for chain {got}, this node is on {expected}")]
    WrongGenesis { expected: Hash, got: Hash },
    #[error("this chain already has {0} blocks; import a snapshot only into a fresh home")]
    NotFresh(u64),
    #[error("snapshot header {height} is invalid: {reason}")]
    Headers { height: u64, reason: String },
    #[error("snapshot entries are out of order, repeated, or of the wrong kind: {0}")]
    Entries(String),
    #[error("snapshot state root {computed} does not match header {height}'s {expected}")]
    StateRoot {
        height: u64,
        expected: Hash,
        computed: Hash,
    },
    #[error("snapshot manifest is invalid: {0}")]
    Manifest(String),
    #[error("snapshot chunk {index} is invalid: {reason}")]
    Chunk { index: u64, reason: String },
    #[error("no snapshot at height {height}: {reason}")]
    NotServable { height: u64, reason: String },
}

/// The manifest depth for a state of `entries` entries.
pub fn depth_for(entries: u64) -> u8 {
    let mut depth = 1;
    while depth < MAX_DEPTH && entries / 16u64.pow(depth as u32) > TARGET_CHUNK_ENTRIES {
        depth += 1;
    }
    depth
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Manifest {
    pub height: u64,
    /// The block at `height` (whose header carries the state root).
    pub block: Hash,
    pub depth: u8,
    pub summaries: Vec<Child>,
}

/// One chunk: every entry under one prefix, in path order.
pub type Chunk = Vec<(StateKey, StateValue)>;

impl Manifest {
    /// How many chunks the manifest's depth makes (saturating: a
    /// manifest from a peer is only trusted once [`Manifest::check`]ed).
    pub fn chunks(&self) -> u64 {
        16u64.saturating_pow(self.depth as u32)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        decode(bytes, MAX_MESSAGE_BYTES, "snapshot manifest")
            .map_err(|e| SnapshotError::Decode(e.to_string()))
    }

    /// Checks the manifest against the header it names: shape, and that
    /// the summaries combine into the header's state root.
    pub fn check(&self, header: &Header) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Manifest(m));
        if header.hash() != self.block || header.height != self.height {
            return bad(format!("it names block {} at {}", self.block, self.height));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return bad(format!("depth {} is not 1 to {MAX_DEPTH}", self.depth));
        }
        for (i, s) in self.summaries.iter().enumerate() {
            if let Child::Leaf { path, .. } = s
                && !Prefix::at_index(self.depth as usize, i as u64).contains(path)
            {
                return bad(format!("summary {i} holds a leaf from another prefix"));
            }
        }
        let top = trie::combine(&mut NodeWrites::new(), self.depth as usize, &self.summaries)
            .ok_or_else(|| {
                SnapshotError::Manifest(format!(
                    "{} summaries for depth {}",
                    self.summaries.len(),
                    self.depth
                ))
            })?;
        if top.root_hash() != header.state_root {
            return bad(format!(
                "summaries combine to {}, header {} has state root {}",
                top.root_hash(),
                header.height,
                header.state_root
            ));
        }
        Ok(())
    }

    /// Checks chunk `index` against its summary; returns its leaves.
    pub fn check_chunk(
        &self,
        index: u64,
        chunk: &Chunk,
    ) -> Result<Vec<(Hash, Hash)>, SnapshotError> {
        let bad = |reason: String| Err(SnapshotError::Chunk { index, reason });
        // Checked here too, not only in `check`: the depth drives shifts
        // and powers below, and a manifest may come straight off the wire.
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return bad(format!(
                "the manifest's depth {} is not 1 to {MAX_DEPTH}",
                self.depth
            ));
        }
        let Some(expected) = self.summaries.get(index as usize) else {
            return bad(format!("the manifest has {} chunks", self.chunks()));
        };
        let prefix = Prefix::at_index(self.depth as usize, index);
        let leaves =
            leaves_of(&prefix, chunk).map_err(|reason| SnapshotError::Chunk { index, reason })?;
        let got = trie::summarize(prefix, &leaves);
        if got != *expected {
            return bad(format!(
                "its {} entries hash to {:?}, the manifest says {:?}",
                chunk.len(),
                got.hash(),
                expected.hash()
            ));
        }
        Ok(leaves)
    }
}

pub fn encode_chunk(chunk: &Chunk) -> Vec<u8> {
    encode(chunk)
}

pub fn decode_chunk(bytes: &[u8]) -> Result<Chunk, SnapshotError> {
    decode(bytes, MAX_MESSAGE_BYTES, "snapshot chunk")
        .map_err(|e| SnapshotError::Decode(e.to_string()))
}

/// The (path, value hash) leaves of entries that must all lie under
/// `prefix`, strictly in path order, each value of its key's kind.
fn leaves_of(
    prefix: &Prefix,
    entries: &[(StateKey, StateValue)],
) -> Result<Vec<(Hash, Hash)>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let path = key.path();
        if !prefix.contains(&path) {
            return Err(format!("{key:?} is not under the chunk's prefix"));
        }
        if out.last().is_some_and(|(p, _): &(Hash, Hash)| *p >= path) {
            return Err(format!("{key:?} is out of path order or repeated"));
        }
        if !value.fits(key) {
            return Err(format!("{key:?} holds another kind of value"));
        }
        out.push((path, value.hash()));
    }
    Ok(out)
}

/// Collects verified chunks, then installs them (see [`Chain::install_snapshot`]).
pub struct Assembly {
    manifest: Manifest,
    chunks: BTreeMap<u64, (Chunk, Vec<(Hash, Hash)>)>,
}

impl Assembly {
    /// Starts from a manifest already [checked](Manifest::check) against its header.
    pub fn new(manifest: Manifest) -> Assembly {
        Assembly {
            manifest,
            chunks: BTreeMap::new(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Verifies and keeps chunk `index`; an error names the bad chunk.
    pub fn add(&mut self, index: u64, chunk: Chunk) -> Result<(), SnapshotError> {
        let leaves = self.manifest.check_chunk(index, &chunk)?;
        self.chunks.insert(index, (chunk, leaves));
        Ok(())
    }

    /// Chunk indexes still missing.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.manifest.chunks())
            .filter(|i| !self.chunks.contains_key(i))
            .collect()
    }

    pub fn is_complete(&self) -> bool {
        self.chunks.len() as u64 == self.manifest.chunks()
    }

    /// The state and its trie nodes, built from the chunks.
    fn into_state(self) -> (State, NodeWrites) {
        let depth = self.manifest.depth as usize;
        let mut writes = NodeWrites::new();
        let mut entries = BTreeMap::new();
        for (index, (chunk, leaves)) in self.chunks {
            trie::build(&mut writes, Prefix::at_index(depth, index), &leaves);
            entries.extend(chunk);
        }
        trie::combine(&mut writes, depth, &self.manifest.summaries).expect("checked manifest");
        let nodes: HashMap<Prefix, trie::Node> = writes
            .iter()
            .filter_map(|(p, n)| n.clone().map(|n| (*p, n)))
            .collect();
        (State::from_parts(entries, nodes), writes)
    }
}

impl Chain {
    /// Installs a complete, verified snapshot. `headers` runs from our tip's
    /// child to the snapshot block, and is checked here (linkage, rules,
    /// seals) before anything is written; the header at the end must be the
    /// manifest's block. The state's blocks become canonical header-only;
    /// blocks after it import as usual.
    pub fn install_snapshot(
        &mut self,
        headers: &[Header],
        assembly: Assembly,
        now_ms: u64,
    ) -> Result<()> {
        if !assembly.is_complete() {
            return Err(SnapshotError::Manifest(format!(
                "{} chunks still missing",
                assembly.missing().len()
            ))
            .into());
        }
        let manifest = assembly.manifest().clone();
        let last = headers.last().ok_or_else(|| SnapshotError::Headers {
            height: manifest.height,
            reason: "no headers lead to the snapshot".into(),
        })?;
        if last.height <= self.tip().header.height {
            return Err(SnapshotError::NotServable {
                height: last.height,
                reason: format!("this node is already at {}", self.tip().header.height),
            }
            .into());
        }
        manifest.check(last)?;
        self.check_headers(headers, now_ms)?;
        let (state, writes) = assembly.into_state();
        debug_assert_eq!(state.root(), last.state_root);
        let entries: Vec<(StateKey, StateValue)> =
            state.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.install(headers, state, |w| {
            for (k, v) in &entries {
                w.write_state(k, Some(v))?;
            }
            for (p, n) in &writes {
                if let Some(n) = n {
                    w.write_trie(p, Some(n))?;
                }
            }
            Ok(())
        })?;
        tracing::info!(
            height = manifest.height,
            entries = entries.len(),
            "installed state snapshot"
        );
        Ok(())
    }

    fn check_headers(&self, headers: &[Header], now_ms: u64) -> Result<()> {
        let parent = self.tip().header.clone();
        let (good, failure) =
            verify_header_chain(self.genesis(), self.ethash(), &parent, headers, now_ms);
        if let Some(e) = failure {
            return Err(SnapshotError::Headers {
                height: parent.height + 1 + good as u64,
                reason: e.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Writes the state at `height` (default: the newest final snapshot
    /// height, else the tip) with every header up to it to `out`. Reads in
    /// one read transaction, so a node importing meanwhile does not tear it.
    pub fn export_snapshot(
        &self,
        height: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<SnapshotInfo> {
        let tip = self.tip().header.height;
        let height = height
            .or_else(|| self.genesis().consensus.snapshot_height(tip))
            .unwrap_or(tip);
        if height == 0 || height < self.snapshot_base() {
            return Err(SnapshotError::NotServable {
                height,
                reason: format!(
                    "this node has state from height {} on (and genesis needs no snapshot)",
                    self.snapshot_base().max(1)
                ),
            }
            .into());
        }
        let (headers, entries) = self.store().read(|store| {
            let source = Source::new(store, height)?;
            let mut headers = Vec::with_capacity(height as usize);
            for h in 1..=height {
                let hash = store
                    .canonical_hash(h)?
                    .ok_or_else(|| ChainError::Corrupt(format!("no canonical block at {h}")))?;
                let meta = store
                    .block_meta(&hash)?
                    .ok_or_else(|| ChainError::Corrupt(format!("block {hash} is not stored")))?;
                headers.push(meta.header);
            }
            let mut entries = Vec::new();
            source.for_each(&Prefix::ROOT, |k, v| {
                entries.push((k, v));
                Ok(())
            })?;
            Ok((headers, entries))
        })?;
        let last = headers.last().expect("height >= 1").clone();
        let count = entries.len() as u64;
        write_file(
            &SnapshotFile {
                genesis: self.genesis_hash(),
                headers,
                entries,
            },
            out,
        )?;
        Ok(SnapshotInfo {
            height,
            block: last.hash(),
            state_root: last.state_root,
            entries: count,
        })
    }

    /// Imports a snapshot file into a fresh chain (height 0) after checking
    /// it completely: checksum, genesis, every header, the state root.
    pub fn import_snapshot(&mut self, input: &mut dyn Read, now_ms: u64) -> Result<SnapshotInfo> {
        if self.tip().header.height != 0 {
            return Err(SnapshotError::NotFresh(self.tip().header.height).into());
        }
        let file = read_file(input)?;
        if file.genesis != self.genesis_hash() {
            return Err(SnapshotError::WrongGenesis {
                expected: self.genesis_hash(),
                got: file.genesis,
            }
            .into());
        }
        let last = file
            .headers
            .last()
            .cloned()
            .ok_or_else(|| SnapshotError::Headers {
                height: 0,
                reason: "a snapshot at genesis carries nothing to import".into(),
            })?;
        self.check_headers(&file.headers, now_ms)?;
        let state = state_from_entries(file.entries)?;
        if state.root() != last.state_root {
            return Err(SnapshotError::StateRoot {
                height: last.height,
                expected: last.state_root,
                computed: state.root(),
            }
            .into());
        }
        let entries: Vec<(StateKey, StateValue)> =
            state.iter().map(|(k, v)| (*k, v.clone())).collect();
        // The tree `state_from_entries` has just built, not a second one.
        let nodes: Vec<(Prefix, trie::Node)> =
            state.trie().nodes().map(|(p, n)| (*p, n.clone())).collect();
        self.install(&file.headers, state, |w| {
            for (k, v) in &entries {
                w.write_state(k, Some(v))?;
            }
            for (p, n) in &nodes {
                w.write_trie(p, Some(n))?;
            }
            Ok(())
        })?;
        Ok(SnapshotInfo {
            height: last.height,
            block: last.hash(),
            state_root: last.state_root,
            entries: entries.len() as u64,
        })
    }

    /// Recomputes the state root from the stored state rows and compares it
    /// with the tip header's and with the stored trie.
    pub fn verify_state(&self) -> Result<VerifyReport> {
        let mut leaves = Vec::new();
        self.store()
            .for_each_state_under(&Prefix::ROOT, |path, key, value| {
                if key.path() != path {
                    return Err(ChainError::Corrupt(format!(
                        "{key:?} is stored at the wrong path"
                    )));
                }
                leaves.push((path, value.hash()));
                Ok(())
            })?;
        let mut writes = NodeWrites::new();
        let top = trie::build(&mut writes, Prefix::ROOT, &leaves);
        let rebuilt: HashMap<Prefix, trie::Node> = writes
            .into_iter()
            .filter_map(|(p, n)| n.map(|n| (p, n)))
            .collect();
        let tip = self.tip();
        // The trie table is compared only when it claims to hold the tip's
        // tree; otherwise it is behind by design (see `crate::store`).
        let (trie_root, mismatched_nodes) =
            if self.store().trie_root()? == Some(tip.header.state_root) {
                let stored = self.store().load_trie()?;
                let single = match leaves.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                };
                let stored_root = match stored.get(&Prefix::ROOT) {
                    Some(n) => n.hash(),
                    None => trie::Trie::from_nodes(HashMap::new(), single).root_hash(),
                };
                let mismatched = rebuilt
                    .iter()
                    .filter(|(p, n)| stored.get(p) != Some(*n))
                    .count()
                    + stored.len().saturating_sub(rebuilt.len());
                (Some(stored_root), mismatched as u64)
            } else {
                (None, 0)
            };
        Ok(VerifyReport {
            height: tip.header.height,
            entries: leaves.len() as u64,
            computed_root: top.root_hash(),
            header_root: tip.header.state_root,
            trie_root,
            mismatched_nodes,
        })
    }
}

/// What `zennet chain verify` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub height: u64,
    pub entries: u64,
    /// From the state rows alone.
    pub computed_root: Hash,
    /// What the tip header commits to.
    pub header_root: Hash,
    /// What the stored trie says, when it is marked as the tip's tree
    /// (`None`: it is behind the tip, and the tree in use was rebuilt from
    /// the rows on open).
    pub trie_root: Option<Hash>,
    /// Stored trie nodes that differ from the rebuilt ones (0 when the
    /// table is behind).
    pub mismatched_nodes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.computed_root == self.header_root
            && self.trie_root.is_none_or(|r| r == self.header_root)
            && self.mismatched_nodes == 0
    }
}

/// What an export or import covered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub height: u64,
    pub block: Hash,
    pub state_root: Hash,
    pub entries: u64,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct FileHeader {
    genesis: Hash,
    height: u64,
    entries: u64,
}

/// A snapshot file, decoded but not yet checked against any chain.
#[derive(Debug)]
pub struct SnapshotFile {
    pub genesis: Hash,
    /// Headers 1..=height.
    pub headers: Vec<Header>,
    pub entries: Vec<(StateKey, StateValue)>,
}

/// Writes a snapshot file (see [`read_file`] for the layout).
pub fn write_file(file: &SnapshotFile, out: &mut dyn Write) -> Result<()> {
    let mut w = HashingWriter::new(out);
    w.write_all(FILE_MAGIC)?;
    w.write_all(&encode(&FileHeader {
        genesis: file.genesis,
        height: file.headers.len() as u64,
        entries: file.entries.len() as u64,
    }))?;
    for h in &file.headers {
        w.write_all(&encode(h))?;
    }
    for e in &file.entries {
        w.write_all(&encode(e))?;
    }
    let sum = w.finish();
    out_write(&mut w, &sum)
}

/// Most headers a file may carry (a decade of 2 s blocks).
const MAX_FILE_HEADERS: u64 = 200_000_000;
const MAX_FILE_ENTRIES: u64 = 1 << 32;

/// Decodes a snapshot file: magic, header, headers, entries, checksum.
/// Nothing here trusts a count for an allocation.
pub fn read_file(input: &mut dyn Read) -> Result<SnapshotFile, SnapshotError> {
    let mut r = HashingReader::new(input);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| SnapshotError::Magic)?;
    if &magic != FILE_MAGIC {
        return Err(SnapshotError::Magic);
    }
    let dec = |e: std::io::Error| SnapshotError::Decode(e.to_string());
    let head = FileHeader::deserialize_reader(&mut r).map_err(dec)?;
    if head.height > MAX_FILE_HEADERS || head.entries > MAX_FILE_ENTRIES {
        return Err(SnapshotError::Decode(format!(
            "{} headers and {} entries is more than a snapshot holds",
            head.height, head.entries
        )));
    }
    let mut headers = Vec::new();
    for _ in 0..head.height {
        headers.push(Header::deserialize_reader(&mut r).map_err(dec)?);
    }
    let mut entries = Vec::new();
    for _ in 0..head.entries {
        entries.push(<(StateKey, StateValue)>::deserialize_reader(&mut r).map_err(dec)?);
    }
    let computed = r.sum();
    let mut sum = [0u8; 32];
    r.inner
        .read_exact(&mut sum)
        .map_err(|_| SnapshotError::Checksum)?;
    let mut extra = [0u8; 1];
    if sum != computed.0 || r.inner.read(&mut extra).map_err(dec)? != 0 {
        return Err(SnapshotError::Checksum);
    }
    Ok(SnapshotFile {
        genesis: head.genesis,
        headers,
        entries,
    })
}

/// A state from entries that must be in path order, unique, each of its
/// key's kind.
fn state_from_entries(entries: Vec<(StateKey, StateValue)>) -> Result<State, SnapshotError> {
    leaves_of(&Prefix::ROOT, &entries).map_err(SnapshotError::Entries)?;
    Ok(State::from_entries(entries))
}

/// The state at one final height, read from a store whose tip may have
/// moved on: current rows, with the keys later blocks changed put back from
/// their undo data. Build it inside [`Store::read`] so that rows and undo
/// data are of one tip.
pub struct Source<'a> {
    store: &'a Store,
    pub header: Header,
    /// Values at `height` of every key changed after it, by path.
    reverted: BTreeMap<Hash, (StateKey, Option<StateValue>)>,
}

impl<'a> Source<'a> {
    pub fn new(store: &'a Store, height: u64) -> Result<Source<'a>> {
        let not =
            |reason: String| -> ChainError { SnapshotError::NotServable { height, reason }.into() };
        let tip_hash = store
            .meta_hash("tip")?
            .ok_or_else(|| not("no tip".into()))?;
        let tip = store
            .block_meta(&tip_hash)?
            .ok_or_else(|| not("the tip is not stored".into()))?
            .header
            .height;
        if height > tip {
            return Err(not(format!("the tip is at {tip}")));
        }
        let hash = store
            .canonical_hash(height)?
            .ok_or_else(|| not("no canonical block there".into()))?;
        let header = store
            .block_meta(&hash)?
            .ok_or_else(|| not("the block is not stored".into()))?
            .header;
        let mut reverted = BTreeMap::new();
        for h in height + 1..=tip {
            let hash = store
                .canonical_hash(h)?
                .ok_or_else(|| ChainError::Corrupt(format!("no canonical block at {h}")))?;
            let undo: Undo = store
                .undo(&hash)?
                .ok_or_else(|| not(format!("undo data of block {h} is pruned")))?;
            for (key, previous) in undo {
                reverted.entry(key.path()).or_insert((key, previous));
            }
        }
        Ok(Source {
            store,
            header,
            reverted,
        })
    }

    /// Calls `f` with every entry under `prefix` at this height, in path order.
    pub fn for_each(
        &self,
        prefix: &Prefix,
        mut f: impl FnMut(StateKey, StateValue) -> Result<()>,
    ) -> Result<()> {
        let mut reverted = self
            .reverted
            .range(prefix.first_path()..)
            .take_while(|(p, _)| prefix.contains(p))
            .peekable();
        let mut emit_reverted_before = |limit: Option<&Hash>,
                                        f: &mut dyn FnMut(StateKey, StateValue) -> Result<()>|
         -> Result<()> {
            while let Some((p, (k, v))) = reverted.peek() {
                if limit.is_some_and(|l| *p >= l) {
                    break;
                }
                if let Some(v) = v {
                    f(*k, v.clone())?;
                }
                reverted.next();
            }
            Ok(())
        };
        self.store
            .for_each_state_under(prefix, |path, key, value| {
                emit_reverted_before(Some(&path), &mut f)?;
                if !self.reverted.contains_key(&path) {
                    f(key, value)?;
                }
                Ok(())
            })?;
        emit_reverted_before(None, &mut f)
    }

    pub fn chunk(&self, depth: u8, index: u64) -> Result<Chunk> {
        if depth == 0 || depth > MAX_DEPTH || index >= 16u64.pow(depth as u32) {
            return Err(SnapshotError::Chunk {
                index,
                reason: format!("no chunk {index} at depth {depth}"),
            }
            .into());
        }
        let mut out = Vec::new();
        self.for_each(&Prefix::at_index(depth as usize, index), |k, v| {
            out.push((k, v));
            Ok(())
        })?;
        Ok(out)
    }

    /// The manifest at this height, with the depth chosen for its size.
    pub fn manifest(&self) -> Result<Manifest> {
        let depth = depth_for(self.store.state_count()?);
        let mut summaries = Vec::with_capacity(16usize.pow(depth as u32));
        for index in 0..16u64.pow(depth as u32) {
            let prefix = Prefix::at_index(depth as usize, index);
            let chunk = self.chunk(depth, index)?;
            let leaves: Vec<(Hash, Hash)> =
                chunk.iter().map(|(k, v)| (k.path(), v.hash())).collect();
            summaries.push(trie::summarize(prefix, &leaves));
        }
        Ok(Manifest {
            height: self.header.height,
            block: self.header.hash(),
            depth,
            summaries,
        })
    }
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: sha3::Keccak256,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut dyn Write) -> Self {
        HashingWriter {
            inner,
            hasher: sha3::Digest::new(),
        }
    }

    fn finish(&mut self) -> [u8; 32] {
        sha3::Digest::finalize_reset(&mut self.hasher).into()
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha3::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The checksum goes to the file without being hashed itself.
fn out_write(w: &mut HashingWriter<'_>, sum: &[u8; 32]) -> Result<()> {
    w.inner.write_all(sum)?;
    w.inner.flush()?;
    Ok(())
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: sha3::Keccak256,
}

impl<'a> HashingReader<'a> {
    fn new(inner: &'a mut dyn Read) -> Self {
        HashingReader {
            inner,
            hasher: sha3::Digest::new(),
        }
    }

    fn sum(&mut self) -> Hash {
        Hash(sha3::Digest::finalize_reset(&mut self.hasher).into())
    }
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha3::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}
