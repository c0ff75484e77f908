//! What watching a node costs: a real publisher node with 50 VMs of its
//! tasks in its store (`publisher.db`), and per request, on one keep-alive
//! connection:
//!
//! * the dashboard's publisher page (`/ui/publisher`, a session cookie)
//!   and `/metrics`, each beside the JSON API's list of the same 50 VMs
//!   (`/v1/publisher/vms`) — the same data without the page or the
//!   encoding; both should stay under 50 ms;
//! * the node's CPU over a while with a headless Chromium holding the
//!   dashboard open (it refreshes itself every 10 s), beside the same
//!   while with no browser.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zennet_chain::{Address, Hash};
use zennet_proto::{Usage, VmPhase};
use zennet_publisher::store::{ContractRow, Store, TaskRow};
use zennet_tests::{TestHome, homes_on_one_chain, set_config};

use crate::{row, single};

const VMS: usize = 50;

pub fn run(quick: bool) {
    println!("== ops: dashboard and metrics with {VMS} VMs in the store ==");
    let Some(zennet) = crate::fs::beside_exe("zennet") else {
        println!("  (skipped: build zennet beside zennet-bench; scripts/bench.sh does)");
        return;
    };
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("ZENNET_BIN", &zennet) };
    let mut home = homes_on_one_chain(1).remove(0);
    set_config(&home, "publisher", "ssh_listen", "\"127.0.0.1:0\"");
    fill_store(&home);
    home.start_node(&["--publish"]);
    let api = home.api();
    let token = home.api_token();
    let client = reqwest::blocking::Client::new();
    let cookie = login(&client, &api, &token);

    // What is timed shows all 50 VMs.
    let fetch = |path: &str, auth: (&str, &str)| {
        client
            .get(format!("{api}{path}"))
            .header(auth.0, auth.1)
            .send()
            .and_then(|r| r.text())
            .expect("the node answers")
    };
    let auth = format!("Bearer {token}");
    let count = |text: String, what: &str| text.matches(what).count();
    assert_eq!(
        count(fetch("/ui/publisher", ("cookie", &cookie)), "data-vm="),
        VMS
    );
    assert_eq!(
        count(
            fetch("/v1/publisher/vms", ("authorization", &auth)),
            "\"task\""
        ),
        VMS
    );
    assert_eq!(
        count(
            fetch("/metrics", ("authorization", &auth)),
            "zennet_publisher_vm_paid_total{"
        ),
        VMS
    );

    let n = if quick { 30 } else { 200 };
    let get = |path: &str, auth: &(&str, String)| {
        let mean = time(n, || {
            let resp = client
                .get(format!("{api}{path}"))
                .header(auth.0, &auth.1)
                .send()
                .expect("the node answers");
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            let body = resp.text().expect("a body");
            assert!(body.len() > 1000, "{path}: only {} bytes", body.len());
        });
        mean.as_secs_f64() * 1000.0
    };
    let bearer = ("authorization", format!("Bearer {token}"));
    let json = get("/v1/publisher/vms", &bearer);
    let page = get("/ui/publisher", &("cookie", cookie));
    let metrics = get("/metrics", &bearer);
    row(
        "dashboard publisher page, 50 VMs",
        page,
        "JSON of the same VMs",
        json,
        "ms",
    );
    row(
        "/metrics scrape, 50 VMs",
        metrics,
        "JSON of the same VMs",
        json,
        "ms",
    );

    let pid = node_pid(&home).expect("the node's pid in node.json");
    let span = Duration::from_secs(if quick { 12 } else { 60 });
    let closed = cpu_share(pid, span);
    let profile = tempfile::tempdir().expect("a temp dir");
    let login_url = login_url(&client, &api, &token);
    let mut browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(login_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_secs(3));
    let open = cpu_share(pid, span);
    let _ = browser.kill();
    let _ = browser.wait();
    row(
        "node CPU, dashboard open",
        open * 100.0,
        "dashboard closed",
        closed * 100.0,
        "% core",
    );
    single(
        "  measured over (the page refreshes every 10 s)",
        span.as_secs_f64(),
        "s",
    );
    home.stop_node();
}

/// Five tasks with ten VMs each, as a publisher that ran them would hold.
fn fill_store(home: &TestHome) {
    let dir = home.dir.join("publisher");
    std::fs::create_dir_all(&dir).expect("the publisher dir");
    let store = Store::open(&dir.join("publisher.db")).expect("publisher.db");
    for i in 0..VMS {
        let task = Hash([(i / 10) as u8 + 1; 32]);
        if i % 10 == 0 {
            store
                .put_task(&TaskRow {
                    task,
                    paying: true,
                    storage_paid: false,
                    announced_ms: 0,
                    web_port: None,
                })
                .expect("a task row");
        }
        let mut node = [0u8; 20];
        node[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let mut acceptance = [0xa0u8; 32];
        acceptance[..8].copy_from_slice(&(i as u64).to_be_bytes());
        store
            .put_contract(&ContractRow {
                task,
                node: Address(node),
                acceptance: Hash(acceptance),
                channel: None,
                reported: 1_000_000 + i as u128,
                usage: Usage {
                    wall_ms: 3_600_000,
                    cpu_ms: 1_800_000,
                    memory_mib_secs: 512 * 3600,
                    storage_gib_secs: 0,
                    traffic_bytes: 1 << 20,
                },
                phase: VmPhase::Running,
                host_key: None,
                boot_ms: 9000,
                started_ms: 1,
                ended_ms: None,
                end_reason: None,
                measured_cu: Some(3.0),
                paid_score: 3,
                joined: true,
            })
            .expect("a contract row");
    }
}

/// A one-time dashboard login link, from the API (with the token).
fn login_url(client: &reqwest::blocking::Client, api: &str, token: &str) -> String {
    let code: serde_json::Value = client
        .post(format!("{api}/v1/dashboard/login"))
        .bearer_auth(token)
        .send()
        .and_then(|r| r.json())
        .expect("a login code");
    format!("{api}{}", code["path"].as_str().expect("a path"))
}

/// A dashboard session cookie (`name=value`) from a login link.
fn login(client: &reqwest::blocking::Client, api: &str, token: &str) -> String {
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let resp = no_redirect
        .get(login_url(client, api, token))
        .send()
        .expect("the login answers");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    cookie.split(';').next().expect("name=value").to_string()
}

/// Mean time of `f` over `n` runs, after one warm-up.
fn time(n: u32, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

/// The share of one core process `pid` used over `span`.
fn cpu_share(pid: u64, span: Duration) -> f64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    let used = cpu_ticks(pid) - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    used as f64 / hz / span.as_secs_f64()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the node runs");
    // Fields after the command name (which may hold spaces), from its ')'.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

fn node_pid(home: &TestHome) -> Option<u64> {
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.dir.join("node.json")).ok()?).ok()?;
    node["pid"].as_u64()
}
