//! Arbitrary input to the tracker: an announce's query string (from any
//! client) and a tracker's answer (to our own announces). Parsing must
//! never panic; an announce that parses re-encodes to one that parses the
//! same; an answer's peers are whole addresses with a port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_fs::bittorrent::tracker;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let Ok(query) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(a) = tracker::parse_announce(query) {
            let again = tracker::parse_announce(&tracker::announce_query(&a))
                .expect("our own query parses");
            assert_eq!(again, a);
        }
    } else if let Ok(answer) = tracker::parse_answer(rest) {
        assert!(answer.peers.iter().all(|p| p.port() != 0));
    }
});
