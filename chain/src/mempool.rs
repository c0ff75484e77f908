//! Pending transactions: nonce-ordered per sender, chosen for blocks by fee
//! per byte, bounded in count. A transaction is admitted only if it would
//! execute on top of the current state plus its sender's earlier pending
//! transactions, so a user learns at once why a transaction cannot go in.
//!
//! After every tip change [`Mempool::revalidate`] runs each sender's queue
//! again on the new state: the first transaction that no longer executes
//! (an acceptance that lost the race for the last instance, a spend the
//! new branch made unaffordable) is dropped with everything after it from
//! that sender, so it never blocks the sender's later transactions, which
//! are then signed again from the freed nonce. Why a transaction left is
//! kept for a while ([`Mempool::dropped`]).

use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use crate::crypto::{Address, Hash};
use crate::error::{MempoolError, TxError};
use crate::execute::{BlockContext, apply_tx};
use crate::genesis::Genesis;
use crate::state::{Overlay, State};
use crate::tx::VerifiedTx;

pub const DEFAULT_MAX_TXS: usize = 10_000;
pub const MAX_PER_SENDER: usize = 256;
/// How many dropped transactions keep their reason.
const DROPPED_MEMORY: usize = 1024;

pub struct Mempool {
    max_txs: usize,
    txs: HashMap<Hash, VerifiedTx>,
    by_sender: BTreeMap<Address, BTreeMap<u64, Hash>>,
    dropped: VecDeque<(Hash, Dropped)>,
}

/// Why a pending transaction left the pool without being mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// It no longer executes on the new tip's state.
    Invalid(TxError),
    /// An earlier transaction of the same sender was dropped; its nonce is free again.
    AfterDropped(Hash),
}

impl Mempool {
    pub fn new(max_txs: usize) -> Mempool {
        Mempool {
            max_txs,
            txs: HashMap::new(),
            by_sender: BTreeMap::new(),
            dropped: VecDeque::new(),
        }
    }

    /// Why `hash` was dropped, if it was recently.
    pub fn dropped(&self, hash: &Hash) -> Option<&Dropped> {
        self.dropped.iter().find(|(h, _)| h == hash).map(|(_, d)| d)
    }

    /// Re-checks every sender's queue on `state` (the new tip's): drops what
    /// the tip made stale, then the first transaction per sender that no
    /// longer executes and everything queued after it. Returns the dropped.
    pub fn revalidate(
        &mut self,
        state: &State,
        genesis: &Genesis,
        ctx: &BlockContext,
    ) -> Vec<(Hash, Dropped)> {
        self.prune(state);
        let mut failed = Vec::new();
        for queue in self.by_sender.values() {
            let mut overlay = Overlay::new(state);
            for h in queue.values() {
                if let Err(e) = apply_tx(&mut overlay, genesis, ctx, &self.txs[h]) {
                    failed.push((*h, e));
                    break;
                }
            }
        }
        let mut out = Vec::new();
        for (first, reason) in failed {
            let removed = self.remove(&first);
            for h in removed {
                let why = if h == first {
                    Dropped::Invalid(reason.clone())
                } else {
                    Dropped::AfterDropped(first)
                };
                tracing::debug!(tx = %h, ?why, "dropped from the mempool");
                out.push((h, why));
            }
        }
        for d in &out {
            if self.dropped.len() >= DROPPED_MEMORY {
                self.dropped.pop_front();
            }
            self.dropped.push_back(d.clone());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn get(&self, hash: &Hash) -> Option<&VerifiedTx> {
        self.txs.get(hash)
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.txs.contains_key(hash)
    }

    /// The nonce the sender's next transaction should carry.
    pub fn next_nonce(&self, state: &State, sender: &Address) -> u64 {
        let base = state.account(sender).nonce;
        self.by_sender
            .get(sender)
            .and_then(|q| q.keys().next_back())
            .map_or(base, |n| (n + 1).max(base))
    }

    /// Admits `vtx` if it executes after the sender's pending transactions.
    /// `ctx` is the block the transaction would go into next.
    pub fn add(
        &mut self,
        vtx: VerifiedTx,
        state: &State,
        genesis: &Genesis,
        ctx: &BlockContext,
    ) -> Result<Hash, MempoolError> {
        if self.txs.contains_key(&vtx.hash) {
            return Err(MempoolError::Duplicate(vtx.hash));
        }
        let sender = vtx.sender;
        let next = self.next_nonce(state, &sender);
        let nonce = vtx.tx().nonce;
        if nonce > next {
            return Err(MempoolError::NonceGap {
                sender,
                next,
                got: nonce,
            });
        }
        let queue_len = self.by_sender.get(&sender).map_or(0, BTreeMap::len);
        if queue_len >= MAX_PER_SENDER {
            return Err(MempoolError::SenderLimit(sender));
        }
        // Execute the sender's pending transactions, then this one.
        let mut overlay = Overlay::new(state);
        if let Some(queue) = self.by_sender.get(&sender) {
            for h in queue.values() {
                let _ = apply_tx(&mut overlay, genesis, ctx, &self.txs[h]);
            }
        }
        apply_tx(&mut overlay, genesis, ctx, &vtx).map_err(MempoolError::Invalid)?;

        if self.txs.len() >= self.max_txs {
            self.evict_for(&vtx)?;
        }
        let hash = vtx.hash;
        self.by_sender
            .entry(sender)
            .or_default()
            .insert(nonce, hash);
        self.txs.insert(hash, vtx);
        Ok(hash)
    }

    /// Picks transactions for a block: highest fee per byte first among each
    /// sender's next transaction, skipping any that no longer execute, up to
    /// `max_bytes`.
    pub fn select(
        &self,
        state: &State,
        genesis: &Genesis,
        ctx: &BlockContext,
        max_bytes: usize,
    ) -> Vec<VerifiedTx> {
        let mut overlay = Overlay::new(state);
        let mut heap = BinaryHeap::new();
        let mut cursors: HashMap<Address, std::collections::btree_map::Values<'_, u64, Hash>> =
            HashMap::new();
        for (sender, queue) in &self.by_sender {
            let mut it = queue.values();
            if let Some(h) = it.next() {
                let tx = &self.txs[h];
                heap.push((tx.tx().fee_per_byte, std::cmp::Reverse(tx.tx().nonce), *h));
            }
            cursors.insert(*sender, it);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some((_, _, h)) = heap.pop() {
            let tx = &self.txs[&h];
            if bytes + tx.size > max_bytes {
                continue;
            }
            if apply_tx(&mut overlay, genesis, ctx, tx).is_err() {
                // Later nonces of this sender cannot execute either.
                continue;
            }
            bytes += tx.size;
            out.push(tx.clone());
            if let Some(next) = cursors.get_mut(&tx.sender).and_then(Iterator::next) {
                let t = &self.txs[next];
                heap.push((t.tx().fee_per_byte, std::cmp::Reverse(t.tx().nonce), *next));
            }
        }
        out
    }

    /// Drops what a new tip made stale: included transactions and any whose
    /// nonce is now below its sender's account nonce.
    pub fn prune(&mut self, state: &State) {
        let mut gone = Vec::new();
        for (sender, queue) in &mut self.by_sender {
            let nonce = state.account(sender).nonce;
            let stale: Vec<u64> = queue.range(..nonce).map(|(n, _)| *n).collect();
            for n in stale {
                gone.push(queue.remove(&n).expect("present"));
            }
        }
        self.by_sender.retain(|_, q| !q.is_empty());
        for h in gone {
            self.txs.remove(&h);
        }
    }

    /// Removes one transaction and everything after it from the same
    /// sender; returns the removed hashes in nonce order.
    pub fn remove(&mut self, hash: &Hash) -> Vec<Hash> {
        let Some(tx) = self.txs.get(hash) else {
            return vec![];
        };
        let sender = tx.sender;
        let nonce = tx.tx().nonce;
        let mut removed = Vec::new();
        if let Some(queue) = self.by_sender.get_mut(&sender) {
            let later: Vec<u64> = queue.range(nonce..).map(|(n, _)| *n).collect();
            for n in later {
                if let Some(h) = queue.remove(&n) {
                    self.txs.remove(&h);
                    removed.push(h);
                }
            }
            if queue.is_empty() {
                self.by_sender.remove(&sender);
            }
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifiedTx> {
        self.txs.values()
    }

    /// Makes room by dropping the last pending transaction of the sender
    /// whose tail pays least, if that pays less than `incoming`.
    fn evict_for(&mut self, incoming: &VerifiedTx) -> Result<(), MempoolError> {
        let cheapest = self
            .by_sender
            .iter()
            .filter(|(sender, _)| **sender != incoming.sender)
            .filter_map(|(_, q)| q.values().next_back())
            .map(|h| &self.txs[h])
            .min_by_key(|t| t.tx().fee_per_byte)
            .map(|t| (t.hash, t.tx().fee_per_byte));
        match cheapest {
            Some((hash, fee)) if fee < incoming.tx().fee_per_byte => {
                self.remove(&hash);
                Ok(())
            }
            _ => Err(MempoolError::Full),
        }
    }
}
