//! The `zennet-pay` protocol: what a node and a publisher say to each other
//! inside the SSH subsystem of that name. Frames are borsh values behind a
//! 4-byte big-endian length; a frame above [`MAX_FRAME`] is refused before
//! it is read.
//!
//! A contract runs: node `Join` → publisher `Terms` (the channel is open on
//! chain by then) → node `Status` once the VM is up → node `Usage` every
//! payout interval, publisher `Voucher` in answer → either side `Bye`, after
//! which the node sends a final `Usage`, gets a final `Voucher` and closes
//! the channel on chain.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zennet_chain::codec::amount_str;
use zennet_chain::task::Rates;
use zennet_chain::{Amount, Hash, SignedVoucher};

/// SSH subsystem name.
pub const SUBSYSTEM: &str = "zennet-pay";
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub enum Frame {
    /// Node → publisher, first frame: the task this connection serves.
    Join { version: u16, task: Hash },
    /// Publisher → node: the contract's terms; the channel is on chain.
    Terms(Terms),
    /// Node → publisher: the VM's state changed.
    Status(VmStatus),
    /// Node → publisher: metered usage so far and what it comes to.
    Usage(UsageReport),
    /// Publisher → node: a payment.
    Voucher(SignedVoucher),
    /// Either side: the contract is ending (or refused), with the reason.
    Bye { reason: String },
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct Terms {
    pub channel: Hash,
    /// Seconds between usage reports; negative: prepay that many seconds.
    pub payout_interval_secs: i32,
    pub lease_secs: u32,
    /// OpenSSH public key line the VM must let in as root.
    pub vm_key: String,
    /// Whether the publisher pays for the persistent volume.
    pub storage_paid: bool,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum VmPhase {
    Booting,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct VmStatus {
    pub phase: VmPhase,
    /// The VM's SSH host key (OpenSSH line), so the publisher can pin it.
    pub host_key: Option<String>,
    /// Launch to sshd ready, in milliseconds.
    pub boot_ms: u64,
}

/// Counters since the contract started. Each report repeats the totals,
/// so a lost report costs nothing.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Usage {
    /// Wall time the VM has been metered.
    pub wall_ms: u64,
    /// CPU time from the VM's cgroup.
    pub cpu_ms: u64,
    /// Guest memory held × seconds.
    pub memory_mib_secs: u64,
    /// Persistent volume size × seconds (0 when storage is not paid).
    pub storage_gib_secs: u64,
    /// Bytes carried by the tunnel's port forward.
    pub traffic_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct UsageReport {
    pub seq: u64,
    pub usage: Usage,
    /// What the usage comes to at the task's rates, by [`price`].
    pub accrued: Amount,
    /// The last report: the VM has stopped.
    pub last: bool,
}

/// What `usage` costs at `rates` on a machine scoring `compute_per_core`
/// compute units per core: CPU-seconds × score is compute-unit-seconds.
/// Both sides compute it the same way, in integers.
pub fn price(rates: &Rates, compute_per_core: u32, usage: &Usage) -> Amount {
    let u = |v: u64| v as u128;
    let compute =
        u(usage.cpu_ms) * u(compute_per_core as u64) * rates.per_compute_unit_second / 1000;
    let memory = u(usage.memory_mib_secs) * rates.per_memory_gib_hour / (1024 * 3600);
    let storage = u(usage.storage_gib_secs) * rates.per_storage_gib_hour / 3600;
    let traffic = u(usage.traffic_bytes) * rates.per_traffic_gb / 1_000_000_000;
    let base = u(usage.wall_ms) * rates.base_per_second / 1000;
    compute + memory + storage + traffic + base
}

/// The most `price` can reach per second for a VM of `cores` cores and
/// `memory_mib`, with `storage_gib` of paid volume — the publisher's own
/// bound on what a report may claim.
pub fn max_price_per_sec(
    rates: &Rates,
    compute_per_core: u32,
    cores: u32,
    memory_mib: u64,
    storage_gib: u32,
) -> Amount {
    price(
        rates,
        compute_per_core,
        &Usage {
            wall_ms: 1000,
            cpu_ms: 1000 * cores as u64,
            memory_mib_secs: memory_mib,
            storage_gib_secs: storage_gib as u64,
            traffic_bytes: 0,
        },
    ) + 1
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the zennet-pay stream")]
    Closed,
    #[error("zennet-pay frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed zennet-pay frame: {0}")]
    Malformed(String),
    #[error("zennet-pay i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let body = borsh::to_vec(frame).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    borsh::from_slice(&body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// A `zennet-pay` stream whose receiving side is cancel-safe: a reader
/// task owns the read half, so `recv` can sit in a `select!` next to
/// timers without losing half a frame.
pub struct PayStream {
    frames: tokio::sync::mpsc::Receiver<Result<Frame, WireError>>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
}

impl PayStream {
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> PayStream {
        let (mut reader, writer) = tokio::io::split(stream);
        let (tx, frames) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut reader).await;
                let stop = frame.is_err();
                if tx.send(frame).await.is_err() || stop {
                    return;
                }
            }
        });
        PayStream {
            frames,
            writer: Box::new(writer),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        write_frame(&mut self.writer, frame).await
    }

    /// The next frame; cancel-safe.
    pub async fn recv(&mut self) -> Result<Frame, WireError> {
        self.frames.recv().await.unwrap_or(Err(WireError::Closed))
    }
}

/// Wraps an amount for JSON views.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AmountView(#[serde(with = "amount_str")] pub Amount);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let frames = vec![
            Frame::Join {
                version: PROTOCOL_VERSION,
                task: Hash([7; 32]),
            },
            Frame::Usage(UsageReport {
                seq: 3,
                usage: Usage {
                    cpu_ms: 5,
                    ..Default::default()
                },
                accrued: 99,
                last: false,
            }),
            Frame::Bye {
                reason: "done".into(),
            },
        ];
        for f in &frames {
            write_frame(&mut a, f).await.unwrap();
        }
        for f in &frames {
            assert_eq!(&read_frame(&mut b).await.unwrap(), f);
        }
        // An oversized length is refused without reading the body.
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
        // Garbage that does not decode.
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::Malformed(_))
        ));
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(WireError::Closed)));
    }

    #[test]
    fn price_adds_every_rate() {
        let rates = Rates {
            per_compute_unit_second: 1000,
            per_memory_gib_hour: 3_600_000,
            per_storage_gib_hour: 3600,
            per_traffic_gb: 1_000_000_000,
            base_per_second: 10,
        };
        let usage = Usage {
            wall_ms: 2000,
            cpu_ms: 1500,
            memory_mib_secs: 1024 * 2,
            storage_gib_secs: 2,
            traffic_bytes: 5,
        };
        // compute 1.5 s × 4 CU × 1000 + memory 2 GiB·s × 1000/s + storage 2 + traffic 5 + base 20
        assert_eq!(price(&rates, 4, &usage), 6000 + 2000 + 2 + 5 + 20);
        assert!(
            max_price_per_sec(&rates, 4, 1, 1024, 0)
                >= price(
                    &rates,
                    4,
                    &Usage {
                        wall_ms: 1000,
                        cpu_ms: 1000,
                        memory_mib_secs: 1024,
                        ..Default::default()
                    }
                )
        );
    }
}
