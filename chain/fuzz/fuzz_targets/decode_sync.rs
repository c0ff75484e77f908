//! Arbitrary bytes from a sync peer → snapshot manifests, snapshot chunks
//! and stored blocks must decode or fail cleanly, and checking whatever
//! decodes must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_chain::snapshot::{Manifest, decode_chunk};
use zennet_chain::{Hash, Header, StoredBlock};

fuzz_target!(|data: &[u8]| {
    let header = Header {
        parent: Hash::ZERO,
        height: 7,
        timestamp_ms: 1,
        tx_root: Hash::ZERO,
        state_root: Hash([3; 32]),
        difficulty: 1,
        miner: zennet_chain::Address::ZERO,
        extra: vec![],
        mix_digest: Hash::ZERO,
        nonce: 0,
    };
    if let Ok(m) = Manifest::decode(data) {
        let _ = m.check(&header);
        let _ = m.check_chunk(0, &vec![]);
    }
    if let Ok(chunk) = decode_chunk(data) {
        let m = Manifest {
            height: 7,
            block: header.hash(),
            depth: 1,
            summaries: vec![Default::default(); 16],
        };
        for i in 0..17 {
            let _ = m.check_chunk(i, &chunk);
        }
    }
    if let Ok(b) = StoredBlock::decode(data, 1 << 20) {
        let _ = b.check_tx_root();
        let _ = b.into_block();
    }
});
