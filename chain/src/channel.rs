//! Unidirectional payment channels: the payer locks a deposit on chain and
//! pays off chain with vouchers — `{chain_id, channel, seq, cumulative}` signed
//! by the payer — that the payee can claim at any time.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::codec::{amount_str, encode};
use crate::crypto::{Address, Hash, SecretKey, Signature, recover_address, signing_hash};
use crate::error::TxError;
use crate::tx::Amount;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Channel {
    pub id: Hash,
    pub payer: Address,
    pub payee: Address,
    #[serde(with = "amount_str")]
    pub deposit: Amount,
    /// Paid out to the payee so far.
    #[serde(with = "amount_str")]
    pub claimed: Amount,
    /// Sequence number of the last voucher claimed (0: none yet).
    pub last_seq: u64,
    pub expiry_height: u64,
    /// Set by `ChannelSettle`: from this height the payer may reclaim.
    pub settle_at: Option<u64>,
}

impl Channel {
    /// Deposit not yet paid out.
    pub fn remaining(&self) -> Amount {
        self.deposit - self.claimed
    }

    /// Checks a voucher against this channel at `height`: right chain and
    /// channel, signed by the payer (for the chain whose genesis hash is
    /// `genesis`), strictly above what was claimed, within the deposit, and
    /// the channel still claimable.
    pub fn check_voucher(
        &self,
        voucher: &SignedVoucher,
        chain_id: u64,
        genesis: &Hash,
        height: u64,
    ) -> Result<(), TxError> {
        let v = &voucher.voucher;
        let bad = |m: String| Err(TxError::BadVoucher(m));
        if v.chain_id != chain_id {
            return bad(format!("for chain {} not {chain_id}", v.chain_id));
        }
        if v.channel != self.id {
            return bad(format!("for channel {} not {}", v.channel, self.id));
        }
        if height >= self.expiry_height {
            return Err(TxError::ChannelExpired {
                channel: self.id,
                what: "expiry",
                height: self.expiry_height,
            });
        }
        if let Some(settle_at) = self.settle_at
            && height >= settle_at
        {
            return Err(TxError::ChannelExpired {
                channel: self.id,
                what: "settlement",
                height: settle_at,
            });
        }
        if v.seq <= self.last_seq {
            return bad(format!(
                "seq {} is not above the last claimed {}",
                v.seq, self.last_seq
            ));
        }
        if v.cumulative <= self.claimed {
            return bad(format!(
                "cumulative {} is not above the claimed {}",
                v.cumulative, self.claimed
            ));
        }
        if v.cumulative > self.deposit {
            return bad(format!(
                "cumulative {} exceeds the deposit {}",
                v.cumulative, self.deposit
            ));
        }
        match voucher.signer(genesis) {
            Ok(signer) if signer == self.payer => Ok(()),
            _ => bad(format!("not signed by the payer {}", self.payer)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Voucher {
    pub chain_id: u64,
    pub channel: Hash,
    pub seq: u64,
    #[serde(with = "amount_str")]
    pub cumulative: Amount,
}

impl Voucher {
    /// Domain-separated from transactions, so a voucher signature can never
    /// be replayed as a transaction signature or the reverse; bound to one
    /// chain by its id and `genesis` (its genesis hash), since a payee
    /// redeems it on chain like a transaction.
    pub fn signing_hash(&self, genesis: &Hash) -> Hash {
        signing_hash("voucher", self.chain_id, genesis, &encode(self))
    }

    /// Signs for the chain whose genesis hash is `genesis`.
    pub fn sign(self, payer: &SecretKey, genesis: &Hash) -> SignedVoucher {
        let signature = payer.sign(&self.signing_hash(genesis));
        SignedVoucher {
            voucher: self,
            signature,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedVoucher {
    pub voucher: Voucher,
    pub signature: Signature,
}

impl SignedVoucher {
    /// The payer who signed this voucher for the chain whose genesis hash is `genesis`.
    pub fn signer(&self, genesis: &Hash) -> Result<Address, crate::error::ChainError> {
        recover_address(&self.voucher.signing_hash(genesis), &self.signature)
    }
}
