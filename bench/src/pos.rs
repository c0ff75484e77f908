//! Proof-of-storage figures, in process on a real store: what a
//! challenge costs the replica that answers it (read 4 leaves of 16 KiB
//! and their Merkle paths, build the proofs) and the owner that checks it,
//! in µs and bytes read per challenge, beside two anchors measured in the
//! same run:
//!
//! * SHA-256 of the same bytes the challenge reads (the hashing it cannot
//!   avoid; the rest is I/O and bookkeeping);
//! * one pass of SHA-256 over the whole file: what one check of the RFC's
//!   salted-bit scheme costs the host (see `fs/src/pos.rs`).
//!
//! The file is in the page cache (just written), as a hot replica's would
//! be; a cold one adds four random reads per challenge.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zennet_chain::{Address, Hash};
use zennet_fs::merkle::{self, LEAF};
use zennet_fs::pos::{Challenge, LEAVES_PER_CHALLENGE};
use zennet_fs::replica::Terms;
use zennet_fs::{FileId, Store, storage};

use crate::{rate, row, single};

pub fn run(quick: bool) {
    println!("== pos: proof of storage ==");
    let size: usize = if quick { 64 << 20 } else { 512 << 20 };
    let mib = size >> 20;
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path().join("data.bin");
    let mut data = vec![0u8; size];
    getrandom::fill(&mut data).expect("random bytes");
    std::fs::write(&src, &data).expect("the file is written");
    let store = Store::open(&dir.path().join("store"), 4 << 30).expect("a store");
    let meta = store.add_path(&src, None, 0).expect("the file is added");
    let id: FileId = meta.id;

    // The tree, once per replica: vs SHA-256 of the file.
    let t = Instant::now();
    let tree = storage::tree_of(&store, &id).expect("a tree");
    let tree_rate = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let whole: [u8; 32] = Sha256::digest(&data).into();
    let whole_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(whole);
    row(
        &format!("Merkle tree of a replica ({mib} MiB)"),
        tree_rate,
        "SHA-256 of the file",
        size as f64 / whole_secs / 1e6,
        "MB/s",
    );
    let path = dir.path().join("tree");
    tree.write(&path).expect("the tree is written");

    let terms = Terms {
        task: Hash([1; 32]),
        node: Address([2; 20]),
        owner: Address([3; 20]),
        file: id,
        size: size as u64,
        root: Hash(tree.root()),
        price_per_gib_hour: 0,
        ends_at_ms: u64::MAX,
        challenge_ms: 1000,
    };
    let depth = merkle::depth(merkle::leaf_count(size as u64));
    let read_per_challenge = LEAVES_PER_CHALLENGE as u64 * (LEAF + 32 * depth as u64);
    let mut round = 0u32;
    let mut challenge = || {
        round += 1;
        let block = zennet_chain::crypto::keccak256(&round.to_be_bytes());
        Challenge {
            task: terms.task,
            round,
            height: round as u64,
            block,
        }
    };
    let budget = Duration::from_secs(if quick { 1 } else { 3 });
    // The replica's answer.
    let proves = rate(budget, || {
        let ch = challenge();
        let p = storage::prove(&store, &path, &terms, &terms.node, &ch).expect("proofs");
        std::hint::black_box(p);
        1
    });
    // The owner's check.
    let proofs = storage::prove(&store, &path, &terms, &terms.node, &challenge()).expect("proofs");
    let checks = rate(budget, || {
        for p in &proofs {
            p.verify(&terms.root.0, terms.size).expect("a valid proof");
        }
        1
    });
    // The anchor: SHA-256 of the same bytes a challenge reads.
    let same = &data[..read_per_challenge as usize];
    let hashes = rate(budget, || {
        std::hint::black_box(Sha256::digest(same));
        1
    });
    single(
        "bytes read per challenge (4 leaves + paths)",
        read_per_challenge as f64,
        "B",
    );
    row(
        "a challenge answered (µs; lower is better)",
        1e6 / proves,
        "SHA-256 of the same bytes",
        1e6 / hashes,
        "µs",
    );
    row(
        "a challenge checked by the owner",
        1e6 / checks,
        "SHA-256 of the same bytes",
        1e6 / hashes,
        "µs",
    );
    row(
        "salted-bit check: a pass over the file",
        whole_secs * 1e6,
        "a challenge answered",
        1e6 / proves,
        "µs",
    );
    single("salted-bit check: bytes read per check", size as f64, "B");
}
