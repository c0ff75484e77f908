//! Stock BitTorrent clients and the file network: Debian's `aria2c` and
//! `transmission-cli` against real `zennet` processes on loopback (one
//! seeder node, one downloader node):
//!
//! - each client downloads a 32 MiB file and a directory tree from `zennet
//!   fs seed` with the `.torrent` `zennet fs torrent` wrote, tracker only
//!   (no web seed in the torrent; DHT, PEX and local discovery off), and
//!   the result matches byte for byte; transmission is reached because the
//!   seeder dials it after its announce;
//! - `aria2c` downloads the file through the web seed alone (a torrent
//!   with no tracker);
//! - our downloader takes parts from an `aria2c` seeding the same torrent
//!   and from the Zennet seeder at once, and reports parts from both.
//!
//! The cheating peers are in `fs/tests/bittorrent.rs` (in process).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zennet_tests::{TestHome, homes_on_one_chain, set_config, wait_until};

use zennet_tests::files::{LOOPBACK, PART, random_file, sha256, str_of};

/// What every aria2c here runs with: BitTorrent peers from the tracker
/// only, no preallocation, quiet.
const ARIA2_BASE: [&str; 7] = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--enable-peer-exchange=false",
    "--bt-enable-lpd=false",
    "--file-allocation=none",
    "--console-log-level=warn",
    "--summary-interval=0",
];

/// A child process killed when dropped (a client left seeding).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `aria2c` downloading `torrent` into `dir` until it is done.
fn aria2c_get(torrent: &Path, dir: &Path) {
    let port = zennet_testkit::free_port().to_string();
    let out = Command::new("aria2c")
        .args(ARIA2_BASE)
        .args([
            "--seed-time=0",
            "--bt-stop-timeout=60",
            "--listen-port",
            &port,
            "-d",
        ])
        .arg(dir)
        .arg(torrent)
        .output()
        .expect("aria2c runs (package aria2, from images/HOST-PACKAGES)");
    assert!(
        out.status.success(),
        "aria2c {}: {}{}",
        torrent.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `transmission-cli` downloading `torrent` into `dir` until `done` says
/// the files are there (it keeps seeding, so it is stopped then). DHT,
/// PEX, local discovery, uTP and port mapping off; unencrypted handshakes
/// accepted (ours are plain).
fn transmission_get(torrent: &Path, dir: &Path, done: impl Fn() -> bool) {
    let config = dir.join(".transmission");
    std::fs::create_dir_all(&config).unwrap();
    let settings = serde_json::json!({
        "dht-enabled": false,
        "pex-enabled": false,
        "lpd-enabled": false,
        "utp-enabled": false,
        "port-forwarding-enabled": false,
        "encryption": 0,
        "peer-port": zennet_testkit::free_port(),
        "rename-partial-files": true,
        "incomplete-dir-enabled": false,
        "download-dir": dir,
    });
    std::fs::write(config.join("settings.json"), settings.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("transmission.log")).unwrap();
    let _client = Running(
        Command::new("transmission-cli")
            .arg("-g")
            .arg(&config)
            .arg("-w")
            .arg(dir)
            .arg(torrent)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("transmission-cli runs (package transmission-cli, from images/HOST-PACKAGES)"),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "transmission did not finish {}; its log ends:\n{}",
            torrent.display(),
            tail(&dir.join("transmission.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let start = text.len().saturating_sub(3000);
    text[start..].to_string()
}

/// Writes a `.torrent` of `id` with `flags` and returns its path.
fn torrent(s: &TestHome, id: &str, dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["fs", "torrent", id, "-o", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    s.json(&args);
    path
}

/// The seeder's BitTorrent figures (`fs status`).
fn bt(s: &TestHome) -> Value {
    s.json(&["fs", "status"])["bittorrent"].clone()
}

/// Every file of `files` is in `b` as it is in `a`.
fn same_tree(a: &Path, b: &Path, files: &[&str]) -> bool {
    files.iter().all(|f| match std::fs::read(b.join(f)) {
        Ok(got) => std::fs::read(a.join(f)).unwrap() == got,
        Err(_) => false,
    })
}

#[test]
fn stock_bittorrent_clients_on_loopback() {
    let start = Instant::now();
    let mut homes = homes_on_one_chain(2);
    let mut d = homes.pop().unwrap();
    let mut s = homes.pop().unwrap();
    let work = d.dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // A cap keeps the seeder from finishing the multi-protocol download
    // before the aria2c seeder is asked.
    set_config(&s, "fs", "upload_limit_mib_s", "24.0");
    s.start_node(&LOOPBACK);
    let boot = s.p2p_addr();
    d.start_node(&[&LOOPBACK[..], &["--bootstrap", &boot]].concat());

    let big = random_file(&work.join("big.bin"), 32 << 20);
    let big_id = str_of(
        &s.json(&["fs", "add", work.join("big.bin").to_str().unwrap()]),
        "id",
    );
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    random_file(&tree.join("a.txt"), 1000);
    random_file(&tree.join("sub/b.bin"), 3 * PART + 77);
    random_file(&tree.join("sub/deeper/empty"), 0);
    random_file(&tree.join("sub/deeper/c.bin"), PART + 1);
    const NOT_EMPTY: [&str; 3] = ["a.txt", "sub/b.bin", "sub/deeper/c.bin"];
    let tree_files = [&NOT_EMPTY[..], &["sub/deeper/empty"]].concat();
    let tree_id = str_of(&s.json(&["fs", "add", tree.to_str().unwrap()]), "id");
    let big_bt = torrent(&s, &big_id, &work, "big-bt.torrent", &["--no-web-seed"]);
    let big_ws = torrent(&s, &big_id, &work, "big-ws.torrent", &["--no-tracker"]);
    let tree_bt = torrent(&s, &tree_id, &work, "tree-bt.torrent", &["--no-web-seed"]);
    let magnet = s.json(&["fs", "magnet", &big_id]);
    assert!(str_of(&magnet, "magnet").contains(&format!("btih:{big_id}&")));

    // aria2c over the peer wire, tracker only.
    let served = |s: &TestHome| bt(s)["served_bytes"].as_u64().unwrap();
    let before = served(&s);
    let dir = work.join("aria-bt");
    aria2c_get(&big_bt, &dir);
    assert_eq!(
        sha256(&std::fs::read(dir.join("big.bin")).unwrap()),
        sha256(&big)
    );
    aria2c_get(&tree_bt, &dir);
    assert!(
        same_tree(&tree, &dir.join("tree"), &tree_files),
        "aria2c's tree"
    );
    let over_bt = served(&s) - before;
    assert!(
        over_bt >= (32 << 20),
        "served over the peer wire: {over_bt}"
    );

    // aria2c through the web seed alone: nothing more over the peer wire.
    let before = served(&s);
    let dir = work.join("aria-ws");
    aria2c_get(&big_ws, &dir);
    assert_eq!(
        sha256(&std::fs::read(dir.join("big.bin")).unwrap()),
        sha256(&big)
    );
    assert_eq!(served(&s), before, "the web seed alone served it");

    // transmission, reached by the seeder dialling it after its announce.
    let dir = work.join("transmission");
    let want = sha256(&big);
    transmission_get(&big_bt, &dir, || {
        std::fs::read(dir.join("big.bin")).is_ok_and(|b| b.len() == big.len() && sha256(&b) == want)
    });
    // transmission 3.00 never creates a file of 0 bytes: the other three.
    transmission_get(&tree_bt, &dir, || {
        same_tree(&tree, &dir.join("tree"), &NOT_EMPTY)
    });
    let log = s.node_log();
    assert!(
        log.contains("dialled a leecher"),
        "the seeder dialled transmission"
    );

    // An aria2c seeding the same torrent, found through the seeder's
    // tracker, and the Zennet seeder: one download from both.
    let seed_dir = work.join("aria-seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::copy(work.join("big.bin"), seed_dir.join("big.bin")).unwrap();
    let port = zennet_testkit::free_port();
    let _seeder = Running(
        Command::new("aria2c")
            .args(ARIA2_BASE)
            .args(["--seed-ratio=0.0", "--check-integrity=true"])
            .args(["--listen-port", &port.to_string(), "-d"])
            .arg(&seed_dir)
            .arg(&big_bt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aria2c runs"),
    );
    wait_until(Duration::from_secs(60), "aria2c to announce itself", || {
        bt(&s)["swarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == big_id.as_str() && w["seeders"].as_u64().unwrap() >= 1)
    });
    wait_until(Duration::from_secs(60), "the seeder to be found", || {
        d.json(&["fs", "info", &big_id])["seeders"]
            .as_array()
            .is_some_and(|v| v.iter().any(|o| o["error"].is_null()))
    });
    let out = work.join("multi.out");
    let got = d.json(&[
        "fs",
        "get",
        &big_id,
        "--protocol",
        "zennet",
        "--protocol",
        "bittorrent",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&big));
    let parts = |protocol: &str| -> u64 {
        got["seeders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["protocol"] == protocol)
            .map(|v| v["parts"].as_u64().unwrap())
            .sum()
    };
    println!(
        "multi-protocol: {} parts from the Zennet seeder, {} from aria2c",
        parts("zennet"),
        parts("bittorrent")
    );
    assert!(parts("zennet") > 0 && parts("bittorrent") > 0, "{got}");
    let aria = got["seeders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["peer"] == format!("127.0.0.1:{port}").as_str())
        .unwrap_or_else(|| panic!("aria2c among the sources: {got}"));
    assert!(aria["parts"].as_u64().unwrap() > 0, "{aria}");
    assert_eq!(aria["paid"], "0", "stock peers are not paid");
    println!(
        "stock BitTorrent clients e2e: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
