//! Transactions: what an account signs, and the checks that need no state.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::channel::SignedVoucher;
use crate::codec::{amount_str, decode, encode};
use crate::crypto::{
    Address, Hash, SecretKey, Signature, keccak256, recover_address, signing_hash,
};
use crate::error::{ChainError, TxError};
use crate::identity::Identity;
use crate::storage::{StorageAcceptance, StorageAnnouncement};
use crate::task::{TaskAcceptance, TaskAnnouncement};

/// Balances and prices, in base units.
pub type Amount = u128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Transaction {
    pub chain_id: u64,
    pub nonce: u64,
    /// Fee paid to the miner per byte of the signed, encoded transaction.
    pub fee_per_byte: u64,
    pub body: TxBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxBody {
    Transfer {
        to: Address,
        #[serde(with = "amount_str")]
        amount: Amount,
    },
    /// Registers a mined identity for the sender's own key.
    RegisterIdentity {
        identity: Identity,
    },
    AnnounceTask {
        announcement: TaskAnnouncement,
    },
    AcceptTask {
        acceptance: TaskAcceptance,
    },
    /// By the task's publisher.
    CancelTask {
        task: Hash,
    },
    /// By the payer; the channel id is this transaction's hash.
    ChannelOpen {
        payee: Address,
        #[serde(with = "amount_str")]
        deposit: Amount,
        expiry_height: u64,
    },
    /// By the payer: add deposit and/or push the expiry later.
    ChannelTopUp {
        channel: Hash,
        #[serde(with = "amount_str")]
        amount: Amount,
        expiry_height: u64,
    },
    /// By the payee: collect up to a voucher's cumulative amount; the channel stays open.
    ChannelClaim {
        voucher: SignedVoucher,
    },
    /// By the payee: final (optional) claim, the rest goes back to the payer.
    ChannelClose {
        channel: Hash,
        voucher: Option<SignedVoucher>,
    },
    /// By the payer: starts the challenge period.
    ChannelSettle {
        channel: Hash,
    },
    /// By the payer, after the challenge period or the expiry.
    ChannelReclaim {
        channel: Hash,
    },
    /// By a file's owner: pay nodes to keep replicas of it.
    AnnounceStorage {
        announcement: StorageAnnouncement,
    },
    /// By a storage node: takes one replica slot.
    AcceptStorage {
        acceptance: StorageAcceptance,
    },
    /// By the owner: `node`'s replica failed; its slot is free again.
    ReleaseStorage {
        task: Hash,
        node: Address,
    },
    /// By the owner: no more acceptances; replicas stop holding.
    CancelStorage {
        task: Hash,
    },
}

impl TxBody {
    pub fn kind(&self) -> &'static str {
        match self {
            TxBody::Transfer { .. } => "transfer",
            TxBody::RegisterIdentity { .. } => "register_identity",
            TxBody::AnnounceTask { .. } => "announce_task",
            TxBody::AcceptTask { .. } => "accept_task",
            TxBody::CancelTask { .. } => "cancel_task",
            TxBody::ChannelOpen { .. } => "channel_open",
            TxBody::ChannelTopUp { .. } => "channel_top_up",
            TxBody::ChannelClaim { .. } => "channel_claim",
            TxBody::ChannelClose { .. } => "channel_close",
            TxBody::ChannelSettle { .. } => "channel_settle",
            TxBody::ChannelReclaim { .. } => "channel_reclaim",
            TxBody::AnnounceStorage { .. } => "announce_storage",
            TxBody::AcceptStorage { .. } => "accept_storage",
            TxBody::ReleaseStorage { .. } => "release_storage",
            TxBody::CancelStorage { .. } => "cancel_storage",
        }
    }

    /// The height after which a node may drop this transaction's body
    /// (announcements only).
    pub fn prune_height(&self) -> Option<u64> {
        match self {
            TxBody::AnnounceTask { announcement } => Some(announcement.prune_height),
            TxBody::AnnounceStorage { announcement } => Some(announcement.prune_height),
            _ => None,
        }
    }

    /// Base units leaving the sender's balance besides the fee.
    pub fn value(&self) -> Amount {
        match self {
            TxBody::Transfer { amount, .. } => *amount,
            TxBody::ChannelOpen { deposit, .. } => *deposit,
            TxBody::ChannelTopUp { amount, .. } => *amount,
            _ => 0,
        }
    }
}

impl Transaction {
    /// What the sender signs: bound to this chain by its id and `genesis`
    /// (the chain's genesis hash).
    pub fn signing_hash(&self, genesis: &Hash) -> Hash {
        signing_hash("tx", self.chain_id, genesis, &encode(self))
    }

    /// Signs for the chain whose genesis hash is `genesis`.
    pub fn sign(self, key: &SecretKey, genesis: &Hash) -> SignedTx {
        let signature = key.sign(&self.signing_hash(genesis));
        SignedTx {
            tx: self,
            signature,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    pub tx: Transaction,
    pub signature: Signature,
}

impl SignedTx {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8], max_len: usize) -> Result<SignedTx, ChainError> {
        decode(bytes, max_len, "transaction")
    }

    pub fn hash(&self) -> Hash {
        keccak256(&self.encode())
    }

    /// Checks everything that needs no state: size, chain id, signature (made
    /// for the chain whose genesis hash is `genesis`).
    pub fn verify(
        self,
        chain_id: u64,
        genesis: &Hash,
        max_tx_bytes: usize,
    ) -> Result<VerifiedTx, ChainError> {
        let bytes = self.encode();
        if bytes.len() > max_tx_bytes {
            return Err(TxError::TooLarge {
                size: bytes.len(),
                max: max_tx_bytes,
            }
            .into());
        }
        if self.tx.chain_id != chain_id {
            return Err(TxError::WrongChain {
                expected: chain_id,
                got: self.tx.chain_id,
            }
            .into());
        }
        let sender = recover_address(&self.tx.signing_hash(genesis), &self.signature)?;
        Ok(VerifiedTx {
            hash: keccak256(&bytes),
            size: bytes.len(),
            sender,
            signed: self,
        })
    }
}

/// A transaction whose signature has been checked, with what that check
/// learned cached: its hash, encoded size and sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTx {
    pub signed: SignedTx,
    pub hash: Hash,
    pub size: usize,
    pub sender: Address,
}

impl VerifiedTx {
    pub fn tx(&self) -> &Transaction {
        &self.signed.tx
    }

    pub fn fee(&self) -> Amount {
        self.signed.tx.fee_per_byte as Amount * self.size as Amount
    }
}
