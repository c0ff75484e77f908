//! Paid replicas end to end: real `zennet` processes on loopback, a miner,
//! an owner and three storage nodes (`[fs.store] enabled`):
//!
//! - `fs store --replicas 2`: two storage nodes accept on chain, fetch
//!   every part (for free from the owner, whose own price they would not
//!   pay), pass challenges and are paid per passed challenge; the file is
//!   pinned on them (`fs rm` refuses it);
//! - one of them deletes its parts: its next challenge fails, the owner
//!   releases it on chain and pays it no more, and the third node takes
//!   the slot, fetches and passes;
//! - the owner cancels and settles: each storage node claims on chain
//!   exactly what the owner's vouchers for its passed challenges paid.

use std::time::{Duration, Instant};

use serde_json::Value;
use zennet_tests::files::random_file;
use zennet_tests::market::{api_get, fund};
use zennet_tests::{TestHome, amount, homes_on_one_chain, set_config, wait_until};

/// The owner's view of the replicas of `file` (one task).
fn replicas(owner: &TestHome, file: &str) -> Vec<Value> {
    let v = owner.json(&["fs", "replicas", file]);
    v["tasks"][0]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn holding(owner: &TestHome, file: &str, passed: u64) -> Vec<String> {
    replicas(owner, file)
        .iter()
        .filter(|r| r["state"] == "holding" && r["passed"].as_u64().unwrap() >= passed)
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect()
}

fn replica_of<'a>(list: &'a [Value], node: &str) -> &'a Value {
    list.iter()
        .find(|r| r["node"] == node)
        .expect("a replica of that node")
}

/// Whether `home` holds every part of `file`.
fn holds_all(home: &TestHome, file: &str) -> bool {
    home.json(&["fs", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == file && f["complete"] == true)
}

#[test]
fn paid_replicas_are_challenged_paid_and_replaced() {
    let start = Instant::now();
    let mut homes = homes_on_one_chain(5);
    let mut miner = homes.remove(0);
    let mut owner = homes.remove(0);
    let mut nodes = homes;
    miner.start_node(&["--mine", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let boot = miner.p2p_addr();
    // Challenges every ~2 s, answers within 5 s, data within 60 s.
    set_config(
        &owner,
        "fs",
        "store",
        "{ challenge_secs = 2, answer_secs = 5, fetch_secs = 60, acceptance_difficulty = 50 }",
    );
    for n in &nodes {
        set_config(
            n,
            "fs",
            "store",
            r#"{ enabled = true, min_price_per_gib_hour = "1000", max_gib = 1.0 }"#,
        );
    }
    let join = ["--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", &boot];
    owner.start_node(&join);
    fund(&miner, &owner, "100000000000000");
    owner.ok(&["id", "mine", "--role", "publisher", "--threads", "1"]);
    for n in &mut nodes {
        n.start_node(&join);
        // Claims cost a fee.
        fund(&miner, n, "1000000000");
        n.ok(&["id", "mine", "--role", "node", "--threads", "1"]);
    }
    for h in std::iter::once(&owner).chain(&nodes) {
        let addr = h.address();
        wait_until(Duration::from_secs(60), "identity registration", || {
            api_get(&miner, &format!("/v1/identities/{addr}"))
                .is_some_and(|v| !v["publisher"].is_null() || !v["node"].is_null())
        });
    }

    // 3 MiB + 5 bytes, sold at a price the storage nodes never pay
    // (they fetch with a maximum price of 0): replicas get it for free.
    let work = owner.dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let path = work.join("kept.bin");
    random_file(&path, (3 << 20) + 5);
    let added = owner.json(&["fs", "add", path.to_str().unwrap(), "--price", "1000"]);
    let file = added["id"].as_str().unwrap().to_string();
    let parts = added["parts"].as_u64().unwrap();
    let task = owner.json(&[
        "fs",
        "store",
        &file,
        "--replicas",
        "2",
        "--for",
        "1h",
        "--max-price",
        "3600000000",
    ]);
    assert_eq!(task["replicas_wanted"], 2);
    assert_eq!(task["size"], (3u64 << 20) + 5);
    let task_id = task["task"].as_str().unwrap().to_string();
    println!(
        "storage task {task_id} at {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Two of the three hold every part and pass challenges.
    wait_until(Duration::from_secs(120), "two replicas passing", || {
        holding(&owner, &file, 2).len() == 2
    });
    let first = holding(&owner, &file, 2);
    let by_address = |a: &str| nodes.iter().position(|n| n.address() == a).unwrap();
    let holders: Vec<usize> = first.iter().map(|a| by_address(a)).collect();
    let spare = (0..3).find(|i| !holders.contains(i)).unwrap();
    for &i in &holders {
        assert!(holds_all(&nodes[i], &file), "node {i} holds every part");
        let held = &nodes[i].json(&["fs", "replicas"])["held"][0];
        assert_eq!(held["state"], "holding", "{held}");
        assert_eq!(held["task"], task_id.as_str());
        // Pinned: the contract's file cannot be removed.
        let err = nodes[i].fails(&["fs", "rm", &file]);
        assert!(err.contains("storage contract"), "{err}");
    }
    assert!(
        !holds_all(&nodes[spare], &file),
        "the spare holds nothing yet"
    );
    println!(
        "replicas {:?} holding at {:.1} s; {parts} parts each",
        holders,
        start.elapsed().as_secs_f64()
    );
    // Each is paid per passed challenge: every pass paid, each round's
    // voucher recorded beside its block and leaves.
    wait_until(Duration::from_secs(60), "vouchers for the passes", || {
        replicas(&owner, &file)
            .iter()
            .all(|r| amount(&r["paid"]) > 0 && r["paid"] == r["owed"])
    });
    for r in replicas(&owner, &file) {
        let rounds = r["history"].as_array().unwrap();
        let passed: Vec<&Value> = rounds.iter().filter(|h| h["outcome"] == "passed").collect();
        assert!(!passed.is_empty());
        assert!(passed.iter().all(|h| amount(&h["paid"]) > 0), "{r}");
        assert_eq!(rounds[0]["leaves"].as_array().unwrap().len(), 4);
    }

    // The first holder loses its data.
    let victim = holders[0];
    let victim_addr = nodes[victim].address();
    let store = nodes[victim].dir.join("fs/parts");
    for sub in std::fs::read_dir(&store).unwrap() {
        std::fs::remove_dir_all(sub.unwrap().path()).unwrap();
    }
    println!(
        "node {victim} deleted its parts at {:.1} s",
        start.elapsed().as_secs_f64()
    );
    wait_until(
        Duration::from_secs(60),
        "the victim to fail and be released",
        || replica_of(&replicas(&owner, &file), &victim_addr)["state"] == "released",
    );
    let list = replicas(&owner, &file);
    let failed = replica_of(&list, &victim_addr);
    assert_eq!(failed["failed"], 1);
    assert!(
        failed["failure"].as_str().unwrap().contains("refused"),
        "it could not read its parts: {failed}"
    );
    let paid_at_failure = amount(&failed["paid"]);
    assert_eq!(failed["paid"], failed["owed"]);
    // The chain shows it released.
    let rec = api_get(&miner, &format!("/v1/storage/{task_id}")).expect("the task on chain");
    let r = rec["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == victim_addr.as_str())
        .unwrap()
        .clone();
    assert!(!r["released_at"].is_null(), "{rec}");

    // The spare takes the slot, fetches and passes.
    let spare_addr = nodes[spare].address();
    wait_until(Duration::from_secs(120), "a replacement replica", || {
        holding(&owner, &file, 1).contains(&spare_addr)
    });
    assert!(holds_all(&nodes[spare], &file));
    println!(
        "node {spare} replaced it at {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The victim dropped the contract (and its pin) once released.
    wait_until(
        Duration::from_secs(30),
        "the victim to drop the contract",
        || nodes[victim].json(&["fs", "replicas"])["held"][0]["state"] == "dropped",
    );
    // A few more rounds: the victim is paid nothing more.
    let rounds_before = amount_u64(&replica_of(&replicas(&owner, &file), &spare_addr)["passed"]);
    wait_until(Duration::from_secs(60), "more rounds", || {
        amount_u64(&replica_of(&replicas(&owner, &file), &spare_addr)["passed"])
            >= rounds_before + 2
    });
    assert_eq!(
        amount(&replica_of(&replicas(&owner, &file), &victim_addr)["paid"]),
        paid_at_failure
    );
    // `fs prove` challenges now; both live replicas pass.
    let proved = owner.json(&["fs", "prove", &file]);
    let live: Vec<&Value> = proved["tasks"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "holding")
        .collect();
    assert_eq!(live.len(), 2, "{proved}");

    // Cancel, settle: each storage node claims what its passes were paid.
    owner.ok(&["fs", "store", &file, "--stop"]);
    wait_until(Duration::from_secs(30), "the task cancelled", || {
        owner.json(&["fs", "replicas", &file])["tasks"][0]["state"] == "cancelled"
    });
    let list = replicas(&owner, &file);
    let settled = owner.json(&["fs", "settle"]);
    let settled = settled.as_array().unwrap();
    assert_eq!(
        settled.len(),
        3,
        "one channel per storage node: {settled:?}"
    );
    for w in settled {
        let node = w["seeder"].as_str().unwrap();
        let r = replica_of(&list, node);
        let i = by_address(node);
        // The channel carried only this replica's payments.
        assert_eq!(amount(&w["paid"]), amount(&r["paid"]), "{r}");
        assert_eq!(r["paid"], r["owed"], "every passed challenge paid: {r}");
        let channel = w["channel"].as_str().unwrap();
        let claimed = || {
            api_get(&nodes[i], &format!("/v1/channels/{channel}")).map(|c| amount(&c["claimed"]))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while claimed() != Some(amount(&w["paid"])) {
            assert!(
                Instant::now() < deadline,
                "node {i} claimed {:?} of {} on {channel}; its log ends:\n{}",
                claimed(),
                w["paid"],
                nodes[i].node_log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The node counted the same vouchers.
        let held = nodes[i].json(&["fs", "replicas"]);
        assert_eq!(
            amount(&held["held"][0]["paid"]),
            amount(&w["paid"]),
            "{held}"
        );
    }
    println!("paid replicas e2e: {:.1} s", start.elapsed().as_secs_f64());
}

fn amount_u64(v: &Value) -> u64 {
    v.as_u64().unwrap()
}
