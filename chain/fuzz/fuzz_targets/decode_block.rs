//! Arbitrary bytes → block decoding must never panic; whatever decodes must
//! re-encode to the same bytes, and its roots and seal checks must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_chain::Block;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Block::decode(data, 1 << 20) {
        assert_eq!(block.encode(), data, "canonical encoding");
        let _ = block.computed_tx_root();
        let _ = block.header.seal_hash();
    }
});
