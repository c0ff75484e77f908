//! A market on one fast chain for end-to-end tests: a miner, publishers
//! and providers as real processes, and what tests read off them (VMs,
//! contracts, channels, claims on chain).

use std::time::Duration;

use serde_json::Value;

use crate::{TestHome, amount, homes_on_one_chain, set_config, wait_until};

/// A market on one fast chain: a miner, then publishers, then providers
/// (each with the image built and a node identity).
pub struct Market {
    pub miner: TestHome,
    pub publishers: Vec<TestHome>,
    pub providers: Vec<TestHome>,
    pub image_hash: String,
}

impl Market {
    pub fn start(
        publishers: usize,
        providers: usize,
        provider_config: &[(&str, &str, &str)],
    ) -> Market {
        let mut homes = homes_on_one_chain(1 + publishers + providers);
        let mut miner = homes.remove(0);
        let mut pubs: Vec<TestHome> = homes.drain(..publishers).collect();
        let mut provs: Vec<TestHome> = homes;
        miner.start_node(&["--mine", "--listen", "/ip4/127.0.0.1/tcp/0"]);
        let boot = miner.p2p_addr();
        for p in &mut pubs {
            set_config(p, "publisher", "ssh_listen", "\"127.0.0.1:0\"");
            start_in_market(p, "--publish", &boot);
            fund(&miner, p, "100000000000000");
            p.ok(&["id", "mine", "--role", "publisher", "--threads", "1"]);
        }
        let mut image_hash = String::new();
        for p in &mut provs {
            image_hash = p.json(&["image", "build"])["hash"]
                .as_str()
                .unwrap()
                .to_string();
            for (table, key, value) in provider_config {
                set_config(p, table, key, value);
            }
            start_in_market(p, "--provide", &boot);
            fund(&miner, p, "1000000000");
            p.ok(&["id", "mine", "--role", "node", "--threads", "1"]);
        }
        for h in pubs.iter().chain(provs.iter()) {
            let addr = h.address();
            wait_until(Duration::from_secs(60), "identity registration", || {
                api_get(&miner, &format!("/v1/identities/{addr}"))
                    .is_some_and(|v| !v["publisher"].is_null() || !v["node"].is_null())
            });
        }
        Market {
            miner,
            publishers: pubs,
            providers: provs,
            image_hash,
        }
    }

    /// Keeps publisher `i`'s SSH server on the endpoint it announced from
    /// now on (it is on chain), so a restart listens there again.
    pub fn pin_ssh_endpoint(&self, i: usize) {
        let p = &self.publishers[i];
        let endpoint = api_get(p, "/v1/publisher").unwrap()["endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        set_config(p, "publisher", "ssh_listen", &format!("{endpoint:?}"));
    }

    /// Announces a task from `publisher` and waits until it is mined.
    pub fn announce(&self, publisher: usize, instances: u32, interval: i32, extra: &str) -> String {
        let p = &self.publishers[publisher];
        let file = p.dir.join(format!("task-{}.toml", rand_suffix()));
        std::fs::write(
            &file,
            format!(
                r#"images = [{{ id = "zennet-tiny", hash = "{hash}" }}]
cores = [1]
memory_mib_per_core = 192
min_instances = 1
max_instances = {instances}
lease_max_secs = 1800
payout_interval_secs = {interval}
acceptance_window = 400
acceptance_difficulty = 500
{extra}
[rates]
per_compute_unit_second = "1000"
per_memory_gib_hour = "3600000"
base_per_second = "10"
"#,
                hash = self.image_hash
            ),
        )
        .unwrap();
        let task = p.json(&["task", "announce", file.to_str().unwrap()])["hash"]
            .as_str()
            .unwrap()
            .to_string();
        wait_until(
            Duration::from_secs(60),
            "the announcement to be mined",
            || p.run(&["task", "show", &task]).status.success(),
        );
        task
    }
}

/// Starts (or restarts) a market node: `role` is `--publish` or
/// `--provide`, `boot` the miner's address.
pub fn start_in_market(home: &mut TestHome, role: &str, boot: &str) {
    home.start_node(&[
        role,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        boot,
    ]);
}

pub fn fund(miner: &TestHome, to: &TestHome, sum: &str) {
    miner.ok(&["wallet", "send", &to.address(), sum, "--wait"]);
    // The funded node must have synced the block before it spends.
    wait_until(
        Duration::from_secs(30),
        "the funds to reach the node",
        || amount(&to.json(&["wallet", "balance"])["balance"]) > 0,
    );
}

/// GET on a home's node API.
pub fn api_get(home: &TestHome, path: &str) -> Option<Value> {
    let node: Value =
        serde_json::from_slice(&std::fs::read(home.dir.join("node.json")).ok()?).ok()?;
    let url = format!("http://{}{path}", node["api"].as_str()?);
    let token = std::fs::read_to_string(home.dir.join("api_token")).ok()?;
    let resp = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(token.trim())
        .send()
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().ok()
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn vms_of(publisher: &TestHome, task: &str) -> Vec<Value> {
    publisher
        .json(&["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["task"] == task)
        .cloned()
        .collect()
}

pub fn contract(provider: &TestHome, task: &str) -> Option<Value> {
    provider
        .json(&["agent", "status"])
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["task"] == task)
        .cloned()
}

/// Waits until `task` has `n` connected, running VMs at `publisher`.
pub fn wait_running(publisher: &TestHome, task: &str, n: usize) -> Vec<Value> {
    wait_until(
        Duration::from_secs(240),
        "VMs running behind their tunnels",
        || {
            vms_of(publisher, task)
                .iter()
                .filter(|v| {
                    v["connected"] == true && v["phase"] == "running" && !v["ssh_port"].is_null()
                })
                .count()
                == n
        },
    );
    vms_of(publisher, task)
}

pub fn channel_closed(miner: &TestHome, channel: &str) -> bool {
    api_get(miner, &format!("/v1/channels/{channel}")).is_none()
}

/// Sum of claims and closes paid out of `channel` on chain: the last
/// cumulative the payee submitted.
pub fn claimed_on_chain(provider: &TestHome, c: &Value) -> u128 {
    let mut claimed = 0;
    let txs = c["claim_txs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&c["close_tx"]));
    for tx in txs.filter(|t| !t.is_null()) {
        let v = provider.json(&["chain", "tx", tx.as_str().unwrap()]);
        let body = &v["tx"]["body"];
        let kind = body["type"].as_str().unwrap_or_default();
        let voucher = &body["voucher"];
        if (kind == "channel_claim" || kind == "channel_close") && !voucher.is_null() {
            claimed = claimed.max(amount(&voucher["voucher"]["cumulative"]));
        }
    }
    claimed
}

/// A webhook receiver: a local HTTP server that keeps every JSON body
/// POSTed to it (what an operator's alert hook would get).
pub struct Webhook {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    kept.lock().unwrap().push(v);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { url, bodies }
    }

    /// Every body received so far.
    pub fn received(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A home's `/metrics` text (with its token).
pub fn metrics(home: &TestHome) -> String {
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", home.api()))
        .bearer_auth(home.api_token())
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "/metrics: {}", resp.status());
    resp.text().unwrap()
}

/// The value of `name` in Prometheus text whose labels include every one
/// of `labels` (`key="value"` pairs).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Headless Chromium (Debian's) with a profile of its own, so a login's
/// session cookie carries from one page to the next.
pub struct Browser {
    profile: tempfile::TempDir,
}

impl Default for Browser {
    fn default() -> Browser {
        Browser {
            profile: tempfile::tempdir().unwrap(),
        }
    }
}

impl Browser {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .output()
            .expect("chromium runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "chromium {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The page's DOM after it loaded (redirects followed).
    pub fn dom(&self, url: &str) -> String {
        String::from_utf8_lossy(&self.run(&["--dump-dom", url]).stdout).into_owned()
    }

    /// A screenshot of the page into `path` (PNG).
    pub fn screenshot(&self, url: &str, path: &std::path::Path) {
        let shot = format!("--screenshot={}", path.display());
        self.run(&["--window-size=1280,1400", &shot, url]);
        assert!(path.exists(), "no screenshot at {}", path.display());
    }
}

/// The text of the cell of class `class` in the table row that has
/// `key="value"` (`data-task`, `data-vm`).
pub fn cell(dom: &str, key: &str, value: &str, class: &str) -> Option<String> {
    let start = dom.find(&format!("{key}=\"{value}\""))?;
    let row = &dom[start..start + dom[start..].find("</tr>")?];
    let at = row.find(&format!("class=\"{class}\""))?;
    let text = &row[at..];
    let text = &text[text.find('>')? + 1..];
    Some(text[..text.find('<')?].trim().to_string())
}
