//! The publisher's check of a node's claimed compute (RFC: "verify that
//! the payout changes are justified"). At VM start it runs the workload
//! behind `zennet bench`'s compute unit — sysbench's prime count below
//! 10,000, by trial division — inside the guest through the tunnel, and
//! turns the guest's rate into compute units per core:
//!
//! * the guest has only busybox, so the workload is an `awk` program;
//! * the same program runs on this host with the guest's own busybox
//!   (copied out of the guest once), which gives the host's awk rate;
//! * the host's compiled prime rate (`zennet_hwbench`) gives its compute
//!   units; guest CU = host CU × guest awk rate / host awk rate.
//!
//! Both sides time with the publisher's clock: the wall time of the ssh
//! command less an ssh round trip, doubling the work until a run takes at
//! least [`TARGET`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Each measured run takes at least this long.
pub const TARGET: Duration = Duration::from_millis(1500);
/// The workload stops doubling here (events).
const MAX_EVENTS: u64 = 1 << 12;
const SSH_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("ssh into the VM ({command}) failed: {detail}")]
    Ssh { command: String, detail: String },
    #[error("the VM's workload printed {0:?}, not a prime count")]
    Output(String),
    #[error("the workload took no measurable time beyond an ssh round trip")]
    NoTime,
    #[error("host calibration: {0}")]
    Host(String),
}

/// A VM reachable over ssh through its tunnel port.
pub struct Guest<'a> {
    pub port: u16,
    pub key: &'a Path,
    /// known_hosts file pinning the VM's host key (None: accept the first).
    pub known_hosts: &'a Path,
    pub pinned: bool,
}

/// The awk program: `n` events, each counting the primes below 10,000
/// (1229 of them); prints the total.
pub fn awk_workload(bb: &str, n: u64) -> String {
    format!(
        "{bb}awk 'BEGIN {{ t = 0; for (e = 0; e < {n}; e++) {{ c = 1; for (x = 3; x < 10000; x++) {{ p = 1; for (d = 2; d * d <= x; d++) if (x % d == 0) {{ p = 0; break }}; c += p }}; t += c }}; print t }}'"
    )
}

impl Guest<'_> {
    /// Runs `command` in the guest; its stdout and the wall time taken.
    pub async fn run(&self, command: &str) -> Result<(Vec<u8>, Duration), CapacityError> {
        let started = Instant::now();
        let out = tokio::process::Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                if self.pinned {
                    "StrictHostKeyChecking=yes"
                } else {
                    "StrictHostKeyChecking=accept-new"
                },
            ])
            .args(["-o", "ConnectTimeout=30", "-i"])
            .arg(self.key)
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", command])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(SSH_TIMEOUT, out)
            .await
            .map_err(|_| CapacityError::Ssh {
                command: short(command),
                detail: "timed out".into(),
            })?
            .map_err(|source| CapacityError::Spawn {
                program: "ssh",
                source,
            })?;
        if !out.status.success() {
            return Err(CapacityError::Ssh {
                command: short(command),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok((out.stdout, started.elapsed()))
    }
}

fn short(command: &str) -> String {
    command.chars().take(40).collect()
}

/// Events per second of the awk workload in the guest.
pub async fn guest_rate(guest: &Guest<'_>) -> Result<f64, CapacityError> {
    let mut round_trip = Duration::MAX;
    for _ in 0..2 {
        round_trip = round_trip.min(guest.run("true").await?.1);
    }
    let mut n = 1;
    loop {
        let (out, wall) = guest.run(&awk_workload("busybox ", n)).await?;
        check_count(&out, n)?;
        let took = wall.saturating_sub(round_trip);
        if took >= TARGET || n >= MAX_EVENTS {
            if took.is_zero() {
                return Err(CapacityError::NoTime);
            }
            return Ok(n as f64 / took.as_secs_f64());
        }
        n *= 2;
    }
}

/// The host's side of the calibration: (compute units per core, awk
/// events per second with the guest's busybox).
pub async fn host_calibration(guest: &Guest<'_>, dir: &Path) -> Result<(f64, f64), CapacityError> {
    let (binary, _) = guest.run("cat /bin/busybox").await?;
    let path: PathBuf = dir.join("guest-busybox");
    std::fs::write(&path, &binary).map_err(|e| CapacityError::Host(e.to_string()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| CapacityError::Host(e.to_string()))?;
    let cu = tokio::task::spawn_blocking(|| zennet_hwbench::compute_units_per_core(TARGET))
        .await
        .map_err(|e| CapacityError::Host(e.to_string()))?
        .map_err(|e| CapacityError::Host(e.to_string()))?;
    let mut n = 1;
    loop {
        let started = Instant::now();
        let out = tokio::process::Command::new(&path)
            .args([
                "sh",
                "-c",
                &awk_workload(&format!("{} ", path.display()), n),
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| CapacityError::Spawn {
                program: "the guest's busybox",
                source,
            })?;
        let took = started.elapsed();
        check_count(&out.stdout, n)?;
        if took >= TARGET || n >= MAX_EVENTS {
            return Ok((cu, n as f64 / took.as_secs_f64()));
        }
        n *= 2;
    }
}

/// The workload must have counted 1229 primes per event.
fn check_count(out: &[u8], n: u64) -> Result<(), CapacityError> {
    let text = String::from_utf8_lossy(out).trim().to_string();
    match text.parse::<u64>() {
        Ok(t) if t == 1229 * n => Ok(()),
        _ => Err(CapacityError::Output(text)),
    }
}

/// What the publisher pays compute at, in compute units per core: the
/// node's claim, never above the announcement's maximum, and never above
/// the measured figure × `tolerance` once measured.
pub fn paid_score(claimed: u32, max_per_core: u32, measured: Option<f64>, tolerance: f64) -> u32 {
    let mut score = claimed.min(max_per_core);
    if let Some(m) = measured {
        score = score.min((m * tolerance).floor().clamp(0.0, u32::MAX as f64) as u32);
    }
    score
}

/// Whether a measurement is far below the claim: even with the tolerance,
/// less than half of it. Such a node is recorded and dropped.
pub fn far_below(claimed: u32, measured: f64, tolerance: f64) -> bool {
    measured * tolerance * 2.0 < claimed as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_never_trusts_the_claim_alone() {
        // A node claiming 4e9 compute units per core is paid at the
        // announcement's maximum, then at what was measured.
        assert_eq!(paid_score(4_000_000_000, 16, None, 4.0), 16);
        assert_eq!(paid_score(4_000_000_000, 16, Some(1.2), 4.0), 4);
        assert_eq!(paid_score(3, 16, Some(1.2), 4.0), 3);
        assert!(far_below(4_000_000_000, 1.2, 4.0));
        assert!(!far_below(3, 1.2, 4.0));
        assert!(far_below(100, 1.2, 4.0));
    }

    #[test]
    fn the_workload_counts_primes() {
        assert!(awk_workload("busybox ", 2).contains("e < 2"));
        assert!(check_count(b"2458\n", 2).is_ok());
        assert!(check_count(b"2457\n", 2).is_err());
    }
}
