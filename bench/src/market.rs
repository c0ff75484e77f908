//! Market figures: the tunnel that carries a VM's traffic between node and
//! publisher, and the payment-channel vouchers that pay for it.
//!
//! * Tunnel throughput: bytes written into the publisher-side forwarded
//!   port travel our russh server → the agent's russh client (the
//!   [`Tunnel`]) → a local TCP sink that counts and discards them. Anchor:
//!   OpenSSH (`ssh -L` to a private `sshd`) on loopback, the same byte count
//!   into the same kind of sink; raw loopback TCP is printed for context.
//!   The clock stops only once the sink has counted every byte.
//! * The private network's switch (`zennet_publisher::lan`): full-size
//!   frames from one VM's port to another's through `Lan::serve` (framing
//!   read and written, source checked, routed, queued), 64 frames in
//!   flight like a TCP window (the switch drops what overflows a port's
//!   queue, as a real one does). Anchor: the same bytes through the same
//!   in-process pipes with nothing in between.
//! * Voucher check (payee side): `Channel::check_voucher`, which hashes the
//!   voucher, recovers its signer and compares it with the payer, over
//!   vouchers of rising seq/cumulative. Anchor: raw k256
//!   `recover_from_prehash` (like for like); raw `verify_prehash` is printed
//!   for context.
//! * Voucher signing (payer side): `Voucher::sign` vs raw k256
//!   `sign_prehash_recoverable`.
//! * The contract state machine (`zennet_provider::contract`): events per
//!   second over a contract's life (a tick, a report, a voucher stored,
//!   every payout interval), beside the voucher check each voucher event
//!   follows: the ratio says how little of a payment round the rules cost.
//! * The whole market: `zennet devnet --providers 2` (the `zennet` binary
//!   built beside this one), from the announcement being mined to every VM
//!   answering through its tunnel, beside the VM boot time inside it.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zennet_chain::{Address, Channel, Hash, SecretKey, SignedVoucher, Voucher};
use zennet_tunnel::keys as sshkey;
use zennet_tunnel::{Gate, SshServer, Tunnel};

use crate::{rate, row, single};

const SSHD: &str = "/usr/sbin/sshd";

pub fn run(quick: bool) {
    println!("== market: tunnel and vouchers ==");
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(tunnel(if quick { 64 << 20 } else { 512 << 20 }));
    runtime.block_on(lan_switch(if quick { 20_000 } else { 200_000 }));
    vouchers(Duration::from_secs(if quick { 1 } else { 3 }));
    contract_events(Duration::from_secs(if quick { 1 } else { 3 }));
    devnet();
}

/// Runs `zennet devnet --providers 2 --json` and prints its market timings.
fn devnet() {
    let zennet = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("zennet")))
        .filter(|p| p.exists());
    let Some(zennet) = zennet else {
        println!("  (devnet skipped: build zennet beside zennet-bench; scripts/bench.sh does)");
        return;
    };
    let out = Command::new(zennet)
        .args(["devnet", "--providers", "2", "--json"])
        .stderr(Stdio::null())
        .output();
    let summary: Option<serde_json::Value> = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    let Some(s) = summary else {
        println!("  (devnet failed; run `zennet devnet` to see why)");
        return;
    };
    let boot = s["providers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["vm_boot_ms"].as_f64())
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0);
    single(
        "devnet: announcement mined -> 2 VMs reachable",
        s["announce_to_all_reachable_ms"].as_f64().unwrap_or(0.0),
        "ms",
    );
    single("  of which the slowest VM launch -> sshd ready", boot, "ms");
    single(
        "devnet: prime-count job across 2 VMs (TCG here)",
        s["job"]["ms"].as_f64().unwrap_or(0.0),
        "ms",
    );
}

async fn tunnel(bytes: u64) {
    let mib = bytes >> 20;
    let raw = {
        let (port, mut done) = sink(bytes).await;
        push(port, &mut done, bytes).await
    };
    let ours = through_russh(bytes).await;
    if !Path::new(SSHD).exists() {
        single(
            &format!("tunnel throughput, russh ({mib} MiB)"),
            ours,
            "MB/s",
        );
        println!(
            "  (anchor skipped: OpenSSH's {SSHD} is missing; it comes with openssh-server, which scripts/bench.sh installs)"
        );
    } else {
        let anchor = through_openssh(bytes).await;
        row(
            &format!("tunnel throughput, russh ({mib} MiB)"),
            ours,
            "OpenSSH ssh -L",
            anchor,
            "MB/s",
        );
    }
    single("  raw loopback TCP, no SSH", raw, "MB/s");
}

/// Frames of 1514 bytes from port A to port B of one task's switch vs the
/// same bytes through bare in-process pipes (MB/s).
async fn lan_switch(frames: u64) {
    use zennet_publisher::lan::{Lan, mac, read_frame};
    const FRAME: usize = 1514;
    const WINDOW: u64 = 64;
    let task = Hash([9; 32]);
    let lan = Arc::new(Lan::default());
    let mut ends = Vec::new();
    for node in [1u8, 2] {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let node = Address([node; 20]);
        let switch = lan.clone();
        tokio::spawn(async move { switch.serve(task, node, theirs).await });
        ends.push(ours);
    }
    let (mut b, mut a) = (ends.pop().expect("b"), ends.pop().expect("a"));
    // Both ports plugged in before the clock starts.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut frame = vec![0u8; FRAME];
    frame[..6].copy_from_slice(&mac(3));
    frame[6..12].copy_from_slice(&mac(2));
    let mut wire = (FRAME as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    let started = Instant::now();
    let mut got = 0u64;
    for sent in 0..frames {
        a.write_all(&wire).await.expect("port A takes a frame");
        if sent + 1 - got >= WINDOW || sent + 1 == frames {
            while got < sent + 1 {
                read_frame(&mut b)
                    .await
                    .expect("a frame")
                    .expect("not closed");
                got += 1;
            }
        }
    }
    let ours = (frames * FRAME as u64) as f64 / started.elapsed().as_secs_f64() / 1e6;

    let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; wire.len()];
        for _ in 0..frames {
            rx.read_exact(&mut buf).await.expect("the bytes");
        }
    });
    let bytes = vec![0u8; 4 + FRAME];
    for _ in 0..frames {
        tx.write_all(&bytes).await.expect("the pipe takes bytes");
    }
    reader.await.expect("the reader");
    let anchor = (frames * FRAME as u64) as f64 / started.elapsed().as_secs_f64() / 1e6;
    row(
        &format!("private network switch ({}k frames)", frames / 1000),
        ours,
        "bare in-process pipe",
        anchor,
        "MB/s",
    );
}

/// A listener that reads and discards each connection, reporting its byte
/// count at EOF (or once `expected` bytes arrived).
async fn sink(expected: u64) -> (u16, mpsc::UnboundedReceiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                let mut total = 0u64;
                while total < expected {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = tx.send(total);
            });
        }
    });
    (port, rx)
}

/// Writes `bytes` into `port`; MB/s once the sink behind it (`done`)
/// counted them all.
async fn push(port: u16, done: &mut mpsc::UnboundedReceiver<u64>, bytes: u64) -> f64 {
    let chunk = vec![0x5au8; 256 << 10];
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.set_nodelay(true);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let counted = tokio::time::timeout(Duration::from_secs(300), async {
        // Probe connections (readiness checks) arrive empty; skip them.
        loop {
            match done.recv().await.expect("sink alive") {
                0 => continue,
                n => break n,
            }
        }
    })
    .await
    .expect("the sink received the bytes in time");
    let elapsed = started.elapsed();
    assert_eq!(counted, bytes, "the sink counted every byte");
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

struct OneKey(Hash);
impl Gate for OneKey {
    fn admits(&self, key: &Hash) -> bool {
        *key == self.0
    }
}

async fn through_russh(bytes: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let host = sshkey::load_or_create(&dir.path().join("host")).unwrap();
    let host_fp = sshkey::fingerprint(host.public_key());
    let node = Arc::new(sshkey::load_or_create(&dir.path().join("node")).unwrap());
    let gate = Arc::new(OneKey(sshkey::fingerprint(node.public_key())));
    let (server, _conns) = SshServer::start("127.0.0.1:0", host, gate, &["zennet-pay"])
        .await
        .unwrap();
    let tunnel = Tunnel::dial(&server.local_addr.to_string(), host_fp, node)
        .await
        .expect("tunnel dials");
    let (sink_port, mut done) = sink(bytes).await;
    let port = tunnel
        .forward(sink_port, 0, Arc::new(AtomicU64::new(0)))
        .await
        .expect("remote forward");
    let mbs = push(port, &mut done, bytes).await;
    tunnel.close().await;
    mbs
}

async fn through_openssh(bytes: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sshkey::load_or_create(&d.join("host")).unwrap();
    let client = sshkey::load_or_create(&d.join("client")).unwrap();
    let authorized = d.join("authorized_keys");
    std::fs::write(
        &authorized,
        format!("{}\n", sshkey::public_line(client.public_key())),
    )
    .unwrap();
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "HostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\nStrictModes no\n\
             ListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding yes\n",
            d.join("host").display(),
            authorized.display()
        ),
    )
    .unwrap();
    // sshd insists on its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let sshd_port = free_port();
    let sshd_log = d.join("sshd.log");
    let _sshd = Proc(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &sshd_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&sshd_log).unwrap())
            .spawn()
            .expect("sshd starts"),
    );
    wait_accepts(sshd_port, &sshd_log).await;

    let (sink_port, mut done) = sink(bytes).await;
    let local = free_port();
    let ssh_log = d.join("ssh.log");
    let _ssh = Proc(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-N", "-T", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(["-L", &format!("{local}:127.0.0.1:{sink_port}")])
            .arg("-i")
            .arg(d.join("client"))
            .args(["-p", &sshd_port.to_string(), "root@127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&ssh_log).unwrap())
            .spawn()
            .expect("ssh starts"),
    );
    wait_accepts(local, &ssh_log).await;
    push(local, &mut done, bytes).await
}

/// A loopback port free right now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_accepts(port: u16, log: &Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "port {port} never opened: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vouchers(budget: Duration) {
    const N: u64 = 1_000;
    const CHAIN_ID: u64 = 7;
    let payer = SecretKey::generate();
    let channel = Channel {
        id: Hash([3; 32]),
        payer: payer.address(),
        payee: Address([4; 20]),
        deposit: u128::MAX,
        claimed: 0,
        last_seq: 0,
        expiry_height: u64::MAX,
        settle_at: None,
    };
    let voucher = |seq: u64| Voucher {
        chain_id: CHAIN_ID,
        channel: channel.id,
        seq,
        cumulative: seq as u128 * 1_000_000,
    };
    let signed: Vec<SignedVoucher> = (1..=N)
        .map(|i| voucher(i).sign(&payer, &Hash::ZERO))
        .collect();
    let raw: Vec<([u8; 32], EcdsaSignature, RecoveryId)> = signed
        .iter()
        .map(|v| {
            let sig = EcdsaSignature::from_slice(&v.signature.0[..64]).unwrap();
            let recid = RecoveryId::from_byte(v.signature.0[64]).unwrap();
            (v.voucher.signing_hash(&Hash::ZERO).0, sig, recid)
        })
        .collect();
    let raw_key = SigningKey::from_slice(&payer.to_bytes()).unwrap();
    let vk = *raw_key.verifying_key();

    // Payee: each voucher is checked against the channel, which then
    // remembers it as the highest seen.
    let ours = rate(budget, || {
        let mut c = channel.clone();
        for v in &signed {
            c.check_voucher(v, CHAIN_ID, &Hash::ZERO, 1_000)
                .expect("a valid voucher");
            c.last_seq = v.voucher.seq;
            c.claimed = v.voucher.cumulative;
        }
        N
    });
    let anchor = rate(budget, || {
        for (prehash, sig, recid) in &raw {
            let key = VerifyingKey::recover_from_prehash(prehash, sig, *recid).unwrap();
            assert!(key == vk);
        }
        N
    });
    row(
        "voucher check (hash+recover+check_voucher)",
        ours,
        "k256 recover_from_prehash",
        anchor,
        "ops/s",
    );
    let verify = rate(budget, || {
        for (prehash, sig, _) in &raw {
            vk.verify_prehash(prehash, sig).unwrap();
        }
        N
    });
    single("  raw k256 verify_prehash (known key)", verify, "sigs/s");

    // Payer: a voucher for each new cumulative amount.
    let mut seq = 0;
    let ours = rate(budget, || {
        for _ in 0..N {
            seq += 1;
            std::hint::black_box(voucher(seq).sign(&payer, &Hash::ZERO));
        }
        N
    });
    let anchor = rate(budget, || {
        for (prehash, _, _) in &raw {
            std::hint::black_box(raw_key.sign_prehash_recoverable(prehash));
        }
        N
    });
    row(
        "voucher signing (encode+hash+sign)",
        ours,
        "k256 sign_prehash_recoverable",
        anchor,
        "ops/s",
    );
}

/// The provider's contract rules, fed a paid contract's events: every
/// payout interval a tick (which sends a report) and the voucher that
/// covers it. Anchor: the voucher check (k256 recover) each `Paid` event
/// follows in the node.
fn contract_events(budget: Duration) {
    use zennet_provider::contract::{Contract, Event, Rules};
    const ROUNDS: u64 = 10_000;
    let rules = Rules {
        interval: Duration::from_secs(2),
        prepay: false,
        late_after: Duration::from_secs(3),
        grace: Duration::from_secs(10),
        lease: Duration::from_secs(u32::MAX as u64),
        claim_margin: 20,
    };
    let ours = rate(budget, || {
        let t0 = tokio::time::Instant::now();
        let mut c = Contract::new(rules, t0, t0, 0, false);
        c.on(Event::Connected {
            now: t0,
            accrued: 0,
        });
        for i in 1..=ROUNDS {
            let now = t0 + rules.interval * i as u32;
            let due = i as u128 * 1_000;
            let actions = c.on(Event::Tick { now, accrued: due });
            std::hint::black_box(&actions);
            c.on(Event::Paid { now, paid: due });
        }
        assert_eq!(c.phase, zennet_provider::Phase::Running);
        2 * ROUNDS
    });
    let payer = SecretKey::generate();
    let v = Voucher {
        chain_id: 7,
        channel: Hash([3; 32]),
        seq: 1,
        cumulative: 1,
    }
    .sign(&payer, &Hash::ZERO);
    let sig = EcdsaSignature::from_slice(&v.signature.0[..64]).unwrap();
    let recid = RecoveryId::from_byte(v.signature.0[64]).unwrap();
    let prehash = v.voucher.signing_hash(&Hash::ZERO).0;
    let anchor = rate(budget, || {
        for _ in 0..1_000 {
            std::hint::black_box(
                VerifyingKey::recover_from_prehash(&prehash, &sig, recid).unwrap(),
            );
        }
        1_000
    });
    row(
        "contract state machine (tick, paid)",
        ours,
        "k256 recover_from_prehash",
        anchor,
        "events/s",
    );
}
