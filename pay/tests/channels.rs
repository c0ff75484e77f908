//! Payer and payee against a real in-memory chain (`TestChain`, blocks
//! mined on demand), each rule with the side that cheats or dies.

use std::sync::Arc;

use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Ledger, SecretKey, Voucher};
use zennet_pay::{
    CloseStep, MemoryStore, PayError, PayStore, Payee, Payer, Received, SqliteStore,
    VoucherRejected,
};

const FUNDS: u128 = 1_000_000_000;
const MARGIN: u64 = 5;

struct World {
    chain: Arc<TestChain>,
    payer_ledger: Arc<TestLedger>,
    payee_ledger: Arc<TestLedger>,
    payer: Payer,
    payee: Payee,
    payee_store: Arc<dyn PayStore>,
}

fn world_with(payee_store: Arc<dyn PayStore>) -> World {
    let (a, b) = (SecretKey::generate(), SecretKey::generate());
    let chain = TestChain::new(&[(a.address(), FUNDS), (b.address(), FUNDS)]);
    let payer_ledger = chain.ledger(a.clone());
    let payee_ledger = chain.ledger(b);
    World {
        payer: Payer::new(payer_ledger.clone(), a, Arc::new(MemoryStore::new())),
        payee: Payee::new(payee_ledger.clone(), payee_store.clone(), MARGIN),
        chain,
        payer_ledger,
        payee_ledger,
        payee_store,
    }
}

fn world() -> World {
    world_with(Arc::new(MemoryStore::new()))
}

impl World {
    /// A channel from payer to payee, mined and admitted.
    fn open(&self, deposit: u128, expiry_in: u64) -> zennet_chain::Hash {
        let h = self.chain.height();
        let o = self
            .payer
            .open(self.payee_ledger.address(), deposit, h + expiry_in)
            .unwrap();
        assert!(!self.payer.is_open(&o.channel));
        self.chain.mine();
        assert!(self.payer.is_open(&o.channel));
        self.payee
            .admit(&o.channel, &self.payer_ledger.address(), h + 10)
            .unwrap();
        o.channel
    }
}

#[test]
fn vouchers_never_exceed_the_bound_or_the_deposit_and_only_rise() {
    let w = world();
    let ch = w.open(1000, 100);
    // The payee asks for more than the payer's own bound allows.
    let v = w.payer.pay(&ch, 500, 300).unwrap().unwrap();
    assert_eq!(v.voucher.cumulative, 300);
    assert_eq!(v.voucher.seq, 1);
    // Nothing above what was paid: no voucher.
    assert!(w.payer.pay(&ch, 300, 300).unwrap().is_none());
    assert!(w.payer.pay(&ch, 200, 1000).unwrap().is_none());
    // Never above the deposit, whatever the bound.
    let v = w.payer.pay(&ch, 5000, 5000).unwrap().unwrap();
    assert_eq!((v.voucher.seq, v.voucher.cumulative), (2, 1000));
    // Recorded before it left: the last voucher is the one sent.
    assert_eq!(w.payer.last_voucher(&ch).unwrap(), Some(v.clone()));
    assert_eq!(
        w.payee.receive(v).unwrap(),
        Received::New {
            paid: 1000,
            added: 1000
        }
    );
}

#[test]
fn a_voucher_counts_once_stored_and_survives_the_payee_dying() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pay.db");
    let w = world_with(Arc::new(SqliteStore::open(&path).unwrap()));
    let ch = w.open(1000, 100);
    let v = w.payer.pay(&ch, 400, 400).unwrap().unwrap();
    assert!(matches!(
        w.payee.receive(v.clone()),
        Ok(Received::New { paid: 400, .. })
    ));
    assert_eq!(w.payee.receive(v).unwrap(), Received::Repeat);
    // kill -9: everything in memory is gone; the store has the voucher.
    let World {
        payee, payee_store, ..
    } = w;
    drop((payee, payee_store));
    let reopened = SqliteStore::open(&path).unwrap();
    let rec = reopened.incoming(&ch).unwrap().unwrap();
    assert_eq!(rec.paid(), 400);
}

#[test]
fn a_voucher_that_could_not_be_claimed_in_time_does_not_count() {
    let w = world();
    let ch = w.open(1000, 30);
    let v1 = w.payer.pay(&ch, 100, 100).unwrap().unwrap();
    w.payee.receive(v1).unwrap();
    // The payer starts settling: vouchers sent now could be claimed only
    // until settle_at; within the margin of it they are worthless.
    w.payer.wind_down(&ch).unwrap().expect("settle submitted");
    w.chain.mine();
    let settle_at = w.payee_ledger.channel(&ch).unwrap().settle_at.unwrap();
    while w.chain.height() + MARGIN < settle_at {
        w.chain.mine();
    }
    let late = w.payer.pay(&ch, 200, 200).unwrap().unwrap();
    match w.payee.receive(late) {
        Err(PayError::Voucher(VoucherRejected::Unclaimable { deadline, .. })) => {
            assert_eq!(deadline, settle_at)
        }
        other => panic!("a late voucher counted: {other:?}"),
    }
    assert_eq!(w.payee.paid(&ch).unwrap(), 100);
}

#[test]
fn a_channel_settling_at_contract_start_or_expiring_too_soon_is_refused() {
    let w = world();
    let h = w.chain.height();
    let o = w
        .payer
        .open(w.payee_ledger.address(), 1000, h + 500)
        .unwrap();
    w.chain.mine();
    // Settled at once: the work would end up unpaid.
    w.payer.wind_down(&o.channel).unwrap().unwrap();
    w.chain.mine();
    assert!(matches!(
        w.payee.admit(&o.channel, &w.payer_ledger.address(), h + 10),
        Err(PayError::Settling { .. })
    ));
    // Expiring before the lease and challenge period are over.
    let short = w
        .payer
        .open(w.payee_ledger.address(), 1000, h + 20)
        .unwrap();
    w.chain.mine();
    assert!(matches!(
        w.payee.admit(&short.channel, &w.payer_ledger.address(), h + 100),
        Err(PayError::ExpiresTooSoon { expiry, needed, .. }) if expiry == h + 20 && needed == h + 100
    ));
    // From someone else than the expected payer.
    let stranger = SecretKey::generate().address();
    assert!(matches!(
        w.payee.admit(&short.channel, &stranger, h),
        Err(PayError::WrongParties { .. })
    ));
}

#[test]
fn closing_claims_first_when_settling_and_repeats_until_the_channel_is_gone() {
    let w = world();
    let ch = w.open(1_000_000, 200);
    let v = w.payer.pay(&ch, 700_000, 700_000).unwrap().unwrap();
    w.payee.receive(v).unwrap();
    let before = w.payee_ledger.balance(&w.payee_ledger.address());
    // The payer settles; the payee's close might not make it before
    // settle_at, so the voucher is claimed first.
    w.payer.wind_down(&ch).unwrap().unwrap();
    w.chain.mine();
    assert!(matches!(
        w.payee.close_step(&ch).unwrap(),
        CloseStep::Claimed(_)
    ));
    // Not mined yet: nothing new is submitted.
    assert!(matches!(
        w.payee.close_step(&ch).unwrap(),
        CloseStep::Pending(_)
    ));
    w.chain.mine();
    assert_eq!(w.payee_ledger.channel(&ch).unwrap().claimed, 700_000);
    assert!(matches!(
        w.payee.close_step(&ch).unwrap(),
        CloseStep::Closing(_)
    ));
    w.chain.mine();
    assert_eq!(w.payee.close_step(&ch).unwrap(), CloseStep::Gone);
    let after = w.payee_ledger.balance(&w.payee_ledger.address());
    // Less the two fees (claim, close).
    assert!(
        after > before + 600_000,
        "the payee was paid: {before} -> {after}"
    );
}

#[test]
fn a_settling_channel_is_claimed_while_it_can_be_and_not_after() {
    // A channel paying 300,000 whose payer has started settling.
    let settling = || {
        let w = world();
        let ch = w.open(1_000_000, 200);
        let v = w.payer.pay(&ch, 300_000, 300_000).unwrap().unwrap();
        w.payee.receive(v).unwrap();
        w.payer.wind_down(&ch).unwrap().unwrap();
        w.chain.mine();
        (w, ch)
    };
    let (w, ch) = settling();
    let at = w.payee_ledger.channel(&ch).unwrap().settle_at.unwrap();
    // The payee slept through the challenge period: too late, and it says
    // so by submitting nothing rather than a claim the chain refuses.
    while w.chain.height() + 1 < at {
        w.chain.mine();
    }
    assert_eq!(w.payee.claim_if_due(&ch).unwrap(), None);
    assert_eq!(w.payee_ledger.channel(&ch).unwrap().claimed, 0);

    // In time, the same voucher is claimed.
    let (w, ch) = settling();
    assert!(w.payee.claim_if_due(&ch).unwrap().is_some());
    w.chain.mine();
    assert_eq!(w.payee_ledger.channel(&ch).unwrap().claimed, 300_000);
}

/// A node's ledger whose submissions never leave the node: what a node
/// killed right after submitting looks like to the chain.
struct Lost(Arc<TestLedger>);

impl Ledger for Lost {
    fn genesis(&self) -> zennet_chain::Genesis {
        self.0.genesis()
    }
    fn address(&self) -> zennet_chain::Address {
        self.0.address()
    }
    fn height(&self) -> u64 {
        self.0.height()
    }
    fn tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.tip()
    }
    fn balance(&self, a: &zennet_chain::Address) -> u128 {
        self.0.balance(a)
    }
    fn task(&self, id: &zennet_chain::Hash) -> Option<zennet_chain::TaskRecord> {
        self.0.task(id)
    }
    fn tasks(&self) -> Vec<zennet_chain::TaskRecord> {
        self.0.tasks()
    }
    fn channel(&self, id: &zennet_chain::Hash) -> Option<zennet_chain::Channel> {
        self.0.channel(id)
    }
    fn submit(
        &self,
        _body: zennet_chain::TxBody,
    ) -> Result<zennet_chain::Hash, zennet_chain::ChainError> {
        Ok(zennet_chain::Hash([0xee; 32]))
    }
    fn included_at(&self, tx: &zennet_chain::Hash) -> Option<u64> {
        self.0.included_at(tx)
    }
    fn pending(&self, tx: &zennet_chain::Hash) -> bool {
        self.0.pending(tx)
    }
}

#[test]
fn a_close_lost_with_a_killed_node_is_submitted_again() {
    let w = world();
    let ch = w.open(1_000_000, 200);
    let v = w.payer.pay(&ch, 250_000, 250_000).unwrap().unwrap();
    w.payee.receive(v).unwrap();
    // The node decides the contract is over, records its close… and dies
    // before the close reaches anyone.
    let dying = Payee::new(
        Arc::new(Lost(w.payee_ledger.clone())),
        w.payee_store.clone(),
        MARGIN,
    );
    let CloseStep::Closing(lost) = dying.close_step(&ch).unwrap() else {
        panic!("close recorded")
    };
    w.chain.mine();
    assert!(w.payee_ledger.channel(&ch).is_some(), "nothing was closed");
    // Restarted over the same store, it closes again, with the voucher.
    let before = w.payee_ledger.balance(&w.payee_ledger.address());
    let again = Payee::new(w.payee_ledger.clone(), w.payee_store.clone(), MARGIN);
    assert!(matches!(again.close_step(&ch).unwrap(), CloseStep::Closing(t) if t != lost));
    w.chain.mine();
    assert_eq!(again.close_step(&ch).unwrap(), CloseStep::Gone);
    let after = w.payee_ledger.balance(&w.payee_ledger.address());
    assert!(
        after >= before + 240_000,
        "paid what was vouched: {before} -> {after}"
    );
}

#[test]
fn a_payee_that_vanished_has_its_channel_reclaimed_after_expiry() {
    let w = world();
    let before = w.payer_ledger.balance(&w.payer_ledger.address());
    let ch = w.open(5000, 12);
    // The payee never closes. Before expiry nothing can be reclaimed.
    assert!(w.payer.reclaim_expired().unwrap().is_empty());
    while w.chain.height() < w.payer_ledger.channel(&ch).unwrap().expiry_height {
        w.chain.mine();
    }
    assert_eq!(w.payer.reclaim_expired().unwrap().len(), 1);
    w.chain.mine();
    assert!(w.payer_ledger.channel(&ch).is_none(), "reclaimed");
    let after = w.payer_ledger.balance(&w.payer_ledger.address());
    assert!(
        before - after < 5000,
        "the deposit came back: {before} -> {after}"
    );
}

#[test]
fn one_channel_per_payee_is_reused_and_topped_up() {
    // The file network's way: one channel per (payer, payee) across files.
    let w = world();
    let payee = w.payee_ledger.address();
    let h = w.chain.height();
    let a = w.payer.channel_for(payee, 100, h + 50, 1000).unwrap();
    let b = w.payer.channel_for(payee, 100, h + 50, 1000).unwrap();
    assert_eq!(a.channel, b.channel, "reused while opening");
    w.chain.mine();
    w.payer.pay(&a.channel, 950, 950).unwrap().unwrap();
    // 50 left, 100 needed: topped up, same channel.
    let c = w.payer.channel_for(payee, 100, h + 80, 1000).unwrap();
    assert_eq!(c.channel, a.channel);
    assert_eq!(c.deposit, 2000);
    assert_eq!(c.expiry_height, h + 80);
    w.chain.mine();
    assert_eq!(w.payer_ledger.channel(&a.channel).unwrap().deposit, 2000);
    // A voucher for the new total is good.
    let v = w.payer.pay(&a.channel, 1500, 1500).unwrap().unwrap();
    w.payee
        .admit(&a.channel, &w.payer_ledger.address(), h + 10)
        .unwrap();
    assert!(matches!(
        w.payee.receive(v),
        Ok(Received::New { paid: 1500, .. })
    ));
}

#[test]
fn a_voucher_signed_by_anyone_else_is_refused() {
    let w = world();
    let ch = w.open(1000, 100);
    let forged = Voucher {
        chain_id: w.payee_ledger.chain_id(),
        channel: ch,
        seq: 1,
        cumulative: 999,
    }
    .sign(&SecretKey::generate(), &w.payee_ledger.genesis_hash());
    assert!(matches!(
        w.payee.receive(forged),
        Err(PayError::Voucher(VoucherRejected::NotPayer { .. }))
    ));
    assert_eq!(w.payee.paid(&ch).unwrap(), 0);
}
