//! QMP control of a QEMU process through the `qapi` crate.
//!
//! The handful of commands the runtime needs are defined here rather than
//! taken from `qapi::qmp`: the generated types follow a newer QEMU schema
//! than Debian's 7.2 in places (enum values and required fields), and a
//! reply that does not parse would make a working VM look broken.

use std::path::Path;
use std::time::Duration;

use qapi::futures::{QapiService, QmpStreamTokio};
use serde::{Deserialize, Serialize};
use tokio::io::WriteHalf;
use tokio::net::UnixStream;

use crate::error::VmError;

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

pub struct Qmp {
    service: QapiService<Writer>,
    _events: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BlockStats {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub qdev: Option<String>,
    pub stats: BlockDeviceStats,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BlockDeviceStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
}

macro_rules! command {
    ($name:ident, $wire:expr, $ok:ty) => {
        #[derive(Serialize)]
        struct $name {}
        impl qapi::Command for $name {
            type Ok = $ok;
            const NAME: &'static str = $wire;
            const ALLOW_OOB: bool = false;
        }
        impl qapi::qmp::QmpCommand for $name {}
    };
}

command!(QueryStatus, "query-status", StatusInfo);
command!(Stop, "stop", qapi::Empty);
command!(Cont, "cont", qapi::Empty);
command!(Quit, "quit", qapi::Empty);
command!(QueryBlockstats, "query-blockstats", Vec<BlockStats>);

impl Qmp {
    /// Connects to the QMP socket, retrying while QEMU starts up.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, VmError> {
        let started = std::time::Instant::now();
        let stream = loop {
            match QmpStreamTokio::open_uds(socket).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < timeout => {
                    tracing::trace!(error = %e, "QMP not ready yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(VmError::QmpConnect {
                        path: socket.to_path_buf(),
                        reason: e.to_string(),
                    });
                }
            }
        };
        let stream = stream.negotiate().await.map_err(|e| VmError::QmpConnect {
            path: socket.to_path_buf(),
            reason: format!("capability negotiation failed: {e}"),
        })?;
        let (service, events) = stream.spawn_tokio();
        Ok(Qmp {
            service,
            _events: events,
        })
    }

    pub async fn status(&self) -> Result<StatusInfo, VmError> {
        self.run(QueryStatus {}).await
    }

    /// Pauses the guest's vCPUs (it keeps its memory).
    pub async fn stop(&self) -> Result<(), VmError> {
        self.run(Stop {}).await.map(drop)
    }

    pub async fn cont(&self) -> Result<(), VmError> {
        self.run(Cont {}).await.map(drop)
    }

    /// Asks QEMU to exit; the connection closes as it does.
    pub async fn quit(&self) -> Result<(), VmError> {
        match self.run(Quit {}).await {
            Ok(_) => Ok(()),
            // QEMU may close the socket before the reply arrives.
            Err(VmError::Qmp { reason, .. })
                if reason.contains("closed") || reason.contains("EOF") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn block_stats(&self) -> Result<Vec<BlockStats>, VmError> {
        self.run(QueryBlockstats {}).await
    }

    async fn run<C: qapi::qmp::QmpCommand>(&self, command: C) -> Result<C::Ok, VmError> {
        let name = C::NAME;
        match tokio::time::timeout(Duration::from_secs(10), self.service.execute(command)).await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(e)) => Err(VmError::Qmp {
                command: name,
                reason: e.to_string(),
            }),
            Err(_) => Err(VmError::QmpTimeout { command: name }),
        }
    }
}
