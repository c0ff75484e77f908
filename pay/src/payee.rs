//! The paid side of channels: admit a channel, take vouchers (checked,
//! stored before they count), claim when the payer settles or expiry
//! nears, close at the end.

use std::sync::Arc;

use zennet_chain::{Address, Amount, Channel, Hash, Ledger, SignedVoucher, TxBody};

use crate::check::check_voucher;
use crate::error::PayError;
use crate::store::{Incoming, PayStore};

pub struct Payee {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn PayStore>,
}

/// What a voucher brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A better voucher, now stored: the channel pays `paid` in all, `added` more than before.
    New { paid: Amount, added: Amount },
    /// The voucher already held.
    Repeat,
}

impl Payee {
    pub fn new(ledger: Arc<dyn Ledger>, store: Arc<dyn PayStore>) -> Payee {
        Payee { ledger, store }
    }

    /// Accepts `channel` as a way to be paid by `payer`: it must be open on
    /// chain, from `payer`, to this node. Starts its record if new.
    pub fn admit(&self, channel: &Hash, payer: &Address) -> Result<Channel, PayError> {
        let ch = self
            .ledger
            .channel(channel)
            .ok_or(PayError::NotOnChain(*channel))?;
        if ch.payer != *payer || ch.payee != self.ledger.address() {
            return Err(PayError::WrongParties {
                channel: *channel,
                payer: ch.payer,
                payee: ch.payee,
                expected_payer: *payer,
            });
        }
        if self.store.incoming(channel)?.is_none() {
            self.store.put_incoming(&Incoming {
                channel: *channel,
                payer: *payer,
                voucher: None,
                claim_txs: Vec::new(),
                close_tx: None,
            })?;
        }
        Ok(ch)
    }

    /// Checks a voucher on an admitted channel and stores it before
    /// returning: once this returns `New`, the amount is paid even if the
    /// process dies the next instant.
    pub fn receive(&self, v: SignedVoucher) -> Result<Received, PayError> {
        let channel = v.voucher.channel;
        let mut rec = self.record(&channel)?;
        let ch = self
            .ledger
            .channel(&channel)
            .ok_or(PayError::NotOnChain(channel))?;
        if !check_voucher(rec.voucher.as_ref(), &v, &ch, self.ledger.chain_id())? {
            return Ok(Received::Repeat);
        }
        let before = rec.paid();
        rec.voucher = Some(v);
        self.store.put_incoming(&rec)?;
        let paid = rec.paid();
        tracing::debug!(%channel, %paid, added = %(paid - before), "voucher stored");
        Ok(Received::New {
            paid,
            added: paid - before,
        })
    }

    /// This payee's record of `channel`.
    pub fn record(&self, channel: &Hash) -> Result<Incoming, PayError> {
        self.store
            .incoming(channel)?
            .ok_or(PayError::Unknown(*channel))
    }

    /// What the held voucher of `channel` pays in all (0 before any).
    pub fn paid(&self, channel: &Hash) -> Result<Amount, PayError> {
        Ok(self.store.incoming(channel)?.map_or(0, |r| r.paid()))
    }

    /// Claims the held voucher when waiting could lose it: the payer started
    /// settling, or the channel expires within `margin_blocks`. Nothing is
    /// submitted while an earlier claim is still pending or when the chain
    /// already paid as much.
    pub fn claim_if_due(
        &self,
        channel: &Hash,
        margin_blocks: u64,
    ) -> Result<Option<Hash>, PayError> {
        let mut rec = self.record(channel)?;
        let Some(v) = rec.voucher.clone() else {
            return Ok(None);
        };
        let Some(ch) = self.ledger.channel(channel) else {
            return Ok(None);
        };
        let urgent =
            ch.settle_at.is_some() || self.ledger.height() + margin_blocks >= ch.expiry_height;
        let pending = rec.claim_txs.last().is_some_and(|t| self.ledger.pending(t));
        if !urgent || v.voucher.cumulative <= ch.claimed || pending {
            return Ok(None);
        }
        let tx = self
            .ledger
            .submit(TxBody::ChannelClaim { voucher: v.clone() })
            .map_err(|source| PayError::Submit {
                what: "ChannelClaim",
                channel: *channel,
                source: Box::new(source),
            })?;
        rec.claim_txs.push(tx);
        self.store.put_incoming(&rec)?;
        tracing::info!(%channel, %tx, amount = %v.voucher.cumulative, "claimed");
        Ok(Some(tx))
    }

    /// Closes `channel` on chain with the held voucher (when it adds to
    /// what was claimed): the payee takes it, the payer gets the rest.
    /// `None`: the channel is already gone.
    pub fn close(&self, channel: &Hash) -> Result<Option<Hash>, PayError> {
        let mut rec = self.record(channel)?;
        let Some(ch) = self.ledger.channel(channel) else {
            return Ok(None);
        };
        let voucher = rec
            .voucher
            .clone()
            .filter(|v| v.voucher.cumulative > ch.claimed && v.voucher.seq > ch.last_seq);
        let tx = self
            .ledger
            .submit(TxBody::ChannelClose {
                channel: *channel,
                voucher,
            })
            .map_err(|source| PayError::Submit {
                what: "ChannelClose",
                channel: *channel,
                source: Box::new(source),
            })?;
        rec.close_tx = Some(tx);
        self.store.put_incoming(&rec)?;
        Ok(Some(tx))
    }
}
