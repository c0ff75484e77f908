//! Arbitrary bytes → transaction decoding and signature verification must
//! never panic; whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_chain::SignedTx;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = SignedTx::decode(data, 4096) {
        assert_eq!(tx.encode(), data, "canonical encoding");
        let _ = tx.verify(98765, &zennet_chain::Hash::ZERO, 4096);
    }
});
