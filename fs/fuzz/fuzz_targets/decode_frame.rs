//! Arbitrary bytes from a peer → part-protocol frames: decoding must never
//! panic nor allocate past a frame's cap, and whatever decodes must
//! re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_fs::wire;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = wire::decode(rest) {
        assert_eq!(wire::encode(&frame), &rest[..used], "canonical encoding");
        rest = &rest[used..];
    }
});
