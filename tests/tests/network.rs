//! Several zennet nodes as real processes on loopback.

use std::time::Duration;

use zennet_tests::{TestHome, amount, homes_on_one_chain, wait_until};

const LOOPBACK: &[&str] = &["--listen", "/ip4/127.0.0.1/tcp/0"];

fn args<'a>(extra: &[&'a str], bootstrap: Option<&'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = LOOPBACK.to_vec();
    v.extend_from_slice(extra);
    if let Some(b) = bootstrap {
        v.extend_from_slice(&["--bootstrap", b]);
    }
    v
}

/// Waits until every home reports the same tip and state root.
fn converged(homes: &[&TestHome], timeout: Duration) -> (u64, String, String) {
    let mut last = None;
    wait_until(timeout, "the nodes to agree on a tip", || {
        let tips: Vec<_> = homes.iter().map(|h| h.tip()).collect();
        let same = tips.windows(2).all(|w| w[0] == w[1]);
        last = Some(tips[0].clone());
        same
    });
    last.unwrap()
}

#[test]
fn late_joiner_syncs_200_blocks() {
    let mut homes = homes_on_one_chain(2);
    let (a, b) = homes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.start_node(&args(&["--mine"], None));
    wait_until(Duration::from_secs(120), "200 blocks", || a.height() >= 205);
    a.stop_node();
    a.start_node(&args(&[], None));
    let boot = a.p2p_addr();
    b.start_node(&args(&[], Some(&boot)));
    let (height, _, _) = converged(&[a, b], Duration::from_secs(90));
    assert!(height >= 205);
    assert!(b.node_log().contains("syncing from a heavier peer"));
}

#[test]
fn separate_miners_converge_on_the_heavier_chain() {
    let mut homes = homes_on_one_chain(2);
    let (a, b) = homes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    // Apart: A mines longer than B.
    a.start_node(&args(&["--mine"], None));
    b.start_node(&args(&["--mine"], None));
    wait_until(Duration::from_secs(60), "B to mine 10", || b.height() >= 10);
    b.stop_node();
    wait_until(Duration::from_secs(60), "A to mine 40", || a.height() >= 40);
    a.stop_node();
    let a_td = a.open_chain().tip().total_difficulty;
    let b_td = b.open_chain().tip().total_difficulty;
    assert!(a_td > b_td, "A is heavier ({a_td} vs {b_td})");
    a.start_node(&args(&[], None));
    let a_tip = a.tip();

    // Connect them: B reorganises onto A's chain.
    let boot = a.p2p_addr();
    b.start_node(&args(&[], Some(&boot)));
    let tip = converged(&[a, b], Duration::from_secs(60));
    assert_eq!(tip, a_tip);
}

#[test]
fn tx_submitted_at_a_and_mined_by_c_shows_at_b() {
    let mut homes = homes_on_one_chain(3);
    homes[0].start_node(&args(&[], None));
    let boot = homes[0].p2p_addr();
    homes[1].start_node(&args(&[], Some(&boot)));
    homes[2].start_node(&args(&["--mine"], Some(&boot)));
    wait_until(Duration::from_secs(30), "B and C to join", || {
        homes[0].json(&["node", "peers"]).as_array().unwrap().len() >= 2
    });
    let to = homes[1].address();
    let sent = homes[0].json(&["wallet", "send", &to, "4242"]);
    let hash = sent["hash"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(60), "B to see the transfer", || {
        amount(&homes[1].json(&["wallet", "balance", &to])["balance"]) == 4242
    });
    let tx = homes[1].json(&["chain", "tx", &hash]);
    assert_eq!(tx["status"], "mined");
    let block = homes[1].json(&[
        "chain",
        "block",
        &tx["height"].as_u64().unwrap().to_string(),
    ]);
    assert_eq!(
        block["header"]["miner"],
        homes[2].address().as_str(),
        "C mined it"
    );

    // And B (a follower) can spend it; every node agrees on the balances.
    homes[1].ok(&[
        "wallet",
        "send",
        "0x3333333333333333333333333333333333333333",
        "42",
    ]);
    wait_until(
        Duration::from_secs(60),
        "every node to see B's transfer",
        || {
            homes.iter().all(|h| {
                amount(
                    &h.json(&[
                        "wallet",
                        "balance",
                        "0x3333333333333333333333333333333333333333",
                    ])["balance"],
                ) == 42
            })
        },
    );
    let b_balance: Vec<u128> = homes
        .iter()
        .map(|h| amount(&h.json(&["wallet", "balance", &to])["balance"]))
        .collect();
    assert!(b_balance.windows(2).all(|w| w[0] == w[1]), "{b_balance:?}");
}

#[test]
fn a_tx_sent_with_no_peers_is_mined_once_a_miner_joins() {
    // Gossip is best effort: here the publish finds nobody at all. A
    // node that never sent it again would leave it in its own mempool
    // forever (a settle or reclaim stranded, a deposit locked).
    let mut homes = homes_on_one_chain(2);
    homes[0].start_node(&args(&[], None));
    let to = "0x4444444444444444444444444444444444444444";
    let sent = homes[0].json(&["wallet", "send", to, "77"]);
    let hash = sent["hash"].as_str().unwrap().to_string();
    let boot = homes[0].p2p_addr();
    homes[1].start_node(&args(&["--mine"], Some(&boot)));
    wait_until(Duration::from_secs(60), "the miner to mine it", || {
        homes[0].json(&["chain", "tx", &hash])["status"] == "mined"
    });
    assert_eq!(
        amount(&homes[1].json(&["wallet", "balance", to])["balance"]),
        77
    );
}

#[test]
fn killed_node_resyncs_after_restart() {
    let mut homes = homes_on_one_chain(2);
    let (a, b) = homes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.start_node(&args(&["--mine"], None));
    let boot = a.p2p_addr();
    b.start_node(&args(&[], Some(&boot)));
    wait_until(Duration::from_secs(60), "B to follow", || b.height() >= 10);
    b.kill_node();
    let at_kill = a.height();
    wait_until(Duration::from_secs(60), "A to move on", || {
        a.height() >= at_kill + 20
    });
    b.start_node(&args(&[], Some(&boot)));
    let target = at_kill + 20;
    wait_until(Duration::from_secs(60), "B to catch up", || {
        b.height() >= target
    });
    let on_a = a.json(&["chain", "block", &target.to_string()])["hash"].clone();
    let on_b = b.json(&["chain", "block", &target.to_string()])["hash"].clone();
    assert_eq!(on_a, on_b, "B resynced onto A's chain");
}

#[test]
fn peer_sending_invalid_blocks_is_banned_while_others_keep_working() {
    use zennet_chain::{Block, Hash, Header, SecretKey};
    use zennet_net::{NetConfig, NetEvent, Network};

    let mut homes = homes_on_one_chain(2);
    homes[0].start_node(&args(&["--mine"], None));
    let boot = homes[0].p2p_addr();
    homes[1].start_node(&args(&[], Some(&boot)));
    wait_until(Duration::from_secs(60), "B to follow", || {
        homes[1].height() >= 3
    });
    let genesis: Hash = homes[0].json(&["chain", "info"])["genesis_hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let attacker = runtime.block_on(async {
        let (net, mut events) = Network::start(NetConfig {
            secret: SecretKey::generate(),
            genesis,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![boot.parse().unwrap()],
            max_peers: 10,
        })
        .await
        .unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = events.recv().await {
                if matches!(e, NetEvent::PeerConnected { .. }) {
                    return;
                }
            }
        })
        .await;
        assert!(connected.is_ok(), "attacker connected to A");
        // Let gossipsub exchange subscriptions before publishing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        (net, events)
    });
    let attacker_id = attacker.0.local_peer_id.to_string();
    let listed = |h: &TestHome| {
        h.json(&["node", "peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == attacker_id.as_str())
    };
    assert!(
        listed(&homes[0]),
        "A lists the attacker before it misbehaves"
    );

    // A block on A's tip with a seal that does not verify.
    let tip = homes[0].height();
    let parent = homes[0].json(&["chain", "block", &tip.to_string()]);
    let parent_header: Header = serde_json::from_value(parent["header"].clone()).unwrap();
    let mut header = parent_header.clone();
    header.parent = parent_header.hash();
    header.height += 1;
    header.timestamp_ms += 1;
    header.nonce = 12345;
    header.mix_digest = Hash([7; 32]);
    let bad = Block {
        header,
        txs: vec![],
    };
    attacker.0.publish_block(bad.encode());

    wait_until(Duration::from_secs(20), "A to drop the attacker", || {
        !listed(&homes[0])
    });
    assert!(homes[0].node_log().contains("banning peer"), "A says why");
    // The attacker cannot come back.
    attacker.0.dial(boot.parse().unwrap());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!listed(&homes[0]), "a banned peer stays out");

    // The honest follower keeps following.
    let before = homes[1].height();
    wait_until(Duration::from_secs(60), "B to keep following", || {
        homes[1].height() >= before + 3
    });
    drop(attacker);
    drop(runtime);
}
