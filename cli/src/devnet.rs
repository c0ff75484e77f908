//! `zennet devnet`: the whole market on loopback, in one command.
//!
//! Under a temporary directory it creates homes for a miner, N providers
//! and a publisher on a fresh dev chain (1 s blocks), starts each as its
//! own `zennet node run` process, mines the identities, builds the image,
//! and announces a task for N VMs. The providers' markets accept it, their
//! VMs boot and dial the publisher's SSH server; the publisher counts the
//! primes below a bound, split across the VMs — with `awk` run through the
//! tunnels by `zennet vm exec` (`--job primes`, the default), or on a real
//! engine across the task's private network (`--job spark`, `--job dask`:
//! `zennet job`) — and checks the answer against its own count.
//! Vouchers flow while the job runs; then the publisher cancels the task,
//! every node stops its VM and closes its channel, and the balances on
//! chain must reconcile exactly with the vouchers and the fees.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use zennet_chain::genesis::Allocation;
use zennet_chain::{Address, Amount, Genesis, TxBody};
use zennet_provider::{ContractView as Contract, Phase};
use zennet_publisher::VmView;

use crate::api::{AccountView, AnnounceTask, BlockView, Info, NodeInfo, Submitted, TxView};
use crate::client::Client;
use crate::commands::Output;
use crate::home::Home;
use crate::node::now_ms;

const BLOCK_TIME_MS: u64 = 1_000;
const PUBLISHER_FUNDS: Amount = 1_000_000_000_000_000;
const PROVIDER_FUNDS: Amount = 1_000_000_000;

/// The distributed job a devnet runs: each counts the primes below a bound
/// across the VMs and is checked against the count computed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    /// `awk` in each VM over a share of the range, through `zennet vm exec`
    /// (zennet-tiny; seconds).
    Primes,
    /// `zennet job spark` (zennet-spark VMs of 2 GiB; the master and
    /// driver here; minutes under TCG).
    Spark,
    /// `zennet job dask` (zennet-dask VMs of 1 GiB; the scheduler and
    /// client here).
    Dask,
}

impl Job {
    fn recipe(self) -> zennet_images::Recipe {
        match self {
            Job::Primes => zennet_images::default_recipe(),
            Job::Spark => zennet_images::spark_recipe(),
            Job::Dask => zennet_images::dask_recipe(),
        }
    }
}

pub async fn run(
    root: Option<PathBuf>,
    providers: u32,
    primes_below: u64,
    job: Job,
    keep: bool,
    out: Output,
) -> Result<()> {
    if providers == 0 || providers > 8 {
        bail!("--providers must be 1 to 8");
    }
    let temp = tempfile::Builder::new()
        .prefix("zennet-devnet-")
        .tempdir()?;
    let in_temp = root.is_none();
    let root = root.unwrap_or_else(|| temp.path().to_path_buf());
    let mut net = Devnet {
        root: root.clone(),
        nodes: Vec::new(),
        say: !out.json,
        job,
    };
    let result = net.run(providers, primes_below).await;
    net.shutdown().await;
    if keep {
        // With --home the homes are there already, not in the temp dir.
        if in_temp {
            let _ = temp.keep();
        }
        eprintln!("devnet: homes and logs kept in {}", root.display());
    }
    let summary = result?;
    out.print(&summary, || summary.text());
    if !summary.ok() {
        bail!("devnet finished but its checks failed (see above)");
    }
    Ok(())
}

#[derive(Serialize)]
struct Summary {
    providers: Vec<ProviderSummary>,
    publisher: AccountSummary,
    task: zennet_chain::Hash,
    job: JobSummary,
    /// From the announcement being mined to every VM answering through its tunnel.
    announce_to_all_reachable_ms: u64,
    /// The VMs' addresses on the task's private network, in the order each
    /// pinged the next.
    private_network: Vec<std::net::Ipv4Addr>,
    balances_reconcile: bool,
    blocks: u64,
}

#[derive(Serialize)]
struct ProviderSummary {
    address: Address,
    vm_boot_ms: u64,
    usage: zennet_proto::Usage,
    #[serde(with = "zennet_chain::codec::amount_str")]
    paid: Amount,
    #[serde(with = "zennet_chain::codec::amount_str")]
    claimed_on_chain: Amount,
    account: AccountSummary,
}

#[derive(Serialize)]
struct AccountSummary {
    address: Address,
    #[serde(with = "zennet_chain::codec::amount_str")]
    before: Amount,
    #[serde(with = "zennet_chain::codec::amount_str")]
    after: Amount,
    #[serde(with = "zennet_chain::codec::amount_str")]
    fees: Amount,
}

#[derive(Serialize)]
struct JobSummary {
    kind: Job,
    /// Spark and Dask: from the announcement being mined to every VM's
    /// worker registered with the master (scheduler) here.
    #[serde(skip_serializing_if = "Option::is_none")]
    workers_registered_ms: Option<u64>,
    primes_below: u64,
    answer: u64,
    expected: u64,
    per_vm: Vec<u64>,
    ms: u64,
}

impl Summary {
    fn ok(&self) -> bool {
        self.balances_reconcile && self.job.answer == self.job.expected
    }

    fn text(&self) -> String {
        let mut lines = vec![format!(
            "devnet: {} primes below {} counted across {} VMs in {} ms (expected {}), all VMs reachable {} ms after the announcement was mined",
            self.job.answer,
            self.job.primes_below,
            self.providers.len(),
            self.job.ms,
            self.job.expected,
            self.announce_to_all_reachable_ms
        )];
        if let Some(ms) = self.job.workers_registered_ms {
            lines.push(format!(
                "{:?}: every VM's worker registered {ms} ms after the announcement was mined",
                self.job.kind
            ));
        }
        if self.private_network.len() > 1 {
            lines.push(format!(
                "private network: {} reach each other over the publisher's switch",
                self.private_network
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for p in &self.providers {
            lines.push(format!(
                "provider {}: VM ready in {} ms, cpu {} ms over {} s, paid {} (claimed {}), balance {} -> {} (fees {})",
                p.address,
                p.vm_boot_ms,
                p.usage.cpu_ms,
                p.usage.wall_ms / 1000,
                p.paid,
                p.claimed_on_chain,
                p.account.before,
                p.account.after,
                p.account.fees
            ));
        }
        lines.push(format!(
            "publisher {}: balance {} -> {} (fees {}); balances reconcile: {}",
            self.publisher.address,
            self.publisher.before,
            self.publisher.after,
            self.publisher.fees,
            self.balances_reconcile
        ));
        lines.join("\n")
    }
}

struct NodeProc {
    home: Home,
    child: tokio::process::Child,
    api: Client,
    address: Address,
}

/// A check's verdict that waiting longer cannot change.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

struct Devnet {
    root: PathBuf,
    nodes: Vec<NodeProc>,
    say: bool,
    job: Job,
}

impl Devnet {
    async fn run(&mut self, providers: u32, primes_below: u64) -> Result<Summary> {
        // Homes: 0 miner, 1 publisher, 2.. providers; one genesis for all.
        let mut names = vec!["miner".to_string(), "publisher".to_string()];
        names.extend((1..=providers).map(|i| format!("provider-{i}")));
        let mut homes = Vec::new();
        for name in &names {
            let home = Home::locate(Some(self.root.join(name)))?;
            let key = home.init(|k| Ok(Genesis::dev(k.address(), now_ms())))?;
            homes.push((home, key.address()));
        }
        let mut genesis = Genesis::dev(homes[0].1, now_ms());
        genesis.consensus.block_time_ms = BLOCK_TIME_MS;
        genesis.alloc.push(Allocation {
            address: homes[1].1,
            balance: PUBLISHER_FUNDS,
        });
        for (_, addr) in &homes[2..] {
            genesis.alloc.push(Allocation {
                address: *addr,
                balance: PROVIDER_FUNDS,
            });
        }
        for (home, _) in &homes {
            crate::home::write_atomic(&home.genesis_path(), genesis.to_toml().as_bytes(), 0o644)?;
        }
        let mut publisher_config = homes[1].0.config()?;
        publisher_config.publisher.ssh_listen = "127.0.0.1:0".into();
        write_config(&homes[1].0, &publisher_config)?;

        self.step("building the VM image (cached after the first run)");
        let image_dir = image_cache(&self.root);
        let image = tokio::task::spawn_blocking({
            let (dir, recipe) = (image_dir.clone(), self.job.recipe());
            move || zennet_images::build(&recipe, &dir)
        })
        .await??;
        for (home, _) in &homes[1..] {
            std::os::unix::fs::symlink(&image_dir, home.images_dir())?;
        }

        self.step("starting the miner, the publisher and the providers");
        let (miner_home, miner_addr) = homes.remove(0);
        self.spawn("miner", miner_home, miner_addr, &["--mine"], None)
            .await?;
        let miner_info: NodeInfo = self.nodes[0].api.get("/v1/node").await?;
        let bootstrap = miner_info
            .listen
            .first()
            .context("the miner listens nowhere")?
            .clone();
        let (publisher_home, publisher_addr) = homes.remove(0);
        self.spawn(
            "publisher",
            publisher_home,
            publisher_addr,
            &["--publish"],
            Some(&bootstrap),
        )
        .await?;
        for (i, (home, addr)) in homes.into_iter().enumerate() {
            self.spawn(
                &format!("provider-{}", i + 1),
                home,
                addr,
                &["--provide"],
                Some(&bootstrap),
            )
            .await?;
        }
        self.play(providers, primes_below, &image).await
    }

    /// Everything after the nodes are up.
    async fn play(
        &self,
        providers: u32,
        primes_below: u64,
        image: &zennet_images::Image,
    ) -> Result<Summary> {
        self.step("mining identities (publisher and nodes)");
        let mut ids = Vec::new();
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            let role = if i == 1 { "publisher" } else { "node" };
            ids.push(
                tokio::process::Command::new(std::env::current_exe()?)
                    .arg("--home")
                    .arg(n.home.dir())
                    .args(["--json", "id", "mine", "--role", role, "--threads", "1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output(),
            );
        }
        for o in futures::future::join_all(ids).await {
            let o: std::process::Output = o?;
            if !o.status.success() {
                bail!(
                    "identity mining failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        for n in &self.nodes[1..] {
            let addr = n.address;
            self.wait(
                "identity registration",
                Duration::from_secs(120),
                || async move {
                    let v: serde_json::Value = self.nodes[0]
                        .api
                        .get(&format!("/v1/identities/{addr}"))
                        .await?;
                    Ok(!v["publisher"].is_null() || !v["node"].is_null())
                },
            )
            .await?;
        }

        let before = self.balances().await?;
        let start_height = self.height().await?;
        self.step(&format!("announcing a task for {providers} VMs"));
        let task_file = format!(
            r#"images = [{{ id = "{id}", hash = "{hash}" }}]
cores = [1]
memory_mib_per_core = {memory}
min_instances = {providers}
max_instances = {providers}
lease_max_secs = 1800
payout_interval_secs = 2
acceptance_window = 200
acceptance_difficulty = 1000
info = "zennet devnet: count primes"

[rates]
per_compute_unit_second = "1000"
per_memory_gib_hour = "3600000"
base_per_second = "10"
"#,
            id = image.manifest.id,
            hash = image.manifest.hash,
            memory = image.manifest.min_memory_mib.max(256),
        );
        std::fs::write(self.root.join("task.toml"), &task_file)?;
        let publisher = &self.nodes[1].api;
        let task: Submitted = publisher
            .post("/v1/publisher/tasks", &AnnounceTask { toml: task_file })
            .await?;
        let task = task.hash;
        self.wait(
            "the announcement to be mined",
            Duration::from_secs(60),
            || async move {
                let v: TxView = self.nodes[1].api.get(&format!("/v1/txs/{task}")).await?;
                Ok(v.status == "mined")
            },
        )
        .await?;
        let announced = Instant::now();

        self.step("waiting for the providers to accept and their VMs to come up");
        self.wait(
            "every VM to be running and reachable",
            Duration::from_secs(300),
            || async move {
                // A provider that gave up says why: stop now, with its reason.
                for node in &self.nodes[2..] {
                    let contracts: Vec<Contract> = node.api.get("/v1/agent/contracts").await?;
                    if let Some(c) = contracts
                        .iter()
                        .find(|c| c.task == task && matches!(c.phase, Phase::Failed | Phase::Ended))
                    {
                        return Err(Fatal(format!(
                            "{} gave up the task: {}",
                            node.home
                                .dir()
                                .file_name()
                                .unwrap_or_default()
                                .to_string_lossy(),
                            c.end_reason.as_deref().unwrap_or("no reason recorded")
                        ))
                        .into());
                    }
                }
                let vms: Vec<VmView> = self.nodes[1].api.get("/v1/publisher/vms").await?;
                Ok(vms
                    .iter()
                    .filter(|v| {
                        v.task == task
                            && v.connected
                            && v.ssh_port.is_some()
                            && v.phase == zennet_proto::VmPhase::Running
                    })
                    .count()
                    == providers as usize)
            },
        )
        .await?;
        let vms: Vec<VmView> = self.nodes[1].api.get("/v1/publisher/vms").await?;
        for vm in &vms {
            self.exec(&vm.id.to_string(), "true").await?;
        }
        let announce_to_all_reachable_ms = announced.elapsed().as_millis() as u64;
        let private_network = self.private_network(task).await?;

        self.step(&format!(
            "counting primes below {primes_below} across the VMs ({:?})",
            self.job
        ));
        let job_started = Instant::now();
        let (answer, per_vm, workers_registered_ms) = match self.job {
            Job::Primes => {
                let (answer, per_vm) = self.primes_by_exec(&vms, providers, primes_below).await?;
                (answer, per_vm, None)
            }
            engine => {
                let (answer, registered) = self
                    .primes_by_engine(engine, task, providers, primes_below)
                    .await?;
                let ms = registered.map(|at| at.duration_since(announced).as_millis() as u64);
                (answer, Vec::new(), ms)
            }
        };
        let expected = count_primes_below(primes_below);
        let job_ms = job_started.elapsed().as_millis() as u64;
        // Let a few payout intervals pass so vouchers flow while the VMs run.
        tokio::time::sleep(Duration::from_secs(5)).await;

        self.step("cancelling the task; nodes stop their VMs and close their channels");
        let _: Submitted = self.nodes[1]
            .api
            .post(&format!("/v1/publisher/tasks/{task}/cancel"), &())
            .await?;
        let mut contracts = Vec::new();
        for i in 2..self.nodes.len() {
            self.wait(
                "the contract to end and its channel to close",
                Duration::from_secs(120),
                || async move {
                    let cs: Vec<Contract> = self.nodes[i].api.get("/v1/agent/contracts").await?;
                    let Some(c) = cs.into_iter().find(|c| c.task == task) else {
                        return Ok(false);
                    };
                    let Some(close) = c.close_tx else {
                        return Ok(false);
                    };
                    let v: TxView = self.nodes[0].api.get(&format!("/v1/txs/{close}")).await?;
                    Ok(c.phase == Phase::Ended && v.status == "mined")
                },
            )
            .await?;
            let cs: Vec<Contract> = self.nodes[i].api.get("/v1/agent/contracts").await?;
            contracts.push(
                cs.into_iter()
                    .find(|c| c.task == task)
                    .context("contract")?,
            );
        }
        // Everyone's view must include the last close before balances are read.
        let end_height = self.height().await?;
        self.wait(
            "the nodes to reach the last block",
            Duration::from_secs(30),
            || async move {
                for n in &self.nodes {
                    let i: Info = n.api.get("/v1/info").await?;
                    if i.height < end_height {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await?;
        let after = self.balances().await?;
        let ledger = self.scan(start_height + 1, end_height).await?;

        let mut providers_out = Vec::new();
        let mut total_claimed = 0;
        let mut reconcile = true;
        for (i, c) in contracts.iter().enumerate() {
            let n = &self.nodes[i + 2];
            let fees = ledger.fees.get(&n.address).copied().unwrap_or(0);
            let claimed = ledger.claimed.get(&n.address).copied().unwrap_or(0);
            total_claimed += claimed;
            let (b, a) = (before[&n.address], after[&n.address]);
            reconcile &= a + fees == b + claimed && claimed == c.paid;
            providers_out.push(ProviderSummary {
                address: n.address,
                vm_boot_ms: c.boot_ms,
                usage: c.usage.clone(),
                paid: c.paid,
                claimed_on_chain: claimed,
                account: AccountSummary {
                    address: n.address,
                    before: b,
                    after: a,
                    fees,
                },
            });
        }
        let p = self.nodes[1].address;
        let pub_fees = ledger.fees.get(&p).copied().unwrap_or(0);
        reconcile &= after[&p] + total_claimed + pub_fees == before[&p];
        Ok(Summary {
            providers: providers_out,
            publisher: AccountSummary {
                address: p,
                before: before[&p],
                after: after[&p],
                fees: pub_fees,
            },
            task,
            job: JobSummary {
                kind: self.job,
                workers_registered_ms,
                primes_below,
                answer,
                expected,
                per_vm,
                ms: job_ms,
            },
            announce_to_all_reachable_ms,
            private_network,
            balances_reconcile: reconcile,
            blocks: end_height - start_height,
        })
    }

    /// The primes job of `zennet-tiny`: `awk` over a share of the range in
    /// each VM through `zennet vm exec`; the total and each VM's count.
    async fn primes_by_exec(
        &self,
        vms: &[VmView],
        providers: u32,
        primes_below: u64,
    ) -> Result<(u64, Vec<u64>)> {
        let chunk = primes_below.div_ceil(providers as u64);
        let runs = vms.iter().enumerate().map(|(i, vm)| {
            let lo = i as u64 * chunk;
            let hi = (lo + chunk).min(primes_below);
            let program = format!(
                "awk -v lo={lo} -v hi={hi} 'BEGIN {{ c = 0; for (n = lo; n < hi; n++) {{ if (n < 2) continue; p = 1; for (d = 2; d * d <= n; d++) if (n % d == 0) {{ p = 0; break }}; c += p }}; print c }}'"
            );
            let id = vm.id.to_string();
            async move { self.exec(&id, &program).await }
        });
        let mut per_vm = Vec::new();
        for r in futures::future::join_all(runs).await {
            let text: String = r?;
            per_vm.push(
                text.trim()
                    .parse::<u64>()
                    .with_context(|| format!("the VM printed {text:?}"))?,
            );
        }
        Ok((per_vm.iter().sum(), per_vm))
    }

    /// The primes job on a real engine: `zennet job spark|dask` with the
    /// application in `cli/assets/jobs/`, one worker per VM; its count and
    /// when every worker had registered.
    async fn primes_by_engine(
        &self,
        engine: Job,
        task: zennet_chain::Hash,
        providers: u32,
        primes_below: u64,
    ) -> Result<(u64, Option<Instant>)> {
        let app = self.root.join("app");
        std::fs::create_dir_all(&app)?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("--home").arg(self.nodes[1].home.dir());
        let (n, w) = (primes_below.to_string(), providers.to_string());
        match engine {
            Job::Spark => {
                let jars = tokio::task::spawn_blocking({
                    let dir = image_cache(&self.root);
                    move || zennet_images::spark_host_jars(&dir, &mut |_| {})
                })
                .await??;
                let jar = crate::jobs::compile_spark_app(&app, &jars).await?;
                cmd.args(["job", "spark", &task.to_string(), "--class", "Primes"])
                    .arg(jar)
                    // Start-up dominates a short job, and more so under TCG.
                    .args([
                        "--guest-java-opts",
                        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
                    ])
                    .args(["--conf", "spark.executor.memory=640m"])
                    .args(["--", &n, &w]);
            }
            Job::Dask => {
                let script = app.join("primes.py");
                std::fs::write(&script, crate::jobs::DASK_PRIMES)?;
                cmd.args(["job", "dask", &task.to_string()])
                    .arg(script)
                    .args(["--", &n, &w]);
            }
            Job::Primes => unreachable!("the awk job is primes_by_exec"),
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Its progress is shown as it comes; the line saying every worker
        // registered is timed.
        let stderr = child.stderr.take().context("piped")?;
        let all = format!("{providers}/{providers} workers registered");
        let say = self.say;
        let progress = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut registered = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if registered.is_none() && line.contains(&all) {
                    registered = Some(Instant::now());
                }
                if say {
                    eprintln!("  {line}");
                }
            }
            registered
        });
        let o = child.wait_with_output().await?;
        let registered = progress.await.unwrap_or(None);
        let stdout = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            bail!("the {engine:?} job failed ({}): {stdout}", o.status);
        }
        let line = stdout
            .lines()
            .find(|l| l.starts_with("ZENNET-PRIMES "))
            .with_context(|| format!("the {engine:?} job printed no result: {stdout}"))?;
        if self.say {
            eprintln!("devnet: {line}");
        }
        let count = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("count="))
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no count in {line:?}"))?;
        Ok((count, registered))
    }

    async fn spawn(
        &mut self,
        name: &str,
        home: Home,
        address: Address,
        flags: &[&str],
        bootstrap: Option<&str>,
    ) -> Result<()> {
        let log = std::fs::File::create(self.root.join(format!("{name}.log")))?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("--home")
            .arg(home.dir())
            .args(["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let child = cmd.spawn().context("cannot start a node process")?;
        let started = Instant::now();
        let api = loop {
            if let Ok(c) = home.client()
                && c.get::<Info>("/v1/info").await.is_ok()
            {
                break c;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "node {name} did not come up; see {}",
                    self.root.join(format!("{name}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.nodes.push(NodeProc {
            home,
            child,
            api,
            address,
        });
        Ok(())
    }

    /// Every VM of `task` pings the next on the task's private network
    /// (its address is set in the guest moments after it reports running).
    async fn private_network(&self, task: zennet_chain::Hash) -> Result<Vec<std::net::Ipv4Addr>> {
        self.step("checking the task's private network: each VM pings the next");
        let of_task = || async move {
            let all: Vec<VmView> = self.nodes[1].api.get("/v1/publisher/vms").await?;
            anyhow::Ok(
                all.into_iter()
                    .filter(|v| v.task == task)
                    .collect::<Vec<_>>(),
            )
        };
        self.wait(
            "every VM's private address",
            Duration::from_secs(60),
            || async move { Ok(of_task().await?.iter().all(|v| v.lan_address.is_some())) },
        )
        .await?;
        let vms = of_task().await?;
        let addresses: Vec<std::net::Ipv4Addr> = vms.iter().filter_map(|v| v.lan_address).collect();
        if vms.len() > 1 {
            for (i, vm) in vms.iter().enumerate() {
                let to = addresses[(i + 1) % addresses.len()];
                let id = vm.id.to_string();
                self.wait(
                    &format!("VM {id} to reach {to} on the private network"),
                    Duration::from_secs(60),
                    || {
                        let id = id.clone();
                        async move {
                            Ok(self
                                .exec(&id, &format!("ping -c 1 -W 3 {to}"))
                                .await
                                .is_ok())
                        }
                    },
                )
                .await?;
            }
        }
        Ok(addresses)
    }

    /// Runs a shell command in a VM through `zennet vm exec`.
    async fn exec(&self, vm: &str, command: &str) -> Result<String> {
        let o = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--home")
            .arg(self.nodes[1].home.dir())
            .args(["vm", "exec", vm, "--", command])
            .stdin(Stdio::null())
            .output()
            .await?;
        if !o.status.success() {
            bail!(
                "`vm exec {vm}` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    async fn balances(&self) -> Result<HashMap<Address, Amount>> {
        let mut out = HashMap::new();
        for n in &self.nodes[1..] {
            let a: AccountView = self.nodes[0]
                .api
                .get(&format!("/v1/accounts/{}", n.address))
                .await?;
            out.insert(n.address, a.balance);
        }
        Ok(out)
    }

    async fn height(&self) -> Result<u64> {
        let i: Info = self.nodes[0].api.get("/v1/info").await?;
        Ok(i.height)
    }

    /// Fees paid by each sender, and what each payee's claims and closes
    /// took out of channels, over a range of blocks.
    async fn scan(&self, from: u64, to: u64) -> Result<Scan> {
        let mut scan = Scan::default();
        let mut best: HashMap<zennet_chain::Hash, (Address, Amount)> = HashMap::new();
        for h in from..=to {
            let b: BlockView = self.nodes[0].api.get(&format!("/v1/blocks/{h}")).await?;
            for t in b.txs {
                let (Some(sender), Some(tx)) = (t.sender, t.tx) else {
                    continue;
                };
                let size = zennet_chain::codec::encode(&tx).len() + zennet_chain::Signature::LEN;
                *scan.fees.entry(sender).or_default() += tx.fee_per_byte as Amount * size as Amount;
                let voucher = match &tx.body {
                    TxBody::ChannelClaim { voucher } => Some(voucher),
                    TxBody::ChannelClose { voucher, .. } => voucher.as_ref(),
                    _ => None,
                };
                if let Some(v) = voucher {
                    let e = best.entry(v.voucher.channel).or_insert((sender, 0));
                    e.1 = e.1.max(v.voucher.cumulative);
                }
            }
        }
        for (payee, amount) in best.into_values() {
            *scan.claimed.entry(payee).or_default() += amount;
        }
        Ok(scan)
    }

    async fn wait<F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let started = Instant::now();
        loop {
            match check().await {
                Ok(true) => return Ok(()),
                Err(e) if e.is::<Fatal>() => {
                    bail!(
                        "{e} (while waiting for {what}; node logs are in {})",
                        self.root.display()
                    );
                }
                _ => {}
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {}s waiting for {what}; node logs are in {}",
                    timeout.as_secs(),
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn step(&self, what: &str) {
        if self.say {
            eprintln!("devnet: {what}");
        }
        tracing::debug!(step = what, "devnet");
    }

    /// Stops any VM still running, then every node.
    async fn shutdown(&mut self) {
        for n in &self.nodes[2.min(self.nodes.len())..] {
            if let Ok(vms) = n.api.get::<Vec<zennet_vm::VmInfo>>("/v1/agent/vms").await {
                for vm in vms.iter().filter(|v| v.pid.is_some()) {
                    let _ = n
                        .api
                        .post::<_, zennet_vm::VmInfo>(&format!("/v1/agent/vms/{}/stop", vm.id), &())
                        .await;
                }
            }
        }
        for n in self.nodes.iter_mut().rev() {
            if let Some(pid) = n.child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(15), n.child.wait())
                .await
                .is_err()
            {
                let _ = n.child.kill().await;
            }
        }
    }
}

#[derive(Default)]
struct Scan {
    fees: HashMap<Address, Amount>,
    claimed: HashMap<Address, Amount>,
}

/// Where a devnet builds its images, kept across runs (zennet-spark's
/// download alone is 0.5 GB): `$ZENNET_IMAGE_CACHE`, else the user's cache
/// directory, else inside the devnet's root.
fn image_cache(root: &std::path::Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("ZENNET_IMAGE_CACHE") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(c) => c.join("zennet").join("images"),
        None => root.join("images"),
    }
}

fn write_config(home: &Home, config: &crate::home::Config) -> Result<()> {
    crate::home::write_atomic(
        &home.config_path(),
        toml::to_string_pretty(config)?.as_bytes(),
        0o600,
    )
}

/// The publisher's own count, to check the VMs' answer.
fn count_primes_below(n: u64) -> u64 {
    let n = n as usize;
    if n < 3 {
        return 0;
    }
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    #[test]
    fn prime_count_matches_known_values() {
        assert_eq!(super::count_primes_below(10), 4);
        assert_eq!(super::count_primes_below(100), 25);
        assert_eq!(super::count_primes_below(30_000), 3245);
    }
}
