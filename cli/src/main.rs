//! `zennet`: one client for the Zennet market. See `zennet --help`.

mod api;
mod apps;
mod chain_cmds;
mod client;
mod commands;
mod dashboard;
mod devnet;
mod fs;
mod home;
mod image_share;
mod jobs;
mod ledger;
mod node;
mod observe;
mod service_unit;
mod services;
mod storage;
mod sync;
mod trade;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "zennet",
    version,
    about = "Zennet: a free market of virtual machines and files",
    long_about = "Zennet: a free market of virtual machines and files.\n\n\
        Start with `zennet init --genesis dev` then `zennet node run --mine`, \
        or run `zennet devnet` for a whole local network in one command."
)]
struct Cli {
    /// Home directory (keys, config, chain). Default: $ZENNET_HOME or ~/.zennet
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a home: a new key, config.toml and the chain's genesis.
    Init {
        /// `dev` (a local chain prefunding the new key) or a genesis TOML file.
        #[arg(long, default_value = "dev", value_name = "dev|FILE")]
        genesis: String,
    },
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// This home's account: address, balances, transfers.
    #[command(subcommand)]
    Wallet(WalletCmd),
    /// Inspect the chain.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Mined identities.
    #[command(subcommand)]
    Id(IdCmd),
    /// Benchmark this machine (CPU, memory, disk, GPUs, a VM) and save its
    /// capacity profile in the home.
    Bench {
        /// Shorter measurements.
        #[arg(long)]
        quick: bool,
    },
    /// VM images built from Debian packages.
    #[command(subcommand)]
    Image(ImageCmd),
    /// The provider agent of a running `node run --provide`.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Publisher side: announce tasks and manage them (`node run --publish`).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Publisher side: the VMs nodes run for your tasks, through the tunnel.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Publisher side: web apps, the tasks whose VMs serve HTTP (`web_port`
    /// in the task file), at http://APPID.zennet.localhost:PORT/.
    #[command(subcommand)]
    App(AppCmd),
    /// Publisher side: distributed engines across a task's VMs, on the
    /// task's private network (needs the node run as root).
    #[command(subcommand)]
    Job(JobCmd),
    /// The file network: add, get, seed and serve files.
    #[command(subcommand)]
    Fs(fs::FsCmd),
    /// A one-time link that logs a browser into the running node's web
    /// dashboard (valid 5 minutes, once; the session lasts 12 hours).
    Dashboard,
    /// A whole local market on embedded defaults: a miner, N providers and a
    /// publisher running a real job in VMs, paid through payment channels.
    Devnet {
        /// Provider nodes (one VM each).
        #[arg(long, default_value_t = 2)]
        providers: u32,
        /// The job: count primes below this number, split across the VMs.
        #[arg(long, default_value_t = 30_000)]
        primes_below: u64,
        /// How: `primes` (awk in each VM through the tunnels; seconds),
        /// `spark` (zennet job spark on zennet-spark VMs; minutes under
        /// TCG, and a 0.5 GB download once) or `dask` (zennet job dask on
        /// zennet-dask VMs). Images are kept in $ZENNET_IMAGE_CACHE
        /// (default ~/.cache/zennet/images).
        #[arg(long, value_enum, default_value = "primes")]
        job: devnet::Job,
        /// Keep the temporary homes (printed) instead of deleting them.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Announce the task described by a TOML file (see README).
    Announce { file: PathBuf },
    /// Tasks this publisher announced.
    List,
    /// A task as the chain has it.
    Show { id: String },
    /// Cancel on chain; every VM of the task stops and its channel closes.
    Cancel { id: String },
    /// Switch payment for a task off or on (and for its persistent storage).
    Pay {
        id: String,
        #[arg(long, value_parser = ["on", "off"])]
        compute: Option<String>,
        #[arg(long, value_parser = ["on", "off"])]
        storage: Option<String>,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// VMs of this publisher's tasks, with their tunnel ports and payments.
    List,
    /// Log into a VM with OpenSSH through the tunnel (extra args: a command).
    Ssh {
        id: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command in a VM: `zennet vm exec ID -- CMD...`.
    Exec {
        id: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Forward ports through the VM's tunnel until interrupted:
    /// `zennet vm forward ID 8080:80` makes 127.0.0.1:8080 here reach the
    /// VM's port 80; `--reverse 9000:5432` makes the VM's 127.0.0.1:9000
    /// reach port 5432 here.
    Forward {
        id: String,
        /// LOCAL:VM — a port on this host to a port in the VM.
        forwards: Vec<String>,
        /// VM:LOCAL — a port in the VM to a port on this host (repeatable).
        #[arg(long, short = 'R')]
        reverse: Vec<String>,
    },
    /// End a VM's contract: its node stops it and closes the channel.
    Stop { id: String },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Run a Spark application across a task's running VMs (image
    /// zennet-spark): a master and the driver on this host, a worker in
    /// each VM, all on the task's private network with Spark's
    /// authentication and RPC encryption on. The application's stdout is
    /// printed; progress goes to stderr; exits with the driver's status.
    /// Example: `zennet job spark TASK --class Primes primes.jar -- 300000`.
    Spark {
        /// The task (id or unique prefix) whose VMs run the workers.
        task: String,
        /// The application's main class.
        #[arg(long = "class")]
        class: String,
        /// The application's jar.
        jar: PathBuf,
        /// The application's arguments (after --).
        #[arg(last = true)]
        args: Vec<String>,
        /// A Spark setting for the application, KEY=VALUE (repeatable).
        #[arg(long)]
        conf: Vec<String>,
        /// JVM options for the workers and executors in the VMs; under TCG
        /// `-XX:TieredStopAtLevel=1 -XX:+UseSerialGC` starts them faster.
        #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
        guest_java_opts: Option<String>,
        /// Seconds to wait for every VM's worker to register (a JVM under
        /// TCG takes about a minute).
        #[arg(long, default_value_t = 900, value_name = "SECS")]
        register_timeout: u64,
    },
    /// Run a Python script against a Dask cluster across a task's running
    /// VMs (image zennet-dask): the scheduler and the script on this host,
    /// a worker in each VM, on the task's private network. In the script,
    /// `distributed.Client()` connects to the task's scheduler
    /// (DASK_SCHEDULER_ADDRESS is set). Exits with the script's status.
    Dask {
        /// The task (id or unique prefix) whose VMs run the workers.
        task: String,
        /// The Python script (Debian's python3 and python3-distributed).
        script: PathBuf,
        /// The script's arguments (after --).
        #[arg(last = true)]
        args: Vec<String>,
        /// Seconds to wait for every VM's worker to register.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        register_timeout: u64,
    },
}

#[derive(Subcommand)]
enum AppCmd {
    /// The apps this node's proxy serves: URL, port and the VMs behind it.
    List,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an image into this home from Debian packages (and, for
    /// zennet-spark, the pinned pyspark sdist: about 0.5 GB downloaded
    /// once); cached, so a second build only checks it.
    Build {
        /// zennet-tiny (the default, all in RAM), zennet-spark (JRE and
        /// Spark's jars on a read-only root disk; VMs need 2 GiB) or
        /// zennet-dask (Python and Dask distributed; 1 GiB).
        #[arg(default_value = zennet_images::DEFAULT_IMAGE_ID)]
        id: String,
    },
    /// Images built (or fetched) in this home.
    List,
    /// Add a built image to the file network (the running node seeds it)
    /// and print the file id a task file names it by (`file = "…"`
    /// beside `id` and `hash` in `images`): providers that lack the image
    /// fetch it from every seeder, check it against the manifest hash and
    /// keep it.
    Publish {
        #[arg(default_value = zennet_images::DEFAULT_IMAGE_ID)]
        id: String,
        /// Base units per MiB providers pay to fetch it (default 0).
        #[arg(long)]
        price: Option<String>,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Virtual machines run by this node.
    #[command(subcommand)]
    Vm(AgentVmCmd),
    /// Contracts: accepted tasks, their VMs and payments.
    Status,
    /// Suggested [market] minimum rates from what other providers took on
    /// chain in the last day, with what they would earn this machine.
    Prices,
    /// Tasks on chain and whether the market policy would take them.
    Tasks,
    /// Accept a task by hand.
    Accept { id: String },
    /// Never accept a task.
    Reject { id: String },
}

#[derive(Subcommand)]
enum AgentVmCmd {
    /// Start a VM; prints its id and local ssh port.
    Start {
        #[arg(long, default_value = zennet_images::DEFAULT_IMAGE_ID)]
        image: String,
        #[arg(long, default_value_t = 1)]
        cores: u32,
        #[arg(long, default_value_t = 256)]
        mem_mib: u64,
        /// CPU time in cores (default: --cores), e.g. 0.5.
        #[arg(long)]
        cpu_quota: Option<f64>,
        /// Attach the persistent volume of this name (created on first use).
        #[arg(long)]
        volume: Option<String>,
        /// Size of a new persistent volume.
        #[arg(long, requires = "volume")]
        disk_gib: Option<u32>,
        /// OpenSSH public key file allowed to log in as root.
        #[arg(long, value_name = "FILE")]
        authorized_key: PathBuf,
    },
    /// VMs with their state and metered usage.
    List,
    /// Stop a VM (its persistent volume is kept).
    Stop { id: String },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Run the node: chain, HTTP API on loopback, optional miner.
    Run {
        /// Mine blocks with this home's key as the miner.
        #[arg(long)]
        mine: bool,
        /// API listen address (default from config.toml: 127.0.0.1, any free port).
        #[arg(long, value_name = "ADDR")]
        api: Option<String>,
        /// p2p listen multiaddr (default from config.toml: /ip4/0.0.0.0/tcp/0).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<zennet_net::Multiaddr>,
        /// A peer to join, e.g. /ip4/127.0.0.1/tcp/4001/p2p/16Uiu2... (repeatable).
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<zennet_net::Multiaddr>,
        /// Run the provider agent: VMs under cgroups (needs root and an image),
        /// accepting tasks per config.toml's [market] policy.
        #[arg(long)]
        provide: bool,
        /// Run the publisher: the SSH server nodes dial into, and the payer.
        #[arg(long)]
        publish: bool,
        /// Join from a verified state snapshot when peers are far ahead
        /// (headers and seals checked, state root checked against them).
        /// Default: on for a home whose chain is empty; `--fast-sync=false`
        /// executes every block from genesis instead.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        fast_sync: Option<bool>,
    },
    /// Install this node as a systemd service: write zennet.service (the
    /// shipped unit, with --home and the roles given here in its
    /// ExecStart), then `systemctl daemon-reload` and `enable --now`. Its
    /// home is --home, else /var/lib/zennet (not $ZENNET_HOME or ~/.zennet).
    InstallService {
        /// Run the provider agent (the default when no role is given).
        #[arg(long)]
        provide: bool,
        /// Run the publisher.
        #[arg(long)]
        publish: bool,
        /// Mine blocks.
        #[arg(long)]
        mine: bool,
        /// Where to write zennet.service.
        #[arg(long, value_name = "DIR", default_value = service_unit::UNIT_DIR)]
        unit_dir: PathBuf,
        /// Replace a zennet.service that has other content.
        #[arg(long)]
        force: bool,
        /// Only write the unit: no daemon-reload, no enable, no start.
        #[arg(long)]
        no_enable: bool,
    },
    /// This node's peer id and listen addresses.
    Info,
    /// Connected peers.
    Peers,
}

#[derive(Subcommand)]
enum WalletCmd {
    /// Print this home's address.
    Address,
    /// Balance of ADDR (default: this home's address).
    Balance { address: Option<String> },
    /// Send AMOUNT base units to TO.
    Send {
        to: String,
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Fee per byte (default: the chain's minimum).
        #[arg(long)]
        fee_per_byte: Option<u64>,
        /// Wait until the transaction is mined.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum ChainCmd {
    /// Height, tip, difficulty, mempool.
    Info,
    /// A block by height or hash.
    Block { id: String },
    /// A transaction by hash.
    Tx { hash: String },
    /// Print the chain's genesis file (to create another home on this chain).
    Genesis,
    /// State snapshots: for auditors, and to seed a node offline.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Recompute the state root from the stored state and compare it with
    /// the tip header's (exits non-zero if they differ).
    Verify,
    /// Wait until the running node has caught up with its peers, with a
    /// progress bar (fast sync: headers, then state chunks; then blocks).
    Sync {
        /// Give up (exit non-zero) after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Write the state at a final height, with every header up to it, to FILE.
    Export {
        file: PathBuf,
        /// Height to export (default: the newest snapshot height, at least
        /// the reorg horizon below the tip; else the tip).
        #[arg(long)]
        height: Option<u64>,
    },
    /// Check FILE completely (headers, seals, state root) and install it
    /// into this home's empty chain; the node syncs on from there.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum IdCmd {
    /// Mine an identity for this home's key and register it on chain.
    Mine {
        #[arg(long, value_parser = ["node", "publisher"])]
        role: String,
        /// Only mine and print; do not submit the registration.
        #[arg(long)]
        no_register: bool,
        /// Mining threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
    // Long-running services narrate at info; one-shot commands keep quiet.
    let default_level = match cli.command {
        Command::Node(NodeCmd::Run { .. }) | Command::Devnet { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home_flag = cli.home.clone();
    let home = home::Home::locate(cli.home)?;
    let out = commands::Output { json: cli.json };
    match cli.command {
        Command::Init { genesis } => commands::init(&home, &genesis, out),
        Command::Node(NodeCmd::Run {
            mine,
            api,
            listen,
            bootstrap,
            provide,
            publish,
            fast_sync,
        }) => {
            let opts = node::NodeOptions {
                mine,
                api,
                listen,
                bootstrap,
                report: true,
                provide,
                publish,
                fast_sync,
            };
            commands::node_run(home, opts).await
        }
        Command::Bench { quick } => commands::bench(&home, quick, out).await,
        Command::Image(ImageCmd::Build { id }) => commands::image_build(&home, &id, out).await,
        Command::Image(ImageCmd::List) => commands::image_list(&home, out),
        Command::Image(ImageCmd::Publish { id, price }) => {
            let price = price
                .as_deref()
                .map(zennet_chain::codec::amount_str::parse_amount)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            image_share::publish(&home, &id, price, out).await
        }
        Command::Agent(AgentCmd::Vm(AgentVmCmd::Start {
            image,
            cores,
            mem_mib,
            cpu_quota,
            volume,
            disk_gib,
            authorized_key,
        })) => {
            let req = zennet_vm::StartVm {
                image,
                cores,
                cpu_quota,
                mem_mib,
                volume,
                volume_gib: disk_gib,
                scratch_gib: None,
                network: None,
                bandwidth_mbps: None,
                authorized_key: commands::read_public_key(&authorized_key)?,
            };
            commands::agent_vm_start(&home, req, out).await
        }
        Command::Agent(AgentCmd::Vm(AgentVmCmd::List)) => commands::agent_vm_list(&home, out).await,
        Command::Agent(AgentCmd::Vm(AgentVmCmd::Stop { id })) => {
            commands::agent_vm_stop(&home, &id, out).await
        }
        Command::Node(NodeCmd::InstallService {
            provide,
            publish,
            mine,
            unit_dir,
            force,
            no_enable,
        }) => {
            let opts = service_unit::InstallOptions {
                home: home_flag,
                roles: service_unit::Roles {
                    provide,
                    publish,
                    mine,
                },
                unit_dir,
                force,
                enable: !no_enable,
            };
            service_unit::install(opts, out)
        }
        Command::Node(NodeCmd::Info) => commands::node_info(&home, out).await,
        Command::Node(NodeCmd::Peers) => commands::node_peers(&home, out).await,
        Command::Wallet(WalletCmd::Address) => commands::wallet_address(&home, out),
        Command::Wallet(WalletCmd::Balance { address }) => {
            commands::wallet_balance(&home, address.as_deref(), out).await
        }
        Command::Wallet(WalletCmd::Send {
            to,
            amount,
            fee_per_byte,
            wait,
        }) => commands::wallet_send(&home, &to, &amount, fee_per_byte, wait, out).await,
        Command::Chain(ChainCmd::Info) => commands::chain_info(&home, out).await,
        Command::Chain(ChainCmd::Block { id }) => commands::chain_block(&home, &id, out).await,
        Command::Chain(ChainCmd::Tx { hash }) => commands::chain_tx(&home, &hash, out).await,
        Command::Chain(ChainCmd::Genesis) => commands::chain_genesis(&home).await,
        Command::Chain(ChainCmd::Snapshot(SnapshotCmd::Export { file, height })) => {
            chain_cmds::export(&home, &file, height, out).await
        }
        Command::Chain(ChainCmd::Snapshot(SnapshotCmd::Import { file })) => {
            chain_cmds::import(&home, &file, out).await
        }
        Command::Chain(ChainCmd::Verify) => chain_cmds::verify(&home, out).await,
        Command::Chain(ChainCmd::Sync { timeout }) => chain_cmds::sync(&home, timeout, out).await,
        Command::Id(IdCmd::Mine {
            role,
            no_register,
            threads,
        }) => commands::id_mine(&home, &role, !no_register, threads, out).await,
        Command::Agent(AgentCmd::Status) => trade::agent_contracts(&home, out).await,
        Command::Agent(AgentCmd::Tasks) => trade::agent_tasks(&home, out).await,
        Command::Agent(AgentCmd::Prices) => trade::agent_prices(&home, out).await,
        Command::Agent(AgentCmd::Accept { id }) => trade::agent_accept(&home, &id, out).await,
        Command::Agent(AgentCmd::Reject { id }) => trade::agent_reject(&home, &id, out).await,
        Command::Task(TaskCmd::Announce { file }) => trade::task_announce(&home, &file, out).await,
        Command::Task(TaskCmd::List) => trade::task_list(&home, out).await,
        Command::Task(TaskCmd::Show { id }) => trade::task_show(&home, &id, out).await,
        Command::Task(TaskCmd::Cancel { id }) => trade::task_cancel(&home, &id, out).await,
        Command::Task(TaskCmd::Pay {
            id,
            compute,
            storage,
        }) => {
            let on = |v: Option<String>| v.map(|v| v == "on");
            trade::task_pay(&home, &id, on(compute), on(storage), out).await
        }
        Command::Vm(VmCmd::List) => trade::vm_list(&home, out).await,
        Command::Vm(VmCmd::Ssh { id, command }) => trade::vm_ssh(&home, &id, &command).await,
        Command::Vm(VmCmd::Exec { id, command }) => trade::vm_exec(&home, &id, &command).await,
        Command::Vm(VmCmd::Forward {
            id,
            forwards,
            reverse,
        }) => trade::vm_forward(&home, &id, &forwards, &reverse).await,
        Command::App(AppCmd::List) => trade::app_list(&home, out).await,
        Command::Vm(VmCmd::Stop { id }) => trade::vm_stop(&home, &id, out).await,
        Command::Job(JobCmd::Spark {
            task,
            class,
            jar,
            args,
            conf,
            guest_java_opts,
            register_timeout,
        }) => {
            let job = jobs::SparkJob {
                task,
                class,
                jar,
                args,
                conf,
                guest_java_opts,
                register_timeout: std::time::Duration::from_secs(register_timeout),
            };
            let code = jobs::spark(&home, job).await?;
            std::process::exit(code);
        }
        Command::Job(JobCmd::Dask {
            task,
            script,
            args,
            register_timeout,
        }) => {
            let job = jobs::DaskJob {
                task,
                script,
                args,
                register_timeout: std::time::Duration::from_secs(register_timeout),
            };
            let code = jobs::dask(&home, job).await?;
            std::process::exit(code);
        }
        Command::Fs(cmd) => fs::run(&home, cmd, out).await,
        Command::Dashboard => commands::dashboard(&home, out).await,
        Command::Devnet {
            providers,
            primes_below,
            job,
            keep,
        } => devnet::run(home_flag, providers, primes_below, job, keep, out).await,
    }
}
