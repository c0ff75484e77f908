//! A new user's session with one mining node, run as real processes.

use std::time::Duration;

use zennet_chain::{Chain, Genesis};
use zennet_tests::{TestHome, amount, wait_until};

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";

#[test]
fn init_mine_send_reject_bad_input_and_survive_kill_9() {
    let mut home = TestHome::new();
    let init = home.json(&["init", "--genesis", "dev"]);
    let me = init["address"].as_str().unwrap().to_string();
    assert_eq!(init["chain_id"], 98765);
    assert!(home.fails(&["init"]).contains("already a zennet home"));
    assert!(
        home.fails(&["chain", "info"])
            .contains("no node is running")
    );

    // Within 30 s of starting, the chain is at height 5 or more.
    home.start_node(&["--mine"]);
    wait_until(Duration::from_secs(30), "height 5", || home.height() >= 5);
    assert_eq!(home.json(&["wallet", "address"])["address"], me.as_str());

    // A transfer is mined and shows in the recipient's balance.
    let sent = home.json(&["wallet", "send", RECIPIENT, "1000"]);
    let hash = sent["hash"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(60), "the transfer to be mined", || {
        amount(&home.json(&["wallet", "balance", RECIPIENT])["balance"]) == 1000
    });
    let tx = home.json(&["chain", "tx", &hash]);
    assert_eq!(tx["status"], "mined");
    assert_eq!(tx["sender"], me.as_str());
    let height = tx["height"].as_u64().unwrap().to_string();
    let block = home.json(&["chain", "block", &height]);
    assert!(
        block["txs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["hash"] == hash.as_str())
    );

    // Bad input: one clear line, nothing changes.
    let nonce_before = home.json(&["wallet", "balance"])["next_nonce"].clone();
    let cases: [(&[&str], &str); 6] = [
        (
            &["wallet", "send", RECIPIENT, "1000000000000000000000000000"],
            "insufficient balance",
        ),
        (&["wallet", "send", "0x1234", "5"], "address"),
        (&["wallet", "send", "not-an-address", "5"], "address"),
        (&["wallet", "send", RECIPIENT, "1.5"], "amount"),
        (&["wallet", "send", RECIPIENT, "-5"], "amount"),
        (&["wallet", "send", RECIPIENT, "0"], "amount"),
    ];
    for (args, expected) in cases {
        let err = home.fails(args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(
        home.fails(&["chain", "block", "xyz"])
            .contains("neither a block height")
    );
    assert!(home.fails(&["chain", "tx", "0x00"]).contains("hash"));
    assert_eq!(
        home.json(&["wallet", "balance"])["next_nonce"],
        nonce_before
    );
    assert_eq!(home.json(&["chain", "info"])["mempool"], 0);
    assert_eq!(
        amount(&home.json(&["wallet", "balance", RECIPIENT])["balance"]),
        1000
    );

    // kill -9 while mining; the database is consistent and the chain continues
    // from the same tip.
    home.kill_node();
    let genesis = Genesis::load(&home.dir.join("genesis.toml")).unwrap();
    let (tip_hash, tip_height) = {
        let chain =
            Chain::open(&home.dir.join("chain"), genesis).expect("chain reopens after kill -9");
        assert_eq!(chain.store().integrity_check().unwrap(), "ok");
        assert_eq!(chain.account(&RECIPIENT.parse().unwrap()).balance, 1000);
        (chain.tip().hash, chain.tip().header.height)
    };
    home.start_node(&["--mine"]);
    assert!(home.height() >= tip_height);
    wait_until(Duration::from_secs(30), "a new block after restart", || {
        home.height() > tip_height
    });
    let next = home.json(&["chain", "block", &(tip_height + 1).to_string()]);
    assert_eq!(next["header"]["parent"], tip_hash.to_string());
    assert_eq!(
        amount(&home.json(&["wallet", "balance", RECIPIENT])["balance"]),
        1000
    );
    home.stop_node();
    assert!(
        !home.dir.join("node.json").exists(),
        "a clean stop removes node.json"
    );
}

#[test]
fn second_node_on_the_same_home_is_refused() {
    let mut home = TestHome::new();
    home.ok(&["init"]);
    home.start_node(&[]);
    let err = home.fails(&["node", "run"]);
    assert!(err.contains("already running"), "{err}");
    home.stop_node();
}
