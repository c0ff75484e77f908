//! File-network figures, with real `zennet` processes (the release binary
//! built beside this one) on one fast dev chain: a miner, three seeders and
//! a downloader, set up with the end-to-end tests' harness.
//!
//! * `fs add` (cut into parts, SHA-1 each, write them into the store) vs
//!   `sha1sum` of the same file (hashing alone).
//! * A download from the three seeders through our downloader, paid per
//!   part, vs `aria2c -x4` fetching the same file from a stock nginx on
//!   loopback. Our figure is the node's own transfer time, from the
//!   request to the last verified part, discovery included (printed apart).
//!   It is measured with the miner stopped once the channels are open:
//!   vouchers are off chain, and on a real network the miners are other
//!   machines, while here the miner would take a core of the two that
//!   nginx and aria2c have to themselves. The same download with the
//!   miner running is printed too.
//! * The cost of paying: the same download paid per part vs free (the
//!   channels were opened by a warm-up download, as they are once per
//!   seeder in real use, funded for every paid pass so none is topped up
//!   while measured). Free and paid passes take turns, three each, and
//!   the median of each is printed.
//! * Our HTTP serving vs nginx, the same client (`aria2c -x4`) for both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zennet_tests::{TestHome, homes_on_one_chain, set_config, wait_until};

use crate::{row, single};

const PRICE: &str = "1000";
/// Passes of the free and of the paid download (taking turns).
const PASSES: usize = 3;

pub fn run(quick: bool) {
    println!("== fs: the file network ==");
    let Some(zennet) = beside_exe("zennet") else {
        println!("  (skipped: build zennet beside zennet-bench; scripts/bench.sh does)");
        return;
    };
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("ZENNET_BIN", &zennet) };
    let size: usize = if quick { 256 << 20 } else { 1 << 30 };
    let mib = size >> 20;
    let work = tempfile::Builder::new()
        .prefix("zennet-bench-fs-")
        .tempdir()
        .expect("a temp dir");
    let src = work.path().join("data.bin");
    write_random(&src, size);

    let mut homes = homes_on_one_chain(5);
    let mut d = homes.pop().expect("5 homes");
    let mut seeders: Vec<TestHome> = homes.drain(1..).collect();
    let mut miner = homes.pop().expect("5 homes");
    let lo = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    miner.start_node(&[&lo[..], &["--mine"]].concat());
    let boot = miner.p2p_addr();
    let join = [&lo[..], &["--bootstrap", &boot]].concat();
    for s in &mut seeders {
        set_config(s, "fs", "max_gib", "4.0");
        s.start_node(&join);
    }
    set_config(&d, "fs", "max_gib", "4.0");
    set_config(&d, "fs", "max_price_per_mib", &format!("\"{PRICE}\""));
    // Enough for every paid pass even if one seeder served all of it.
    let deposit = (PASSES as u128 + 2) * mib as u128 * PRICE.parse::<u128>().expect("a price");
    set_config(&d, "fs", "channel_deposit", &format!("\"{deposit}\""));
    d.start_node(&join);
    miner.ok(&["wallet", "send", &d.address(), "1000000000000", "--wait"]);

    // fs add vs sha1sum.
    let t = Instant::now();
    let id = str_of(&seeders[0].json(&["fs", "add", path(&src)]), "id");
    let add = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let sha = Command::new("sha1sum").arg(&src).output();
    let sha_rate = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    match sha {
        Ok(o) if o.status.success() => row(
            &format!("fs add: parts, SHA-1, store ({mib} MiB)"),
            add,
            "sha1sum (hash only)",
            sha_rate,
            "MB/s",
        ),
        _ => single(&format!("fs add ({mib} MiB)"), add, "MB/s"),
    }
    for s in &seeders[1..] {
        s.json(&["fs", "add", path(&src)]);
    }
    await_seeders(&d, &id, 3);

    // Channels opened by a warm-up; paid with the miner running; then,
    // the miner stopped, free and paid in turns.
    let price = |p: &str| {
        for s in &seeders {
            s.json(&["fs", "seed", &id, "--price", p]);
        }
    };
    let warm = warm_up(&seeders, &d, work.path());
    let paid_mining = warm.is_ok().then(|| {
        price(PRICE);
        get(&d, &id, work.path(), "paid-mining")
    });
    miner.stop_node();
    // Free and paid take turns, three passes each, and each figure is the
    // median pass: passes move by a third from one to the next on this
    // machine.
    let (mut frees, mut paids) = (Vec::new(), Vec::new());
    for pass in 0..PASSES {
        price("0");
        frees.push(get(&d, &id, work.path(), &format!("free-{pass}")));
        if warm.is_ok() {
            price(PRICE);
            paids.push(get(&d, &id, work.path(), &format!("paid-{pass}")));
        }
    }
    let free = median(frees);
    let paid = match warm {
        Err(why) => {
            println!("  (paid download skipped: {why})");
            None
        }
        Ok(()) => Some(median(paids)),
    };

    // The anchor: nginx and aria2c on the same file.
    let nginx = Nginx::start(work.path());
    let aria = |url: &str| aria2(url, work.path());
    let http_ours = {
        let http = str_of(&seeders[0].json(&["fs", "status"]), "http");
        aria(&format!("http://{http}/file/{id}"))
    };
    let anchor = nginx
        .as_ref()
        .and_then(|n| aria(&format!("http://127.0.0.1:{}/data.bin", n.port)));
    let (ours, label) = match &paid {
        Some(p) => (p.rate, "paid per part"),
        None => (free.rate, "free"),
    };
    match anchor {
        Some(a) => {
            row(
                &format!("get {mib} MiB from 3 seeders, {label}"),
                ours,
                "aria2c -x4 <- nginx",
                a,
                "MB/s",
            );
            if let Some(p) = &paid_mining {
                row(
                    "  the same, the miner running on this box",
                    p.rate,
                    "aria2c -x4 <- nginx",
                    a,
                    "MB/s",
                );
            }
            if let Some(h) = http_ours {
                row(
                    "our HTTP serving, aria2c -x4",
                    h,
                    "nginx, aria2c -x4",
                    a,
                    "MB/s",
                );
            }
        }
        None => {
            single(
                &format!("get {mib} MiB from 3 seeders, {label}"),
                ours,
                "MB/s",
            );
            println!("  (anchor skipped: needs nginx and aria2c; scripts/bench.sh installs them)");
        }
    }
    if let Some(p) = &paid {
        row(
            "paying per part: paid vs free",
            p.rate,
            "free",
            free.rate,
            "MB/s",
        );
    }
    single(
        "  discovery and offers before the first part",
        free.found_ms,
        "ms",
    );
    single(
        "  endgame copies (of parts fetched)",
        free.duplicates as f64,
        "parts",
    );
}

struct Got {
    rate: f64,
    found_ms: f64,
    duplicates: u64,
}

/// The pass with the median rate.
fn median(mut passes: Vec<Got>) -> Got {
    passes.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    passes.swap_remove(passes.len() / 2)
}

/// Downloads `id` into the downloader's store and returns its rate; the
/// copy and the store's parts are removed again.
fn get(d: &TestHome, id: &str, dir: &Path, label: &str) -> Got {
    let out = dir.join(format!("out-{label}"));
    // Every pass, ours and the anchor's, starts on a synced disk: the
    // gigabytes `fs add` and earlier passes wrote would otherwise be
    // written back during whichever pass came next.
    nix::unistd::sync();
    let v = d.json(&["fs", "get", id, "-o", path(&out)]);
    let _ = std::fs::remove_file(&out);
    d.ok(&["fs", "rm", id]);
    let ms = v["elapsed_ms"].as_f64().unwrap_or(1.0).max(1.0);
    Got {
        rate: v["length"].as_f64().unwrap_or(0.0) / ms / 1e3,
        found_ms: v["found_ms"].as_f64().unwrap_or(0.0),
        duplicates: v["duplicate_parts"].as_u64().unwrap_or(0),
    }
}

/// A small paid download from every seeder, so their channels exist.
fn warm_up(seeders: &[TestHome], d: &TestHome, dir: &Path) -> Result<(), String> {
    let small = dir.join("warm.bin");
    write_random(&small, 8 << 20);
    let mut id = String::new();
    for s in seeders {
        id = str_of(
            &s.json(&["fs", "add", path(&small), "--price", PRICE]),
            "id",
        );
    }
    await_seeders(d, &id, seeders.len());
    let out = dir.join("warm.out");
    let o = d.run(&["fs", "get", &id, "-o", path(&out), "--json"]);
    let _ = std::fs::remove_file(&out);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    d.ok(&["fs", "rm", &id]);
    Ok(())
}

fn await_seeders(d: &TestHome, id: &str, n: usize) {
    wait_until(Duration::from_secs(60), "seeders to be found", || {
        d.json(&["fs", "info", id])["seeders"]
            .as_array()
            .is_some_and(|s| s.iter().filter(|o| o["error"].is_null()).count() >= n)
    });
}

/// MB/s of `aria2c -x4` fetching `url` (None if it cannot run).
fn aria2(url: &str, dir: &Path) -> Option<f64> {
    let out = dir.join("aria.out");
    let _ = std::fs::remove_file(&out);
    nix::unistd::sync();
    let t = Instant::now();
    let status = Command::new("aria2c")
        .args([
            "-x4",
            "-s4",
            "--file-allocation=none",
            "--allow-overwrite=true",
        ])
        .args(["--quiet=true", "--check-certificate=false", "-d"])
        .arg(dir)
        .args(["-o", "aria.out", url])
        .status()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let len = std::fs::metadata(&out).ok()?.len();
    let _ = std::fs::remove_file(&out);
    status.success().then(|| len as f64 / secs / 1e6)
}

/// A private nginx serving `root` on a free loopback port.
pub(crate) struct Nginx {
    child: Child,
    pub(crate) port: u16,
}

impl Nginx {
    pub(crate) fn start(root: &Path) -> Option<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let prefix = root.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).ok()?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 2; error_log {p}/logs/error.log; pid {p}/nginx.pid;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {p}; proxy_temp_path {p}; fastcgi_temp_path {p}; uwsgi_temp_path {p}; scgi_temp_path {p};
  server {{ listen 127.0.0.1:{port}; root {r}; }} }}
",
                p = prefix.display(),
                r = root.display()
            ),
        )
        .ok()?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&prefix)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let up = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let n = Nginx { child, port };
        up.then_some(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its workers; SIGKILL would leave
        // them running, holding the port and this process's stdout.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub(crate) fn write_random(p: &Path, len: usize) {
    let mut f = std::fs::File::create(p).expect("create");
    let mut rnd = std::fs::File::open("/dev/urandom").expect("urandom");
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        std::io::Read::read_exact(&mut rnd, &mut buf[..n]).expect("urandom");
        std::io::Write::write_all(&mut f, &buf[..n]).expect("write");
        left -= n;
    }
}

pub(crate) fn beside_exe(name: &str) -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp paths")
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}
