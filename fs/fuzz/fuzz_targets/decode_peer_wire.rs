//! Arbitrary bytes from a BitTorrent peer → the handshake and the
//! messages after it: decoding must never panic, nor accept a message
//! over the cap (checked on the length prefix), and whatever decodes must
//! re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_fs::bittorrent::wire::{self, HANDSHAKE_LEN, Handshake};

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the torrent's part count (the cap).
    let Some((n, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let pieces = u32::from(u16::from_be_bytes(*n)) * 64;
    let max = wire::max_len(pieces);
    let mut rest = rest;
    if let Some((h, after)) = rest.split_first_chunk::<HANDSHAKE_LEN>()
        && let Ok(hs) = Handshake::decode(h)
    {
        // Only the reserved bytes may differ from what we would send.
        let back = hs.encode();
        assert_eq!(&back[..], &h[..]);
        rest = after;
    }
    while let Ok(Some((m, used))) = wire::decode(rest, max) {
        assert!(used <= 4 + max, "a message over the cap was accepted");
        let mut out = Vec::new();
        wire::encode(&m, &mut out);
        assert_eq!(out, &rest[..used], "canonical encoding of {}", m.name());
        rest = &rest[used..];
    }
});
