//! The chain under attack and at scale, with real `zennet` processes:
//! snapshot fast sync of a long chain while a peer serves corrupt chunks,
//! joining a chain whose early announcements are pruned, a peer feeding a
//! deep cheap fork, a peer lying about its total difficulty, a block from a
//! fast clock, and a transaction replayed from another dev chain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zennet_chain::codec::encode;
use zennet_chain::snapshot::{Source, encode_chunk};
use zennet_chain::state::{Account, StateValue};
use zennet_chain::testkit::fast_genesis;
use zennet_chain::{Chain, Genesis, Hash, SecretKey, Transaction, TxBody};
use zennet_net::{Status, SyncRequest, SyncResponse, parse_hashes};
use zennet_tests::{FakePeer, TestHome, build_chain, build_chain_sparse, lists_peer, wait_until};

const LOOPBACK: &[&str] = &["--listen", "/ip4/127.0.0.1/tcp/0"];

fn args<'a>(extra: &[&'a str], bootstrap: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = LOOPBACK.to_vec();
    v.extend_from_slice(extra);
    for b in bootstrap {
        v.extend_from_slice(&["--bootstrap", b]);
    }
    v
}

/// A cheap-seal genesis funding `keys`, with the given horizon and interval.
fn genesis_for(keys: &[SecretKey], name: &str, horizon: u64, interval: u64) -> Genesis {
    let funded: Vec<_> = keys.iter().map(|k| (k.address(), 1u128 << 70)).collect();
    let mut g = fast_genesis(&funded);
    g.name = format!("{name}-{}", std::process::id());
    g.consensus.reorg_horizon = horizon;
    g.consensus.snapshot_interval = interval;
    g
}

/// Answers sync requests honestly from `chain`, except that snapshot
/// chunks are corrupted when `corrupt` is set.
fn serve(chain: &Mutex<Chain>, request: SyncRequest, corrupt: bool) -> SyncResponse {
    let chain = chain.lock().unwrap();
    match request {
        SyncRequest::Status => {
            let tip = chain.tip();
            SyncResponse::Status(Status::new(
                chain.genesis_hash(),
                tip.header.height,
                tip.hash,
                tip.total_difficulty,
            ))
        }
        SyncRequest::Headers { locator, max } => {
            let locator = parse_hashes(&locator).unwrap_or_default();
            let headers = chain
                .headers_after(&locator, max.min(512) as usize)
                .unwrap();
            SyncResponse::Headers(headers.iter().map(|h| encode(h).into()).collect())
        }
        SyncRequest::Blocks { hashes } => SyncResponse::Blocks(
            parse_hashes(&hashes)
                .unwrap_or_default()
                .iter()
                .filter_map(|h| chain.block_by_hash(h).unwrap())
                .map(|b| encode(&b).into())
                .collect(),
        ),
        SyncRequest::SnapshotManifest { height } => {
            let m = Source::new(chain.store(), height)
                .unwrap()
                .manifest()
                .unwrap();
            SyncResponse::Manifest(m.encode().into())
        }
        SyncRequest::SnapshotChunk {
            height,
            depth,
            index,
        } => {
            let mut chunk = Source::new(chain.store(), height)
                .unwrap()
                .chunk(depth, index)
                .unwrap();
            if corrupt && let Some((_, v)) = chunk.first_mut() {
                *v = StateValue::Account(Account {
                    balance: u128::MAX,
                    nonce: 0,
                });
            }
            SyncResponse::Chunk(encode_chunk(&chunk).into())
        }
    }
}

#[test]
fn fast_sync_joins_a_20000_block_chain_while_a_peer_serves_corrupt_chunks() {
    let keys: Vec<SecretKey> = (0..6).map(|_| SecretKey::generate()).collect();
    let genesis = genesis_for(&keys, "fast-sync", 100, 500);
    let mut server = TestHome::on_genesis(&genesis);
    let started = Instant::now();
    let chain = build_chain_sparse(&server, &genesis, keys, 20_000, 8);
    let built = started.elapsed();
    let (tip, root) = (chain.tip().hash, chain.state().root());
    {
        let s = chain.state();
        assert!(
            s.tasks().count() > 0 && s.channels().count() > 0,
            "tasks and channels in the state"
        );
    }
    let pruned = (1..2_000).any(|h| {
        chain
            .block_by_height(h)
            .unwrap()
            .unwrap()
            .txs
            .iter()
            .any(|t| matches!(t, zennet_chain::StoredTx::Pruned { .. }))
    });
    assert!(pruned, "early announcement bodies are pruned on the server");
    server.start_node(&args(&[], &[]));
    let boot = server.p2p_addr();

    // The liar is an honest server in every way but its chunks.
    let liar_chain = Arc::new(Mutex::new(chain));
    let lc = liar_chain.clone();
    let liar = FakePeer::start(genesis.hash(), &boot, move |r| serve(&lc, r, true));
    liar.wait_connected();
    let liar_addr = liar.addr();

    let mut joiner = TestHome::on_genesis(&genesis);
    let joined = Instant::now();
    joiner.start_node(&args(&[], &[&boot, &liar_addr]));
    // `chain sync` follows the catch-up (one line per phase without a
    // terminal) and returns once no peer is ahead.
    let sync = joiner.run(&["chain", "sync", "--timeout", "240", "--json"]);
    let lines = String::from_utf8_lossy(&sync.stderr);
    assert!(sync.status.success(), "chain sync failed: {lines}");
    assert!(lines.contains("syncing: headers from height 0"), "{lines}");
    let info: serde_json::Value = serde_json::from_slice(&sync.stdout).expect("JSON");
    assert_eq!(info["tip"], tip.to_string(), "in sync means at the tip");
    assert_eq!(info["sync"]["behind"], false);
    assert_eq!(joiner.tip().1, tip.to_string());
    let took = joined.elapsed();
    assert_eq!(
        joiner.tip().2,
        root.to_string(),
        "same state root as the server"
    );
    let log = joiner.node_log();
    assert!(log.contains("snapshot installed"), "it joined by snapshot");
    assert!(
        log.contains("served a bad snapshot chunk") && log.contains(&liar.peer_id()),
        "the corrupt-chunk peer was banned"
    );
    assert!(!lists_peer(&joiner, &liar.peer_id()));
    eprintln!("built 20,000 blocks in {built:?}; fast sync to the tip in {took:?}");

    // What it installed checks out: the auditor's recomputation agrees.
    joiner.stop_node();
    let report = joiner.json(&["chain", "verify"]);
    assert_eq!(report["computed_root"], root.to_string());
    // The node wrote its trie as it stopped, so the next start loads it.
    assert_eq!(report["trie_root"], report["header_root"], "{report}");
}

#[test]
fn a_fresh_node_joins_a_chain_whose_early_announcements_are_pruned() {
    let keys: Vec<SecretKey> = (0..6).map(|_| SecretKey::generate()).collect();
    let genesis = genesis_for(&keys, "pruned", 20, 50);
    let mut server = TestHome::on_genesis(&genesis);
    let chain = build_chain(&server, &genesis, keys, 600);
    let announced = chain.store().stored_bodies().unwrap();
    let first_task = (1..600)
        .find(|&h| {
            let b = chain.block_by_height(h).unwrap().unwrap();
            b.txs
                .iter()
                .any(|t| matches!(t, zennet_chain::StoredTx::Pruned { .. }))
        })
        .expect("some announcement body is pruned");
    let (tip, root) = (chain.tip().hash, chain.state().root());
    drop(chain);
    server.start_node(&args(&[], &[]));
    let boot = server.p2p_addr();

    // Told not to fast-sync, a node executes what it can, stops at the
    // first pruned body, and blames nobody.
    let mut full = TestHome::on_genesis(&genesis);
    full.start_node(&args(&["--fast-sync=false"], &[&boot]));
    wait_until(
        Duration::from_secs(60),
        "the full-sync node to reach the pruned blocks",
        || full.node_log().contains("pruned announcement bodies"),
    );
    let height = full.height();
    assert!(
        height < first_task,
        "it cannot execute past {first_task} (at {height})"
    );
    assert!(
        !full.node_log().contains("banning peer"),
        "an honest peer is never banned for a pruned body"
    );
    full.stop_node();

    // With fast sync (the default for an empty home, forced here as the
    // home is no longer empty) it takes the state from a snapshot.
    full.start_node(&args(&["--fast-sync"], &[&boot]));
    wait_until(Duration::from_secs(60), "the node to reach the tip", || {
        full.tip().1 == tip.to_string()
    });
    assert_eq!(full.tip().2, root.to_string());
    assert!(announced > 0);
}

#[test]
fn a_peer_feeding_a_deep_cheap_fork_is_banned_and_storage_stays_bounded() {
    let keys: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
    let genesis = genesis_for(&keys, "deep-fork", 20, 20);
    let mut node = TestHome::on_genesis(&genesis);
    // The honest chain: past the horizon.
    drop(build_chain(&node, &genesis, keys, 40));
    node.start_node(&args(&[], &[]));
    let boot = node.p2p_addr();

    // The attacker's fork from genesis: 1,000 valid blocks at minimum
    // difficulty, gossiped one after another.
    let mut fork = Chain::in_memory(genesis.clone()).unwrap();
    let other = SecretKey::generate().address();
    let blocks: Vec<_> = (0..1000)
        .map(|_| zennet_chain::testkit::mine(&mut fork, other))
        .collect();
    let attacker = FakePeer::start(genesis.hash(), &boot, |_| SyncResponse::Error("no".into()));
    attacker.wait_connected();
    assert!(lists_peer(&node, &attacker.peer_id()));
    for b in &blocks {
        attacker.net.publish_block(b.encode());
    }
    wait_until(
        Duration::from_secs(30),
        "the node to drop the attacker",
        || !lists_peer(&node, &attacker.peer_id()),
    );
    assert!(node.node_log().contains("deeper than the reorg horizon"));
    assert_eq!(node.height(), 40, "the honest chain stands");
    node.stop_node();
    let stored = node.open_chain().store().side_blocks().unwrap();
    assert!(stored <= 20, "side storage is bounded ({stored} blocks)");
}

#[test]
fn a_peer_lying_about_its_work_does_not_stop_sync_and_a_fast_clock_is_not_a_lie() {
    let keys: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
    let genesis = genesis_for(&keys, "liar", 100, 100);
    let mut server = TestHome::on_genesis(&genesis);
    let tip = build_chain(&server, &genesis, keys, 150).tip().hash;
    server.start_node(&args(&[], &[]));
    let boot = server.p2p_addr();

    // Claims all the work in the world and serves nothing.
    let genesis_hash = genesis.hash();
    let liar = FakePeer::start(genesis_hash, &boot, move |r| match r {
        SyncRequest::Status => SyncResponse::Status(Status::new(
            genesis_hash,
            u64::MAX / 2,
            Hash([9; 32]),
            u128::MAX,
        )),
        SyncRequest::Headers { .. } => SyncResponse::Headers(vec![]),
        _ => SyncResponse::Blocks(vec![]),
    });
    liar.wait_connected();
    let liar_addr = liar.addr();

    let mut joiner = TestHome::on_genesis(&genesis);
    let started = Instant::now();
    joiner.start_node(&args(&["--fast-sync=false"], &[&liar_addr, &boot]));
    wait_until(
        Duration::from_secs(60),
        "the joiner to sync from the honest peer",
        || joiner.tip().1 == tip.to_string(),
    );
    eprintln!("synced past the liar in {:?}", started.elapsed());
    wait_until(Duration::from_secs(40), "the liar to be dropped", || {
        !lists_peer(&joiner, &liar.peer_id())
    });
    assert!(joiner.node_log().contains("serves no new headers"));

    // A block whose timestamp is ahead of the joiner's clock (beyond the
    // allowed drift) from a peer with a fast clock: held, then imported.
    let chain = server.open_chain();
    let miner = SecretKey::generate().address();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ahead = now + genesis.consensus.max_future_ms + 3_000;
    let mut block = chain.template(miner, ahead);
    assert!(zennet_chain::seal::seal(
        chain.ethash(),
        &mut block,
        0,
        &std::sync::atomic::AtomicBool::new(false)
    ));
    drop(chain);
    let clock = FakePeer::start(genesis.hash(), &joiner.p2p_addr(), |_| {
        SyncResponse::Error("no".into())
    });
    clock.wait_connected();
    clock.net.publish_block(block.encode());
    wait_until(Duration::from_secs(30), "the held block to go in", || {
        joiner.tip().1 == block.hash().to_string()
    });
    assert!(
        lists_peer(&joiner, &clock.peer_id()),
        "not banned for its clock"
    );
}

#[test]
fn a_transaction_signed_on_devnet_a_is_rejected_on_devnet_b() {
    let key = SecretKey::generate();
    let a_genesis = genesis_for(std::slice::from_ref(&key), "devnet-a", 100, 100);
    let b_genesis = genesis_for(std::slice::from_ref(&key), "devnet-b", 100, 100);
    assert_eq!(a_genesis.chain_id, b_genesis.chain_id);
    let mut b = TestHome::on_genesis(&b_genesis);
    b.start_node(&args(&[], &[]));
    let to = SecretKey::generate().address();
    let tx = Transaction {
        chain_id: a_genesis.chain_id,
        nonce: 0,
        fee_per_byte: 1,
        body: TxBody::Transfer { to, amount: 5 },
    }
    .sign(&key, &a_genesis.hash());
    let raw = format!("0x{}", hex::encode(tx.encode()));
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("{}/v1/txs", b.api()))
        .bearer_auth(b.api_token())
        .json(&serde_json::json!({ "raw": raw }))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::BAD_REQUEST,
        "devnet B must refuse a devnet A transaction as invalid"
    );
    let balance = b.json(&["wallet", "balance", &key.address().to_string()]);
    assert_eq!(
        zennet_tests::amount(&balance["balance"]),
        1u128 << 70,
        "nothing moved"
    );
    // The same transfer signed for B goes in.
    let tx = tx.tx.sign(&key, &b_genesis.hash());
    let resp = client
        .post(format!("{}/v1/txs", b.api()))
        .bearer_auth(b.api_token())
        .json(&serde_json::json!({ "raw": format!("0x{}", hex::encode(tx.encode())) }))
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().unwrap());
}
