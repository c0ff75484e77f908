//! The payment points of the file network, as a narrow seam: the
//! downloader pays each seeder per verified part through a [`PartPayer`],
//! the seeder takes vouchers through a [`PartPayee`], and both keep an
//! [`Account`] per peer (parts, bytes, what they cost, what was paid) for
//! the credit cut-off and the status. Channels nothing was paid through
//! for a while are wound down ([`PartPayer::wind_down_idle`]), so a
//! downloader's unspent deposits come back and seeders claim on chain
//! what they were paid. A node implements both with
//! [`crate::channels::Channels`], over the `pay` crate's channels (one
//! channel per seeder, reused across files and transfers), the same
//! channels that pay for VMs; [`NoPayments`] is for free-only nodes.
//!
//! Amounts: a part of `n` bytes at `p` base units per MiB costs
//! `ceil(p × n / 2^20)`; both sides add up the same per-part costs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use zennet_chain::{Address, Amount, Hash, SignedVoucher};

use crate::error::{FsError, PaymentError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Default)]
pub struct Account {
    pub parts: u64,
    pub bytes: u64,
    /// Cost of the parts served (or bought).
    pub owed: Amount,
    /// Vouchers taken (or given).
    pub paid: Amount,
}

impl Account {
    /// A change of `parts` parts and `bytes` bytes costing `owed`.
    pub fn served(parts: u64, bytes: u64, owed: Amount) -> Account {
        Account {
            parts,
            bytes,
            owed,
            paid: 0,
        }
    }

    pub fn paid(paid: Amount) -> Account {
        Account {
            paid,
            ..Default::default()
        }
    }

    pub fn add(&mut self, delta: &Account) {
        self.parts += delta.parts;
        self.bytes += delta.bytes;
        self.owed += delta.owed;
        self.paid += delta.paid;
    }

    pub fn unpaid(&self) -> Amount {
        self.owed.saturating_sub(self.paid)
    }
}

/// What one part costs.
pub fn part_cost(price_per_mib: Amount, bytes: u64) -> Amount {
    (price_per_mib * bytes as Amount).div_ceil(1 << 20)
}

/// The downloader's side.
pub trait PartPayer: Send + Sync + 'static {
    /// Makes the channel to `payee` able to carry `budget` more than it has
    /// paid so far: reuses an open channel, tops it up, or opens one, and
    /// waits until the chain has it.
    fn prepare(&self, payee: Address, budget: Amount) -> BoxFuture<'_, Result<(), FsError>>;

    /// Like [`PartPayer::prepare`] for `need`, but a channel opened or
    /// topped up gets at least `deposit`: a storage contract funds its
    /// channel for hours ahead rather than one top-up per payment.
    fn prepare_ahead(
        &self,
        payee: Address,
        need: Amount,
        deposit: Amount,
    ) -> BoxFuture<'_, Result<(), FsError>> {
        let _ = deposit;
        self.prepare(payee, need)
    }

    /// A voucher raising what `payee` has been paid by `cost`, the cost
    /// of a part just verified (never more), recorded before it is
    /// returned.
    fn pay(&self, payee: Address, cost: Amount) -> Result<SignedVoucher, FsError>;

    /// One step of winding down every channel nothing was paid through
    /// (or prepared on) for `idle`: settle it, so the seeder claims what
    /// its vouchers pay, then reclaim the rest once the challenge period
    /// is over. Returns the transactions submitted.
    fn wind_down_idle(&self, _idle: Duration) -> Result<Vec<WindDown>, FsError> {
        Ok(Vec::new())
    }
}

/// A wind-down transaction submitted for the channel to one seeder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindDown {
    pub seeder: Address,
    pub channel: Hash,
    /// What the vouchers signed on it pay in all.
    pub paid: Amount,
    pub tx: Hash,
}

/// The seeder's side.
pub trait PartPayee: Send + Sync + 'static {
    /// Checks a voucher from `payer` (its channel to us, signature, above
    /// the last one, within the deposit on chain) and stores it before it
    /// counts; returns how much more than before it pays.
    fn receive(&self, payer: Address, voucher: SignedVoucher) -> Result<Amount, FsError>;

    /// A downloader's session ended: claim on chain what it paid, if due.
    fn session_ended(&self, payer: Address);
}

/// For a node without payments: free transfers only.
pub struct NoPayments;

impl PartPayer for NoPayments {
    fn prepare(&self, payee: Address, _budget: Amount) -> BoxFuture<'_, Result<(), FsError>> {
        Box::pin(async move { Err(PaymentError::CannotPay(payee).into()) })
    }

    fn pay(&self, payee: Address, _cost: Amount) -> Result<SignedVoucher, FsError> {
        Err(PaymentError::CannotPay(payee).into())
    }
}

impl PartPayee for NoPayments {
    fn receive(&self, payer: Address, _voucher: SignedVoucher) -> Result<Amount, FsError> {
        Err(PaymentError::TakesNoVouchers(payer).into())
    }

    fn session_ended(&self, _payer: Address) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_costs_its_share_of_a_mib_rounded_up() {
        assert_eq!(part_cost(1 << 20, 256 << 10), 256 << 10);
        assert_eq!(part_cost(4, 256 << 10), 1);
        assert_eq!(part_cost(1, 1), 1);
        assert_eq!(part_cost(0, 256 << 10), 0);
        assert_eq!(part_cost(1000, 0), 0);
    }
}
