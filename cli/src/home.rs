//! A zennet home: the directory holding a user's key, config, genesis, chain
//! database and the running node's API address.
//!
//! ```text
//! HOME/key            secp256k1 secret key, hex (0600)
//! HOME/config.toml    node settings
//! HOME/genesis.toml   the chain this home belongs to
//! HOME/chain/         chain.db (SQLite) and ethash/ caches
//! HOME/fs/            the file store: index.db (SQLite) and parts/ by SHA-1
//! HOME/node.json      written by a running node: its API address and pid
//! HOME/api_token      the node API's bearer token, hex (0600; made by the
//!                     first `node run`, sent by every CLI command)
//! HOME/node.lock      held by a running node
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use zennet_chain::{Genesis, SecretKey};

pub struct Home {
    dir: PathBuf,
}

/// Node settings, `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    /// Publisher side (`node run --publish`).
    #[serde(default)]
    pub publisher: PublisherSection,
    /// Provider side (`node run --provide`): which tasks to accept.
    #[serde(default)]
    pub market: zennet_provider::market::MarketPolicy,
    /// Provider side: what this machine offers. Unset fields come from
    /// `capacity.json` (`zennet bench`), else from the host.
    #[serde(default)]
    pub provider: ProviderSection,
    /// The file network: store quota, HTTP serving, prices.
    #[serde(default)]
    pub fs: crate::fs::FsSection,
    /// Alerts posted to a webhook (the same ones the Prometheus rules raise).
    #[serde(default)]
    pub alerts: crate::observe::alerts::AlertsSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublisherSection {
    /// Where the SSH server nodes dial into listens.
    pub ssh_listen: String,
    /// `host:port` written into announcements (default: the listen address).
    pub endpoint: Option<String>,
    /// Compute is paid at no more than a VM's measured compute units per
    /// core × this; a node under half its claim even so is dropped.
    #[serde(default = "default_capacity_tolerance")]
    pub capacity_tolerance: f64,
    /// Where the web app proxy listens (`http://APPID.zennet.localhost:PORT/`;
    /// port 0: any free port, see `zennet app list`).
    pub apps_listen: String,
}

fn default_capacity_tolerance() -> f64 {
    4.0
}

impl Default for PublisherSection {
    fn default() -> Self {
        PublisherSection {
            ssh_listen: "127.0.0.1:7522".into(),
            endpoint: None,
            capacity_tolerance: default_capacity_tolerance(),
            apps_listen: "127.0.0.1:0".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSection {
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    /// Compute units per core (1 CU = 1000 prime events/s, see `zennet bench`).
    pub compute_per_core: Option<u32>,
    /// Seconds a VM stays paused for lack of payment before it is terminated.
    pub grace_secs: Option<u64>,
    /// Uids VM processes run as, one per VM, as `FIRST-LAST` (default
    /// 2100000000-2100009999).
    pub vm_uid_range: Option<String>,
    /// What a guest reaches: `isolated` (nothing; the default) or
    /// `internet` (public addresses only, shaped and metered).
    pub guest_network: Option<zennet_vm::GuestNetwork>,
    /// Where internet-mode VM uplinks take their /30s from (default
    /// 10.213.0.0/16).
    pub guest_subnet: Option<zennet_vm::Subnet>,
    /// Resolver told to internet-mode guests (a public address).
    pub guest_dns: Option<std::net::Ipv4Addr>,
    /// Bandwidth each way of an internet-mode VM whose task bought none.
    pub guest_bandwidth_mbps: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address of the HTTP JSON API. Loopback by default; port 0 picks a
    /// free port (the chosen one is written to node.json).
    pub api: String,
    /// Mining threads used by `node run --mine`.
    pub mining_threads: usize,
    /// Share of each mining thread's time spent hashing, in percent
    /// (1-100). The difficulty follows the hash rate, so a dev chain mined
    /// at 25% keeps its block time and leaves the cores to the VMs.
    #[serde(default = "default_mining_cpu_percent")]
    pub mining_cpu_percent: u8,
    /// libp2p listen multiaddrs (port 0 picks a free port).
    #[serde(default = "default_p2p_listen")]
    pub p2p_listen: Vec<String>,
    /// Peers to join at start, as multiaddrs ending in /p2p/PEER_ID.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    #[serde(default = "default_max_peers")]
    pub max_peers: u32,
}

fn default_p2p_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/0".into()]
}

fn default_max_peers() -> u32 {
    50
}

fn default_mining_cpu_percent() -> u8 {
    100
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node: NodeConfig {
                api: "127.0.0.1:0".into(),
                mining_threads: 1,
                mining_cpu_percent: default_mining_cpu_percent(),
                p2p_listen: default_p2p_listen(),
                bootstrap: vec![],
                max_peers: default_max_peers(),
            },
            publisher: PublisherSection::default(),
            market: Default::default(),
            provider: ProviderSection::default(),
            fs: Default::default(),
            alerts: Default::default(),
        }
    }
}

/// What a running node publishes in `node.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    pub api: String,
    pub pid: u32,
}

impl Home {
    /// `--home`, else `$ZENNET_HOME`, else `~/.zennet`.
    pub fn locate(flag: Option<PathBuf>) -> Result<Home> {
        let dir = match flag {
            Some(d) => d,
            None => match std::env::var_os("ZENNET_HOME") {
                Some(d) => PathBuf::from(d),
                None => {
                    let home =
                        std::env::var_os("HOME").context("HOME is not set; pass --home DIR")?;
                    PathBuf::from(home).join(".zennet")
                }
            },
        };
        Ok(Home { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn genesis_path(&self) -> PathBuf {
        self.dir.join("genesis.toml")
    }
    pub fn chain_dir(&self) -> PathBuf {
        self.dir.join("chain")
    }
    pub fn node_file_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    pub fn fs_dir(&self) -> PathBuf {
        self.dir.join("fs")
    }
    pub fn api_token_path(&self) -> PathBuf {
        self.dir.join("api_token")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("node.lock")
    }

    pub fn is_initialized(&self) -> bool {
        self.key_path().exists() && self.genesis_path().exists()
    }

    /// Creates the home. `genesis` builds the genesis from the new key's
    /// address (the dev preset prefunds it). Everything is written under a
    /// temporary name and renamed, so an interrupted init leaves no half home.
    pub fn init(&self, genesis: impl FnOnce(&SecretKey) -> Result<Genesis>) -> Result<SecretKey> {
        if self.is_initialized() {
            bail!(
                "{} is already a zennet home; pick another with --home DIR",
                self.dir.display()
            );
        }
        let key = SecretKey::generate();
        let genesis = genesis(&key)?;
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let config = toml::to_string_pretty(&Config::default())?;
        write_atomic(&self.config_path(), config.as_bytes(), 0o600)?;
        // Genesis, then the key last: a home counts as initialised only when both exist.
        write_atomic(&self.genesis_path(), genesis.to_toml().as_bytes(), 0o644)?;
        write_atomic(
            &self.key_path(),
            format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
            0o600,
        )?;
        Ok(key)
    }

    pub fn require_initialized(&self) -> Result<()> {
        if !self.is_initialized() {
            bail!(
                "{} is not a zennet home; create it with `zennet --home {} init`",
                self.dir.display(),
                self.dir.display()
            );
        }
        Ok(())
    }

    pub fn key(&self) -> Result<SecretKey> {
        self.require_initialized()?;
        let path = self.key_path();
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .with_context(|| format!("{} is not a hex key", path.display()))?;
        SecretKey::from_bytes(&bytes)
            .with_context(|| format!("{} holds no valid key", path.display()))
    }

    pub fn genesis(&self) -> Result<Genesis> {
        self.require_initialized()?;
        Ok(Genesis::load(&self.genesis_path())?)
    }

    pub fn config(&self) -> Result<Config> {
        let path = self.config_path();
        if !path.exists() {
            return Ok(Config::default());
        }
        let text = fs::read_to_string(&path)?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid config", path.display()))?;
        if !(1..=100).contains(&config.node.mining_cpu_percent) {
            bail!(
                "{}: [node] mining_cpu_percent = {} is not a share of a core; give 1 to 100",
                path.display(),
                config.node.mining_cpu_percent
            );
        }
        Ok(config)
    }

    /// Takes the home's node lock; fails if another node runs on this home.
    pub fn lock_node(&self) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.lock_path())?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(_) => bail!(
                "a node is already running on {}; stop it first or use another --home",
                self.dir.display()
            ),
        }
    }

    pub fn write_node_file(&self, node: &NodeFile) -> Result<()> {
        write_atomic(
            &self.node_file_path(),
            &serde_json::to_vec_pretty(node)?,
            0o600,
        )
    }

    pub fn remove_node_file(&self) {
        let _ = fs::remove_file(self.node_file_path());
    }

    /// The node API's token: read from `api_token`, made (32 random bytes,
    /// 0600) if the home has none yet. Only `node run` makes it.
    pub fn load_or_create_api_token(&self) -> Result<String> {
        if self.api_token_path().exists() {
            return self.api_token();
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).context("no randomness for the API token")?;
        let token = hex::encode(bytes);
        write_atomic(
            &self.api_token_path(),
            format!("{token}\n").as_bytes(),
            0o600,
        )?;
        Ok(token)
    }

    /// The node API's token, as the CLI sends it.
    pub fn api_token(&self) -> Result<String> {
        let path = self.api_token_path();
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the API token {}; start the node once with `zennet --home {} node run`",
                path.display(),
                self.dir.display()
            )
        })?;
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let token = text.trim().to_string();
        if token.len() < 32 {
            bail!(
                "{} holds no token; delete it and restart the node",
                path.display()
            );
        }
        Ok(token)
    }

    /// A client for the running node's API, carrying the token.
    pub fn client(&self) -> Result<crate::client::Client> {
        Ok(crate::client::Client::new(
            self.api_url()?,
            self.api_token()?,
        ))
    }

    /// The running node's API base URL.
    pub fn api_url(&self) -> Result<String> {
        self.require_initialized()?;
        let path = self.node_file_path();
        let text = fs::read_to_string(&path).map_err(|_| {
            anyhow::anyhow!(
                "no node is running for {}; start one with `zennet --home {} node run`",
                self.dir.display(),
                self.dir.display()
            )
        })?;
        let node: NodeFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        Ok(format!("http://{}", node.api))
    }
}

/// Writes `bytes` to a temporary file with `mode`, syncs it, then renames it
/// over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_private_key_and_refuses_twice() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().join("h"))).unwrap();
        let key = home.init(|k| Ok(Genesis::dev(k.address(), 1))).unwrap();
        assert_eq!(home.key().unwrap().address(), key.address());
        let mode = fs::metadata(home.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(home.genesis().unwrap().alloc[0].address, key.address());
        assert!(home.init(|k| Ok(Genesis::dev(k.address(), 1))).is_err());
        fs::set_permissions(home.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(home.key().is_err(), "a world-readable key is refused");
    }

    #[test]
    fn second_node_lock_fails() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().to_path_buf())).unwrap();
        let _held = home.lock_node().unwrap();
        assert!(home.lock_node().is_err());
    }

    #[test]
    fn a_mining_share_outside_1_to_100_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().join("h"))).unwrap();
        home.init(|k| Ok(Genesis::dev(k.address(), 1))).unwrap();
        assert_eq!(home.config().unwrap().node.mining_cpu_percent, 100);
        let text = fs::read_to_string(home.config_path()).unwrap();
        for bad in ["0", "101"] {
            let edited = text.replace(
                "mining_cpu_percent = 100",
                &format!("mining_cpu_percent = {bad}"),
            );
            fs::write(home.config_path(), edited).unwrap();
            let e = home.config().unwrap_err().to_string();
            assert!(
                e.contains("mining_cpu_percent") && e.contains("1 to 100"),
                "{e}"
            );
        }
    }
}
