//! One admitted node's `zennet-pay` session: `Join`, terms as soon as the
//! channel is on its way (opened when the acceptance was mined; the node
//! boots the VM while it is mined), then a voucher for every
//! usage report — for no more than the publisher's own bound: the most the
//! accepted VM could have used since the contract started, at the task's
//! rates. A negative payout interval prepays that many seconds ahead.
//! Payment stops on cancel, lease end, or when the operator switches it
//! off.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use zennet_chain::task::{Acceptance, TaskRecord};
use zennet_chain::{Amount, Hash, SignedVoucher};
use zennet_proto::{self as proto, Frame, PayStream, Terms, UsageReport, VmPhase};
use zennet_tunnel::{Connection, Forwards};

use crate::capacity;
use crate::error::PublisherError;
use crate::service::{Live, Publisher, now_ms};
use crate::store::ContractRow;

impl Publisher {
    /// One node's `zennet-pay` session.
    pub(crate) async fn serve(self: Arc<Self>, conn: Connection) -> Result<(), PublisherError> {
        let mut pay = PayStream::new(conn.stream);
        let first = tokio::time::timeout(Duration::from_secs(30), pay.recv())
            .await
            .map_err(|_| PublisherError::NoJoin)??;
        let Frame::Join { task, .. } = first else {
            return Err(PublisherError::NotJoin);
        };
        let refuse = |reason: String| Frame::Bye { reason };
        let (record, acceptance) = match self.contract_for(&task, &conn.key) {
            Ok(x) => x,
            Err(e) => {
                let _ = pay.send(&refuse(e.to_string())).await;
                return Err(e);
            }
        };
        let node = acceptance.node;
        // One live session per contract: a second Join is turned away.
        let (end_tx, mut end_rx) = mpsc::unbounded_channel();
        let duplicate = {
            let mut live = self.live();
            let duplicate = live.contains_key(&(task, node));
            if !duplicate {
                live.insert(
                    (task, node),
                    Live {
                        end: end_tx,
                        ports: conn.forwards.clone(),
                        joined: false,
                    },
                );
            }
            duplicate
        };
        if duplicate {
            let _ = pay.send(&refuse(proto::BYE_SESSION_OPEN.into())).await;
            return Err(PublisherError::DuplicateSession { task, node });
        }
        let result = self
            .session(&mut pay, &conn.forwards, &record, &acceptance, &mut end_rx)
            .await;
        self.live().remove(&(task, node));
        result
    }

    /// One VM's private-network link (`zennet-lan`): the task it belongs
    /// to (32 bytes), then its NIC's frames, plugged into the task's
    /// switch for as long as the link lasts. Only a key an acceptance of
    /// that task names gets a port, and only while its contract runs.
    pub(crate) async fn serve_lan(self: Arc<Self>, conn: Connection) -> Result<(), PublisherError> {
        let mut stream = conn.stream;
        let mut task = [0u8; 32];
        tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut task))
            .await
            .map_err(|_| PublisherError::NoLanTask)?
            .map_err(crate::lan::LanError::Io)?;
        let task = Hash(task);
        let (_, acceptance) = self.contract_for(&task, &conn.key)?;
        if self
            .store()
            .contract(&task, &acceptance.node)?
            .is_none_or(|c| c.ended_ms.is_some())
        {
            return Err(PublisherError::NoContract {
                task,
                node: acceptance.node,
            });
        }
        // The port lasts while the contract does: a node that keeps its
        // link open after the end (to go on hearing the task's network) is
        // unplugged.
        tokio::select! {
            served = self.lan.serve(task, acceptance.node, stream) => served?,
            () = self.contract_ended(task, acceptance.node) => {}
        }
        Ok(())
    }

    /// Returns once (task, node)'s contract has ended or is gone.
    async fn contract_ended(&self, task: Hash, node: zennet_chain::Address) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.store().contract(&task, &node) {
                Ok(Some(c)) if c.ended_ms.is_none() => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(%task, %node, error = %e, "private network: cannot read the contract");
                }
            }
        }
    }

    async fn session(
        &self,
        pay: &mut PayStream,
        forwards: &Forwards,
        record: &TaskRecord,
        acceptance: &Acceptance,
        end_rx: &mut mpsc::UnboundedReceiver<String>,
    ) -> Result<(), PublisherError> {
        let (task, node) = (record.id, acceptance.node);
        let refuse = |reason: String| Frame::Bye { reason };
        let existing = self.store().contract(&task, &node)?;
        let known = existing.as_ref().is_some_and(|c| c.joined);
        // A node whose contract was under way when the task was cancelled
        // still gets its last usage paid; a new one is turned away.
        if record.cancelled_at.is_some() && !known {
            pay.send(&refuse("task cancelled".into())).await.ok();
            return Ok(());
        }
        let mut c = self.ensure_contract(record, acceptance)?;
        if record.cancelled_at.is_some() && c.ended_ms.is_none() {
            c.end_reason.get_or_insert_with(|| "task cancelled".into());
        }
        if c.ended_ms.is_some() {
            let reason = c
                .end_reason
                .clone()
                .unwrap_or_else(|| "task cancelled".into());
            pay.send(&refuse(reason)).await.ok();
            return Ok(());
        }
        if !c.joined {
            c.joined = true;
            c.started_ms = now_ms();
            self.store().put_contract(&c)?;
        }
        let a = &record.announcement;
        let interval = a.payout_interval_secs;
        let lease_secs = a.lease_max_secs;
        let channel = c.channel.ok_or(PublisherError::ChannelNotOpen(task))?;
        // Terms go out while the channel is still being mined: the node
        // boots the VM meanwhile and admits the channel once it is on chain.
        if self.payer.open_failed(&channel) {
            return Err(PublisherError::ChannelNotOpen(channel));
        }
        let task_row = self.own_task(&task)?;
        let mut terms = Terms {
            channel,
            payout_interval_secs: interval,
            lease_secs,
            vm_key: self.vm_key_line.clone(),
            storage_paid: task_row.storage_paid,
            compute_per_core: c.paid_score,
        };
        pay.send(&Frame::Terms(terms.clone())).await?;
        if let Some(l) = self.live().get_mut(&(task, node)) {
            l.joined = true;
        }
        if let Some(v) = self.payer.last_voucher(&channel)? {
            // A reconnecting node gets the last voucher again.
            let _ = pay.send(&Frame::Voucher(v)).await;
        } else if interval < 0 {
            // Prepay: the first |interval| seconds before any work.
            let ahead =
                self.per_sec(record, acceptance, c.paid_score) * interval.unsigned_abs() as u128;
            if let Some(v) = self.payer.pay(&channel, ahead, ahead)? {
                let _ = pay.send(&Frame::Voucher(v)).await;
            }
        }

        let lease_end = tokio::time::Instant::now()
            + Duration::from_millis(
                (c.started_ms + lease_secs as u64 * 1000).saturating_sub(now_ms()),
            );
        // A contract that was ending when the node dropped ends now.
        let mut ending = c.end_reason.is_some();
        if let Some(reason) = c.end_reason.clone() {
            let _ = pay.send(&Frame::Bye { reason }).await;
        }
        let (measured_tx, mut measured_rx) = mpsc::channel(1);
        let mut measuring = false;
        loop {
            let frame = tokio::select! {
                f = pay.recv() => f,
                Some(reason) = end_rx.recv(), if !ending => {
                    ending = true;
                    c.end_reason = Some(reason.clone());
                    self.store().put_contract(&c)?;
                    let _ = pay.send(&Frame::Bye { reason }).await;
                    continue;
                }
                _ = tokio::time::sleep_until(lease_end), if !ending => {
                    ending = true;
                    c.end_reason = Some("lease ended".into());
                    let _ = pay.send(&Frame::Bye { reason: "lease ended".into() }).await;
                    continue;
                }
                Some(measured) = measured_rx.recv() => {
                    measuring = false;
                    match measured {
                        Ok(cu) => {
                            if let Some(reason) = self.measured(&mut c, record, acceptance, cu)? {
                                ending = true;
                                c.end_reason = Some(reason.clone());
                                self.store().put_contract(&c)?;
                                let _ = pay.send(&Frame::Bye { reason }).await;
                            } else if c.paid_score != terms.compute_per_core {
                                terms.compute_per_core = c.paid_score;
                                pay.send(&Frame::Terms(terms.clone())).await?;
                            }
                        }
                        Err(e) => tracing::warn!(%task, %node, error = %e, "capacity check failed; it runs again when the node reconnects"),
                    }
                    continue;
                }
            };
            match frame {
                Ok(Frame::Status(s)) => {
                    c.phase = s.phase;
                    if s.host_key.is_some() {
                        c.host_key = s.host_key;
                    }
                    if s.boot_ms > 0 {
                        c.boot_ms = s.boot_ms;
                    }
                    self.store().put_contract(&c)?;
                    tracing::info!(%task, %node, phase = ?c.phase, "VM status");
                    if c.phase == VmPhase::Running
                        && c.measured_cu.is_none()
                        && !measuring
                        && !ending
                        && let Some(port) = forwards.ports().last().copied()
                    {
                        measuring = true;
                        self.spawn_capacity_check(&c, port, measured_tx.clone());
                    }
                    // Every time the VM reports running (a restarted VM
                    // lost it): its place on the task's private network.
                    if c.phase == VmPhase::Running
                        && !ending
                        && let Some(port) = forwards.ports().last().copied()
                    {
                        self.spawn_lan_setup(&c, port);
                    }
                }
                Ok(Frame::Usage(mut r)) => {
                    let row = self.own_task(&task)?;
                    if row.storage_paid != terms.storage_paid {
                        // The node stops (or starts) billing the volume.
                        terms.storage_paid = row.storage_paid;
                        pay.send(&Frame::Terms(terms.clone())).await?;
                    }
                    if !row.storage_paid {
                        r.usage.storage_gib_secs = 0;
                    }
                    // Priced here too: the node's own figure is only an upper bound.
                    let own = proto::price(&a.rates, c.paid_score, &r.usage);
                    r.accrued = r.accrued.min(own);
                    let per_sec = self.per_sec(record, acceptance, c.paid_score);
                    if let Some(v) =
                        self.answer_usage(&mut c, &r, row.paying, ending, per_sec, interval)?
                    {
                        pay.send(&Frame::Voucher(v)).await?;
                    }
                    if r.last {
                        c.phase = VmPhase::Stopped;
                        self.store().put_contract(&c)?;
                    }
                }
                Ok(Frame::Bye { reason }) => {
                    c.ended_ms = Some(now_ms());
                    c.end_reason.get_or_insert(reason.clone());
                    c.phase = VmPhase::Stopped;
                    self.store().put_contract(&c)?;
                    let paid = self.payer.channel(&channel).map_or(0, |o| o.paid);
                    tracing::info!(%task, %node, %reason, %paid, "contract ended");
                    return Ok(());
                }
                Ok(other) => {
                    return Err(PublisherError::UnexpectedFrame(format!("{other:?}")));
                }
                Err(e) => {
                    tracing::info!(%task, %node, error = %e, "node disconnected; waiting for it to come back");
                    return Ok(());
                }
            }
        }
    }

    /// Records a capacity measurement: the score compute is paid at from
    /// now on, or — far below the claim — why the node is dropped.
    fn measured(
        &self,
        c: &mut ContractRow,
        record: &TaskRecord,
        acceptance: &Acceptance,
        cu: f64,
    ) -> Result<Option<String>, PublisherError> {
        c.measured_cu = Some(cu);
        c.paid_score = self.paid_score(record, acceptance, Some(cu));
        self.store().put_contract(c)?;
        let claimed = acceptance.compute_score;
        tracing::info!(task = %c.task, node = %c.node, measured_cu = cu, claimed, paid_at = c.paid_score, "capacity measured");
        if capacity::far_below(claimed, cu, self.capacity_tolerance) {
            tracing::warn!(task = %c.task, node = %c.node, measured_cu = cu, claimed, "node far below its claimed compute; dropping it");
            return Ok(Some(format!(
                "capacity check: the VM measured {cu:.2} compute units per core; the node claimed {claimed}"
            )));
        }
        Ok(None)
    }

    /// Gives `c`'s VM its address on the task's private network, in the
    /// background (over ssh, as the capacity check runs).
    fn spawn_lan_setup(&self, c: &ContractRow, port: u16) {
        let (task, node) = (c.task, c.node);
        let place = match self.lan.place(task, node) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%task, %node, error = %e, "private network: no place");
                return;
            }
        };
        let access = self.guest_access(c, port);
        tokio::spawn(async move {
            let result = async {
                access.prepare()?;
                access.guest().run(&crate::lan::guest_setup(place)).await
            }
            .await;
            match result {
                Ok((out, _)) => {
                    tracing::info!(%task, %node, address = %crate::lan::address(place), nic = %String::from_utf8_lossy(&out).trim(), "private network: VM addressed")
                }
                Err(e) => {
                    tracing::warn!(%task, %node, error = %e, "private network: cannot address the VM")
                }
            }
        });
    }

    /// What ssh into `c`'s VM through loopback `port` needs.
    fn guest_access(&self, c: &ContractRow, port: u16) -> GuestAccess {
        let dir = self.dir.join("capacity");
        GuestAccess {
            known_hosts: dir.join(format!("known_hosts-{}", &c.acceptance.to_string()[2..14])),
            dir,
            host_key: c.host_key.clone(),
            key: self.vm_key_path().to_path_buf(),
            port,
        }
    }

    /// Runs the capacity check of `c`'s VM in the background.
    fn spawn_capacity_check(
        &self,
        c: &ContractRow,
        port: u16,
        done: mpsc::Sender<Result<f64, capacity::CapacityError>>,
    ) {
        let access = self.guest_access(c, port);
        let dir = access.dir.clone();
        let calibration = self.calibration_handle();
        tokio::spawn(async move {
            let result = async {
                access.prepare()?;
                let guest = access.guest();
                let (host_cu, host_rate) = {
                    let mut cal = calibration.lock().await;
                    match *cal {
                        Some(c) => c,
                        None => {
                            let c = capacity::host_calibration(&guest, &dir).await?;
                            *cal = Some(c);
                            c
                        }
                    }
                };
                let guest_rate = capacity::guest_rate(&guest).await?;
                Ok(host_cu * guest_rate / host_rate)
            }
            .await;
            let _ = done.send(result).await;
        });
    }

    /// The on-chain task (ours, not pruned) and the acceptance naming `key`.
    fn contract_for(
        &self,
        task: &Hash,
        key: &Hash,
    ) -> Result<(TaskRecord, Acceptance), PublisherError> {
        let record = self
            .ledger
            .task(task)
            .filter(|t| t.publisher == self.key.address())
            .ok_or(PublisherError::NotLiveTask(*task))?;
        let acceptance = record
            .acceptances
            .iter()
            .find(|a| a.ssh_key_fingerprint == *key)
            .cloned()
            .ok_or(PublisherError::NoAcceptance(*task))?;
        Ok((record, acceptance))
    }

    /// The voucher answering a usage report, if one is due: no more than
    /// reported, no more than the bound, no more than the deposit.
    fn answer_usage(
        &self,
        c: &mut ContractRow,
        r: &UsageReport,
        paying: bool,
        ending: bool,
        per_sec: Amount,
        interval: i32,
    ) -> Result<Option<SignedVoucher>, PublisherError> {
        c.reported = r.accrued;
        c.usage = r.usage.clone();
        self.store().put_contract(c)?;
        if !paying {
            return Ok(None);
        }
        let channel = c.channel.expect("a channel is open");
        let elapsed_secs = (now_ms().saturating_sub(c.started_ms) / 1000) as u128
            + interval.unsigned_abs() as u128
            + 5;
        let mut amount = r.accrued;
        let mut bound = per_sec * elapsed_secs;
        if interval < 0 && !ending && !r.last {
            let ahead = per_sec * interval.unsigned_abs() as u128;
            amount = amount.min(bound) + ahead;
            bound += ahead;
        }
        if let Some(v) = self.payer.pay(&channel, amount, bound)? {
            return Ok(Some(v));
        }
        // A final report always gets an answer, so the node can close.
        match r.last {
            true => Ok(self.payer.last_voucher(&channel)?),
            false => Ok(None),
        }
    }
}

/// ssh into one VM through its tunnel port, pinned to the host key the
/// node reported (accept-new before it has).
struct GuestAccess {
    dir: std::path::PathBuf,
    known_hosts: std::path::PathBuf,
    host_key: Option<String>,
    key: std::path::PathBuf,
    port: u16,
}

impl GuestAccess {
    /// Writes the pinned key's known_hosts file.
    fn prepare(&self) -> Result<(), capacity::CapacityError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| capacity::CapacityError::Host(e.to_string()))?;
        if let Some(k) = &self.host_key {
            std::fs::write(
                &self.known_hosts,
                format!("[127.0.0.1]:{} {k}\n", self.port),
            )
            .map_err(|e| capacity::CapacityError::Host(e.to_string()))?;
        }
        Ok(())
    }

    fn guest(&self) -> capacity::Guest<'_> {
        capacity::Guest {
            port: self.port,
            key: &self.key,
            known_hosts: &self.known_hosts,
            pinned: self.host_key.is_some(),
        }
    }
}
