//! The paying side of channels: open (or reuse and top up), sign bounded
//! vouchers, settle and reclaim.

use std::sync::{Arc, Mutex};

use zennet_chain::{Address, Amount, Hash, Ledger, SecretKey, SignedVoucher, TxBody, Voucher};

use crate::error::PayError;
use crate::store::{Outgoing, PayStore};

pub struct Payer {
    ledger: Arc<dyn Ledger>,
    key: SecretKey,
    store: Arc<dyn PayStore>,
    /// Choosing, opening and topping up channels is one step at a time, so
    /// two callers never open two channels where one was meant.
    opening: Mutex<()>,
}

impl Payer {
    /// `key` must be the key `ledger` signs with: vouchers and the channel's
    /// transactions come from the same account.
    pub fn new(ledger: Arc<dyn Ledger>, key: SecretKey, store: Arc<dyn PayStore>) -> Payer {
        debug_assert_eq!(ledger.address(), key.address());
        Payer {
            ledger,
            key,
            store,
            opening: Mutex::new(()),
        }
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Opens a new channel to `payee`. The record is kept once the chain's
    /// mempool admitted the `ChannelOpen`; vouchers on it are good once it
    /// is mined ([`Payer::is_open`]).
    pub fn open(
        &self,
        payee: Address,
        deposit: Amount,
        expiry_height: u64,
    ) -> Result<Outgoing, PayError> {
        let _one = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        self.open_locked(payee, deposit, expiry_height)
    }

    /// A channel to `payee` with at least `need` unspent and an expiry at or
    /// after `min_expiry`, for services that pay the same peer many times:
    /// the open (or opening) channel to `payee` that is not being wound
    /// down, if it covers that, else that channel topped up by `top_up`
    /// (and its expiry moved to `min_expiry`), else a new channel with
    /// `top_up` deposited.
    pub fn channel_for(
        &self,
        payee: Address,
        need: Amount,
        min_expiry: u64,
        top_up: Amount,
    ) -> Result<Outgoing, PayError> {
        let _one = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        let live = self
            .store
            .outgoing_all()?
            .into_iter()
            .filter(|o| o.payee == payee && o.wind_down_tx.is_none())
            .find(|o| match self.ledger.channel(&o.channel) {
                Some(ch) => ch.settle_at.is_none() && ch.expiry_height > self.ledger.height(),
                None => self.ledger.pending(&o.channel),
            });
        let Some(mut o) = live else {
            return self.open_locked(payee, top_up.max(need), min_expiry);
        };
        if o.deposit - o.paid >= need && o.expiry_height >= min_expiry {
            return Ok(o);
        }
        let amount = top_up.max(need.saturating_sub(o.deposit - o.paid));
        let expiry_height = o.expiry_height.max(min_expiry);
        let tx = self
            .ledger
            .submit(TxBody::ChannelTopUp {
                channel: o.channel,
                amount,
                expiry_height,
            })
            .map_err(|source| PayError::Submit {
                what: "ChannelTopUp",
                channel: o.channel,
                source: Box::new(source),
            })?;
        o.deposit += amount;
        o.expiry_height = expiry_height;
        o.top_ups.push(tx);
        self.store.put_outgoing(&o)?;
        tracing::info!(channel = %o.channel, %payee, %amount, %tx, "channel topped up");
        Ok(o)
    }

    /// This payer's record of `channel`.
    pub fn channel(&self, channel: &Hash) -> Result<Outgoing, PayError> {
        self.store
            .outgoing(channel)?
            .ok_or(PayError::Unknown(*channel))
    }

    /// Whether the channel's open is mined (it is in the chain's state).
    pub fn is_open(&self, channel: &Hash) -> bool {
        self.ledger.channel(channel).is_some()
    }

    /// Whether the chain will never open it: not in the state, not waiting
    /// in the mempool, and mined (if at all) into a failed or pruned past.
    pub fn open_failed(&self, channel: &Hash) -> bool {
        !self.is_open(channel)
            && (self.ledger.included_at(channel).is_some() || !self.ledger.pending(channel))
    }

    /// Signs the next voucher on `channel`, raising what it pays in all to
    /// `amount` but never above `bound` (the caller's own reckoning of what
    /// can be owed: per second × elapsed for VMs, price × verified parts for
    /// files) nor the deposit. The voucher is recorded before it is
    /// returned. `None`: nothing above what was already paid.
    pub fn pay(
        &self,
        channel: &Hash,
        amount: Amount,
        bound: Amount,
    ) -> Result<Option<SignedVoucher>, PayError> {
        let mut o = self.channel(channel)?;
        let deposit = match self.ledger.channel(channel) {
            Some(ch) => ch.deposit.min(o.deposit),
            None => o.deposit,
        };
        if amount > bound {
            tracing::debug!(%channel, %amount, %bound, "payment capped by the bound");
        }
        let cumulative = amount.min(bound).min(deposit);
        if cumulative <= o.paid {
            return Ok(None);
        }
        let v = Voucher {
            chain_id: self.ledger.chain_id(),
            channel: *channel,
            seq: o.seq + 1,
            cumulative,
        }
        .sign(&self.key, &self.ledger.genesis_hash());
        o.seq += 1;
        o.paid = cumulative;
        o.voucher = Some(v.clone());
        self.store.put_outgoing(&o)?;
        Ok(Some(v))
    }

    /// The last voucher signed on `channel`, to send again.
    pub fn last_voucher(&self, channel: &Hash) -> Result<Option<SignedVoucher>, PayError> {
        Ok(self.channel(channel)?.voucher)
    }

    /// One step towards getting the rest of a finished channel back: settle
    /// it (the payee may still claim during the challenge period), then
    /// reclaim once settled or expired. Returns the transaction submitted,
    /// if one was due; `None` also when the channel is already gone.
    pub fn wind_down(&self, channel: &Hash) -> Result<Option<Hash>, PayError> {
        let mut o = self.channel(channel)?;
        let Some(ch) = self.ledger.channel(channel) else {
            return Ok(None);
        };
        if o.wind_down_tx.is_some_and(|tx| self.ledger.pending(&tx)) {
            return Ok(None);
        }
        let height = self.ledger.height();
        let (what, body) = match ch.settle_at {
            None if height < ch.expiry_height => {
                ("ChannelSettle", TxBody::ChannelSettle { channel: *channel })
            }
            Some(at) if height < at && height < ch.expiry_height => return Ok(None),
            _ => (
                "ChannelReclaim",
                TxBody::ChannelReclaim { channel: *channel },
            ),
        };
        let tx = self
            .ledger
            .submit(body)
            .map_err(|source| PayError::Submit {
                what,
                channel: *channel,
                source: Box::new(source),
            })?;
        o.wind_down_tx = Some(tx);
        self.store.put_outgoing(&o)?;
        tracing::info!(%channel, %tx, what, "winding the channel down");
        Ok(Some(tx))
    }

    /// Reclaims every channel of this payer that has expired on chain (a
    /// payee that vanished never closes): no deposit stays locked forever.
    /// Returns the reclaims submitted.
    pub fn reclaim_expired(&self) -> Result<Vec<Hash>, PayError> {
        let height = self.ledger.height();
        let mut submitted = Vec::new();
        for o in self.store.outgoing_all()? {
            let Some(ch) = self.ledger.channel(&o.channel) else {
                continue;
            };
            if height < ch.expiry_height {
                continue;
            }
            if let Some(tx) = self.wind_down(&o.channel)? {
                submitted.push(tx);
            }
        }
        Ok(submitted)
    }

    fn open_locked(
        &self,
        payee: Address,
        deposit: Amount,
        expiry_height: u64,
    ) -> Result<Outgoing, PayError> {
        let channel = self
            .ledger
            .submit(TxBody::ChannelOpen {
                payee,
                deposit,
                expiry_height,
            })
            .map_err(|source| PayError::Open {
                payee,
                source: Box::new(source),
            })?;
        let o = Outgoing {
            channel,
            payee,
            deposit,
            expiry_height,
            seq: 0,
            paid: 0,
            voucher: None,
            top_ups: Vec::new(),
            wind_down_tx: None,
        };
        self.store.put_outgoing(&o)?;
        tracing::info!(%channel, %payee, %deposit, expiry_height, "channel opened");
        Ok(o)
    }
}
