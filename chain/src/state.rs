//! The ledger state: accounts, identities, open tasks, storage tasks and
//! channels, with the
//! [`Trie`] that commits to them.
//!
//! The state is one map from [`StateKey`] to [`StateValue`]; each entry is a
//! leaf of the trie at `keccak256(borsh(key))`, holding `keccak256(borsh(value))`.
//! One mechanism thus serves the state root, the database mirror, per-block
//! undo data and snapshots.
//!
//! Blocks execute against an [`Overlay`] over anything that reads like a
//! state ([`StateRead`]): the committed [`State`], or a [`Pending`] stack of
//! changes a reorg builds up before it writes anything. Only a block that
//! executes completely is committed, which yields the undo record a reorg
//! uses to roll the block back.

use std::collections::{BTreeMap, BTreeSet};

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::codec::{amount_str, encode};
use crate::crypto::{Address, Hash, keccak256};
use crate::identity::{Identity, Role};
use crate::storage::StorageRecord;
use crate::task::TaskRecord;
use crate::trie::{self, Child, LeafChange, NodeSource, NodeWrites, Prefix, Trie, Update};
use crate::tx::Amount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub enum StateKey {
    Account(Address),
    Identity(Address, Role),
    Task(Hash),
    Channel(Hash),
    Storage(Hash),
}

impl StateKey {
    /// Where this key's leaf sits in the trie.
    pub fn path(&self) -> Hash {
        keccak256(&encode(self))
    }

    /// The id of an announcement (VM or storage task) that is dropped at
    /// its prune height.
    fn prunable(&self) -> Option<Hash> {
        match self {
            StateKey::Task(id) | StateKey::Storage(id) => Some(*id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum StateValue {
    Account(Account),
    Identity(IdentityRecord),
    Task(Box<TaskRecord>),
    Channel(Channel),
    Storage(Box<StorageRecord>),
}

impl StateValue {
    /// What the trie leaf holds.
    pub fn hash(&self) -> Hash {
        keccak256(&encode(self))
    }

    /// A value of the kind its key names: a snapshot or a stored row that
    /// pairs a key with a value of another kind is corrupt.
    pub fn fits(&self, key: &StateKey) -> bool {
        match (key, self) {
            (StateKey::Account(_), StateValue::Account(_)) => true,
            (StateKey::Identity(a, r), StateValue::Identity(i)) => {
                i.identity.role == *r && i.identity.public_key.address().ok() == Some(*a)
            }
            (StateKey::Task(id), StateValue::Task(t)) => t.id == *id,
            (StateKey::Channel(id), StateValue::Channel(c)) => c.id == *id,
            (StateKey::Storage(id), StateValue::Storage(s)) => s.id == *id,
            _ => false,
        }
    }

    /// The prune height of an announcement's record.
    fn prune_height(&self) -> Option<u64> {
        match self {
            StateValue::Task(t) => Some(t.announcement.prune_height),
            StateValue::Storage(s) => Some(s.announcement.prune_height),
            _ => None,
        }
    }
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct Account {
    #[serde(with = "amount_str")]
    pub balance: Amount,
    pub nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct IdentityRecord {
    pub identity: Identity,
    pub registered_at: u64,
}

/// Previous values of every key a block changed.
pub type Undo = Vec<(StateKey, Option<StateValue>)>;

/// New values by key (`None` deletes).
pub type Changes = BTreeMap<StateKey, Option<StateValue>>;

/// Read access to a state, committed or pending.
pub trait StateRead {
    fn get(&self, key: &StateKey) -> Option<StateValue>;
    /// Ids of tasks and storage tasks whose prune height is at or below
    /// `height`.
    fn tasks_due(&self, height: u64) -> Vec<Hash>;
    /// The trie's nodes as this state sees them.
    fn nodes(&self) -> &dyn NodeSource;
    fn trie_root(&self) -> Child;
}

/// The trie update that `changes` make on top of `base`.
pub fn trie_update(base: &dyn StateRead, changes: &Changes) -> Update {
    use rayon::prelude::*;
    // Two keccaks per change: on all cores once a block is big enough.
    let leaf =
        |(k, v): (&StateKey, &Option<StateValue>)| (k.path(), v.as_ref().map(StateValue::hash));
    let mut list: Vec<LeafChange> = if changes.len() >= 256 {
        changes.par_iter().map(leaf).collect()
    } else {
        changes.iter().map(leaf).collect()
    };
    list.sort_unstable_by_key(|a| a.0);
    trie::update(base.nodes(), base.trie_root(), &list)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    entries: BTreeMap<StateKey, StateValue>,
    trie: Trie,
    /// (prune height, id) of every task and storage task, so a block finds
    /// those it drops without scanning them all.
    task_expiry: BTreeSet<(u64, Hash)>,
}

impl State {
    /// A state from its entries and stored trie nodes (as loaded from disk).
    pub fn from_parts(
        entries: BTreeMap<StateKey, StateValue>,
        nodes: std::collections::HashMap<Prefix, trie::Node>,
    ) -> State {
        let single = match entries.iter().next() {
            Some((k, v)) if entries.len() == 1 => Some((k.path(), v.hash())),
            _ => None,
        };
        let task_expiry = entries
            .iter()
            .filter_map(|(k, v)| Some((v.prune_height()?, k.prunable()?)))
            .collect();
        State {
            entries,
            trie: Trie::from_nodes(nodes, single),
            task_expiry,
        }
    }

    /// A state from its stored rows (path, key, value), with the tree
    /// `nodes` when the stored one is current, else one built from the
    /// rows (value hashes on all cores).
    pub fn from_rows(
        rows: Vec<(Hash, StateKey, StateValue)>,
        nodes: Option<std::collections::HashMap<Prefix, trie::Node>>,
    ) -> State {
        let nodes = nodes.unwrap_or_else(|| {
            use rayon::prelude::*;
            let mut leaves: Vec<(Hash, Hash)> =
                rows.par_iter().map(|(p, _, v)| (*p, v.hash())).collect();
            leaves.par_sort_unstable_by_key(|l| l.0);
            let mut writes = NodeWrites::new();
            trie::build(&mut writes, Prefix::ROOT, &leaves);
            writes
                .into_iter()
                .filter_map(|(p, n)| n.map(|n| (p, n)))
                .collect()
        });
        let entries = rows.into_iter().map(|(_, k, v)| (k, v)).collect();
        State::from_parts(entries, nodes)
    }

    /// A state holding `entries`, with its trie built from scratch.
    pub fn from_entries(entries: impl IntoIterator<Item = (StateKey, StateValue)>) -> State {
        let mut state = State::default();
        let changes: Changes = entries.into_iter().map(|(k, v)| (k, Some(v))).collect();
        state.commit(changes);
        state
    }

    pub fn get(&self, key: &StateKey) -> Option<&StateValue> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StateKey, &StateValue)> {
        self.entries.iter()
    }

    pub fn trie(&self) -> &Trie {
        &self.trie
    }

    pub fn account(&self, address: &Address) -> Account {
        match self.get(&StateKey::Account(*address)) {
            Some(StateValue::Account(a)) => a.clone(),
            _ => Account::default(),
        }
    }

    pub fn identity(&self, address: &Address, role: Role) -> Option<IdentityRecord> {
        match self.get(&StateKey::Identity(*address, role)) {
            Some(StateValue::Identity(i)) => Some(i.clone()),
            _ => None,
        }
    }

    pub fn task(&self, id: &Hash) -> Option<TaskRecord> {
        match self.get(&StateKey::Task(*id)) {
            Some(StateValue::Task(t)) => Some((**t).clone()),
            _ => None,
        }
    }

    pub fn channel(&self, id: &Hash) -> Option<Channel> {
        match self.get(&StateKey::Channel(*id)) {
            Some(StateValue::Channel(c)) => Some(c.clone()),
            _ => None,
        }
    }

    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.entries
            .range(StateKey::Task(Hash::ZERO)..=StateKey::Task(Hash([0xff; 32])))
            .filter_map(|(_, v)| match v {
                StateValue::Task(t) => Some(&**t),
                _ => None,
            })
    }

    pub fn storage(&self, id: &Hash) -> Option<StorageRecord> {
        match self.get(&StateKey::Storage(*id)) {
            Some(StateValue::Storage(s)) => Some((**s).clone()),
            _ => None,
        }
    }

    /// Every storage task still in the state (not yet pruned).
    pub fn storages(&self) -> impl Iterator<Item = &StorageRecord> {
        self.entries
            .range(StateKey::Storage(Hash::ZERO)..=StateKey::Storage(Hash([0xff; 32])))
            .filter_map(|(_, v)| match v {
                StateValue::Storage(s) => Some(&**s),
                _ => None,
            })
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.entries
            .range(StateKey::Channel(Hash::ZERO)..=StateKey::Channel(Hash([0xff; 32])))
            .filter_map(|(_, v)| match v {
                StateValue::Channel(c) => Some(c),
                _ => None,
            })
    }

    /// The state root: the trie's root hash, kept current as blocks commit.
    pub fn root(&self) -> Hash {
        self.trie.root_hash()
    }

    /// What [`State::commit`] of `changes` would return, without committing.
    pub fn undo_for(&self, changes: &Changes) -> Undo {
        undo_for(self, changes)
    }

    /// Applies `changes`, returning what is needed to undo them.
    pub fn commit(&mut self, changes: Changes) -> Undo {
        let update = trie_update(self, &changes);
        let undo = self.undo_for(&changes);
        self.apply(changes, update.root, update.writes);
        undo
    }

    /// Restores the values an earlier [`State::commit`] replaced.
    pub fn revert(&mut self, undo: &Undo) {
        self.commit(undo.iter().cloned().collect());
    }

    /// Applies changes whose trie update was computed already (against this
    /// state, or through a [`Pending`] over it whose writes are all here).
    pub fn apply(&mut self, changes: Changes, root: Child, writes: NodeWrites) {
        for (key, value) in changes {
            if let Some(id) = key.prunable() {
                if let Some(h) = self.entries.get(&key).and_then(StateValue::prune_height) {
                    self.task_expiry.remove(&(h, id));
                }
                if let Some(h) = value.as_ref().and_then(StateValue::prune_height) {
                    self.task_expiry.insert((h, id));
                }
            }
            match value {
                Some(v) => self.entries.insert(key, v),
                None => self.entries.remove(&key),
            };
        }
        self.trie.apply(root, writes);
    }
}

impl StateRead for State {
    fn get(&self, key: &StateKey) -> Option<StateValue> {
        self.entries.get(key).cloned()
    }

    fn tasks_due(&self, height: u64) -> Vec<Hash> {
        self.task_expiry
            .range(..=(height, Hash([0xff; 32])))
            .map(|(_, id)| *id)
            .collect()
    }

    fn nodes(&self) -> &dyn NodeSource {
        &self.trie
    }

    fn trie_root(&self) -> Child {
        self.trie.root()
    }
}

fn undo_for(base: &dyn StateRead, changes: &Changes) -> Undo {
    changes.keys().map(|k| (*k, base.get(k))).collect()
}

/// Changes stacked on a committed [`State`] without touching it: a reorg
/// rolls back and re-applies blocks here, and writes the result only once
/// every block of the new branch has executed.
pub struct Pending<'a> {
    base: &'a State,
    changes: Changes,
    writes: NodeWrites,
    root: Child,
}

impl<'a> Pending<'a> {
    pub fn new(base: &'a State) -> Pending<'a> {
        Pending {
            base,
            changes: Changes::new(),
            writes: NodeWrites::new(),
            root: base.trie.root(),
        }
    }

    /// Applies `changes` whose trie update was computed against this
    /// pending state; returns the undo record.
    pub fn commit(&mut self, changes: Changes, update: Update) -> Undo {
        let undo = undo_for(self, &changes);
        self.changes.extend(changes);
        self.writes.extend(update.writes);
        self.root = update.root;
        undo
    }

    /// Rolls back one block through its undo record.
    pub fn revert(&mut self, undo: &Undo) {
        let changes: Changes = undo.iter().cloned().collect();
        let update = trie_update(self, &changes);
        self.commit(changes, update);
    }

    pub fn root(&self) -> Hash {
        self.root.root_hash()
    }

    /// Everything to write: state changes, trie writes and the new top.
    pub fn into_parts(self) -> (Changes, NodeWrites, Child) {
        (self.changes, self.writes, self.root)
    }
}

impl StateRead for Pending<'_> {
    fn get(&self, key: &StateKey) -> Option<StateValue> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key).cloned(),
        }
    }

    fn tasks_due(&self, height: u64) -> Vec<Hash> {
        due_with(self.base.tasks_due(height), &self.changes, height)
    }

    fn nodes(&self) -> &dyn NodeSource {
        self
    }

    fn trie_root(&self) -> Child {
        self.root
    }
}

impl NodeSource for Pending<'_> {
    fn node(&self, prefix: &Prefix) -> Option<&trie::Node> {
        match self.writes.get(prefix) {
            Some(n) => n.as_ref(),
            None => self.base.trie.node(prefix),
        }
    }
}

/// Tasks (and storage tasks) due at `height`: those of the base, less
/// those `changes` delete, plus those `changes` add. (A prune height never
/// changes.)
fn due_with(base: Vec<Hash>, changes: &Changes, height: u64) -> Vec<Hash> {
    let mut due: BTreeSet<Hash> = base.into_iter().collect();
    for (key, value) in changes {
        let Some(id) = key.prunable() else { continue };
        match value.as_ref().map(|v| v.prune_height()) {
            Some(Some(h)) if h <= height => {
                due.insert(id);
            }
            None => {
                due.remove(&id);
            }
            _ => {}
        }
    }
    due.into_iter().collect()
}

/// Pending changes on top of a state; reads see the changes first.
pub struct Overlay<'a> {
    base: &'a dyn StateRead,
    changes: Changes,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn StateRead) -> Overlay<'a> {
        Overlay {
            base,
            changes: Changes::new(),
        }
    }

    pub fn get(&self, key: &StateKey) -> Option<StateValue> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }

    pub fn set(&mut self, key: StateKey, value: Option<StateValue>) {
        self.changes.insert(key, value);
    }

    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    pub fn into_changes(self) -> Changes {
        self.changes
    }

    pub fn account(&self, address: &Address) -> Account {
        match self.get(&StateKey::Account(*address)) {
            Some(StateValue::Account(a)) => a,
            _ => Account::default(),
        }
    }

    pub fn set_account(&mut self, address: Address, account: Account) {
        self.set(
            StateKey::Account(address),
            Some(StateValue::Account(account)),
        );
    }

    pub fn identity(&self, address: &Address, role: Role) -> Option<IdentityRecord> {
        match self.get(&StateKey::Identity(*address, role)) {
            Some(StateValue::Identity(i)) => Some(i),
            _ => None,
        }
    }

    pub fn task(&self, id: &Hash) -> Option<TaskRecord> {
        match self.get(&StateKey::Task(*id)) {
            Some(StateValue::Task(t)) => Some(*t),
            _ => None,
        }
    }

    pub fn set_task(&mut self, task: TaskRecord) {
        self.set(
            StateKey::Task(task.id),
            Some(StateValue::Task(Box::new(task))),
        );
    }

    pub fn channel(&self, id: &Hash) -> Option<Channel> {
        match self.get(&StateKey::Channel(*id)) {
            Some(StateValue::Channel(c)) => Some(c),
            _ => None,
        }
    }

    pub fn storage(&self, id: &Hash) -> Option<StorageRecord> {
        match self.get(&StateKey::Storage(*id)) {
            Some(StateValue::Storage(s)) => Some(*s),
            _ => None,
        }
    }

    pub fn set_storage(&mut self, storage: StorageRecord) {
        self.set(
            StateKey::Storage(storage.id),
            Some(StateValue::Storage(Box::new(storage))),
        );
    }

    pub fn set_channel(&mut self, channel: Channel) {
        self.set(
            StateKey::Channel(channel.id),
            Some(StateValue::Channel(channel)),
        );
    }

    /// Ids of tasks (with the pending changes applied) whose prune height
    /// is at or below `height`.
    pub fn tasks_due(&self, height: u64) -> Vec<Hash> {
        due_with(self.base.tasks_due(height), &self.changes, height)
    }

    /// The trie update these changes make on the base.
    pub fn update(&self) -> Update {
        trie_update(self.base, &self.changes)
    }

    /// The state root the base would have after committing these changes.
    pub fn root(&self) -> Hash {
        self.update().root.root_hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(balance: Amount) -> StateValue {
        StateValue::Account(Account { balance, nonce: 0 })
    }

    #[test]
    fn overlay_root_equals_committed_root_and_revert_restores() {
        let mut s = State::default();
        let mut init = Changes::new();
        for i in 0..10u8 {
            init.insert(StateKey::Account(Address([i; 20])), Some(acct(i as u128)));
        }
        s.commit(init);
        let before = s.clone();
        let root_before = s.root();
        let mut o = Overlay::new(&s);
        o.set(StateKey::Account(Address([3; 20])), None);
        o.set(StateKey::Account(Address([4; 20])), Some(acct(99)));
        o.set(StateKey::Account(Address([200; 20])), Some(acct(1)));
        let predicted = o.root();
        let changes = o.into_changes();
        let undo = s.commit(changes);
        assert_eq!(s.root(), predicted);
        assert_ne!(predicted, root_before);
        s.revert(&undo);
        assert_eq!(s, before);
        assert_eq!(s.root(), root_before);
    }

    #[test]
    fn pending_reverts_and_reapplies_without_touching_the_base() {
        let mut s =
            State::from_entries((0..20u8).map(|i| (StateKey::Account(Address([i; 20])), acct(1))));
        let mut c1 = Changes::new();
        c1.insert(StateKey::Account(Address([1; 20])), Some(acct(5)));
        c1.insert(StateKey::Account(Address([99; 20])), Some(acct(7)));
        let undo = s.commit(c1);
        let committed = s.clone();

        let mut p = Pending::new(&s);
        p.revert(&undo);
        let mut c2 = Changes::new();
        c2.insert(StateKey::Account(Address([2; 20])), None);
        let u = trie_update(&p, &c2);
        p.commit(c2.clone(), u);
        let root = p.root();
        let (changes, writes, top) = p.into_parts();
        assert_eq!(s, committed, "the base is untouched until applied");

        let mut direct = committed.clone();
        direct.revert(&undo);
        direct.commit(c2);
        s.apply(changes, top, writes);
        assert_eq!(s.root(), root);
        assert_eq!(s, direct);
    }
}
