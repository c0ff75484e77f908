//! Arbitrary bytes → the snapshot file reader must never panic nor trust a
//! count for an allocation; whatever it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zennet_chain::snapshot::{read_file, write_file};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = read_file(&mut &data[..]) {
        let mut out = Vec::new();
        write_file(&file, &mut out).unwrap();
        assert_eq!(out, data, "canonical encoding");
    }
});
