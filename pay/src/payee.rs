//! The paid side of channels: admit a channel, take vouchers (checked,
//! stored before they count), claim when the payer settles or expiry
//! nears, close at the end.

use std::sync::Arc;

use zennet_chain::{Address, Amount, Channel, Hash, Ledger, SignedVoucher, TxBody};

use crate::check::{VoucherRejected, check_voucher};
use crate::error::PayError;
use crate::store::{Incoming, PayStore};

pub struct Payee {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn PayStore>,
    /// Blocks a claim needs to be mined: a voucher counts only while the
    /// chain is at least this far from the channel's settlement or expiry.
    margin: u64,
}

/// Where a channel's close stands (see [`Payee::close_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseStep {
    /// The channel is gone from the chain: closed (or reclaimed). Done.
    Gone,
    /// A close or claim submitted earlier is still waiting to be mined.
    Pending(Hash),
    /// The payer is settling: the held voucher was claimed first (a close
    /// follows once it is mined).
    Claimed(Hash),
    /// A close (with the held voucher if it adds anything) was submitted.
    Closing(Hash),
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
    /// `margin`: blocks before the channel's settlement or expiry from
    /// which a voucher no longer counts (a claim could not be mined in time).
    pub fn new(ledger: Arc<dyn Ledger>, store: Arc<dyn PayStore>, margin: u64) -> Payee {
        Payee {
            ledger,
            store,
            margin,
        }
    }

    /// Accepts `channel` as a way to be paid by `payer`: it must be open on
    /// chain, from `payer`, to this node, not settling, and open until at
    /// least `min_expiry` (the work it pays for, the challenge period and
    /// the claim margin must fit before it expires). Starts its record if new.
    pub fn admit(
        &self,
        channel: &Hash,
        payer: &Address,
        min_expiry: u64,
    ) -> Result<Channel, PayError> {
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
        if let Some(at) = ch.settle_at {
            return Err(PayError::Settling {
                channel: *channel,
                settle_at: at,
            });
        }
        if ch.expiry_height < min_expiry {
            return Err(PayError::ExpiresTooSoon {
                channel: *channel,
                expiry: ch.expiry_height,
                needed: min_expiry,
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
        if !check_voucher(
            rec.voucher.as_ref(),
            &v,
            &ch,
            self.ledger.chain_id(),
            &self.ledger.genesis_hash(),
        )? {
            return Ok(Received::Repeat);
        }
        // Only what can still be claimed counts.
        let deadline = ch
            .settle_at
            .map_or(ch.expiry_height, |s| s.min(ch.expiry_height));
        let height = self.ledger.height();
        if height + self.margin >= deadline {
            return Err(VoucherRejected::Unclaimable {
                height,
                margin: self.margin,
                deadline,
            }
            .into());
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
    /// settling, or the channel expires within the margin.
    pub fn claim_if_due(&self, channel: &Hash) -> Result<Option<Hash>, PayError> {
        let Some(ch) = self.ledger.channel(channel) else {
            return Ok(None);
        };
        let height = self.ledger.height();
        // A claim is valid only in a block below settle_at; once the next
        // block cannot hold it, submitting would only be refused (on every
        // block, by a caller that asks each block).
        if ch.settle_at.is_some_and(|at| height + 1 >= at) {
            return Ok(None);
        }
        let urgent = ch.settle_at.is_some() || height + self.margin >= ch.expiry_height;
        if !urgent {
            return Ok(None);
        }
        self.claim_now(channel)
    }

    /// Claims the held voucher now. Nothing is submitted while an earlier
    /// claim is still pending or when the chain already paid as much.
    pub fn claim_now(&self, channel: &Hash) -> Result<Option<Hash>, PayError> {
        let mut rec = self.record(channel)?;
        let Some(v) = rec.voucher.clone() else {
            return Ok(None);
        };
        let Some(ch) = self.ledger.channel(channel) else {
            return Ok(None);
        };
        let pending = rec.claim_txs.last().is_some_and(|t| self.ledger.pending(t));
        if v.voucher.cumulative <= ch.claimed || v.voucher.seq <= ch.last_seq || pending {
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

    /// One step of closing `channel`, to repeat (on each new tip) until it
    /// returns [`CloseStep::Gone`]: a close that was dropped or failed is
    /// submitted again, and when the payer is settling — a close might not
    /// be mined before `settle_at`, after which the voucher is worthless —
    /// the held voucher is claimed first and the close follows.
    pub fn close_step(&self, channel: &Hash) -> Result<CloseStep, PayError> {
        let rec = self.record(channel)?;
        if self.ledger.channel(channel).is_none() {
            return Ok(CloseStep::Gone);
        }
        if let Some(tx) = rec.close_tx.filter(|t| self.ledger.pending(t)) {
            return Ok(CloseStep::Pending(tx));
        }
        if let Some(tx) = rec.claim_txs.last().filter(|t| self.ledger.pending(t)) {
            return Ok(CloseStep::Pending(*tx));
        }
        if self
            .ledger
            .channel(channel)
            .is_some_and(|ch| ch.settle_at.is_some())
            && let Some(tx) = self.claim_now(channel)?
        {
            return Ok(CloseStep::Claimed(tx));
        }
        Ok(match self.close(channel)? {
            Some(tx) => CloseStep::Closing(tx),
            None => CloseStep::Gone,
        })
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
