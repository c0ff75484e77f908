//! Harness for end-to-end tests: builds the real `zennet` binary once and
//! runs it as separate processes against homes in temporary directories.
//!
//! * this file: [`TestHome`] (one home, its node process, its CLI), one
//!   fast chain for many homes, waiting, config edits, fake peers.
//! * [`market`]: a miner, publishers and providers on one chain, and what
//!   tests read off them (VMs, contracts, channels, claims on chain), and
//!   a headless browser.
//! * [`files`]: random files, seeders found, a node's stored parts.
//! * [`compile_spark_app`]: the Spark primes application, as a jar.

pub mod files;
pub mod market;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path to the `zennet` binary, built (debug) on first use.
pub fn zennet_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ZENNET_BIN") {
            return PathBuf::from(p);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "zennet-cli", "--bin", "zennet"])
            .current_dir(&workspace)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building zennet failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        target.join("debug").join("zennet")
    })
}

/// One zennet home and the node processes run on it.
pub struct TestHome {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    node: Option<Child>,
}

impl TestHome {
    pub fn new() -> TestHome {
        // ZENNET_E2E_KEEP=1 keeps every home (and its node.log) for a
        // post-mortem of a failed run.
        let temp = tempfile::Builder::new()
            .prefix("zennet-e2e-")
            .disable_cleanup(std::env::var_os("ZENNET_E2E_KEEP").is_some())
            .tempdir()
            .unwrap();
        TestHome {
            dir: temp.path().join("home"),
            _temp: Some(temp),
            node: None,
        }
    }

    /// Runs `zennet --home DIR ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(zennet_bin())
            .arg("--home")
            .arg(&self.dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("zennet runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "zennet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a `--json` command that must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// Runs a command that must fail; returns its stderr, which must be one line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "zennet {args:?} should have failed");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "error is not one line: {err:?}"
        );
        err
    }

    /// Whether this home is on the embedded dev chain (`init --genesis dev`).
    fn on_embedded_dev_chain(&self) -> bool {
        let dev = zennet_chain::Genesis::dev(zennet_chain::Address::ZERO, 0).name;
        zennet_chain::Genesis::load(&self.dir.join("genesis.toml")).is_ok_and(|g| g.name == dev)
    }

    /// Starts `zennet node run EXTRA...` in the background and waits for its API.
    pub fn start_node(&mut self, extra: &[&str]) {
        assert!(self.node.is_none(), "a node is already running");
        let _ = std::fs::remove_file(self.dir.join("node.json"));
        // A test chain's miner hashes a quarter of the time: the difficulty
        // follows the hash rate, so blocks still come at the chain's pace,
        // and the VMs and nodes beside it keep the cores (a test may choose
        // another). Not on the embedded dev chain: its difficulty starts
        // where a whole core finds a block every 2 s, so a quarter of one
        // takes four times as long until it has come down.
        if extra.contains(&"--mine") && !self.on_embedded_dev_chain() {
            let config: toml::Table = std::fs::read_to_string(self.dir.join("config.toml"))
                .unwrap()
                .parse()
                .unwrap();
            let share = config
                .get("node")
                .and_then(|n| n.get("mining_cpu_percent"))
                .and_then(toml::Value::as_integer);
            if share.is_none_or(|s| s == 100) {
                set_config(self, "node", "mining_cpu_percent", "25");
            }
        }
        let log = std::fs::File::create(self.dir.join("node.log")).unwrap();
        let child = Command::new(zennet_bin())
            .arg("--home")
            .arg(&self.dir)
            .args(["node", "run"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.node = Some(child);
        // A first --provide start on a host probes KVM with a canary (up to 25 s).
        wait_until(Duration::from_secs(90), "the node API", || {
            self.dir.join("node.json").exists() && self.run(&["chain", "info"]).status.success()
        });
    }

    /// SIGKILLs the node: no cleanup runs.
    pub fn kill_node(&mut self) {
        let mut child = self.node.take().expect("a node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERMs the node and waits for a clean exit.
    pub fn stop_node(&mut self) {
        let mut child = self.node.take().expect("a node is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "node exited with {status}");
    }

    /// The node's first listen multiaddr (with /p2p/), for `--bootstrap`.
    pub fn p2p_addr(&self) -> String {
        self.json(&["node", "info"])["listen"][0]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// (height, tip, state root) as the node reports them.
    pub fn tip(&self) -> (u64, String, String) {
        let info = self.json(&["chain", "info"]);
        (
            info["height"].as_u64().unwrap(),
            info["tip"].as_str().unwrap().to_string(),
            info["state_root"].as_str().unwrap().to_string(),
        )
    }

    /// Opens the home's chain database directly (the node must be stopped).
    pub fn open_chain(&self) -> zennet_chain::Chain {
        let genesis = zennet_chain::Genesis::load(&self.dir.join("genesis.toml")).unwrap();
        zennet_chain::Chain::open(&self.dir.join("chain"), genesis).expect("chain database opens")
    }

    pub fn address(&self) -> String {
        self.json(&["wallet", "address"])["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn height(&self) -> u64 {
        self.json(&["chain", "info"])["height"].as_u64().unwrap()
    }

    pub fn node_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// The last `n` lines of the node's log, for a failure message.
    pub fn node_log_tail(&self, n: usize) -> String {
        let log = self.node_log();
        let tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Default for TestHome {
    fn default() -> TestHome {
        TestHome::new()
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A node's VMs outlive it by design; a test's must not outlive the
        // test, passed or failed: every QEMU this home's node ran (a run
        // directory per VM; QEMU is named after the VM) goes too.
        let vms = std::fs::read_dir(self.dir.join("agent").join("vms"));
        for vm in vms.into_iter().flatten().flatten() {
            let id = vm.file_name().to_string_lossy().into_owned();
            let name = format!("zennet-{id},process=");
            let _ = Command::new("pkill").args(["-KILL", "-f", &name]).status();
            // And its network namespace (named after it), which the node
            // would have removed.
            let netns = format!("zennet-{id}");
            if Path::new("/run/netns").join(&netns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &netns]).status();
            }
        }
    }
}

/// A dev chain tuned for tests: ~150 ms blocks, funding `funded`.
pub fn fast_genesis(funded: zennet_chain::Address) -> zennet_chain::Genesis {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut g = zennet_chain::Genesis::dev(funded, now);
    g.name = format!("zennet-test-{now}");
    g.consensus.block_time_ms = 150;
    g.consensus.initial_difficulty = 40;
    g.consensus.min_difficulty = 1;
    g.consensus.difficulty_divisor = 8;
    g
}

/// Homes on one fast test chain: the first is funded, the rest join with
/// `init --genesis FILE` (own keys, not funded).
pub fn homes_on_one_chain(n: usize) -> Vec<TestHome> {
    let first = TestHome::new();
    let address = first.json(&["init"])["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The first home has never run a node, so its genesis can still be replaced.
    let genesis = fast_genesis(address).to_toml();
    std::fs::write(first.dir.join("genesis.toml"), &genesis).unwrap();
    let file = first.dir.parent().unwrap().join("genesis.toml");
    std::fs::write(&file, &genesis).unwrap();
    let mut homes = vec![first];
    for _ in 1..n {
        let h = TestHome::new();
        h.ok(&["init", "--genesis", file.to_str().unwrap()]);
        homes.push(h);
    }
    homes
}

/// Polls `cond` until it holds, panicking with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets `[table] key = value` (TOML value syntax) in a home's config.toml.
pub fn set_config(home: &TestHome, table: &str, key: &str, value: &str) {
    let path = home.dir.join("config.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let parsed: toml::Table = format!("v = {value}").parse().unwrap();
    config
        .entry(table)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap()
        .insert(key.into(), parsed["v"].clone());
    std::fs::write(path, toml::to_string(&config).unwrap()).unwrap();
}

/// A JSON amount (decimal string) as a number.
pub fn amount(v: &Value) -> u128 {
    v.as_str().expect("amounts are strings").parse().unwrap()
}

impl TestHome {
    /// The home's secret key (the node's chain key).
    pub fn secret_key(&self) -> zennet_chain::SecretKey {
        let text = std::fs::read_to_string(self.dir.join("key")).unwrap();
        zennet_chain::SecretKey::from_bytes(&hex::decode(text.trim()).unwrap()).unwrap()
    }

    /// The running node's API base URL.
    pub fn api(&self) -> String {
        let node: Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("node.json")).unwrap())
                .unwrap();
        format!("http://{}", node["api"].as_str().unwrap())
    }

    /// The node API's bearer token (`HOME/api_token`).
    pub fn api_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("api_token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A fresh home on `genesis` (its own key, whatever the genesis funds).
    pub fn on_genesis(genesis: &zennet_chain::Genesis) -> TestHome {
        let h = TestHome::new();
        let file = h.dir.parent().unwrap().join("genesis.toml");
        std::fs::write(&file, genesis.to_toml()).unwrap();
        h.ok(&["init", "--genesis", file.to_str().unwrap()]);
        h
    }
}

/// A libp2p peer run by the test itself, answering sync requests with
/// whatever `respond` says: the adversary of the network tests.
pub struct FakePeer {
    pub net: zennet_net::NetHandle,
    pub runtime: tokio::runtime::Runtime,
}

impl FakePeer {
    pub fn start(
        genesis: zennet_chain::Hash,
        bootstrap: &str,
        respond: impl Fn(zennet_net::SyncRequest) -> zennet_net::SyncResponse + Send + Sync + 'static,
    ) -> FakePeer {
        use zennet_net::{NetConfig, NetEvent, Network, Verdict};
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bootstrap: zennet_net::Multiaddr = bootstrap.parse().unwrap();
        let net = runtime.block_on(async {
            let (net, mut events) = Network::start(NetConfig {
                secret: zennet_chain::SecretKey::generate(),
                genesis,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: vec![bootstrap],
                max_peers: 10,
            })
            .await
            .unwrap();
            let handle = net.clone();
            let respond = std::sync::Arc::new(respond);
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    match e {
                        NetEvent::Request { id, request, .. } => {
                            let (respond, handle) = (respond.clone(), handle.clone());
                            tokio::task::spawn_blocking(move || {
                                handle.respond(id, respond(request))
                            });
                        }
                        NetEvent::Block {
                            source, message_id, ..
                        }
                        | NetEvent::Tx {
                            source, message_id, ..
                        } => handle.validate(message_id, source, Verdict::Ignore),
                        _ => {}
                    }
                }
            });
            net
        });
        FakePeer { net, runtime }
    }

    pub fn peer_id(&self) -> String {
        self.net.local_peer_id.to_string()
    }

    /// Its listen multiaddr (with /p2p/), for `--bootstrap`.
    pub fn addr(&self) -> String {
        self.runtime
            .block_on(self.net.listen_addrs())
            .unwrap()
            .remove(0)
            .to_string()
    }

    /// Waits until the peer has a connection (and gossipsub has had time to
    /// exchange subscriptions).
    pub fn wait_connected(&self) {
        let net = self.net.clone();
        wait_until(Duration::from_secs(20), "the fake peer to connect", || {
            !self.runtime.block_on(net.peers()).unwrap().is_empty()
        });
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Whether `home`'s node lists `peer` among its connections.
pub fn lists_peer(home: &TestHome, peer: &str) -> bool {
    home.json(&["node", "peers"])
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["peer_id"] == peer)
}

/// Writes a chain of `blocks` blocks into `home`'s database in-process,
/// with the testkit's cheap seals and a mix of every transaction kind
/// (funded by `keys` in `genesis`); returns it still open.
pub fn build_chain(
    home: &TestHome,
    genesis: &zennet_chain::Genesis,
    keys: Vec<zennet_chain::SecretKey>,
    blocks: u64,
) -> zennet_chain::Chain {
    build_chain_sparse(home, genesis, keys, blocks, 1)
}

/// [`build_chain`] with transactions in every `every`-th block only (a
/// long chain is built faster; empty blocks cost one Ethash hash each).
pub fn build_chain_sparse(
    home: &TestHome,
    genesis: &zennet_chain::Genesis,
    keys: Vec<zennet_chain::SecretKey>,
    blocks: u64,
    every: u64,
) -> zennet_chain::Chain {
    std::fs::write(home.dir.join("genesis.toml"), genesis.to_toml()).unwrap();
    let mut chain = zennet_chain::Chain::open(&home.dir.join("chain"), genesis.clone()).unwrap();
    let mut activity = zennet_chain::testkit::Activity::new(keys);
    let miner = zennet_chain::SecretKey::generate().address();
    for i in 0..blocks {
        if i % every == 0 {
            activity.submit(&mut chain);
        }
        zennet_chain::testkit::mine(&mut chain, miner);
    }
    chain
}

/// Runs promtool with `args` and `stdin`; panics with its output on failure.
pub fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup.sh installs prometheus)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// Compiles the Spark primes application (`cli/assets/jobs/Primes.java`,
/// what `zennet devnet --job spark` runs) with the JDK against Spark's
/// `jars` into `dir/primes.jar`.
pub fn compile_spark_app(dir: &Path, jars: &Path) -> PathBuf {
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let source = dir.join("Primes.java");
    std::fs::write(&source, include_str!("../../cli/assets/jobs/Primes.java")).unwrap();
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("javac")
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg("-d")
        .arg(&classes)
        .arg(&source));
    let jar = dir.join("primes.jar");
    ok(Command::new("jar")
        .arg("cf")
        .arg(&jar)
        .arg("-C")
        .arg(&classes)
        .arg("."));
    jar
}
