//! Arbitrary bytes from a peer → metainfo: checking must never panic;
//! what is accepted is canonical BEP 3 whose id is the SHA-1 of the bytes,
//! with a consistent layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use zennet_fs::{FileId, Metainfo};

fuzz_target!(|data: &[u8]| {
    let id = FileId(Sha1::digest(data).into());
    if let Ok(m) = Metainfo::from_network(data, &id) {
        assert_eq!(m.bytes, data);
        assert_eq!(m.id, id);
        let n = m.piece_count();
        let total: u64 = (0..n).map(|i| m.piece_len(i)).sum();
        assert_eq!(total, m.length());
        let _ = m.spans();
        let _ = m.magnet();
    }
    assert!(Metainfo::from_network(data, &FileId([0; 20])).is_err() || id == FileId([0; 20]));
});
