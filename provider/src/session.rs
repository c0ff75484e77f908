//! One contract's life on the provider: a runner that reconnects to the
//! publisher with backoff, and per connection a session — tunnel, `Join`,
//! terms, the VM, usage reports every payout interval, vouchers checked
//! and stored by the payee, pause when unpaid, terminate after the grace
//! period, claim when the payer settles or expiry nears, close at the end.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use zennet_chain::Hash;
use zennet_pay::{PayError, Received};
use zennet_proto::{self as proto, Frame, PayStream, Usage, UsageReport, VmPhase, VmStatus};
use zennet_tunnel::Tunnel;
use zennet_vm::{StartVm, UsageCounters, VmState};

use crate::contract::{PaymentClock, Phase};
use crate::error::ProviderError;
use crate::service::Provider;
use crate::store::ContractRow;

/// Why a session ended early.
pub(crate) enum Session {
    /// Retry after a backoff (connection trouble).
    Retry(String),
    /// The contract cannot go on.
    Fatal(String),
}

fn retry(e: impl std::fmt::Display) -> Session {
    Session::Retry(e.to_string())
}

impl Provider {
    pub(crate) fn spawn_runner(self: &Arc<Self>, task: Hash) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.insert(task, ()).is_some() {
                return;
            }
        }
        let p = self.clone();
        tokio::spawn(async move {
            p.run_contract(task).await;
            p.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task);
        });
    }

    /// Runs a contract to its end, reconnecting with backoff.
    async fn run_contract(self: &Arc<Self>, task: Hash) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = self.session(task).await;
            let c = match self.store.get(&task) {
                Ok(Some(c)) => c,
                _ => return,
            };
            match outcome {
                Ok(()) if !c.active() => return,
                Ok(()) => backoff = Duration::from_secs(1),
                Err(Session::Fatal(reason)) => {
                    tracing::error!(%task, %reason, "contract aborted");
                    let _ = self.finish(c, Phase::Failed, &reason, None).await;
                    return;
                }
                Err(Session::Retry(reason)) if self.over_without_publisher(&c) => {
                    tracing::info!(%task, %reason, "task over while the publisher is unreachable; closing");
                    let _ = self
                        .finish(c, Phase::Ended, "task cancelled or lease over", None)
                        .await;
                    return;
                }
                Err(Session::Retry(reason)) => {
                    tracing::warn!(%task, %reason, retry_in = ?backoff, "publisher session lost");
                    // Settlement and expiry do not wait for the publisher.
                    if let Err(e) = self.watch_channel(&c) {
                        tracing::warn!(%task, error = %e, "channel watch");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// A contract can end without the publisher: its task was cancelled
    /// (or pruned) on chain, or its lease ran out.
    fn over_without_publisher(&self, c: &ContractRow) -> bool {
        let lease_over = c
            .started_ms
            .is_some_and(|s| now_ms() >= s + c.lease_secs as u64 * 1000);
        let cancelled = self
            .ledger
            .task(&c.task)
            .is_none_or(|t| t.cancelled_at.is_some());
        c.phase != Phase::Accepting && (lease_over || cancelled)
    }

    /// One connection to the publisher, from dial to disconnect or end.
    async fn session(self: &Arc<Self>, task: Hash) -> Result<(), Session> {
        let mut c = self
            .store
            .get(&task)
            .map_err(retry)?
            .ok_or_else(|| Session::Fatal("contract vanished".into()))?;
        if c.phase == Phase::Accepting {
            loop {
                if self.ledger.included_at(&c.acceptance_tx).is_some() {
                    break;
                }
                if !self.ledger.pending(&c.acceptance_tx) {
                    return Err(Session::Fatal(
                        "the acceptance was not mined (task full or expired?)".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            c.phase = Phase::Accepted;
            self.store.put(&c).map_err(retry)?;
        }
        let tunnel = Tunnel::dial(
            &c.endpoint,
            c.host_key_fingerprint,
            self.config.ssh_key.clone(),
        )
        .await
        .map_err(|e| {
            if e.is_fatal() {
                Session::Fatal(e.to_string())
            } else {
                Session::Retry(e.to_string())
            }
        })?;
        let mut pay = PayStream::new(
            tunnel
                .open_subsystem(proto::SUBSYSTEM)
                .await
                .map_err(retry)?,
        );
        pay.send(&Frame::Join {
            version: proto::PROTOCOL_VERSION,
            task,
        })
        .await
        .map_err(retry)?;
        let terms = {
            match tokio::time::timeout(Duration::from_secs(180), pay.recv()).await {
                Err(_) => {
                    return Err(Session::Retry(
                        "publisher sent no terms within 180 s".into(),
                    ));
                }
                Ok(Err(e)) => return Err(retry(e)),
                Ok(Ok(Frame::Terms(t))) => t,
                Ok(Ok(Frame::Bye { reason })) => {
                    if c.vm.is_some() || c.paid > 0 {
                        self.finish(c, Phase::Ended, &reason, None)
                            .await
                            .map_err(retry)?;
                        return Ok(());
                    }
                    return Err(Session::Fatal(format!("publisher refused: {reason}")));
                }
                Ok(Ok(other)) => {
                    return Err(Session::Retry(format!("expected terms, got {other:?}")));
                }
            }
        };
        // The channel must be the publisher's, to this node, on chain.
        match self.payee.admit(&terms.channel, &c.publisher) {
            Ok(_) => {}
            Err(e @ PayError::NotOnChain(_)) => return Err(retry(e)),
            Err(e @ PayError::WrongParties { .. }) => return Err(Session::Fatal(e.to_string())),
            Err(e) => return Err(retry(e)),
        }
        if c.channel.is_some_and(|old| old != terms.channel) {
            return Err(Session::Fatal(
                "the publisher switched channels mid-contract".into(),
            ));
        }
        c.channel = Some(terms.channel);
        c.paid = self.payee.paid(&terms.channel).map_err(retry)?;
        c.payout_interval_secs = terms.payout_interval_secs;
        c.lease_secs = terms.lease_secs;
        c.vm_key = Some(terms.vm_key.clone());
        c.storage_paid = terms.storage_paid;
        self.store.put(&c).map_err(retry)?;

        let vm_id = match &c.vm {
            Some(id) => id.clone(),
            None => {
                let started = Instant::now();
                let vm = self
                    .vms
                    .start(StartVm {
                        image: c.image_id.clone(),
                        cores: c.cores as u32,
                        cpu_quota: None,
                        mem_mib: c.memory_mib,
                        volume: (c.storage_gib > 0).then(|| volume_name(&task)),
                        volume_gib: (c.storage_gib > 0).then_some(c.storage_gib),
                        authorized_key: terms.vm_key.clone(),
                    })
                    .await
                    .map_err(|e| Session::Fatal(format!("VM launch: {e}")))?;
                c.vm = Some(vm.id.clone());
                c.started_ms = Some(now_ms());
                c.phase = Phase::Running;
                self.store.put(&c).map_err(retry)?;
                c.vm_host_key = self
                    .vms
                    .wait_ready(&vm.id, Duration::from_secs(180))
                    .await
                    .map_err(|e| Session::Fatal(e.to_string()))?;
                c.boot_ms = started.elapsed().as_millis() as u64;
                self.store.put(&c).map_err(retry)?;
                tracing::info!(%task, vm = %vm.id, boot_ms = c.boot_ms, "VM ready");
                vm.id
            }
        };
        let info = self
            .vms
            .info(&vm_id)
            .await
            .map_err(|e| Session::Fatal(e.to_string()))?;
        if !matches!(info.state, VmState::Running | VmState::Paused) {
            return Err(Session::Fatal(format!("VM {vm_id} is {:?}", info.state)));
        }
        c.forward_port = tunnel
            .forward(
                info.ssh_port,
                c.forward_port,
                self.vms.traffic_counter(&vm_id),
            )
            .await
            .map_err(retry)?;
        self.store.put(&c).map_err(retry)?;
        let phase = if c.phase == Phase::Paused {
            VmPhase::Paused
        } else {
            VmPhase::Running
        };
        let status = VmStatus {
            phase,
            host_key: c.vm_host_key.clone(),
            boot_ms: c.boot_ms,
        };
        pay.send(&Frame::Status(status)).await.map_err(retry)?;

        let reason = self.serve(&mut c, &mut pay, &vm_id).await?;
        self.finish(c, Phase::Ended, &reason, Some(&mut pay))
            .await
            .map_err(retry)?;
        tunnel.close().await;
        Ok(())
    }

    /// The metering loop of a connected contract; returns why it ends.
    async fn serve(
        &self,
        c: &mut ContractRow,
        pay: &mut PayStream,
        vm_id: &str,
    ) -> Result<String, Session> {
        let interval = Duration::from_secs(c.payout_interval_secs.unsigned_abs().max(1) as u64);
        let prepay = c.payout_interval_secs < 0;
        let late_after =
            interval.mul_f64(self.config.pause_after_intervals) + Duration::from_secs(1);
        let lease_end = c.started_ms.unwrap_or_else(now_ms) + c.lease_secs as u64 * 1000;
        let mut clock = PaymentClock::new(c.phase == Phase::Paused);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                frame = pay.recv() => match frame {
                    Ok(Frame::Voucher(v)) => {
                        if let Err(e) = self.take_voucher(c, v) {
                            tracing::warn!(task = %c.task, error = %e, "voucher refused");
                        }
                        clock.paid(c.paid);
                    }
                    Ok(Frame::Bye { reason }) => return Ok(reason),
                    Ok(Frame::Terms(t)) if t.storage_paid != c.storage_paid => {
                        tracing::info!(task = %c.task, storage_paid = t.storage_paid, "publisher changed storage payment");
                        c.storage_paid = t.storage_paid;
                        self.store.put(c).map_err(retry)?;
                    }
                    Ok(other) => tracing::debug!(?other, "ignored frame"),
                    Err(e) => return Err(retry(e)),
                },
                _ = tick.tick() => {}
            }
            if let Ok(info) = self.vms.info(vm_id).await {
                if !matches!(info.state, VmState::Running | VmState::Paused) {
                    return Ok(format!("the VM stopped ({:?})", info.state));
                }
                c.usage = metered(c, &info.usage);
                c.accrued = proto::price(&c.rates, c.compute_score, &c.usage);
            }
            if Instant::now() >= clock.next_report {
                clock.next_report = Instant::now() + interval;
                c.report_seq += 1;
                let report = UsageReport {
                    seq: c.report_seq,
                    usage: c.usage.clone(),
                    accrued: c.accrued,
                    last: false,
                };
                pay.send(&Frame::Usage(report)).await.map_err(retry)?;
                clock.reported(c.accrued);
                self.store.put(c).map_err(retry)?;
            }
            let late = if prepay {
                c.accrued > c.paid
            } else {
                clock.uncovered_for() > late_after
            };
            match (late, clock.paused_at) {
                (true, None) => {
                    tracing::warn!(task = %c.task, accrued = %c.accrued, paid = %c.paid, "unpaid: pausing the VM");
                    self.set_paused(c, pay, vm_id, true).await?;
                    clock.paused_at = Some(Instant::now());
                }
                (false, Some(_)) => {
                    tracing::info!(task = %c.task, "paid: resuming the VM");
                    self.set_paused(c, pay, vm_id, false).await?;
                    clock.paused_at = None;
                }
                (true, Some(at)) if at.elapsed() > self.config.grace => {
                    return Ok("terminated: unpaid past the grace period".into());
                }
                _ => {}
            }
            if now_ms() >= lease_end {
                return Ok("lease ended".into());
            }
            self.watch_channel(c).map_err(retry)?;
        }
    }

    /// Pauses or resumes the VM, records it and tells the publisher.
    async fn set_paused(
        &self,
        c: &mut ContractRow,
        pay: &mut PayStream,
        vm_id: &str,
        paused: bool,
    ) -> Result<(), Session> {
        let done = match paused {
            true => self.vms.pause(vm_id).await,
            false => self.vms.resume(vm_id).await,
        };
        done.map_err(retry)?;
        c.phase = if paused {
            Phase::Paused
        } else {
            Phase::Running
        };
        self.store.put(c).map_err(retry)?;
        let phase = if paused {
            VmPhase::Paused
        } else {
            VmPhase::Running
        };
        let s = VmStatus {
            phase,
            host_key: None,
            boot_ms: 0,
        };
        pay.send(&Frame::Status(s)).await.map_err(retry)
    }

    /// Hands a voucher to the payee, which checks it and stores it before
    /// it counts; then the contract row records what is paid.
    fn take_voucher(
        &self,
        c: &mut ContractRow,
        v: zennet_chain::SignedVoucher,
    ) -> Result<(), ProviderError> {
        if c.channel != Some(v.voucher.channel) {
            return Err(PayError::Unknown(v.voucher.channel).into());
        }
        if let Received::New { paid, .. } = self.payee.receive(v)? {
            c.paid = paid;
            self.store.put(c)?;
        }
        Ok(())
    }

    /// Claims when the payer starts settling or the channel nears expiry.
    fn watch_channel(&self, c: &ContractRow) -> Result<(), ProviderError> {
        let Some(channel) = c.channel else {
            return Ok(());
        };
        match self
            .payee
            .claim_if_due(&channel, self.config.claim_margin_blocks)
        {
            Ok(_) => Ok(()),
            Err(e @ PayError::Submit { .. }) => {
                tracing::warn!(%channel, error = %e, "claim refused");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the VM, sends the last report (when connected) and waits
    /// briefly for the last voucher, then closes the channel on chain.
    async fn finish(
        &self,
        mut c: ContractRow,
        phase: Phase,
        reason: &str,
        pay: Option<&mut PayStream>,
    ) -> Result<(), ProviderError> {
        if let Some(vm) = &c.vm {
            let _ = self.vms.stop(vm).await;
            if let Ok(info) = self.vms.info(vm).await {
                c.usage = metered(&c, &info.usage);
                c.accrued = proto::price(&c.rates, c.compute_score, &c.usage);
            }
        }
        if let Some(pay) = pay {
            c.report_seq += 1;
            let report = UsageReport {
                seq: c.report_seq,
                usage: c.usage.clone(),
                accrued: c.accrued,
                last: true,
            };
            if pay.send(&Frame::Usage(report)).await.is_ok() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, pay.recv()).await {
                    if let Frame::Voucher(v) = frame {
                        if let Err(e) = self.take_voucher(&mut c, v) {
                            tracing::warn!(task = %c.task, error = %e, "final voucher refused");
                        }
                        break;
                    }
                }
                let _ = pay
                    .send(&Frame::Bye {
                        reason: reason.to_string(),
                    })
                    .await;
            }
        }
        c.phase = phase;
        c.end_reason = Some(reason.to_string());
        self.store.put(&c)?;
        // A volume nobody pays for is not kept.
        if c.storage_gib > 0 && !c.storage_paid {
            let name = volume_name(&c.task);
            match self.vms.remove_volume(&name) {
                Ok(()) => tracing::info!(task = %c.task, volume = %name, "unpaid volume removed"),
                Err(e) => {
                    tracing::warn!(task = %c.task, error = %e, "could not remove the unpaid volume")
                }
            }
        }
        if let Some(channel) = c.channel {
            match self.payee.close(&channel) {
                Ok(Some(tx)) => {
                    tracing::info!(task = %c.task, %channel, %tx, paid = %c.paid, %reason, "contract over; closing the channel");
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%channel, error = %e, "could not close the channel"),
            }
        }
        Ok(())
    }
}

/// A contract's billable usage from its VM's metered counters.
fn metered(c: &ContractRow, counters: &UsageCounters) -> Usage {
    let secs = counters.seconds.max(0.0);
    Usage {
        wall_ms: (secs * 1000.0) as u64,
        cpu_ms: counters.cpu_ns / 1_000_000,
        memory_mib_secs: (c.memory_mib as f64 * secs) as u64,
        storage_gib_secs: if c.storage_paid {
            (c.storage_gib as f64 * secs) as u64
        } else {
            0
        },
        traffic_bytes: counters.traffic_bytes,
    }
}

/// The persistent volume a task's VM keeps on this node.
fn volume_name(task: &Hash) -> String {
    format!("task-{}", &task.to_string()[2..14])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
