//! The publisher that names a channel it never opens. Terms come as soon
//! as the publisher's channel is on its way, and the node boots the VM
//! while the channel is mined; a publisher can abuse that by sending
//! terms for a channel that will never be on chain, and so try to get the
//! boot and everything after it for free. Played here over a real SSH
//! tunnel (the publisher's russh server speaking `zennet-pay` by hand),
//! an in-memory chain (`TestChain`) and a VM backend that only keeps
//! books (`FakeBackend`): the VM must be paused once payment is late,
//! never resumed, and ended after the grace period, with nothing claimed
//! and nothing left running. The node redials the liar all along; a
//! redial once waited for the channel again and held the contract's
//! clock (ended 11 s after the pause on a 3 s grace; now 4 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use zennet_chain::{Hash, Ledger};
use zennet_proto::{self as proto, Frame, PayStream, Terms};
use zennet_provider::contract::Phase;
use zennet_provider::market::MarketPolicy;
use zennet_testkit::FakeBackend;
use zennet_tunnel::keys as sshkey;
use zennet_tunnel::{Gate, SshServer};

mod common;

const INTERVAL_SECS: i32 = 1;
const LEASE_SECS: u32 = 600;
/// The channel the publisher names: nobody ever opens it.
const PHANTOM: Hash = Hash([0x77; 32]);

struct OneKey(Hash);
impl Gate for OneKey {
    fn admits(&self, key: &Hash) -> bool {
        *key == self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_for_a_channel_never_mined_get_a_paused_vm_and_then_an_ended_contract() {
    let (chain, publisher, node) = common::parties();

    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let mut config = common::config(MarketPolicy::default());
    config.grace = Duration::from_secs(3);
    let late_after = Duration::from_secs_f64(INTERVAL_SECS as f64 * config.pause_after_intervals)
        + Duration::from_secs(1);
    let grace = config.grace;
    let (provider, vms) =
        common::start_provider(dir.path(), node.clone(), config, backend.clone()).await;

    // The lying publisher: its SSH server admits the node, and every Join
    // gets terms true to the announcement except for the channel.
    let host = sshkey::generate();
    let host_fp = sshkey::fingerprint(host.public_key());
    let gate = Arc::new(OneKey(provider.ssh_key_fingerprint()));
    let (server, mut conns) = SshServer::start("127.0.0.1:0", host, gate, &[proto::SUBSYSTEM])
        .await
        .unwrap();
    let joins = Arc::new(AtomicU32::new(0));
    let vm_key = sshkey::public_line(sshkey::generate().public_key());
    let counted = joins.clone();
    tokio::spawn(async move {
        while let Some(conn) = conns.recv().await {
            let (joins, vm_key) = (counted.clone(), vm_key.clone());
            tokio::spawn(async move {
                let mut pay = PayStream::new(conn.stream);
                let Ok(Frame::Join { .. }) = pay.recv().await else {
                    return;
                };
                joins.fetch_add(1, Ordering::SeqCst);
                let terms = Terms {
                    channel: PHANTOM,
                    payout_interval_secs: INTERVAL_SECS,
                    lease_secs: LEASE_SECS,
                    vm_key,
                    storage_paid: false,
                    compute_per_core: 10,
                };
                if pay.send(&Frame::Terms(terms)).await.is_err() {
                    return;
                }
                // Hold the session open; reports go unanswered.
                while pay.recv().await.is_ok() {}
            });
        }
    });

    let mut a = common::task(&server.local_addr.to_string(), host_fp, 30, 2);
    (a.lease_min_secs, a.lease_max_secs) = (LEASE_SECS, LEASE_SECS);
    a.payout_interval_secs = INTERVAL_SECS;
    let task = common::announce(&chain, &publisher, a);
    // Blocks keep coming (the channel is not in any of them).
    let miner = {
        let chain = chain.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                chain.mine();
            }
        })
    };

    // The VM boots while the node waits for the channel ...
    let started = Instant::now();
    let vm = loop {
        if let Some(vm) = provider.contract(&task).unwrap().and_then(|c| c.vm) {
            break vm;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node never started the VM: {:?}",
            provider.contract(&task).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let booted = Instant::now();
    assert!(backend.is_running(&vm));
    // With the scratch disk the task asked for.
    assert_eq!(vms.info(&vm).await.unwrap().scratch_gib, 3);

    // ... is paused once payment is late: at most the node's wait for the
    // channel to be mined (10 s on this chain's 2 s blocks), plus the
    // contract's own lateness and a tick of slack.
    let channel_wait = Duration::from_secs(10);
    let bound = channel_wait + late_after + Duration::from_secs(2);
    while !backend.is_paused(&vm) {
        assert!(
            booted.elapsed() < bound,
            "the VM ran unpaid for {:?} (bound {bound:?}) on a channel that never came",
            booted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paused = Instant::now();
    eprintln!("paused {:?} after the boot", paused - booted);

    // ... stays paused (no resume on any redial) and is ended after the
    // grace period: a redial does not wait for the channel again, so the
    // contract's clock is never held up.
    let bound = grace + Duration::from_secs(3);
    let ended = loop {
        let c = provider.contract(&task).unwrap().expect("contract");
        if !c.phase.active() {
            break c;
        }
        assert!(
            !backend.is_running(&vm),
            "the VM was resumed without payment"
        );
        assert!(
            paused.elapsed() < bound,
            "the unpaid contract outlived its grace period: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    miner.abort();
    eprintln!(
        "ended {:?} after the pause: {:?}",
        paused.elapsed(),
        ended.end_reason
    );
    assert!(joins.load(Ordering::SeqCst) >= 1);
    let reason = ended.end_reason.clone().unwrap_or_default();
    assert!(reason.contains("grace"), "{ended:?}");
    assert_eq!(ended.phase, Phase::Ended, "{ended:?}");
    // Nothing was admitted, so nothing is paid, claimed or closed, and
    // nothing is left running.
    assert_eq!(ended.channel, None, "{ended:?}");
    assert_eq!(ended.paid, 0);
    assert!(
        ended.claim_txs.is_empty() && ended.close_tx.is_none(),
        "{ended:?}"
    );
    assert!(backend.alive().is_empty(), "{:?}", backend.alive());
    assert!(node.channel(&PHANTOM).is_none());
}
