//! For file-network tests: random files, their hashes, adding a file on
//! several nodes, waiting until a node finds seeders, and the part files a
//! node stores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{TestHome, wait_until};

/// A node's libp2p listener on loopback, any free port.
pub const LOOPBACK: [&str; 2] = ["--listen", "/ip4/127.0.0.1/tcp/0"];
/// The file network's part size.
pub const PART: usize = 256 * 1024;

/// Writes `len` random bytes to `path` and returns them.
pub fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut data).unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// `v[key]` as a string ("" when missing).
pub fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// Adds `path` on every seeder; returns the id (the same everywhere).
pub fn add_everywhere(seeders: &[TestHome], path: &Path, extra: &[&str]) -> String {
    let mut id = String::new();
    for s in seeders {
        let mut args = vec!["fs", "add", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let added = s.json(&args);
        assert!(id.is_empty() || id == str_of(&added, "id"), "same id");
        id = str_of(&added, "id");
    }
    id
}

/// Waits until `home` finds `n` usable seeders of `id`.
pub fn await_seeders(home: &TestHome, id: &str, n: usize) {
    wait_until(Duration::from_secs(60), "seeders to be found", || {
        let info = home.json(&["fs", "info", id]);
        info["seeders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["error"].is_null())
            .count()
            >= n
    });
}

/// Every part file in `home`'s store.
pub fn part_files(home: &TestHome) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(home.dir.join("fs/parts")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}
