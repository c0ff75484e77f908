//! The subcommands. Each validates its arguments before touching anything,
//! prints text or `--json`, and returns one clear error on failure.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;
use zennet_chain::codec::amount_str::parse_amount;
use zennet_chain::identity::{self, Identity, Role};
use zennet_chain::{Address, Genesis, Hash, SecretKey, Transaction, TxBody};

use crate::api::{AccountView, BlockView, Info, NodeInfo, PeerView, SubmitTx, Submitted, TxView};
use crate::client::Client;
use crate::home::Home;
use crate::node::{NodeHandle, NodeOptions, now_ms};

#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `text` otherwise.
    pub fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("serialisable")
            );
        } else {
            println!("{}", text());
        }
    }
}

pub fn init(home: &Home, genesis_arg: &str, out: Output) -> Result<()> {
    // Read and check a genesis file before creating anything.
    let from_file = if genesis_arg == "dev" {
        None
    } else {
        Some(Genesis::load(Path::new(genesis_arg))?)
    };
    let key = home.init(|key| {
        Ok(match from_file {
            Some(g) => g,
            None => Genesis::dev(key.address(), now_ms()),
        })
    })?;
    let genesis = home.genesis()?;
    out.print(
        &json!({
            "home": home.dir(),
            "address": key.address(),
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.hash(),
        }),
        || {
            format!(
                "initialised {}\naddress  {}\nchain id {}\ngenesis  {}",
                home.dir().display(),
                key.address(),
                genesis.chain_id,
                genesis.hash()
            )
        },
    );
    Ok(())
}

pub async fn node_run(home: Home, opts: NodeOptions) -> Result<()> {
    home.require_initialized()?;
    let handle = NodeHandle::start(home, opts).await?;
    wait_for_signal().await;
    handle.stop().await
}

pub async fn bench(home: &Home, quick: bool, out: Output) -> Result<()> {
    home.require_initialized()?;
    // The VM part needs the image and the privileges to confine QEMU.
    let vm = match zennet_images::load(&home.images_dir(), zennet_images::DEFAULT_IMAGE_ID) {
        Ok(image) if nix_is_root() => {
            let qemu = crate::services::qemu_config(home, &image).await?;
            Some(zennet_hwbench::VmBench {
                nice: qemu.nice,
                backend: std::sync::Arc::new(zennet_vm::qemu::QemuBackend::new(qemu)),
                image,
            })
        }
        _ => {
            eprintln!("note: no VM figures (needs root and `zennet image build`)");
            None
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix("zennet-bench-")
        .tempdir_in(home.dir())?;
    let opts = zennet_hwbench::BenchOptions {
        quick,
        scratch_dir: scratch.path().to_path_buf(),
        vm,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let progress_bar = bar.clone();
    let mut progress = move |step: &str| progress_bar.set_message(step.to_string());
    let profile = zennet_hwbench::run(&opts, &mut progress).await?;
    bar.finish_and_clear();
    let path = home.dir().join("capacity.json");
    crate::home::write_atomic(&path, &serde_json::to_vec_pretty(&profile)?, 0o644)?;
    out.print(&profile, || {
        let mut s = format!(
            "compute units: {:.2} per core, {:.2} total ({} cores)\ncpu: {:.0} events/s one thread, {:.0} all threads",
            profile.compute_units_per_core,
            profile.compute_units_total,
            profile.cores,
            profile.cpu.single_thread_events_per_sec,
            profile.cpu.all_threads_events_per_sec
        );
        let m = &profile.memory;
        s.push_str(&format!("\nmemory: {:.1} GB/s read, {:.1} GB/s write", m.read_gb_per_sec, m.write_gb_per_sec));
        if let Some(d) = &profile.disk {
            s.push_str(&format!(
                "\ndisk: {:.0} MB/s write, {:.0} MB/s read, {:.0} IOPS 4K random",
                d.sequential_write_mb_per_sec, d.sequential_read_mb_per_sec, d.random_read_4k_iops
            ));
        }
        if let Some(v) = &profile.vm {
            s.push_str(&format!(
                "\nvm ({}): ready in {} ms, efficiency {:.2}",
                v.accel,
                v.launch_to_ready_ms,
                v.efficiency
            ));
        }
        s.push_str(&format!("\ngpus: {}", profile.gpus.len()));
        for n in &profile.notes {
            s.push_str(&format!("\nnote: {n}"));
        }
        s.push_str(&format!("\nsaved {}", path.display()));
        s
    });
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

pub async fn image_build(home: &Home, id: &str, out: Output) -> Result<()> {
    home.require_initialized()?;
    let Some(recipe) = zennet_images::recipe(id) else {
        bail!(
            "no image `{id}`; the images are {}",
            zennet_images::IMAGE_IDS.join(", ")
        );
    };
    let dir = home.images_dir();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("building {id}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let shown = bar.clone();
    let image = tokio::task::spawn_blocking(move || {
        zennet_images::build_with_progress(&recipe, &dir, &mut |p| show_progress(&shown, p))
    })
    .await??;
    bar.finish_and_clear();
    print_image(&image, out);
    Ok(())
}

/// A spinner with the current step, turned into a byte bar while a
/// download runs.
fn show_progress(bar: &indicatif::ProgressBar, progress: zennet_images::Progress) {
    match progress {
        zennet_images::Progress::Step(step) => {
            bar.set_style(indicatif::ProgressStyle::default_spinner());
            bar.set_message(step);
        }
        zennet_images::Progress::Download { name, done, total } => {
            if bar.length() != Some(total) {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_length(total);
                bar.set_message(format!("downloading {name}"));
            }
            bar.set_position(done);
        }
    }
}

pub fn image_list(home: &Home, out: Output) -> Result<()> {
    let images = zennet_images::list(&home.images_dir())?;
    if out.json {
        let manifests: Vec<_> = images.iter().map(|i| &i.manifest).collect();
        out.print(&manifests, String::new);
    } else if images.is_empty() {
        println!("no images; build one with `zennet image build`");
    } else {
        for i in &images {
            print_image(i, out);
        }
    }
    Ok(())
}

fn print_image(image: &zennet_images::Image, out: Output) {
    let m = &image.manifest;
    let size: u64 =
        m.files.iter().map(|f| f.size).sum::<u64>() + m.disks.iter().map(|d| d.size).sum::<u64>();
    let disks: String = m
        .disks
        .iter()
        .map(|d| format!(", disk {} {} MiB", d.name, d.size >> 20))
        .collect();
    out.print(m, || {
        format!(
            "{} {} kernel {} ({} MiB{disks}; VMs of {} MiB or more)",
            m.id,
            m.hash,
            m.kernel_release,
            size >> 20,
            m.min_memory_mib
        )
    });
}

/// Reads an OpenSSH public key file, refusing private keys.
pub fn read_public_key(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = text.trim();
    if key.contains("PRIVATE KEY") {
        bail!("{} is a private key; pass the .pub file", path.display());
    }
    if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") {
        bail!("{} is not an OpenSSH public key", path.display());
    }
    Ok(key.to_string())
}

/// Prints the dashboard login link (the API's address and a one-time code).
pub async fn dashboard(home: &Home, out: Output) -> Result<()> {
    let login: crate::api::DashboardLogin = home.client()?.post("/v1/dashboard/login", &()).await?;
    let url = format!("{}{}", home.api_url()?, login.path);
    let view = serde_json::json!({ "url": url, "valid_secs": login.valid_secs });
    out.print(&view, || {
        format!(
            "{url}\nopen it within {} s; it works once (run `zennet dashboard` again for another)",
            login.valid_secs
        )
    });
    Ok(())
}

pub async fn agent_vm_start(home: &Home, req: zennet_vm::StartVm, out: Output) -> Result<()> {
    let client = home.client()?;
    let vm: zennet_vm::VmInfo = client.post("/v1/agent/vms", &req).await?;
    out.print(&vm, || format!("{} ssh port {}", vm.id, vm.ssh_port));
    Ok(())
}

pub async fn agent_vm_list(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let vms: Vec<zennet_vm::VmInfo> = client.get("/v1/agent/vms").await?;
    out.print(&vms, || {
        vms.iter()
            .map(|v| {
                format!(
                    "{} {:?} port {} cores {} quota {} mem {} MiB | cpu {:.0}% now, {:.1}s in all, mem {:.1} GiB·h disk r/w {}/{} B",
                    v.id,
                    v.state,
                    v.ssh_port,
                    v.cores,
                    v.cpu_quota,
                    v.mem_mib,
                    v.cpu_cores_now * 100.0,
                    v.usage.cpu_ns as f64 / 1e9,
                    v.usage.memory_byte_seconds / 3600.0 / (1u64 << 30) as f64,
                    v.usage.disk_read_bytes,
                    v.usage.disk_write_bytes
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn agent_vm_stop(home: &Home, id: &str, out: Output) -> Result<()> {
    let client = home.client()?;
    let vm: zennet_vm::VmInfo = client
        .post(&format!("/v1/agent/vms/{id}/stop"), &())
        .await?;
    out.print(&vm, || format!("{} stopped", vm.id));
    Ok(())
}

pub async fn node_info(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let info: NodeInfo = client.get("/v1/node").await?;
    out.print(&info, || {
        let mut s = format!(
            "peer id {}
address {}
peers   {}",
            info.peer_id, info.address, info.peers
        );
        for a in &info.listen {
            s.push_str(&format!(
                "
listen  {a}"
            ));
        }
        s
    });
    Ok(())
}

pub async fn node_peers(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let peers: Vec<PeerView> = client.get("/v1/peers").await?;
    out.print(&peers, || {
        peers
            .iter()
            .map(|p| {
                let address = p
                    .address
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into());
                format!("{} {} {}", p.peer_id, address, p.remote_addr)
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn wallet_address(home: &Home, out: Output) -> Result<()> {
    let address = home.key()?.address();
    out.print(&json!({ "address": address }), || address.to_string());
    Ok(())
}

pub async fn wallet_balance(home: &Home, address: Option<&str>, out: Output) -> Result<()> {
    let address: Address = match address {
        Some(a) => a.parse()?,
        None => home.key()?.address(),
    };
    let client = home.client()?;
    let account: AccountView = client.get(&format!("/v1/accounts/{address}")).await?;
    out.print(&account, || account.balance.to_string());
    Ok(())
}

pub async fn wallet_send(
    home: &Home,
    to: &str,
    amount: &str,
    fee_per_byte: Option<u64>,
    wait: bool,
    out: Output,
) -> Result<()> {
    let to: Address = to.parse()?;
    let amount = parse_amount(amount).map_err(anyhow::Error::msg)?;
    if amount == 0 {
        bail!("amount must be greater than zero");
    }
    let key = home.key()?;
    let genesis = home.genesis()?;
    let client = home.client()?;
    let body = TxBody::Transfer { to, amount };
    let hash = submit(&client, &key, &genesis, body, fee_per_byte).await?;
    if wait {
        wait_mined(&client, &hash, Duration::from_secs(120)).await?;
    }
    out.print(
        &json!({ "hash": hash, "to": to, "amount": amount.to_string() }),
        || hash.to_string(),
    );
    Ok(())
}

/// Signs `body` with the sender's next nonce and submits it.
pub async fn submit(
    client: &Client,
    key: &SecretKey,
    genesis: &Genesis,
    body: TxBody,
    fee_per_byte: Option<u64>,
) -> Result<Hash> {
    let account: AccountView = client
        .get(&format!("/v1/accounts/{}", key.address()))
        .await?;
    let tx = Transaction {
        chain_id: genesis.chain_id,
        nonce: account.next_nonce,
        fee_per_byte: fee_per_byte.unwrap_or(genesis.economics.min_fee_per_byte),
        body,
    }
    .sign(key, &genesis.hash());
    let raw = format!("0x{}", hex::encode(tx.encode()));
    let submitted: Submitted = client.post("/v1/txs", &SubmitTx { raw }).await?;
    Ok(submitted.hash)
}

pub async fn wait_mined(client: &Client, hash: &Hash, timeout: Duration) -> Result<TxView> {
    let started = Instant::now();
    loop {
        let view: TxView = client.get(&format!("/v1/txs/{hash}")).await?;
        if view.status != "pending" {
            return Ok(view);
        }
        if started.elapsed() > timeout {
            bail!(
                "transaction {hash} is still pending after {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn chain_info(home: &Home, out: Output) -> Result<()> {
    let client = home.client()?;
    let info: Info = client.get("/v1/info").await?;
    out.print(&info, || {
        format!(
            "chain id    {}\ngenesis     {}\nheight      {}\ntip         {}\ndifficulty  {}\nmempool     {}\nmining      {}\nsync        {}",
            info.chain_id, info.genesis_hash, info.height, info.tip, info.difficulty, info.mempool, info.mining,
            info.sync.summary(info.height)
        )
    });
    Ok(())
}

pub async fn chain_block(home: &Home, id: &str, out: Output) -> Result<()> {
    if id.parse::<u64>().is_err() {
        id.parse::<Hash>()
            .with_context(|| format!("{id:?} is neither a block height nor a block hash"))?;
    }
    let client = home.client()?;
    let block: BlockView = client.get(&format!("/v1/blocks/{id}")).await?;
    out.print(&block, || {
        let mut s = format!(
            "block {} {}\nparent     {}\ntime       {}\ndifficulty {}\nminer      {}\nstate root {}\ntxs        {}",
            block.header.height,
            block.hash,
            block.header.parent,
            block.header.timestamp_ms,
            block.header.difficulty,
            block.header.miner,
            block.header.state_root,
            block.txs.len()
        );
        for t in &block.txs {
            s.push_str(&format!("\n  {} {}", t.hash, t.kind.as_deref().unwrap_or(&t.status)));
        }
        s
    });
    Ok(())
}

pub async fn chain_tx(home: &Home, hash: &str, out: Output) -> Result<()> {
    let hash: Hash = hash.parse()?;
    let client = home.client()?;
    let tx: TxView = client.get(&format!("/v1/txs/{hash}")).await?;
    out.print(&tx, || {
        let mut s = format!("tx {}\nstatus {}", tx.hash, tx.status);
        if let (Some(h), Some(b)) = (tx.height, tx.block) {
            s.push_str(&format!("\nblock  {h} {b}"));
        }
        if let Some(k) = &tx.kind {
            s.push_str(&format!("\nkind   {k}"));
        }
        if let Some(from) = tx.sender {
            s.push_str(&format!("\nfrom   {from}"));
        }
        s
    });
    Ok(())
}

pub async fn chain_genesis(home: &Home) -> Result<()> {
    // The home holds the genesis; a running node would print the same file.
    print!("{}", home.genesis()?.to_toml());
    Ok(())
}

pub async fn id_mine(
    home: &Home,
    role: &str,
    register: bool,
    threads: Option<usize>,
    out: Output,
) -> Result<()> {
    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
    let key = home.key()?;
    let genesis = home.genesis()?;
    // Fail before spending the work if the registration cannot be sent.
    let client = if register {
        let client = home.client()?;
        let ids: crate::api::IdentitiesView = client
            .get(&format!("/v1/identities/{}", key.address()))
            .await?;
        let existing = match role {
            Role::Publisher => ids.publisher,
            Role::Node => ids.node,
        };
        if existing.is_some() {
            bail!(
                "{} already has a registered {} identity",
                key.address(),
                role.name()
            );
        }
        Some(client)
    } else {
        None
    };
    let difficulty = role.difficulty(&genesis.pow);
    let identity = mine_identity_parallel(&key, role, &genesis, threads).await?;
    let tx = match client {
        Some(client) => Some(
            submit(
                &client,
                &key,
                &genesis,
                TxBody::RegisterIdentity {
                    identity: identity.clone(),
                },
                None,
            )
            .await?,
        ),
        None => None,
    };
    out.print(
        &json!({ "identity": identity, "difficulty": difficulty, "pow_hash": identity.pow_hash(), "registration_tx": tx }),
        || {
            let mut s = format!(
                "{} identity mined: nonce {} (hash {}, difficulty {difficulty})",
                role.name(),
                identity.nonce,
                identity.pow_hash()
            );
            if let Some(tx) = tx {
                s.push_str(&format!("\nregistration submitted: {tx}"));
            }
            s
        },
    );
    Ok(())
}

async fn mine_identity_parallel(
    key: &SecretKey,
    role: Role,
    genesis: &Genesis,
    threads: Option<usize>,
) -> Result<Identity> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} mining {msg} identity: {pos} hashes ({per_sec})",
        )
        .expect("valid template"),
    );
    bar.set_message(role.name());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut workers = Vec::new();
    for i in 0..threads {
        let (stop, tried, public_key, params) = (
            stop.clone(),
            tried.clone(),
            key.public_key(),
            genesis.pow.clone(),
        );
        let bar = bar.clone();
        workers.push(tokio::task::spawn_blocking(move || {
            let start = (i as u64) << 56 | (getrandom::u64().unwrap_or(0) >> 8);
            let mut last = 0;
            let found = identity::mine(role, public_key, &params, start, &stop, |n| {
                tried.fetch_add(n - last, Ordering::Relaxed);
                bar.inc(n - last);
                last = n;
            });
            if found.is_some() {
                stop.store(true, Ordering::SeqCst);
            }
            found
        }));
    }
    let mut identity = None;
    for w in workers {
        if let Some(found) = w.await?
            && identity.is_none()
        {
            identity = Some(found);
        }
    }
    bar.finish_and_clear();
    identity.context("identity mining stopped without a result")
}
