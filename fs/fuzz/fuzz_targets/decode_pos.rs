//! Arbitrary bytes from a peer → proof-of-storage frames: decoding must
//! never panic nor allocate past the frame cap, whatever decodes must
//! re-encode to the same bytes, and checking a decoded proof must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_fs::merkle::LEAF;
use zennet_fs::pos;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = pos::decode_body(data) {
        assert_eq!(&pos::encode(&frame)[4..], data, "canonical encoding");
        if let pos::Frame::Proof { proofs, .. } = &frame {
            for p in proofs {
                let size = p.index.saturating_add(1).saturating_mul(LEAF);
                let _ = p.verify(&[0; 32], size);
            }
        }
    }
});
