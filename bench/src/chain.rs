//! Chain figures: transaction validation vs raw k256 recovery, block import
//! into SQLite vs raw SQLite inserts, identity mining vs raw keccak256,
//! Ethash light verification per header vs the bare `ethash` crate, and the
//! chain at scale:
//!
//! * block import with 1,000,000 accounts in the state vs an empty state
//!   (same block shapes: transfers to fresh accounts), the trie's O(log n);
//! * import tx/s on all cores vs one core (rayon pool of one thread), and
//!   vs raw k256 recovery × cores — what import is bounded by;
//! * the snapshot's size per state entry vs the entry's bare borsh size;
//! * opening that chain with its trie loaded from the table (after a clean
//!   close) vs rebuilt from the state rows (after a crash).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use zennet_chain::crypto::{keccak256, signing_hash};
use zennet_chain::genesis::Genesis;
use zennet_chain::identity::{self, Role};
use zennet_chain::seal::{Ethash, seal};
use zennet_chain::testkit::fast_genesis;
use zennet_chain::{Address, Block, Chain, Hash, SecretKey, SignedTx, Transaction, TxBody};

use crate::{rate, row, single};

pub fn run(quick: bool) {
    let budget = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    println!("== chain (one core each) ==");
    let (validation, recover) = tx_validation(budget);
    identity_mining(budget);
    block_import(quick, validation);
    ethash_verification(budget);
    println!("== chain at scale ==");
    state_scaling(quick);
    parallel_import(quick, recover);
}

/// (our validation rate, raw k256 recovery rate), one core each.
fn tx_validation(budget: Duration) -> (f64, f64) {
    const N: usize = 512;
    let key = SecretKey::generate();
    let txs: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            Transaction {
                chain_id: 98765,
                nonce: i as u64,
                fee_per_byte: 1,
                body: TxBody::Transfer {
                    to: Address([i as u8; 20]),
                    amount: 1000 + i as u128,
                },
            }
            .sign(&key, &Hash::ZERO)
            .encode()
        })
        .collect();
    let ours = rate(budget, || {
        for bytes in &txs {
            let tx = SignedTx::decode(bytes, 4096).unwrap();
            std::hint::black_box(tx.verify(98765, &Hash::ZERO, 4096).unwrap());
        }
        N as u64
    });

    let raw_key = SigningKey::from_slice(&key.to_bytes()).unwrap();
    let raw: Vec<([u8; 32], EcdsaSignature, RecoveryId)> = (0..N)
        .map(|i| {
            let prehash = signing_hash("bench", 1, &Hash::ZERO, &i.to_le_bytes()).0;
            let (sig, recid) = raw_key.sign_prehash_recoverable(&prehash);
            (prehash, sig, recid)
        })
        .collect();
    let anchor = rate(budget, || {
        for (prehash, sig, recid) in &raw {
            std::hint::black_box(VerifyingKey::recover_from_prehash(prehash, sig, *recid).unwrap());
        }
        N as u64
    });
    row(
        "tx validation (decode+hash+recover)",
        ours,
        "raw k256 recover",
        anchor,
        "tx/s",
    );
    (ours, anchor)
}

fn identity_mining(budget: Duration) {
    let key = SecretKey::generate();
    let mut params = Genesis::dev(Address::ZERO, 0).pow;
    params.node_identity_difficulty = u64::MAX;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(budget);
            stop.store(true, Ordering::SeqCst);
        })
    };
    let start = Instant::now();
    let mut tried = 0;
    identity::mine(Role::Node, key.public_key(), &params, 0, &stop, |n| {
        tried = n
    });
    let ours = tried as f64 / start.elapsed().as_secs_f64();
    timer.join().unwrap();

    let mut input = [7u8; 32];
    let anchor = rate(budget, || {
        for _ in 0..4096 {
            input = keccak256(&input).0;
        }
        4096
    });
    std::hint::black_box(input);
    row(
        "identity mining",
        ours,
        "raw keccak256 (32 B)",
        anchor,
        "H/s",
    );
}

fn block_import(quick: bool, validation: f64) {
    let (blocks, per_block) = if quick { (4, 200) } else { (20, 1000) };
    let senders: Vec<SecretKey> = (0..per_block / 10).map(|_| SecretKey::generate()).collect();
    let funded: Vec<(Address, u128)> = senders.iter().map(|k| (k.address(), 1u128 << 80)).collect();
    let genesis = fast_genesis(&funded);
    let mut source = Chain::in_memory(genesis.clone()).unwrap();
    let miner = SecretKey::generate().address();
    let mut built: Vec<Block> = Vec::new();
    for b in 0..blocks {
        for (s, key) in senders.iter().enumerate() {
            for i in 0..10u64 {
                let tx = Transaction {
                    chain_id: genesis.chain_id,
                    nonce: (b * 10) as u64 + i,
                    fee_per_byte: 1,
                    body: TxBody::Transfer {
                        to: Address([(s % 200) as u8; 20]),
                        amount: 1 + i as u128,
                    },
                }
                .sign(key, &source.genesis_hash());
                source.submit_tx(tx).unwrap();
            }
        }
        let tip = source.tip().header.timestamp_ms;
        let mut block = source.template(miner, tip + 2000);
        assert!(seal(
            source.ethash(),
            &mut block,
            0,
            &AtomicBool::new(false)
        ));
        source.import_block(block.clone(), u64::MAX / 2).unwrap();
        assert_eq!(block.txs.len(), per_block);
        built.push(block);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut target = Chain::open(dir.path(), genesis).unwrap();
    let start = Instant::now();
    for b in &built {
        target.import_block(b.clone(), u64::MAX / 2).unwrap();
    }
    let ours = (blocks * per_block) as f64 / start.elapsed().as_secs_f64();

    let anchor = raw_sqlite_rows_per_sec(if quick { 10_000 } else { 50_000 });
    row(
        &format!("block import to SQLite ({per_block} tx/block)"),
        ours,
        "raw SQLite 1000-row txns",
        anchor,
        "tx/s",
    );
    // Import verifies every signature, so validation bounds it.
    row(
        "block import to SQLite",
        ours,
        "tx validation alone",
        validation,
        "tx/s",
    );
}

/// The SQLite anchor: WAL, 1,000-row transactions into a table with a
/// random 32-byte hash primary key.
fn raw_sqlite_rows_per_sec(rows: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("anchor.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch("CREATE TABLE t (hash BLOB PRIMARY KEY, body BLOB NOT NULL)")
        .unwrap();
    let body = vec![0u8; 130];
    let mut seed = [1u8; 32];
    let start = Instant::now();
    for _ in 0..rows / 1000 {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO t (hash, body) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..1000 {
                seed = keccak256(&seed).0;
                stmt.execute(rusqlite::params![&seed[..], &body]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

fn ethash_verification(budget: Duration) {
    let genesis = Genesis::dev(Address::ZERO, 0);
    let ethash = Ethash::new(genesis.ethash.clone(), None);
    let mut block = Chain::in_memory(fast_genesis(&[]))
        .unwrap()
        .template(Address::ZERO, 1);
    block.header.difficulty = 1;
    let never = AtomicBool::new(false);
    let (nonce, mix) = ethash.search(&block.header, 0, 1, &never).unwrap();
    block.header.nonce = nonce;
    block.header.mix_digest = mix;
    let header = block.header.clone();
    ethash.verify(&header).unwrap();
    let ours = rate(budget, || {
        ethash.verify_seal(std::hint::black_box(&header)).unwrap();
        1
    });

    let cache = ethash.cache(0);
    let size = ethash.dataset_size(0);
    let seal_hash = header.seal_hash();
    let anchor = rate(budget, || {
        std::hint::black_box(ethash::hashimoto_light(
            ethereum_types::H256::from(seal_hash.0),
            ethereum_types::H64::from(nonce.to_be_bytes()),
            size,
            &cache,
        ));
        1
    });
    row(
        "ethash light verify per header (dev, 1 MiB)",
        1e3 / ours,
        "bare hashimoto_light",
        1e3 / anchor,
        "ms",
    );

    // A header that fails the pre-check costs two hashes, not a light run.
    let mut bad = header.clone();
    bad.difficulty = u64::MAX;
    let rejected = rate(budget, || {
        std::hint::black_box(ethash.verify_seal(&bad).is_err());
        1
    });
    single(
        "ethash pre-check rejection per header",
        1e6 / rejected,
        "µs",
    );

    // Mainnet-sized epoch-0 cache (16 MiB), as the anchor table quotes.
    let mut big = vec![0u8; ethash::get_cache_size(0)];
    let started = Instant::now();
    ethash::make_cache(&mut big, ethash::get_seedhash(0));
    let built_in = started.elapsed();
    let full = ethash::get_full_size(0);
    let mainnet = rate(budget, || {
        std::hint::black_box(ethash::hashimoto_light(
            ethereum_types::H256::from(seal_hash.0),
            ethereum_types::H64::from(nonce.to_be_bytes()),
            full,
            &big,
        ));
        1
    });
    single(
        "ethash light hash, 16 MiB epoch-0 cache",
        1e3 / mainnet,
        "ms",
    );
    single(
        "ethash 16 MiB cache build",
        built_in.as_secs_f64() * 1e3,
        "ms",
    );
}

/// `blocks` blocks of `per_block` transfers from `senders` to fresh
/// addresses, built and sealed on `source`.
fn transfer_blocks(
    source: &mut Chain,
    senders: &[SecretKey],
    blocks: usize,
    per_block: usize,
    seed: u64,
) -> Vec<Block> {
    let miner = SecretKey::generate().address();
    let genesis_hash = source.genesis_hash();
    let mut out = Vec::new();
    let mut n = seed;
    for _ in 0..blocks {
        for i in 0..per_block {
            let key = &senders[i % senders.len()];
            n += 1;
            let to = Address::from_slice(&keccak256(&n.to_be_bytes()).0[..20]).unwrap();
            let tx = Transaction {
                chain_id: source.genesis().chain_id,
                nonce: source.next_nonce(&key.address()),
                fee_per_byte: 1,
                body: TxBody::Transfer { to, amount: 1 },
            }
            .sign(key, &genesis_hash);
            source.submit_tx(tx).unwrap();
        }
        let tip = source.tip().header.timestamp_ms;
        let mut block = source.template(miner, tip + 2000);
        assert_eq!(
            block.txs.len(),
            per_block,
            "the template holds every transfer"
        );
        assert!(seal(
            source.ethash(),
            &mut block,
            0,
            &AtomicBool::new(false)
        ));
        source.import_block(block.clone(), u64::MAX / 2).unwrap();
        out.push(block);
    }
    out
}

/// A fresh chain directory holding `genesis`, and a copy of it: one to
/// build blocks on, one to import them into.
fn two_chains(genesis: &Genesis) -> (tempfile::TempDir, Chain, Chain) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    drop(Chain::open(&source, genesis.clone()).unwrap());
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(source.join("chain.db"), target.join("chain.db")).unwrap();
    let s = Chain::open(&source, genesis.clone()).unwrap();
    let t = Chain::open(&target, genesis.clone()).unwrap();
    (dir, s, t)
}

/// Seconds to import `blocks` into `target`.
fn import_time(target: &mut Chain, blocks: &[Block]) -> f64 {
    let start = Instant::now();
    for b in blocks {
        target.import_block(b.clone(), u64::MAX / 2).unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn state_scaling(quick: bool) {
    let accounts: u32 = if quick { 100_000 } else { 1_000_000 };
    let (blocks, per_block) = if quick { (5, 200) } else { (40, 500) };
    let senders: Vec<SecretKey> = (0..100).map(|_| SecretKey::generate()).collect();
    let funded: Vec<(Address, u128)> = senders.iter().map(|k| (k.address(), 1u128 << 80)).collect();
    let small = fast_genesis(&funded);
    let mut big_funds = funded.clone();
    big_funds.extend((0..accounts).map(|i| {
        let mut a = [0xa5u8; 20];
        a[..4].copy_from_slice(&i.to_be_bytes());
        (Address(a), 1u128)
    }));
    let mut big = fast_genesis(&big_funds);
    big.name = "zennet-bench-1m".into();

    let t = Instant::now();
    let (_d1, mut big_source, mut big_target) = two_chains(&big);
    let setup = t.elapsed();
    let (_d2, mut small_source, mut small_target) = two_chains(&small);
    let big_blocks = transfer_blocks(&mut big_source, &senders, blocks, per_block, 1);
    let small_blocks = transfer_blocks(&mut small_source, &senders, blocks, per_block, 1);
    drop((big_source, small_source));
    // Closing the sources wrote their trees: let that reach the disk now,
    // not while the big state's blocks are being timed. Each block is
    // timed on its own: on this shared machine single blocks move by a
    // third from one to the next (the signature checks most), so the
    // median block is printed beside the mean (which keeps the rare slow
    // block, a checkpoint's, say).
    nix::unistd::sync();
    let times = |target: &mut Chain, blocks: &[Block]| -> Vec<f64> {
        let mut t: Vec<f64> = blocks
            .iter()
            .map(|b| 1e3 * import_time(target, std::slice::from_ref(b)))
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let big_ms = times(&mut big_target, &big_blocks);
    let small_ms = times(&mut small_target, &small_blocks);
    let median = |t: &[f64]| t[t.len() / 2];
    let mean = |t: &[f64]| t.iter().sum::<f64>() / t.len() as f64;
    row(
        &format!(
            "block import, {}k accounts ({per_block} tx)",
            accounts / 1000
        ),
        median(&big_ms),
        "empty state",
        median(&small_ms),
        "ms (median block)",
    );
    row(
        "  the same, mean block",
        mean(&big_ms),
        "empty state",
        mean(&small_ms),
        "ms",
    );
    single(
        &format!(
            "  state entries {} / trie nodes {}",
            big_target.state().len(),
            big_target.state().trie().node_count()
        ),
        setup.as_secs_f64(),
        "s to write the genesis state",
    );

    // The snapshot of the big state, per entry, beside the bare encoding.
    let mut counter = Counter(0);
    let tip = big_target.tip().header.height;
    let info = big_target.export_snapshot(Some(tip), &mut counter).unwrap();
    let bare = zennet_chain::codec::encode(&(
        zennet_chain::state::StateKey::Account(Address::ZERO),
        zennet_chain::state::StateValue::Account(zennet_chain::state::Account {
            balance: 1,
            nonce: 0,
        }),
    ))
    .len();
    row(
        "snapshot file per state entry",
        counter.0 as f64 / info.entries as f64,
        "borsh (key, account)",
        bare as f64,
        "B",
    );

    // What a restart costs: the trie loaded from its table (written on
    // close) vs rebuilt from the rows (after a crash, when the table is
    // behind). Both opens also rebuild this genesis' million-entry root.
    drop(big_target);
    let dir = _d1.path().join("target");
    let open = || {
        let t = Instant::now();
        drop(Chain::open(&dir, big.clone()).unwrap());
        t.elapsed().as_secs_f64()
    };
    let loaded = open();
    rusqlite::Connection::open(dir.join("chain.db"))
        .unwrap()
        .execute("DELETE FROM meta WHERE key = 'trie_root'", [])
        .unwrap();
    let t = Instant::now();
    let chain = Chain::open(&dir, big.clone()).unwrap();
    let rebuilt = t.elapsed().as_secs_f64();
    std::mem::forget(chain); // as after a crash: nothing written on the way out
    row(
        &format!("open, {}k accounts, trie loaded", accounts / 1000),
        loaded,
        "trie rebuilt from the rows",
        rebuilt,
        "s",
    );
}

fn parallel_import(quick: bool, recover_one_core: f64) {
    let (blocks, per_block) = if quick { (5, 200) } else { (20, 1000) };
    let senders: Vec<SecretKey> = (0..200).map(|_| SecretKey::generate()).collect();
    let funded: Vec<(Address, u128)> = senders.iter().map(|k| (k.address(), 1u128 << 80)).collect();
    let genesis = fast_genesis(&funded);
    let (_d, mut source, mut all_cores) = two_chains(&genesis);
    let built = transfer_blocks(&mut source, &senders, blocks, per_block, 7);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        _d.path().join("target/chain.db"),
        dir.path().join("chain.db"),
    )
    .unwrap();
    let mut one_core = Chain::open(dir.path(), genesis).unwrap();
    drop(source);
    let txs = (blocks * per_block) as f64;
    let all = txs / import_time(&mut all_cores, &built);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = txs / pool.install(|| import_time(&mut one_core, &built));
    let cores = rayon::current_num_threads();
    row(
        &format!("block import tx/s, {cores} cores"),
        all,
        "one core",
        one,
        "tx/s",
    );
    row(
        &format!("block import tx/s, {cores} cores"),
        all,
        &format!("raw k256 recover x {cores}"),
        recover_one_core * cores as f64,
        "tx/s",
    );
}

struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
