//! Paid transfers over real libp2p swarms on loopback, in one process, on
//! an in-memory chain ([`zennet_chain::testkit::TestChain`]) through the
//! `pay` crate's channels: the honest downloader pays each seeder per
//! verified part on one channel reused across files, and the cheating
//! sides — a leecher that stops paying (cut off at the credit, and still
//! refused when it reconnects), one that pays with a voucher over its
//! channel's deposit or on a channel that is not its own (refused, nothing
//! counted, nothing stored).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use zennet_chain::testkit::{TestChain, TestLedger};
use zennet_chain::{Amount, Hash, Ledger, SecretKey, TxBody, Voucher};
use zennet_fs::api::{GetRequest, TransferState};
use zennet_fs::channels::{ChannelTerms, Channels};
use zennet_fs::payment::part_cost;
use zennet_fs::wire::{self, Frame};
use zennet_fs::{FileId, Fs, FsConfig, PIECE_LEN};
use zennet_net::content::stream_protocol;
use zennet_net::{Multiaddr, NetHandle};
use zennet_pay::{MemoryStore, PayStore};

mod common;

use common::{add, miner, wait};

const PRICE: Amount = 1 << 20; // one base unit per byte
const CREDIT: u32 = 4;

struct Node {
    net: NetHandle,
    key: SecretKey,
    addr: Multiaddr,
    ledger: Arc<TestLedger>,
    store: Arc<MemoryStore>,
}

async fn node(chain: &Arc<TestChain>, key: SecretKey, bootstrap: &[Multiaddr]) -> Node {
    let common::Node { net, key, addr } = common::node_keyed(key, bootstrap).await;
    Node {
        net,
        ledger: chain.ledger(key.clone()),
        key,
        addr,
        store: Arc::new(MemoryStore::new()),
    }
}

fn channels(n: &Node) -> Arc<Channels> {
    Arc::new(Channels::new(
        n.ledger.clone(),
        n.key.clone(),
        n.store.clone(),
        ChannelTerms {
            min_deposit: 0,
            expiry_step_blocks: 1000,
            mined_within: Duration::from_secs(30),
            claim_margin_blocks: 5,
        },
    ))
}

fn fs_on(n: &Node, dir: &Path, pay: &Arc<Channels>) -> Arc<Fs> {
    let mut config = FsConfig::new(
        dir.to_path_buf(),
        n.ledger.chain_id(),
        n.ledger.genesis_hash(),
    );
    config.window = 4;
    config.credit_parts = CREDIT;
    config.price_per_mib = PRICE;
    config.max_price_per_mib = PRICE;
    Fs::start(
        config,
        n.net.clone(),
        n.key.clone(),
        pay.clone(),
        pay.clone(),
    )
    .unwrap()
}

fn random_file(dir: &Path, name: &str, len: usize) -> std::path::PathBuf {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

async fn until(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cond(), "not within 10 s");
}

async fn await_provider(net: &NetHandle, id: FileId) {
    for _ in 0..100 {
        if !net.providers(&id.0).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no provider of {id}");
}

fn funded_keys(n: usize) -> (Arc<TestChain>, Vec<SecretKey>) {
    let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
    let funded: Vec<_> = keys.iter().map(|k| (k.address(), 1u128 << 60)).collect();
    (TestChain::new(&funded), keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verified_part_is_paid_on_one_channel_reused_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, keys) = funded_keys(2);
    let mining = miner(&chain);
    let s = node(&chain, keys[0].clone(), &[]).await;
    let d = node(&chain, keys[1].clone(), std::slice::from_ref(&s.addr)).await;
    let (s_pay, d_pay) = (channels(&s), channels(&d));
    let seeder = fs_on(&s, &dir.path().join("s"), &s_pay);
    let downloader = fs_on(&d, &dir.path().join("d"), &d_pay);

    let len_a = PIECE_LEN as usize * 10 + 777;
    let a = add(&seeder, &random_file(dir.path(), "a", len_a)).await;
    let b = add(&seeder, &random_file(dir.path(), "b", 5000)).await;
    let mut paid = 0;
    let mut channel = None;
    for (id, len) in [(a, len_a), (b, 5000)] {
        await_provider(&d.net, id).await;
        downloader
            .get(GetRequest::new(id, dir.path().join(format!("out-{id}"))))
            .unwrap();
        let v = wait(&downloader, id).await;
        assert_eq!(v.state, TransferState::Done, "{v:?}");
        let meta = seeder.store().file(&id).expect("seeded").meta;
        let cost: Amount = (0..meta.piece_count())
            .map(|i| part_cost(PRICE, meta.piece_len(i)))
            .sum();
        assert_eq!(cost, len as Amount, "one unit per byte");
        // Endgame copies are paid too (they were served): at least the cost.
        assert!(v.spent >= cost, "spent {} for {cost}", v.spent);
        paid += v.spent;
        let ch = d_pay.channel_to(&s.key.address()).expect("a channel");
        assert_eq!(
            *channel.get_or_insert(ch),
            ch,
            "the same channel for both files"
        );
        // The seeder holds a voucher paying all of it, stored before it
        // counted (the last one may still be on its way).
        until(|| s_pay.payee().paid(&ch).unwrap() == paid).await;
        assert_eq!(d_pay.payer().channel(&ch).unwrap().paid, paid);
    }
    assert_eq!(
        d.store.outgoing_all().unwrap().len(),
        1,
        "one channel per seeder"
    );
    let earned = seeder.status().unwrap().earned;
    assert_eq!(earned, paid, "the seeder counted what its vouchers pay");
    // Per file: each was served whole (endgame copies too), and what the
    // files earned adds up to the channel's vouchers.
    let files = seeder.list();
    for f in &files {
        assert!(f.served_parts >= f.parts as u64, "{f:?}");
        assert!(f.served_bytes >= f.length && f.served_value >= f.length as Amount);
        assert!(f.earned > 0, "{} earned nothing", f.name);
    }
    assert_eq!(files.iter().map(|f| f.earned).sum::<Amount>(), paid);

    // A channel just paid through is not idle; `settle` winds it down
    // regardless, and the seeder claims on chain exactly what was vouched.
    mining.abort();
    let ch = channel.unwrap();
    assert!(
        downloader
            .wind_down_idle(Duration::from_secs(3600))
            .unwrap()
            .is_empty(),
        "a channel in use is not idle"
    );
    let wound = downloader.settle().unwrap();
    assert_eq!(wound.len(), 1, "{wound:?}");
    assert_eq!((wound[0].channel, wound[0].paid), (ch, paid));
    assert_eq!(wound[0].seeder, s.key.address());
    chain.mine();
    let before = chain.ledger(keys[0].clone()).balance(&s.key.address());
    let claims = s_pay.claim_due().unwrap();
    assert_eq!(claims.len(), 1, "a settling channel is claimed");
    chain.mine();
    assert_eq!(s.ledger.channel(&ch).unwrap().claimed, paid);
    let after = s.ledger.balance(&s.key.address());
    assert!(
        after > before && after - before <= paid,
        "the claim paid the seeder (less its fee)"
    );
    assert!(
        s_pay.claim_due().unwrap().is_empty(),
        "nothing claimed twice"
    );

    // A channel being wound down is never paid through again: the next
    // download opens a new one.
    let _mining = miner(&chain);
    let c = add(&seeder, &random_file(dir.path(), "c", 3000)).await;
    await_provider(&d.net, c).await;
    downloader
        .get(GetRequest::new(c, dir.path().join("out-c")))
        .unwrap();
    assert_eq!(wait(&downloader, c).await.state, TransferState::Done);
    let new = d_pay.channel_to(&s.key.address()).expect("a channel");
    assert_ne!(new, ch, "a new channel after the wind-down");
    assert_eq!(d.store.outgoing_all().unwrap().len(), 2);
}

/// A raw client of the part protocol that asks for parts and pays only
/// what `pay` says.
async fn leech(
    from: &Node,
    to: &Node,
    file: FileId,
    parts: u32,
    pay: impl Fn(u32) -> Option<zennet_chain::SignedVoucher>,
) -> (u32, Option<String>) {
    let stream = from
        .net
        .streams()
        .open_stream(to.net.local_peer_id, stream_protocol(wire::PROTOCOL))
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.split();
    wire::write(&mut wr, &Frame::Hello { file }).await.unwrap();
    wire::flush(&mut wr).await.unwrap();
    match wire::read(&mut rd).await.unwrap() {
        Frame::Offer(o) => assert_eq!(o.credit_parts, CREDIT),
        Frame::Refused { reason } => return (0, Some(reason)),
        other => panic!("expected an offer, got {other:?}"),
    }
    let mut got = 0;
    for index in 0..parts {
        let sent = async {
            wire::write(&mut wr, &Frame::Get { index }).await?;
            if let Some(v) = pay(index) {
                wire::write(&mut wr, &Frame::Pay(Box::new(v))).await?;
            }
            wire::flush(&mut wr).await
        }
        .await;
        match tokio::time::timeout(Duration::from_secs(10), wire::read(&mut rd)).await {
            Ok(Ok(Frame::Part { .. })) => got += 1,
            Ok(Ok(Frame::Refused { reason })) => return (got, Some(reason)),
            other if sent.is_err() => return (got, Some(format!("closed: {other:?}"))),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, None)
}

fn open_channel(chain: &TestChain, l: &TestLedger, to: &Node, deposit: Amount) -> Hash {
    let ch = l
        .submit(TxBody::ChannelOpen {
            payee: to.key.address(),
            deposit,
            expiry_height: chain.height() + 1000,
        })
        .unwrap();
    chain.mine();
    assert!(l.channel(&ch).is_some());
    ch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leecher_that_stops_paying_is_cut_off_and_stays_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, keys) = funded_keys(2);
    let s = node(&chain, keys[0].clone(), &[]).await;
    let l = node(&chain, keys[1].clone(), std::slice::from_ref(&s.addr)).await;
    let s_pay = channels(&s);
    let seeder = fs_on(&s, &dir.path().join("s"), &s_pay);
    let file = add(
        &seeder,
        &random_file(dir.path(), "f", PIECE_LEN as usize * 16),
    )
    .await;
    let part = part_cost(PRICE, PIECE_LEN);
    let ch = open_channel(&chain, &l.ledger, &s, part * 100);
    let voucher = |seq: u64, parts: u32| {
        Voucher {
            chain_id: l.ledger.chain_id(),
            channel: ch,
            seq,
            cumulative: part * parts as Amount,
        }
        .sign(&l.key, &l.ledger.genesis_hash())
    };

    // Pays for the first two parts, then stops: served up to the credit.
    let (got, refused) = leech(&l, &s, file, 16, |i| {
        (i < 2).then(|| voucher(i as u64 + 1, i + 1))
    })
    .await;
    assert_eq!(got, 2 + CREDIT, "two paid parts and the credit");
    assert!(
        refused.unwrap().contains("unpaid"),
        "cut off for not paying"
    );
    // Reconnecting buys no fresh credit.
    let (got, refused) = leech(&l, &s, file, 1, |_| None).await;
    assert_eq!(got, 0);
    let reason = refused.expect("refused");
    assert!(
        reason.contains("unpaid") || reason.contains("owes"),
        "{reason}"
    );
    // What it paid is stored and counted; nothing more.
    assert_eq!(s_pay.payee().paid(&ch).unwrap(), 2 * part);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_over_the_deposit_or_on_a_foreign_channel_is_refused_and_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, keys) = funded_keys(3);
    let s = node(&chain, keys[0].clone(), &[]).await;
    let l = node(&chain, keys[1].clone(), std::slice::from_ref(&s.addr)).await;
    let s_pay = channels(&s);
    let seeder = fs_on(&s, &dir.path().join("s"), &s_pay);
    let file = add(
        &seeder,
        &random_file(dir.path(), "f", PIECE_LEN as usize * 8),
    )
    .await;
    let part = part_cost(PRICE, PIECE_LEN);

    // Over the deposit: the voucher looks big but the chain would never pay it.
    let small = open_channel(&chain, &l.ledger, &s, part);
    let over = Voucher {
        chain_id: l.ledger.chain_id(),
        channel: small,
        seq: 1,
        cumulative: part * 8,
    }
    .sign(&l.key, &l.ledger.genesis_hash());
    let (got, refused) = leech(&l, &s, file, 8, |i| (i == 0).then(|| over.clone())).await;
    let reason = refused.expect("refused");
    assert!(
        reason.contains("voucher refused") && reason.contains("deposit"),
        "{reason}"
    );
    // The voucher is checked beside the transfer, so a part or two may go
    // out meanwhile: never more than the credit any downloader gets
    // without paying at all.
    assert!(got <= CREDIT, "served {got} parts on a worthless voucher");
    assert_eq!(s_pay.payee().paid(&small).unwrap(), 0, "not stored");

    // Someone else's channel to the seeder, signed by the leecher.
    let other = chain.ledger(keys[2].clone());
    let foreign = open_channel(&chain, &other, &s, part * 100);
    let forged = Voucher {
        chain_id: l.ledger.chain_id(),
        channel: foreign,
        seq: 1,
        cumulative: part * 8,
    }
    .sign(&l.key, &l.ledger.genesis_hash());
    let (_, refused) = leech(&l, &s, file, 8, |i| (i == 0).then(|| forged.clone())).await;
    assert!(refused.expect("refused").contains("voucher refused"));
    assert_eq!(s_pay.payee().paid(&foreign).unwrap(), 0);
    assert_eq!(
        seeder.status().unwrap().earned,
        0,
        "nothing counted as paid"
    );
    assert!(
        seeder.list().iter().all(|f| f.earned == 0),
        "no file counted as paid"
    );
}
