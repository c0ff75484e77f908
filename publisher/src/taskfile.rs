//! `task.toml`: what a publisher writes to announce a task. Everything the
//! announcement carries, in units people write; the endpoint, host key,
//! prune height and proof of work are filled in by the publisher node.

use std::path::Path;

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::task::{CoreChoice, ImageChoice, Rates, TaskAnnouncement, VmRequirements};
use zennet_chain::{Amount, FileHash, Hash};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// OS images the VMs may run, best first. A missing hash is taken from
    /// the image of that id built on this node.
    pub images: Vec<ImageRef>,
    /// Core-count choices, e.g. `[1, 2]`.
    pub cores: Vec<u16>,
    #[serde(default = "one")]
    pub min_compute_per_core: u32,
    /// The most compute units per core this task pays for (a node may not
    /// claim more on chain).
    #[serde(default = "sixteen")]
    pub max_compute_per_core: u32,
    pub memory_mib_per_core: u32,
    #[serde(default)]
    pub min_memory_mbps: u32,
    #[serde(default)]
    pub min_disk_gib: u32,
    #[serde(default)]
    pub min_disk_mbps: u32,
    #[serde(default)]
    pub min_bandwidth_mbps: u32,
    /// Size of the persistent volume each VM keeps (0: none).
    #[serde(default)]
    pub persistent_storage_gib: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    #[serde(default)]
    pub lease_min_secs: u32,
    pub lease_max_secs: u32,
    /// Seconds between vouchers; negative prepays that many seconds.
    pub payout_interval_secs: i32,
    pub rates: RatesFile,
    /// Blocks during which nodes may accept.
    pub acceptance_window: u64,
    /// Proof of work an acceptance must carry.
    pub acceptance_difficulty: u64,
    #[serde(default)]
    pub info: String,
    /// A port the VMs serve HTTP on: this node's app proxy routes
    /// `http://APPID.zennet.localhost:PORT/` to it, round-robin across the
    /// task's VMs (see `zennet app list`). Kept by the publisher only; not
    /// part of the announcement.
    #[serde(default)]
    pub web_port: Option<u16>,
}

fn one() -> u32 {
    1
}

fn sixteen() -> u32 {
    16
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    pub id: String,
    #[serde(default)]
    pub hash: Option<Hash>,
    /// The image's file id on the file network (`zennet image publish`
    /// prints it): providers that have not built it fetch it from there.
    #[serde(default)]
    pub file: Option<FileHash>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesFile {
    #[serde(with = "amount_str", default)]
    pub per_compute_unit_second: Amount,
    #[serde(with = "amount_str", default)]
    pub per_memory_gib_hour: Amount,
    #[serde(with = "amount_str", default)]
    pub per_storage_gib_hour: Amount,
    #[serde(with = "amount_str", default)]
    pub per_traffic_gb: Amount,
    #[serde(with = "amount_str", default)]
    pub base_per_second: Amount,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error("task file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("task file: {0}")]
    Invalid(String),
}

impl TaskFile {
    pub fn load(path: &Path) -> Result<TaskFile, TaskFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TaskFileError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<TaskFile, TaskFileError> {
        toml::from_str(text).map_err(|e| {
            TaskFileError::Invalid(e.message().to_string() + &span_hint(text, e.span()))
        })
    }

    /// The announcement with `pow_nonce` 0: the caller solves it. Image
    /// hashes must be resolved (see [`TaskFile::images`]).
    pub fn announcement(
        &self,
        endpoint: &str,
        host_key_fingerprint: Hash,
        prune_height: u64,
    ) -> Result<TaskAnnouncement, TaskFileError> {
        let images = self
            .images
            .iter()
            .map(|i| {
                i.hash
                    .map(|hash| ImageChoice {
                        id: i.id.clone(),
                        hash,
                        file: i.file,
                    })
                    .ok_or_else(|| TaskFileError::Invalid(format!("image {} has no hash", i.id)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let r = &self.rates;
        let a = TaskAnnouncement {
            vm: VmRequirements {
                images,
                min_bandwidth_mbps: self.min_bandwidth_mbps,
                min_disk_gib: self.min_disk_gib,
                min_disk_mbps: self.min_disk_mbps,
                persistent_storage_gib: self.persistent_storage_gib,
                cores: self
                    .cores
                    .iter()
                    .map(|&cores| CoreChoice {
                        cores,
                        min_compute_per_core: self.min_compute_per_core,
                    })
                    .collect(),
                max_compute_per_core: self.max_compute_per_core,
                memory_mib_per_core: self.memory_mib_per_core,
                min_memory_mbps: self.min_memory_mbps,
            },
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            endpoint: endpoint.to_string(),
            host_key_fingerprint,
            lease_min_secs: self.lease_min_secs.min(self.lease_max_secs),
            lease_max_secs: self.lease_max_secs,
            payout_interval_secs: self.payout_interval_secs,
            rates: Rates {
                per_compute_unit_second: r.per_compute_unit_second,
                per_memory_gib_hour: r.per_memory_gib_hour,
                per_storage_gib_hour: r.per_storage_gib_hour,
                per_traffic_gb: r.per_traffic_gb,
                base_per_second: r.base_per_second,
            },
            acceptance_window: self.acceptance_window,
            acceptance_difficulty: self.acceptance_difficulty,
            prune_height,
            info: self.info.clone(),
            pow_nonce: 0,
        };
        a.check_fields()
            .map_err(|e| TaskFileError::Invalid(e.to_string()))?;
        Ok(a)
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        images = [{ id = "zennet-tiny", hash = "0x0101010101010101010101010101010101010101010101010101010101010101" }]
        cores = [1]
        memory_mib_per_core = 256
        min_instances = 1
        max_instances = 2
        lease_max_secs = 600
        payout_interval_secs = 5
        acceptance_window = 50
        acceptance_difficulty = 100
        [rates]
        per_compute_unit_second = "1000"
    "#;

    #[test]
    fn a_good_file_becomes_an_announcement() {
        let f = TaskFile::parse(GOOD).unwrap();
        let a = f
            .announcement("127.0.0.1:7522", Hash([2; 32]), 500)
            .unwrap();
        assert_eq!(a.vm.cores[0].cores, 1);
        assert_eq!(a.rates.per_compute_unit_second, 1000);
        assert_eq!(a.max_instances, 2);
        assert_eq!(a.vm.images[0].file, None);
    }

    #[test]
    fn an_image_named_by_file_id_carries_it_into_the_announcement() {
        let file = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
        let text = GOOD.replace("\" }]", &format!("\", file = \"{file}\" }}]"));
        let f = TaskFile::parse(&text).unwrap();
        let a = f
            .announcement("127.0.0.1:7522", Hash([2; 32]), 500)
            .unwrap();
        assert_eq!(a.vm.images[0].file, Some(file.parse().unwrap()));
        let err = TaskFile::parse(&text.replace(file, "c0ffee"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("file id"), "{err}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = TaskFile::parse(&GOOD.replace("cores = [1]", "cores = [1]\nbogus = 3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = TaskFile::parse(&GOOD.replace("\"1000\"", "\"ten\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amount") || err.contains("ten"), "{err}");
        let f = TaskFile::parse(&GOOD.replace("max_instances = 2", "max_instances = 0")).unwrap();
        let err = f
            .announcement("127.0.0.1:7522", Hash([2; 32]), 500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("instances"), "{err}");
        let f =
            TaskFile::parse(&GOOD.replace("payout_interval_secs = 5", "payout_interval_secs = 0"))
                .unwrap();
        assert!(f.announcement("h:1", Hash([2; 32]), 5).is_err());
    }
}
