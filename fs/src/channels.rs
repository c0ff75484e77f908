//! The file network's payments over the `pay` crate, the same channels
//! that pay for VMs. [`Channels`] is both sides of [`crate::payment`]:
//!
//! * as the downloader's [`PartPayer`] it is a [`zennet_pay::Payer`] with
//!   ONE channel per seeder, reused across files and transfers
//!   ([`Payer::channel_for`]: reuse, top up, or open), and each voucher's
//!   bound is what was paid on the channel before plus the cost of the
//!   part just verified — never more than price × verified parts;
//! * as the seeder's [`PartPayee`] it is a [`zennet_pay::Payee`]: a
//!   voucher's channel must be on chain, from the peer that sent it, to
//!   this node ([`Payee::admit`]); the voucher is checked
//!   ([`zennet_pay::check_voucher`]) and stored before the part it pays
//!   for counts, so a `kill -9` never loses a voucher the seeder acted on.
//!   Held vouchers are claimed when the payer starts settling or expiry
//!   nears ([`Channels::claim_due`]);
//! * a channel nothing was paid through for a while is wound down
//!   ([`PartPayer::wind_down_idle`]): settled, then reclaimed, and never
//!   chosen for a transfer again once that began.
//!
//! No voucher or channel rule lives here: only which channel serves which
//! seeder, the per-part bound, and waiting for the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zennet_chain::{Address, Amount, Hash, Ledger, SecretKey, SignedVoucher};
use zennet_pay::{PayStore, Payee, Payer, Received};

use crate::error::{FsError, PaymentError};
use crate::payment::{BoxFuture, PartPayee, PartPayer, WindDown};

/// How channels to seeders are funded and kept.
#[derive(Debug, Clone)]
pub struct ChannelTerms {
    /// Least deposit of a new channel or a top-up: a channel serves many
    /// files, so it is funded for more than the first one needs.
    pub min_deposit: Amount,
    /// A channel's expiry is kept between one and two of these ahead of
    /// the tip (expiries are rounded up to a multiple of it, so a channel
    /// is reused, not topped up, for that many blocks).
    pub expiry_step_blocks: u64,
    /// How long to wait for an open or a top-up to be mined.
    pub mined_within: Duration,
    /// The seeder claims a held voucher once its channel expires within
    /// this many blocks (or the payer starts settling).
    pub claim_margin_blocks: u64,
}

impl Default for ChannelTerms {
    fn default() -> Self {
        ChannelTerms {
            min_deposit: 0,
            // A day of 2-second blocks.
            expiry_step_blocks: 43_200,
            mined_within: Duration::from_secs(180),
            claim_margin_blocks: 60,
        }
    }
}

pub struct Channels {
    ledger: Arc<dyn Ledger>,
    payer: Payer,
    payee: Payee,
    store: Arc<dyn PayStore>,
    terms: ChannelTerms,
    /// The channel [`PartPayer::prepare`] chose for each seeder. Held
    /// while signing, so two transfers paying one seeder never sign two
    /// vouchers with one seq.
    using: Mutex<HashMap<Address, Hash>>,
    /// When each channel was last prepared or paid through, for winding
    /// down idle ones; a channel not touched since this node started
    /// counts from the start.
    touched: Mutex<HashMap<Hash, Instant>>,
    started: Instant,
}

impl Channels {
    /// `ledger` signs as this node with `key` (vouchers and the channels'
    /// transactions come from one account); `store` keeps both sides'
    /// records (the node's `pay.db`).
    pub fn new(
        ledger: Arc<dyn Ledger>,
        key: SecretKey,
        store: Arc<dyn PayStore>,
        terms: ChannelTerms,
    ) -> Channels {
        Channels {
            payer: Payer::new(ledger.clone(), key, store.clone()),
            payee: Payee::new(ledger.clone(), store.clone(), terms.claim_margin_blocks),
            ledger,
            store,
            terms,
            using: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Claims every held voucher whose channel is settling or near expiry;
    /// the node calls this now and then. Returns the claims submitted.
    pub fn claim_due(&self) -> Result<Vec<Hash>, PaymentError> {
        self.claim_where(|_| true)
    }

    /// The channel to `payee` this node pays parts through, if one was chosen.
    pub fn channel_to(&self, payee: &Address) -> Option<Hash> {
        self.lock().get(payee).copied()
    }

    pub fn payer(&self) -> &Payer {
        &self.payer
    }

    pub fn payee(&self) -> &Payee {
        &self.payee
    }

    fn claim_where(&self, want: impl Fn(&Address) -> bool) -> Result<Vec<Hash>, PaymentError> {
        let mut txs = Vec::new();
        for rec in self
            .store
            .incoming_all()
            .map_err(zennet_pay::PayError::from)?
        {
            if want(&rec.payer)
                && let Some(tx) = self.payee.claim_if_due(&rec.channel)?
            {
                txs.push(tx);
            }
        }
        Ok(txs)
    }

    /// The expiry asked of a channel: the next multiple of the step that is
    /// at least one step ahead (constant for a step's worth of blocks).
    fn min_expiry(&self) -> u64 {
        let step = self.terms.expiry_step_blocks.max(1);
        (self.ledger.height() / step + 2) * step
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Address, Hash>> {
        self.using.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, channel: Hash) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel, Instant::now());
    }

    async fn wait_mined(
        &self,
        channel: Hash,
        deposit: Amount,
        expiry: u64,
    ) -> Result<(), PaymentError> {
        let deadline = tokio::time::Instant::now() + self.terms.mined_within;
        loop {
            if self
                .ledger
                .channel(&channel)
                .is_some_and(|c| c.deposit >= deposit && c.expiry_height >= expiry)
            {
                return Ok(());
            }
            if self.payer.open_failed(&channel) {
                return Err(PaymentError::OpenFailed(channel));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PaymentError::NotMined {
                    channel,
                    secs: self.terms.mined_within.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl PartPayer for Channels {
    fn prepare(&self, payee: Address, budget: Amount) -> BoxFuture<'_, Result<(), FsError>> {
        self.prepare_ahead(payee, budget, budget)
    }

    fn prepare_ahead(
        &self,
        payee: Address,
        budget: Amount,
        deposit: Amount,
    ) -> BoxFuture<'_, Result<(), FsError>> {
        Box::pin(async move {
            let o = {
                // Held from choosing to marking it used, so an idle
                // wind-down never settles the channel just chosen.
                let mut using = self.lock();
                let o = self.payer.channel_for(
                    payee,
                    budget,
                    self.min_expiry(),
                    deposit.max(budget).max(self.terms.min_deposit),
                )?;
                using.insert(payee, o.channel);
                self.touch(o.channel);
                o
            };
            self.wait_mined(o.channel, o.deposit, o.expiry_height)
                .await?;
            tracing::debug!(channel = %o.channel, %payee, deposit = %o.deposit, "channel ready");
            Ok(())
        })
    }

    fn pay(&self, payee: Address, cost: Amount) -> Result<SignedVoucher, FsError> {
        let using = self.lock();
        let channel = *using.get(&payee).ok_or(PaymentError::NotPrepared(payee))?;
        let before = self.payer.channel(&channel)?.paid;
        let bound = before + cost;
        self.touch(channel);
        match self.payer.pay(&channel, bound, bound)? {
            Some(v) if v.voucher.cumulative == bound => Ok(v),
            _ => Err(PaymentError::Spent { payee, channel }.into()),
        }
    }

    fn wind_down_idle(&self, idle: Duration) -> Result<Vec<WindDown>, FsError> {
        // Held throughout: no voucher is signed on a channel while it is
        // being wound down, and no transfer picks it meanwhile.
        let mut using = self.lock();
        let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for o in self
            .store
            .outgoing_all()
            .map_err(zennet_pay::PayError::from)?
        {
            let last = touched.get(&o.channel).copied().unwrap_or(self.started);
            if last.elapsed() < idle {
                continue;
            }
            let Some(tx) = self.payer.wind_down(&o.channel)? else {
                continue;
            };
            using.retain(|_, ch| *ch != o.channel);
            out.push(WindDown {
                seeder: o.payee,
                channel: o.channel,
                paid: o.paid,
                tx,
            });
        }
        Ok(out)
    }
}

impl PartPayee for Channels {
    fn receive(&self, payer: Address, voucher: SignedVoucher) -> Result<Amount, FsError> {
        // A part's voucher must stay claimable: the challenge period and the
        // claim margin must fit before the channel expires.
        let min_expiry = self.ledger.height()
            + self.ledger.genesis().economics.channel_challenge_period
            + self.terms.claim_margin_blocks;
        self.payee
            .admit(&voucher.voucher.channel, &payer, min_expiry)?;
        Ok(match self.payee.receive(voucher)? {
            Received::New { added, .. } => added,
            Received::Repeat => 0,
        })
    }

    fn session_ended(&self, payer: Address) {
        if let Err(e) = self.claim_where(|p| *p == payer) {
            tracing::warn!(%payer, error = %e, "claiming a downloader's vouchers failed");
        }
    }
}
