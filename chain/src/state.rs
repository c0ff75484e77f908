//! The ledger state: accounts, identities, open tasks and channels, in one
//! ordered map so that one mechanism serves the state root, the database
//! mirror and per-block undo data.
//!
//! Blocks execute against an [`Overlay`] over the state; only a block that
//! executes completely is committed, which yields the undo record a reorg
//! uses to roll the block back.

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::block::merkle_root;
use crate::channel::Channel;
use crate::codec::{amount_str, encode};
use crate::crypto::{Address, Hash, keccak256_concat};
use crate::identity::{Identity, Role};
use crate::task::TaskRecord;
use crate::tx::Amount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub enum StateKey {
    Account(Address),
    Identity(Address, Role),
    Task(Hash),
    Channel(Hash),
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum StateValue {
    Account(Account),
    Identity(IdentityRecord),
    Task(Box<TaskRecord>),
    Channel(Channel),
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

/// Previous values of every key a block changed, in the order to restore them.
pub type Undo = Vec<(StateKey, Option<StateValue>)>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    entries: BTreeMap<StateKey, StateValue>,
}

impl State {
    pub fn get(&self, key: &StateKey) -> Option<&StateValue> {
        self.entries.get(key)
    }

    pub fn insert(&mut self, key: StateKey, value: StateValue) {
        self.entries.insert(key, value);
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
        self.entries.values().filter_map(|v| match v {
            StateValue::Task(t) => Some(&**t),
            _ => None,
        })
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.entries.values().filter_map(|v| match v {
            StateValue::Channel(c) => Some(c),
            _ => None,
        })
    }

    /// Merkle root over every (key, value) in key order.
    pub fn root(&self) -> Hash {
        merkle_root(self.entries.iter().map(|(k, v)| leaf(k, v)).collect())
    }

    /// What [`State::commit`] of `changes` would return, without committing.
    pub fn undo_for(&self, changes: &BTreeMap<StateKey, Option<StateValue>>) -> Undo {
        changes
            .keys()
            .map(|k| (*k, self.entries.get(k).cloned()))
            .collect()
    }

    /// Applies `changes`, returning what is needed to undo them.
    pub fn commit(&mut self, changes: BTreeMap<StateKey, Option<StateValue>>) -> Undo {
        let mut undo = Vec::with_capacity(changes.len());
        for (key, value) in changes {
            let previous = match value {
                Some(v) => self.entries.insert(key, v),
                None => self.entries.remove(&key),
            };
            undo.push((key, previous));
        }
        undo
    }

    /// Restores the values an earlier [`State::commit`] replaced.
    pub fn revert(&mut self, undo: &Undo) {
        for (key, previous) in undo.iter().rev() {
            match previous {
                Some(v) => self.entries.insert(*key, v.clone()),
                None => self.entries.remove(key),
            };
        }
    }
}

fn leaf(key: &StateKey, value: &StateValue) -> Hash {
    keccak256_concat(&[&[0u8], &encode(key), &encode(value)])
}

/// Pending changes on top of a [`State`]; reads see the changes first.
pub struct Overlay<'a> {
    base: &'a State,
    changes: BTreeMap<StateKey, Option<StateValue>>,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a State) -> Overlay<'a> {
        Overlay {
            base,
            changes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &StateKey) -> Option<StateValue> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key).cloned(),
        }
    }

    pub fn set(&mut self, key: StateKey, value: Option<StateValue>) {
        self.changes.insert(key, value);
    }

    pub fn into_changes(self) -> BTreeMap<StateKey, Option<StateValue>> {
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

    pub fn set_channel(&mut self, channel: Channel) {
        self.set(
            StateKey::Channel(channel.id),
            Some(StateValue::Channel(channel)),
        );
    }

    /// Tasks as they stand with the pending changes applied.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        let mut out: BTreeMap<Hash, TaskRecord> =
            self.base.tasks().map(|t| (t.id, t.clone())).collect();
        for (key, value) in &self.changes {
            if let StateKey::Task(id) = key {
                match value {
                    Some(StateValue::Task(t)) => {
                        out.insert(*id, (**t).clone());
                    }
                    _ => {
                        out.remove(id);
                    }
                }
            }
        }
        out.into_values().collect()
    }

    /// The state root the base would have after committing these changes.
    pub fn root(&self) -> Hash {
        let mut leaves = Vec::with_capacity(self.base.len() + self.changes.len());
        let mut base = self.base.entries.iter().peekable();
        let mut changes = self.changes.iter().peekable();
        loop {
            match (base.peek(), changes.peek()) {
                (Some((bk, bv)), Some((ck, cv))) => {
                    if bk < ck {
                        leaves.push(leaf(bk, bv));
                        base.next();
                    } else {
                        if bk == ck {
                            base.next();
                        }
                        if let Some(v) = cv {
                            leaves.push(leaf(ck, v));
                        }
                        changes.next();
                    }
                }
                (Some((bk, bv)), None) => {
                    leaves.push(leaf(bk, bv));
                    base.next();
                }
                (None, Some((ck, cv))) => {
                    if let Some(v) = cv {
                        leaves.push(leaf(ck, v));
                    }
                    changes.next();
                }
                (None, None) => break,
            }
        }
        merkle_root(leaves)
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
        for i in 0..10u8 {
            s.insert(StateKey::Account(Address([i; 20])), acct(i as u128));
        }
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
}
