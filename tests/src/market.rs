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
        Market::start_with_images(publishers, providers, provider_config, &[])
    }

    /// [`Market::start`], with more built images (directories, linked by
    /// their id) on every provider before its node starts (a node lists
    /// its images when it starts).
    pub fn start_with_images(
        publishers: usize,
        providers: usize,
        provider_config: &[(&str, &str, &str)],
        images: &[&zennet_images::Image],
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
            for image in images {
                std::os::unix::fs::symlink(
                    &image.dir,
                    p.dir.join("images").join(&image.manifest.id),
                )
                .unwrap();
            }
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

    /// Announces a task of `zennet-tiny` VMs from `publisher` and waits
    /// until it is mined.
    pub fn announce(&self, publisher: usize, instances: u32, interval: i32, extra: &str) -> String {
        let image = (
            zennet_images::DEFAULT_IMAGE_ID,
            self.image_hash.as_str(),
            192,
        );
        self.announce_image(publisher, image, instances, interval, extra)
    }

    /// Announces a task of 1-core VMs of `image` (id, manifest hash, MiB)
    /// from `publisher` and waits until it is mined.
    pub fn announce_image(
        &self,
        publisher: usize,
        (id, hash, memory_mib): (&str, &str, u32),
        instances: u32,
        interval: i32,
        extra: &str,
    ) -> String {
        let p = &self.publishers[publisher];
        let file = p.dir.join(format!("task-{}.toml", rand_suffix()));
        std::fs::write(
            &file,
            format!(
                r#"images = [{{ id = "{id}", hash = "{hash}" }}]
cores = [1]
memory_mib_per_core = {memory_mib}
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
"#
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

/// Waits until `n` VMs of `task` have their address on the task's
/// private network.
pub fn wait_addressed(publisher: &TestHome, task: &str, n: usize) {
    wait_until(
        Duration::from_secs(120),
        "VMs addressed on the private network",
        || {
            vms_of(publisher, task)
                .iter()
                .filter(|v| !v["lan_address"].is_null())
                .count()
                == n
        },
    );
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
    downloads: Option<std::path::PathBuf>,
}

impl Default for Browser {
    fn default() -> Browser {
        Browser {
            profile: tempfile::tempdir().unwrap(),
            downloads: None,
        }
    }
}

impl Browser {
    /// Saves downloads into `dir` without asking.
    pub fn save_downloads_to(mut self, dir: &std::path::Path) -> Browser {
        std::fs::create_dir_all(dir).unwrap();
        self.downloads = Some(dir.to_path_buf());
        self
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", self.profile.path().display()))
        .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .command(args)
            .output()
            .expect("chromium runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The DOM of `url` once loaded (`--dump-dom`).
    pub fn dom(&self, url: &str) -> String {
        String::from_utf8_lossy(&self.run(&["--dump-dom", url]).stdout).into_owned()
    }

    /// The DOM of `url` once the JavaScript expression `ready` holds there
    /// (polled), up to two minutes. `--dump-dom` cannot wait for a page
    /// that works after loading: `--virtual-time-budget` runs out while
    /// WebCrypto or a Blob read is pending (measured: a page hashing 60 x
    /// 8 MiB was dumped unfinished every time), so this drives Chromium
    /// over the DevTools protocol on a pipe (`--remote-debugging-pipe`).
    pub fn dom_when(&self, url: &str, ready: &str) -> String {
        self.open_when(url, ready).2
    }

    /// A screenshot (PNG) of `url` once `ready` holds there.
    pub fn screenshot_when(&self, url: &str, ready: &str, path: &std::path::Path) {
        use base64::Engine;
        let (mut cdp, session, _) = self.open_when(url, ready);
        cdp.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": 1280, "height": 1400, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = cdp.call(
            Some(&session),
            "Page.captureScreenshot",
            serde_json::json!({}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Chromium on `url` once `ready` holds there: the session and the DOM.
    fn open_when(&self, url: &str, ready: &str) -> (Cdp, String, String) {
        let mut cdp = Cdp::start(self.command(&["--remote-debugging-pipe", "about:blank"]));
        if let Some(dir) = &self.downloads {
            cdp.call(
                None,
                "Browser.setDownloadBehavior",
                serde_json::json!({"behavior": "allow", "downloadPath": dir}),
            );
        }
        let target = cdp.call(None, "Target.createTarget", serde_json::json!({"url": url}));
        let session = cdp.call(
            None,
            "Target.attachToTarget",
            serde_json::json!({"targetId": target["targetId"], "flatten": true}),
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let start = std::time::Instant::now();
        // `ready` throws on a page without what it reads (about:blank).
        let expression = format!("({ready}) ? document.documentElement.outerHTML : null");
        loop {
            let r = cdp.call(
                Some(&session),
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true}),
            );
            if let Some(dom) = r["result"]["value"].as_str() {
                return (cdp, session, dom.to_string());
            }
            if start.elapsed() > Duration::from_secs(120) {
                let now = cdp.call(
                    Some(&session),
                    "Runtime.evaluate",
                    serde_json::json!({"expression": "document.documentElement.outerHTML", "returnByValue": true}),
                );
                panic!(
                    "{url} never came to `{ready}`; the page: {}",
                    now["result"]["value"]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Browser::dom_when`], then waits until the page's download of
    /// `len` bytes is saved as `saved` (see [`Browser::save_downloads_to`]).
    pub fn dom_saving(&self, url: &str, ready: &str, saved: &std::path::Path, len: u64) -> String {
        let dom = self.dom_when(url, ready);
        let dir = saved.parent().unwrap();
        let downloading = || {
            std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.any(|e| e.unwrap().path().extension() == Some("crdownload".as_ref()))
            })
        };
        wait_until(Duration::from_secs(60), "chromium to save the file", || {
            std::fs::metadata(saved).is_ok_and(|m| m.len() == len) && !downloading()
        });
        dom
    }

    /// A screenshot of the page into `path` (PNG).
    pub fn screenshot(&self, url: &str, path: &std::path::Path) {
        let shot = format!("--screenshot={}", path.display());
        self.run(&["--window-size=1280,1400", &shot, url]);
        assert!(path.exists(), "no screenshot at {}", path.display());
    }
}

/// A Chromium driven over `--remote-debugging-pipe`: it reads commands on
/// fd 3 and writes answers and events on fd 4, each JSON ended by a NUL.
struct Cdp {
    child: std::process::Child,
    to: std::io::PipeWriter,
    answers: std::sync::mpsc::Receiver<serde_json::Value>,
    next: u64,
}

impl Cdp {
    fn start(mut cmd: std::process::Command) -> Cdp {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (their_in, to) = std::io::pipe().unwrap();
        let (from, their_out) = std::io::pipe().unwrap();
        let (rin, rout) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        // SAFETY: only fcntl and dup2 (async-signal-safe) between fork and
        // exec. Both ends are first copied above 10, so neither is clobbered
        // by the other's dup2 (or already at 3 or 4 with close-on-exec);
        // the copies at 3 and 4 stay open across exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc::{F_DUPFD_CLOEXEC, dup2, fcntl};
                let high = [
                    fcntl(rin, F_DUPFD_CLOEXEC, 10),
                    fcntl(rout, F_DUPFD_CLOEXEC, 10),
                ];
                for (fd, at) in high.into_iter().zip([3, 4]) {
                    if fd < 0 || dup2(fd, at) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium runs (scripts/setup.sh installs it)");
        drop((their_in, their_out));
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut from = std::io::BufReader::new(from);
            let mut msg = Vec::new();
            while from.read_until(0, &mut msg).is_ok_and(|n| n > 0) {
                msg.pop();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg)
                    && v.get("id").is_some()
                    && tx.send(v).is_err()
                {
                    break;
                }
                msg.clear();
            }
        });
        Cdp {
            child,
            to,
            answers,
            next: 0,
        }
    }

    /// Sends a command and returns its result (panics on an error answer).
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        use std::io::Write;
        self.next += 1;
        let mut msg = serde_json::json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let v = self
                .answers
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if v["id"] == self.next {
                assert!(
                    v.get("error").is_none(),
                    "chromium: {method}: {}",
                    v["error"]
                );
                return v["result"].clone();
            }
        }
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The DevTools pipe drives Chromium through a page that finishes
    /// only after async work that `--virtual-time-budget` does not wait for.
    #[test]
    fn browser_waits_for_a_page_that_works_after_loading() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("p.html");
        std::fs::write(
            &page,
            "<p id=s>working</p><script>(async () => { const b = new Uint8Array(8 << 20); \
             for (let i = 0; i < 20; i++) await crypto.subtle.digest('SHA-256', b); \
             document.getElementById('s').textContent = 'done'; })();</script>",
        )
        .unwrap();
        let dom = Browser::default().dom_when(
            &format!("file://{}", page.display()),
            "document.getElementById('s').textContent === 'done'",
        );
        assert!(dom.contains(">done<"), "{dom}");
    }
}
