//! Network figures.
//!
//! * Block propagation across 10 nodes on loopback, in one process: each
//!   node is a real libp2p swarm (TCP + noise + yamux, gossipsub) with its
//!   own chain; a node that receives a block imports it (full verification)
//!   before gossipsub forwards it. Latency is publish → import at each node.
//! * Sync throughput between two real `zennet` processes: a node serving a
//!   pre-built chain and a fresh node that joins it; blocks/s until caught
//!   up, and the share of that time the same headers' Ethash verification
//!   costs.
//! * Full sync vs snapshot fast sync of the same chain (transfers, tasks and
//!   channels in its state), each a fresh `zennet` process joining a real
//!   node: time to the tip, side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zennet_chain::seal::{Ethash, seal};
use zennet_chain::{Address, Block, Chain, Genesis, SecretKey};
use zennet_net::{NetConfig, NetEvent, Network, Verdict};

use crate::single;

pub fn run(quick: bool) {
    println!("== network (loopback) ==");
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(propagation(if quick { 8 } else { 25 }));
    sync_throughput(if quick { 150 } else { 600 });
    sync_modes(if quick { 1_500 } else { 5_000 });
}

/// The same chain joined twice: block by block from genesis, and from a
/// snapshot (then block by block after it).
fn sync_modes(blocks: u64) {
    let zennet = zennet_binary();
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<SecretKey> = (0..6).map(|_| SecretKey::generate()).collect();
    let funded: Vec<_> = keys.iter().map(|k| (k.address(), 1u128 << 70)).collect();
    let mut genesis = bench_genesis(Address::ZERO);
    genesis.alloc = zennet_chain::testkit::fast_genesis(&funded).alloc;
    genesis.name = "zennet-bench-sync-modes".into();
    genesis.consensus.snapshot_interval = 500;
    let genesis_file = dir.path().join("genesis.toml");
    std::fs::write(&genesis_file, genesis.to_toml()).unwrap();
    let init = |name: &str| -> PathBuf {
        let home = dir.path().join(name);
        let out = Command::new(&zennet)
            .arg("--home")
            .arg(&home)
            .args(["init", "--genesis", genesis_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        home
    };
    let server = init("server");
    let (tip, entries) = {
        let mut chain = Chain::open(&server.join("chain"), genesis.clone()).unwrap();
        let mut activity = zennet_chain::testkit::Activity::new(keys);
        let miner = SecretKey::generate().address();
        for i in 0..blocks {
            if i % 4 == 0 {
                activity.submit(&mut chain);
            }
            let tip = chain.tip().header.timestamp_ms;
            let mut block = chain.template(miner, tip + 2_000);
            assert!(seal(chain.ethash(), &mut block, 0, &AtomicBool::new(false)));
            chain.import_block(block, u64::MAX / 2).unwrap();
        }
        (chain.tip().hash.to_string(), chain.state().len())
    };
    let server_node = Node::start(&zennet, &server, &[]);
    let boot = wait_json(&zennet, &server, &["node", "info"])["listen"][0]
        .as_str()
        .unwrap()
        .to_string();
    let join = |name: &str, extra: &[&str]| -> Duration {
        let home = init(name);
        let mut args = vec!["--bootstrap", boot.as_str()];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let node = Node::start(&zennet, &home, &args);
        loop {
            let info = wait_json(&zennet, &home, &["chain", "info"]);
            if info["tip"].as_str() == Some(tip.as_str()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "{name} did not reach the tip"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(node);
        started.elapsed()
    };
    let full = join("full", &["--fast-sync=false"]);
    let fast = join("fast", &[]);
    drop(server_node);
    crate::row(
        &format!("snapshot sync to tip ({blocks} blocks, {entries} entries)"),
        fast.as_secs_f64(),
        "full sync from genesis",
        full.as_secs_f64(),
        "s",
    );
}

/// Dev parameters (1 MiB Ethash cache) at difficulty 1: sealing is one hash,
/// verification costs what it costs on the dev chain.
fn bench_genesis(funded: Address) -> Genesis {
    let mut g = Genesis::dev(funded, 1_700_000_000_000);
    g.name = "zennet-bench".into();
    g.consensus.initial_difficulty = 1;
    g.consensus.min_difficulty = 1;
    g
}

async fn propagation(blocks: usize) {
    const NODES: usize = 10;
    let genesis = bench_genesis(Address::ZERO);
    let genesis_hash = genesis.hash();
    let arrivals: Arc<Mutex<Vec<(zennet_chain::Hash, Instant)>>> = Arc::default();
    let mut handles = Vec::new();
    let mut first_addr = None;
    for i in 0..NODES {
        let bootstrap = first_addr.iter().cloned().collect();
        let (net, events) = Network::start(NetConfig {
            secret: SecretKey::generate(),
            genesis: genesis_hash,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap,
            max_peers: 50,
        })
        .await
        .expect("network starts");
        if i == 0 {
            first_addr = net.listen_addrs().await.unwrap().into_iter().next();
        }
        let chain = Chain::in_memory(genesis.clone()).unwrap();
        if i > 0 {
            tokio::spawn(follower(chain, net.clone(), events, arrivals.clone()));
            handles.push((net, None));
        } else {
            handles.push((net, Some((chain, events))));
        }
    }
    // Let Kademlia connect everyone and gossipsub build its mesh.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (publisher, state) = &mut handles[0];
    let (chain, _events) = state.as_mut().unwrap();
    let miner = SecretKey::generate().address();
    let mut latencies = Vec::new();
    for _ in 0..blocks {
        let tip = chain.tip().header.timestamp_ms;
        let mut block = chain.template(miner, tip + 2_000);
        assert!(seal(chain.ethash(), &mut block, 0, &AtomicBool::new(false)));
        chain.import_block(block.clone(), u64::MAX / 2).unwrap();
        let hash = block.hash();
        let sent = Instant::now();
        publisher.publish_block(block.encode());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let arrivals = arrivals.lock().unwrap();
        let seen: Vec<Duration> = arrivals
            .iter()
            .filter(|(h, _)| *h == hash)
            .map(|(_, at)| at.duration_since(sent))
            .collect();
        if seen.len() < NODES - 1 {
            eprintln!(
                "block {hash}: reached {} of {} nodes",
                seen.len(),
                NODES - 1
            );
        }
        latencies.extend(seen);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    single(
        &format!("block propagation p50 ({NODES} nodes, {blocks} blocks)"),
        pct(0.50),
        "ms",
    );
    single("block propagation p95", pct(0.95), "ms");
}

async fn follower(
    mut chain: Chain,
    net: zennet_net::NetHandle,
    mut events: mpsc::UnboundedReceiver<NetEvent>,
    arrivals: Arc<Mutex<Vec<(zennet_chain::Hash, Instant)>>>,
) {
    while let Some(event) = events.recv().await {
        if let NetEvent::Block {
            source,
            message_id,
            bytes,
        } = event
        {
            let verdict = match Block::decode(&bytes, 1 << 21)
                .and_then(|b| chain.import_block(b, u64::MAX / 2).map(|_| ()))
            {
                Ok(()) => {
                    let hash = chain.tip().hash;
                    arrivals.lock().unwrap().push((hash, Instant::now()));
                    Verdict::Accept
                }
                Err(_) => Verdict::Ignore,
            };
            net.validate(message_id, source, verdict);
        }
    }
}

fn sync_throughput(blocks: u64) {
    let zennet = zennet_binary();
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let joiner = dir.path().join("joiner");
    let run = |home: &Path, args: &[&str]| -> String {
        let out = Command::new(&zennet)
            .arg("--home")
            .arg(home)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zennet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&server, &["init"]);
    let genesis = bench_genesis(SecretKey::generate().address());
    std::fs::write(server.join("genesis.toml"), genesis.to_toml()).unwrap();
    let genesis_file = dir.path().join("genesis.toml");
    std::fs::write(&genesis_file, genesis.to_toml()).unwrap();
    run(
        &joiner,
        &["init", "--genesis", genesis_file.to_str().unwrap()],
    );

    // Build the server's chain directly, with a transfer-free block stream.
    let headers = {
        let mut chain = Chain::open(&server.join("chain"), genesis.clone()).unwrap();
        let miner = SecretKey::generate().address();
        let mut headers = Vec::new();
        for _ in 0..blocks {
            let tip = chain.tip().header.timestamp_ms;
            let mut block = chain.template(miner, tip + 2_000);
            assert!(seal(chain.ethash(), &mut block, 0, &AtomicBool::new(false)));
            headers.push(block.header.clone());
            chain.import_block(block, u64::MAX / 2).unwrap();
        }
        headers
    };

    let server_node = Node::start(&zennet, &server, &[]);
    let boot = wait_json(&zennet, &server, &["node", "info"])["listen"][0]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let joiner_node = Node::start(&zennet, &joiner, &["--bootstrap", &boot]);
    loop {
        let info = wait_json(&zennet, &joiner, &["chain", "info"]);
        if info["height"].as_u64().unwrap() >= blocks {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "sync did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    drop((server_node, joiner_node));

    // What the same headers' seals cost to verify once (sync verifies
    // headers first; import then finds them already verified).
    let ethash = Ethash::new(genesis.ethash.clone(), None);
    ethash.cache(0);
    let t = Instant::now();
    for h in &headers {
        ethash.verify_seal(h).unwrap();
    }
    let ethash_time = t.elapsed();
    single(
        &format!("sync throughput ({blocks} blocks, 2 processes)"),
        blocks as f64 / elapsed.as_secs_f64(),
        "blocks/s",
    );
    single(
        "  share spent in Ethash verification",
        100.0 * ethash_time.as_secs_f64() / elapsed.as_secs_f64(),
        "%",
    );
}

/// `zennet` next to this benchmark binary (build it with
/// `cargo build --release -p zennet-cli`).
fn zennet_binary() -> PathBuf {
    let path = std::env::current_exe().unwrap().with_file_name("zennet");
    assert!(
        path.exists(),
        "{} is missing; run `cargo build --release -p zennet-cli` first",
        path.display()
    );
    path
}

fn wait_json(zennet: &Path, home: &Path, args: &[&str]) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let out = Command::new(zennet)
            .arg("--home")
            .arg(home)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{args:?} kept failing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Node(Child);

impl Node {
    fn start(zennet: &Path, home: &Path, extra: &[&str]) -> Node {
        let child = Command::new(zennet)
            .arg("--home")
            .arg(home)
            .args(["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Node(child)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
