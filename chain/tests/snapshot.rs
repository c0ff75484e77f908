//! Snapshots: the state at a past final height served from a moving tip,
//! chunks and manifests that lie, the file for auditors and offline
//! seeding, `verify` catching a tampered state row, and the trie table
//! (written on close) after a crash or tampering.

use zennet_chain::crypto::SecretKey;
use zennet_chain::snapshot::{Assembly, Manifest, SnapshotError, Source, read_file};
use zennet_chain::state::{Account, StateValue};
use zennet_chain::testkit::{Activity, fast_genesis, mine};
use zennet_chain::trie::Child;
use zennet_chain::{Chain, ChainError, Genesis, Hash, Header};

const BLOCKS: u64 = 60;

/// A chain with every kind of state entry, built on disk; returns it with
/// its genesis and the state root it had at each height.
fn busy_chain(dir: &std::path::Path) -> (Chain, Genesis, Vec<Hash>) {
    let keys: Vec<SecretKey> = (0..6).map(|_| SecretKey::generate()).collect();
    let mut genesis = fast_genesis(
        &keys
            .iter()
            .map(|k| (k.address(), 1u128 << 60))
            .collect::<Vec<_>>(),
    );
    genesis.consensus.reorg_horizon = 10;
    genesis.consensus.snapshot_interval = 10;
    let mut chain = Chain::open(dir, genesis.clone()).unwrap();
    let mut activity = Activity::new(keys);
    let miner = SecretKey::generate().address();
    let mut roots = vec![chain.state().root()];
    for _ in 0..BLOCKS {
        activity.submit(&mut chain);
        mine(&mut chain, miner);
        roots.push(chain.state().root());
    }
    let s = chain.state();
    assert!(s.tasks().count() > 0, "the state holds tasks");
    assert!(s.channels().count() > 0, "and channels");
    (chain, genesis, roots)
}

fn headers(chain: &Chain, from: u64, to: u64) -> Vec<Header> {
    (from..=to)
        .map(|h| chain.block_by_height(h).unwrap().unwrap().header)
        .collect()
}

#[test]
fn a_snapshot_at_a_past_height_installs_and_the_chain_goes_on_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, roots) = busy_chain(dir.path());
    let height = genesis.consensus.snapshot_height(BLOCKS).unwrap();
    assert_eq!(height, 50);

    // Served through a second, read-only connection while the chain is open.
    let reader = chain.store().reader().unwrap();
    let (manifest, chunks) = reader
        .read(|store| {
            let source = Source::new(store, height)?;
            let manifest = source.manifest()?;
            let chunks: Vec<_> = (0..manifest.chunks())
                .map(|i| source.chunk(manifest.depth, i))
                .collect::<Result<_, _>>()?;
            Ok((manifest, chunks))
        })
        .unwrap();
    let header = chain.block_by_height(height).unwrap().unwrap().header;
    assert_eq!(header.state_root, roots[height as usize]);
    manifest.check(&header).unwrap();

    let mut assembly = Assembly::new(Manifest::decode(&manifest.encode()).unwrap());
    for (i, c) in chunks.into_iter().enumerate() {
        assembly.add(i as u64, c).unwrap();
    }
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = Chain::open(fresh_dir.path(), genesis.clone()).unwrap();
    fresh
        .install_snapshot(&headers(&chain, 1, height), assembly, u64::MAX / 2)
        .unwrap();
    assert_eq!(fresh.tip().header.height, height);
    assert_eq!(fresh.state().root(), roots[height as usize]);
    assert!(fresh.block_by_height(10).unwrap().unwrap().header_only);

    // Blocks after the snapshot import as usual and reach the same tip.
    for h in height + 1..=BLOCKS {
        let b = chain
            .block_by_height(h)
            .unwrap()
            .unwrap()
            .into_block()
            .unwrap();
        fresh.import_block(b, u64::MAX / 2).unwrap();
    }
    assert_eq!(fresh.tip().hash, chain.tip().hash);
    assert_eq!(fresh.state(), chain.state());
    // It survives a restart, and cannot be reorganised below its base.
    drop(fresh);
    let fresh = Chain::open(fresh_dir.path(), genesis).unwrap();
    assert_eq!(fresh.state().root(), chain.state().root());
    assert_eq!(fresh.snapshot_base(), height);
    assert!(fresh.verify_state().unwrap().ok());
}

#[test]
fn bad_chunks_and_manifests_are_caught_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, _) = busy_chain(dir.path());
    let height = genesis.consensus.snapshot_height(BLOCKS).unwrap();
    let header = chain.block_by_height(height).unwrap().unwrap().header;
    let source = Source::new(chain.store(), height).unwrap();
    let manifest = source.manifest().unwrap();
    let full: Vec<u64> = (0..manifest.chunks())
        .filter(|i| !source.chunk(manifest.depth, *i).unwrap().is_empty())
        .collect();
    let i = full[0];
    let good = source.chunk(manifest.depth, i).unwrap();
    manifest.check_chunk(i, &good).unwrap();

    // A lying value.
    let mut lie = good.clone();
    lie[0].1 = StateValue::Account(Account {
        balance: u128::MAX,
        nonce: 0,
    });
    assert!(
        matches!(manifest.check_chunk(i, &lie), Err(SnapshotError::Chunk { index, .. }) if index == i)
    );
    // An entry left out, or moved from another chunk.
    let mut short = good.clone();
    short.pop();
    assert!(manifest.check_chunk(i, &short).is_err() || good.len() == 1);
    let other = source.chunk(manifest.depth, full[1]).unwrap();
    let mut foreign = good.clone();
    foreign.push(other[0].clone());
    assert!(manifest.check_chunk(i, &foreign).is_err());
    // Out of order.
    if good.len() > 1 {
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert!(manifest.check_chunk(i, &swapped).is_err());
    }
    // A manifest whose summaries do not add up to the header's root.
    let mut bad = manifest.clone();
    bad.summaries[i as usize] = Child::Node(Hash([1; 32]));
    assert!(matches!(
        bad.check(&header),
        Err(SnapshotError::Manifest(_))
    ));
    // A manifest for another block.
    let other_header = chain.block_by_height(height - 1).unwrap().unwrap().header;
    assert!(manifest.check(&other_header).is_err());
    // Junk bytes.
    assert!(Manifest::decode(&[1, 2, 3]).is_err());
    // A manifest off the wire with an absurd depth (found by the fuzzer:
    // 16^depth and the prefix shifts overflowed) is refused, unchecked.
    for depth in [0, 5, 17, 255] {
        let deep = Manifest {
            depth,
            ..manifest.clone()
        };
        assert!(
            matches!(
                deep.check_chunk(0, &good),
                Err(SnapshotError::Chunk { index: 0, .. })
            ),
            "depth {depth}"
        );
        assert!(deep.check(&header).is_err());
        let _ = deep.chunks();
    }
}

#[test]
fn the_snapshot_file_round_trips_and_refuses_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, roots) = busy_chain(dir.path());
    let mut bytes = Vec::new();
    let info = chain.export_snapshot(None, &mut bytes).unwrap();
    assert_eq!(info.height, 50);
    assert_eq!(info.state_root, roots[50]);

    let import = |bytes: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        let mut c = Chain::open(d.path(), genesis.clone()).unwrap();
        let r = c.import_snapshot(&mut &bytes[..], u64::MAX / 2);
        (r, c.tip().header.height, c.state().root(), d)
    };
    let (ok, height, root, _d) = import(&bytes);
    assert_eq!(ok.unwrap(), info);
    assert_eq!((height, root), (50, roots[50]));

    // Any flipped byte is caught (checksum), and nothing is written.
    for at in [
        3usize,
        20,
        bytes.len() / 2,
        bytes.len() - 40,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let (r, height, _, _d) = import(&bad);
        assert!(r.is_err(), "flip at {at} accepted");
        assert_eq!(height, 0, "state untouched after a refused import");
    }
    // Truncated, or with bytes after the end.
    assert!(matches!(
        read_file(&mut &bytes[..bytes.len() - 1]),
        Err(SnapshotError::Checksum)
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        read_file(&mut &longer[..]),
        Err(SnapshotError::Checksum)
    ));
    assert!(matches!(
        read_file(&mut &b"not a snapshot"[..]),
        Err(SnapshotError::Magic)
    ));

    // Another chain's genesis, and a home that already has blocks.
    let mut other_genesis = genesis.clone();
    other_genesis.name = "another-dev-chain".into();
    let d = tempfile::tempdir().unwrap();
    let mut other = Chain::open(d.path(), other_genesis).unwrap();
    assert!(matches!(
        other.import_snapshot(&mut &bytes[..], u64::MAX / 2),
        Err(ChainError::Snapshot(SnapshotError::WrongGenesis { .. }))
    ));
    let d = tempfile::tempdir().unwrap();
    let mut used = Chain::open(d.path(), genesis.clone()).unwrap();
    mine(&mut used, SecretKey::generate().address());
    assert!(matches!(
        used.import_snapshot(&mut &bytes[..], u64::MAX / 2),
        Err(ChainError::Snapshot(SnapshotError::NotFresh(1)))
    ));
}

#[test]
fn a_file_whose_state_does_not_match_its_headers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, _) = busy_chain(dir.path());
    let mut bytes = Vec::new();
    chain.export_snapshot(Some(40), &mut bytes).unwrap();
    // Re-export at 50 but swap in header chain 1..40: a valid checksum over
    // a state that is not header 40's.
    let at50 = {
        let mut b = Vec::new();
        chain.export_snapshot(Some(50), &mut b).unwrap();
        read_file(&mut &b[..]).unwrap()
    };
    let at40 = read_file(&mut &bytes[..]).unwrap();
    let forged = zennet_chain::snapshot::SnapshotFile {
        genesis: at40.genesis,
        headers: at40.headers,
        entries: at50.entries,
    };
    let mut bytes = Vec::new();
    zennet_chain::snapshot::write_file(&forged, &mut bytes).unwrap();
    let forged = bytes;
    let d = tempfile::tempdir().unwrap();
    let mut c = Chain::open(d.path(), genesis).unwrap();
    let err = c
        .import_snapshot(&mut &forged[..], u64::MAX / 2)
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Snapshot(SnapshotError::StateRoot { .. })),
        "{err}"
    );
    assert_eq!(c.tip().header.height, 0);
}

#[test]
fn verify_recomputes_the_root_and_catches_a_tampered_row() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, _) = busy_chain(dir.path());
    let report = chain.verify_state().unwrap();
    assert!(report.ok(), "{report:?}");
    assert!(report.entries > 20);
    drop(chain);
    // Someone edits a balance in the database behind the node's back.
    let conn = rusqlite::Connection::open(dir.path().join("chain.db")).unwrap();
    let (path, key): (Vec<u8>, Vec<u8>) = conn
        .query_row("SELECT path, key FROM state LIMIT 1 OFFSET 3", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let key: zennet_chain::state::StateKey = borsh::from_slice(&key).unwrap();
    if let zennet_chain::state::StateKey::Account(_) = key {
        let v = borsh::to_vec(&StateValue::Account(Account {
            balance: 1,
            nonce: 0,
        }))
        .unwrap();
        conn.execute(
            "UPDATE state SET value = ?1 WHERE path = ?2",
            rusqlite::params![v, path],
        )
        .unwrap();
    } else {
        conn.execute("DELETE FROM state WHERE path = ?1", [path])
            .unwrap();
    }
    drop(conn);
    // Opening notices nothing (it trusts the stored trie)…
    let chain = Chain::open(dir.path(), genesis).unwrap();
    // …verify does.
    let report = chain.verify_state().unwrap();
    assert!(!report.ok());
    assert_ne!(report.computed_root, report.header_root);
}

/// The state trie is written when the chain closes, not per block. A
/// crash (here: the chain is leaked, so nothing of it runs on the way
/// out, as under `kill -9`) costs a rebuild from the rows on the next
/// open, never the state.
#[test]
fn a_crash_before_the_trie_is_written_costs_a_rebuild_not_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, roots) = busy_chain(dir.path());
    let tip_root = *roots.last().unwrap();
    assert_ne!(
        chain.store().trie_root().unwrap(),
        Some(tip_root),
        "no block wrote the trie"
    );
    std::mem::forget(chain);

    let mut chain = Chain::open(dir.path(), genesis.clone()).unwrap();
    assert_eq!(chain.state().root(), tip_root, "rebuilt from the rows");
    let report = chain.verify_state().unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.trie_root, None, "the table is still behind");
    // The chain goes on from the rebuilt tree, and a clean close writes it.
    let miner = SecretKey::generate().address();
    mine(&mut chain, miner);
    let root = chain.state().root();
    drop(chain);

    let chain = Chain::open(dir.path(), genesis).unwrap();
    assert_eq!(chain.store().trie_root().unwrap(), Some(root));
    assert_eq!(chain.state().root(), root);
    let report = chain.verify_state().unwrap();
    assert!(report.ok() && report.trie_root == Some(root), "{report:?}");
}

/// A trie table that lies about itself: its marker says it holds the tip's
/// tree, but rows of it were changed behind the node's back.
#[test]
fn a_damaged_trie_table_is_rebuilt_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, genesis, roots) = busy_chain(dir.path());
    let tip_root = *roots.last().unwrap();
    drop(chain);
    let db = dir.path().join("chain.db");
    let root_key = zennet_chain::trie::Prefix::ROOT.encode();

    // The root node swapped for another node: caught on open (it no
    // longer hashes to the marker), and the tree is rebuilt.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let other: Vec<u8> = conn
        .query_row(
            "SELECT node FROM trie WHERE prefix != ?1 LIMIT 1",
            [&root_key],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE trie SET node = ?1 WHERE prefix = ?2",
        rusqlite::params![other, root_key],
    )
    .unwrap();
    drop(conn);
    let chain = Chain::open(dir.path(), genesis.clone()).unwrap();
    assert_eq!(chain.state().root(), tip_root);
    drop(chain);
    let chain = Chain::open(dir.path(), genesis.clone()).unwrap();
    assert!(
        chain.verify_state().unwrap().ok(),
        "rewritten whole on close"
    );
    drop(chain);

    // An inner node deleted: the root still matches, so only `verify`
    // sees it, and `rebuild_trie` mends it from the rows.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let deleted = conn
        .execute(
            "DELETE FROM trie WHERE prefix = (SELECT prefix FROM trie WHERE prefix != ?1 LIMIT 1)",
            [&root_key],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    drop(conn);
    let mut chain = Chain::open(dir.path(), genesis.clone()).unwrap();
    let report = chain.verify_state().unwrap();
    assert!(!report.ok() && report.mismatched_nodes == 1, "{report:?}");
    assert!(chain.rebuild_trie().unwrap() > 1);
    assert!(chain.verify_state().unwrap().ok());
    drop(chain);
    let chain = Chain::open(dir.path(), genesis).unwrap();
    let report = chain.verify_state().unwrap();
    assert!(
        report.ok() && report.trie_root == Some(tip_root),
        "{report:?}"
    );
}
