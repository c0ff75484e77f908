//! The publisher's session gate over its real SSH server, on an in-memory
//! chain (`TestChain`): a node whose acceptance is on chain opening two
//! sessions for one contract at once gets one, and one channel; once that
//! session is gone the node may come back to the same channel. A
//! private-network link gets a port only on the node's own task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use zennet_chain::testkit::TestChain;
use zennet_chain::{Hash, Ledger, Role, SecretKey, TaskAcceptance, TxBody, pow};
use zennet_proto::{Frame, LAN_SUBSYSTEM, PROTOCOL_VERSION, PayStream, SUBSYSTEM};
use zennet_publisher::taskfile::TaskFile;
use zennet_publisher::{Publisher, PublisherConfig};
use zennet_tunnel::{Tunnel, keys};

const FUNDS: u128 = 1_000_000_000_000;
const IMAGE: Hash = Hash([1; 32]);

const TASK: &str = r#"
    images = [{ id = "zennet-tiny", hash = "0x0101010101010101010101010101010101010101010101010101010101010101" }]
    cores = [1]
    memory_mib_per_core = 256
    min_instances = 1
    max_instances = 2
    lease_max_secs = 600
    payout_interval_secs = 5
    acceptance_window = 50
    acceptance_difficulty = 100
    [rates]
    per_compute_unit_second = "1000"
"#;

/// Dials the publisher as `key` and sends `Join` for `task`.
async fn join(
    publisher: &Publisher,
    key: &Arc<russh::keys::PrivateKey>,
    task: Hash,
) -> (Tunnel, PayStream) {
    let tunnel = Tunnel::dial(
        publisher.endpoint(),
        publisher.host_key_fingerprint(),
        key.clone(),
    )
    .await
    .unwrap();
    let mut pay = PayStream::new(tunnel.open_subsystem(SUBSYSTEM).await.unwrap());
    pay.send(&Frame::Join {
        version: PROTOCOL_VERSION,
        task,
    })
    .await
    .unwrap();
    (tunnel, pay)
}

async fn answer(pay: &mut PayStream) -> Frame {
    tokio::time::timeout(Duration::from_secs(60), pay.recv())
        .await
        .expect("the publisher answers a Join within a minute")
        .unwrap()
}

/// A publisher on a `TestChain` with one announced task, and a node
/// whose acceptance of it (naming `ssh_key`) is mined.
struct Fixture {
    chain: Arc<TestChain>,
    publisher: Arc<Publisher>,
    n_key: SecretKey,
    ssh_key: Arc<russh::keys::PrivateKey>,
    task: Hash,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (p_key, n_key) = (SecretKey::generate(), SecretKey::generate());
    let chain = TestChain::new(&[(p_key.address(), FUNDS), (n_key.address(), FUNDS)]);
    let (p_ledger, n_ledger) = (chain.ledger(p_key.clone()), chain.ledger(n_key.clone()));
    p_ledger.register(Role::Publisher);
    n_ledger.register(Role::Node);
    chain.mine();

    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::start(
        PublisherConfig {
            dir: dir.path().join("publisher"),
            capacity_tolerance: 1.25,
            ssh_listen: "127.0.0.1:0".into(),
            endpoint: None,
            images_dir: dir.path().join("images"),
        },
        p_ledger.clone(),
        p_key,
    )
    .await
    .unwrap();
    let task = publisher
        .announce(TaskFile::parse(TASK).unwrap())
        .await
        .unwrap();
    chain.mine();

    // The node accepts on chain, naming the SSH key it will dial with.
    let ssh_key = Arc::new(keys::generate());
    let me = n_key.address();
    let mut acceptance = TaskAcceptance {
        task,
        image: IMAGE,
        cores: 1,
        ssh_key_fingerprint: keys::fingerprint(ssh_key.public_key()),
        compute_score: 4,
        pow_nonce: 0,
    };
    let difficulty = p_ledger
        .task(&task)
        .unwrap()
        .announcement
        .acceptance_difficulty;
    acceptance.pow_nonce = pow::search(0, u64::MAX, difficulty, |n| {
        acceptance.pow_nonce = n;
        acceptance.pow_hash(&me)
    })
    .unwrap();
    n_ledger.submit(TxBody::AcceptTask { acceptance }).unwrap();
    chain.mine();
    Fixture {
        chain,
        publisher,
        n_key,
        ssh_key,
        task,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_joins_for_one_contract_get_one_session_and_one_channel() {
    let Fixture {
        chain,
        publisher,
        n_key,
        ssh_key,
        task,
        ..
    } = fixture().await;
    let me = n_key.address();
    // Blocks keep coming, as on a live chain; channels opened to the node
    // are counted as they are mined.
    let opened = Arc::new(AtomicUsize::new(0));
    let miner = {
        let (chain, opened) = (chain.clone(), opened.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let block = chain.mine();
                let to_node = block.txs.iter().filter(
                    |t| matches!(t.tx.body, TxBody::ChannelOpen { payee, .. } if payee == me),
                );
                opened.fetch_add(to_node.count(), Ordering::Relaxed);
            }
        })
    };

    // The cheat: two sessions for one contract at the same moment (two
    // VMs' worth of attention, or two channels, for one acceptance).
    let ((ta, mut a), (tb, mut b)) = tokio::join!(
        join(&publisher, &ssh_key, task),
        join(&publisher, &ssh_key, task)
    );
    let (fa, fb) = tokio::join!(answer(&mut a), answer(&mut b));
    let (terms, refused) = match (fa, fb) {
        (Frame::Terms(t), Frame::Bye { reason }) | (Frame::Bye { reason }, Frame::Terms(t)) => {
            (t, reason)
        }
        other => panic!("one session and one refusal expected, got {other:?}"),
    };
    assert_eq!(refused, zennet_proto::BYE_SESSION_OPEN);
    // A few more blocks: a second channel would be mined by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let vms = publisher.vms().unwrap();
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(
        opened.load(Ordering::Relaxed),
        1,
        "one channel for one contract"
    );

    // The node hangs up; it comes back to the same channel.
    drop((a, b));
    ta.close().await;
    tb.close().await;
    let (_tc, mut c) = loop {
        let (tc, mut c) = join(&publisher, &ssh_key, task).await;
        match answer(&mut c).await {
            Frame::Terms(t) => {
                assert_eq!(t.channel, terms.channel);
                break (tc, c);
            }
            Frame::Bye { reason } if reason == zennet_proto::BYE_SESSION_OPEN => {
                // The old session is still being torn down.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("a returning node gets its terms, got {other:?}"),
        }
    };
    c.send(&Frame::Bye {
        reason: "test over".into(),
    })
    .await
    .ok();
    assert_eq!(opened.load(Ordering::Relaxed), 1, "no second channel");
    miner.abort();
}

/// The private network's gate: a node's link that names a task it has no
/// contract for (to listen in on another task's network) is hung up on
/// and gets no place; its own task's link gets one and stays up while the
/// contract runs, and is hung up on once the contract has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_link_gets_a_port_only_on_the_nodes_own_task() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Fixture {
        chain,
        publisher,
        n_key,
        ssh_key,
        task,
        ..
    } = fixture().await;
    // Another task of the same publisher, which this node never accepted.
    let other = publisher
        .announce(TaskFile::parse(TASK).unwrap())
        .await
        .unwrap();
    chain.mine();
    let miner = {
        let chain = chain.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                chain.mine();
            }
        })
    };
    let (tunnel, mut pay) = join(&publisher, &ssh_key, task).await;
    assert!(matches!(answer(&mut pay).await, Frame::Terms(_)));

    // Naming the other task: hung up on, no place there.
    let mut snoop = tunnel.open_subsystem(LAN_SUBSYSTEM).await.unwrap();
    snoop.write_all(&other.0).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), snoop.read(&mut buf))
        .await
        .expect("the publisher hangs up on the link");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let me = n_key.address();
    let vm = publisher
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.node == me)
        .unwrap();
    assert_eq!(vm.task, task);
    assert_eq!(vm.lan_address, None, "no place on any network yet");

    // Its own task: a place, and a frame it sends is taken (the link stays up).
    let mut link = tunnel.open_subsystem(LAN_SUBSYSTEM).await.unwrap();
    link.write_all(&task.0).await.unwrap();
    let mut placed = None;
    for _ in 0..100 {
        placed = publisher
            .vms()
            .unwrap()
            .into_iter()
            .find(|v| v.node == me)
            .and_then(|v| v.lan_address);
        if placed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(placed.map(|a| a.to_string()).as_deref(), Some("10.88.0.2"));
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&zennet_publisher::lan::mac(2));
    frame.extend_from_slice(&[0x08, 0x06]);
    link.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    link.write_all(&frame).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), link.read(&mut buf)).await;
    assert!(
        quiet.is_err(),
        "the link stays up and nothing echoes: {quiet:?}"
    );

    // The contract ends; a node that keeps its link open is unplugged.
    let vm = publisher
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.node == me)
        .unwrap();
    publisher.stop_vm(&vm.id.to_string()).unwrap();
    loop {
        if let Frame::Bye { reason } = answer(&mut pay).await {
            pay.send(&Frame::Bye { reason }).await.unwrap();
            break;
        }
    }
    let read = tokio::time::timeout(Duration::from_secs(10), link.read(&mut buf))
        .await
        .expect("the publisher unplugs the link once the contract ended");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    miner.abort();
}
