//! One contract's life on the provider: the I/O around the pure
//! [`Contract`] state machine. A runner owns the contract from acceptance
//! to the channel's close. It dials the publisher in the background (with
//! backoff) while the machine keeps ticking — so a VM whose publisher is
//! gone is still paused when payment is late — checks the terms against
//! the announcement, starts the VM while the publisher's channel is being
//! mined and then checks the channel against the lease, turns frames,
//! metering ticks and chain tips into events, and carries out the
//! machine's actions: reports, pause and resume, claims, the last report,
//! the close steps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zennet_chain::{Hash, SignedVoucher};
use zennet_pay::{CloseStep, PayError, Received};
use zennet_proto::{self as proto, Frame, PayStream, Terms, Usage, UsageReport, VmPhase, VmStatus};
use zennet_tunnel::Tunnel;
use zennet_vm::{StartVm, UsageCounters, VmState};

use crate::contract::{Action, ChannelAt, Contract, Event, Phase, Rules};
use crate::error::ProviderError;
use crate::service::Provider;
use crate::store::ContractRow;

/// Why a connection attempt failed.
enum Session {
    /// Retry after a backoff (connection trouble).
    Retry(String),
    /// The contract cannot go on.
    Fatal(String),
}

fn retry(e: impl std::fmt::Display) -> Session {
    Session::Retry(e.to_string())
}

/// A joined session: the tunnel, its payment stream and the terms.
struct Joined {
    tunnel: Tunnel,
    pay: PayStream,
    terms: Terms,
}

/// A connected publisher.
struct Link {
    tunnel: Tunnel,
    pay: PayStream,
    /// The VM's private-network NIC carried to the publisher's switch;
    /// it stops with the link.
    _lan: Option<LanLink>,
}

/// Copies a VM's private-network frames between its NIC's socket and the
/// publisher's `zennet-lan` stream, counting them as the VM's traffic.
struct LanLink(tokio::task::JoinHandle<()>);

impl Drop for LanLink {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the node waits for the publisher's terms after `Join`.
const TERMS_TIMEOUT: Duration = Duration::from_secs(180);
/// Blocks the node waits for the terms' channel to be mined while it
/// boots the VM (unpaid until then, so the wait is short); at least
/// [`MIN_CHANNEL_WAIT`]. A redial does not wait.
const CHANNEL_WAIT_BLOCKS: u32 = 5;
const MIN_CHANNEL_WAIT: Duration = Duration::from_secs(10);
/// How long the last voucher may take after the last report.
const LAST_VOUCHER_TIMEOUT: Duration = Duration::from_secs(10);

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
            let mut runner = Runner {
                p: p.clone(),
                task,
                link: None,
                failed: false,
                reported: None,
                was_linked: false,
            };
            if let Err(e) = runner.run().await {
                tracing::error!(%task, error = %e, "contract runner stopped");
            }
            p.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task);
            p.pause_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task);
        });
    }
}

/// The I/O side of one contract.
struct Runner {
    p: Arc<Provider>,
    task: Hash,
    link: Option<Link>,
    /// The contract ended by a fault (ends `Failed` rather than `Ended`).
    failed: bool,
    /// When the oldest usage report not yet answered by a voucher went out.
    reported: Option<Instant>,
    /// A session was joined before (the next join is a reconnect).
    was_linked: bool,
}

impl Runner {
    async fn run(&mut self) -> Result<(), ProviderError> {
        let p = self.p.clone();
        let Some(mut row) = p.store.get(&self.task)? else {
            return Ok(());
        };
        let mut tip = p.ledger.tip();
        if row.phase == Phase::Accepting {
            loop {
                if p.ledger.included_at(&row.acceptance_tx).is_some() {
                    row.phase = Phase::Accepted;
                    p.store.put(&row)?;
                    break;
                }
                if !p.ledger.pending(&row.acceptance_tx) {
                    row.phase = Phase::Failed;
                    row.end_reason =
                        Some("the acceptance was not mined (task full or expired?)".into());
                    p.store.put(&row)?;
                    return Ok(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), tip.changed()).await;
            }
        }
        let now = Instant::now();
        let mut machine: Option<Contract> = match row.phase {
            Phase::Closing => Some(Contract::closing(
                self.rules(&row),
                now,
                row.end_reason.clone().unwrap_or_default(),
            )),
            Phase::Running | Phase::Paused if row.vm.is_some() => Some(self.restore(&row, now)),
            Phase::Ended | Phase::Failed => return Ok(()),
            _ => None,
        };
        if machine.as_ref().is_some_and(|m| m.is_over()) {
            // A close interrupted by a restart goes on at once.
            if self.close_step(&mut row).await? {
                return Ok(());
            }
        }
        let mut dial: Option<JoinHandle<Result<Joined, Session>>> = None;
        let mut next_dial = Instant::now();
        let mut backoff = Duration::from_secs(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let over = machine.as_ref().is_some_and(|m| m.is_over());
            if self.link.is_none() && dial.is_none() && !over && Instant::now() >= next_dial {
                dial = Some(tokio::spawn(join(p.clone(), row.clone())));
            }
            let dialing = dial.is_some();
            let linked = self.link.is_some();
            let event = tokio::select! {
                joined = async { dial.as_mut().expect("dialing").await }, if dialing => {
                    dial = None;
                    let joined = joined.unwrap_or_else(|e| Err(Session::Retry(e.to_string())));
                    let connected = match joined {
                        Ok(j) => self.connect(&mut row, &mut machine, j).await,
                        Err(e) => Err(e),
                    };
                    match connected {
                        Ok(()) => {
                            backoff = Duration::from_secs(1);
                            if std::mem::replace(&mut self.was_linked, true) {
                                p.stats.tunnel_reconnects.inc();
                            }
                            // The boot ran before any tick: meter it, so
                            // the connect-time report asks for it.
                            match self.meter(&mut row, machine.as_ref()).await {
                                Some(end @ Event::End { .. }) => Some(end),
                                _ => Some(Event::Connected {
                                    now: Instant::now(),
                                    accrued: row.accrued,
                                }),
                            }
                        }
                        Err(Session::Fatal(reason)) => {
                            tracing::error!(task = %self.task, %reason, "contract aborted");
                            self.failed = true;
                            if machine.is_none() {
                                machine = Some(Contract::new(
                                    self.rules(&row),
                                    Instant::now(),
                                    Instant::now(),
                                    row.paid,
                                    false,
                                ));
                            }
                            Some(Event::End { reason })
                        }
                        Err(Session::Retry(reason)) => {
                            tracing::warn!(task = %self.task, %reason, retry_in = ?backoff, "publisher session failed");
                            next_dial = Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            self.over_without_publisher(&row)
                                .map(|reason| Event::End { reason })
                        }
                    }
                }
                frame = async { self.link.as_mut().expect("linked").pay.recv().await }, if linked => {
                    match frame {
                        Ok(Frame::Voucher(v)) => self.take_voucher(&mut row, v),
                        Ok(Frame::Bye { reason }) => Some(Event::End { reason }),
                        Ok(Frame::Terms(t)) => {
                            self.terms_changed(&mut row, &t)?;
                            None
                        }
                        Ok(other) => {
                            tracing::debug!(?other, "ignored frame");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(task = %self.task, error = %e, "publisher disconnected");
                            self.link = None;
                            // A report on the lost link goes unanswered.
                            self.reported = None;
                            next_dial = Instant::now() + backoff;
                            Some(Event::Disconnected { now: Instant::now() })
                        }
                    }
                }
                _ = tick.tick() => self.meter(&mut row, machine.as_ref()).await,
                changed = tip.changed() => {
                    if changed.is_err() {
                        // The node is shutting down.
                        return Ok(());
                    }
                    match self.channel_at(&row) {
                        Some(ev) if machine.is_some() => Some(ev),
                        _ => None,
                    }
                    .or_else(|| {
                        (self.link.is_none())
                            .then(|| self.over_without_publisher(&row))
                            .flatten()
                            .map(|reason| Event::End { reason })
                    })
                }
                _ = tokio::time::sleep_until(next_dial), if !linked && !dialing && !over => None,
            };
            let (Some(m), Some(event)) = (machine.as_mut(), event) else {
                continue;
            };
            let actions = m.on(event);
            self.publish_pause_clock(m);
            for action in actions {
                if self
                    .act(&mut row, machine.as_mut().expect("some"), action)
                    .await?
                {
                    return Ok(());
                }
            }
        }
    }

    /// Puts the machine's pause deadline where the views read it.
    fn publish_pause_clock(&self, m: &Contract) {
        let mut clocks = self.p.pause_at.lock().unwrap_or_else(|p| p.into_inner());
        match m.pause_in(Instant::now()) {
            Some(left) => {
                clocks.insert(self.task, now_ms() + left.as_millis() as u64);
            }
            None => {
                clocks.remove(&self.task);
            }
        }
    }

    /// The contract's rules, from what the node accepted on chain.
    fn rules(&self, row: &ContractRow) -> Rules {
        let cfg = &self.p.config;
        let interval = Duration::from_secs(row.payout_interval_secs.unsigned_abs().max(1) as u64);
        Rules {
            interval,
            prepay: row.payout_interval_secs < 0,
            late_after: interval.mul_f64(cfg.pause_after_intervals) + Duration::from_secs(1),
            grace: cfg.grace,
            lease: Duration::from_secs(row.lease_secs as u64),
            claim_margin: cfg.claim_margin_blocks,
        }
    }

    /// The machine of a contract whose VM runs, after a restart.
    fn restore(&self, row: &ContractRow, now: Instant) -> Contract {
        let since_start =
            Duration::from_millis(now_ms().saturating_sub(row.started_ms.unwrap_or(0)));
        let started = now.checked_sub(since_start).unwrap_or(now);
        let mut m = Contract::new(
            self.rules(row),
            started,
            now,
            row.paid,
            row.phase == Phase::Paused,
        );
        m.accrued = row.accrued;
        m.report_seq = row.report_seq;
        m
    }

    /// After a join: the terms checked, the channel admitted, the VM
    /// started (first time), the forward set up and the status sent.
    async fn connect(
        &mut self,
        row: &mut ContractRow,
        machine: &mut Option<Contract>,
        j: Joined,
    ) -> Result<(), Session> {
        let p = self.p.clone();
        let Joined {
            tunnel,
            mut pay,
            terms,
        } = j;
        check_terms(row, &terms).map_err(Session::Fatal)?;
        let remaining = match row.started_ms {
            Some(s) => (s + row.lease_secs as u64 * 1000).saturating_sub(now_ms()),
            None => row.lease_secs as u64 * 1000,
        };
        let genesis = p.ledger.genesis();
        let min_expiry = p.ledger.height()
            + remaining.div_ceil(genesis.consensus.block_time_ms)
            + genesis.economics.channel_challenge_period
            + p.config.claim_margin_blocks;
        if row.channel.is_some_and(|old| old != terms.channel) {
            return Err(Session::Fatal(
                "the publisher switched channels mid-contract".into(),
            ));
        }
        row.vm_key = Some(terms.vm_key.clone());
        row.storage_paid = terms.storage_paid;
        row.compute_score = row.compute_score.min(terms.compute_per_core);
        p.store.put(row).map_err(retry)?;
        // Terms come as soon as the publisher's channel is on its way; the
        // first boot (the long part) runs while it is mined. A channel that
        // never comes costs the boot: the VM, unpaid, is paused and then
        // ended by the contract's own rules. Only the first boot waits for
        // the channel: on a redial the loop must go on ticking (pausing,
        // ending an unpaid VM), so a channel still missing then is a retry
        // at once.
        let publisher = row.publisher;
        let (vm_id, admitted) = match row.vm.clone() {
            None => {
                let block = Duration::from_millis(genesis.consensus.block_time_ms);
                let wait = (block * CHANNEL_WAIT_BLOCKS).max(MIN_CHANNEL_WAIT);
                let admit = admit_when_mined(&p, &terms.channel, &publisher, min_expiry, wait);
                let rules = self.rules(row);
                let boot = boot(&p, self.task, rules, row, machine, &terms);
                let (vm_id, admitted) = tokio::join!(boot, admit);
                (vm_id?, admitted)
            }
            Some(vm_id) => {
                let admit =
                    admit_when_mined(&p, &terms.channel, &publisher, min_expiry, Duration::ZERO);
                (vm_id, admit.await)
            }
        };
        admitted?;
        row.channel = Some(terms.channel);
        row.paid = p.payee.paid(&terms.channel).map_err(retry)?;
        p.store.put(row).map_err(retry)?;
        if machine.is_none() {
            *machine = Some(self.restore(row, Instant::now()));
        }
        let info = p
            .vms
            .info(&vm_id)
            .await
            .map_err(|e| Session::Fatal(e.to_string()))?;
        if !matches!(info.state, VmState::Running | VmState::Paused) {
            return Err(Session::Fatal(format!("VM {vm_id} is {:?}", info.state)));
        }
        row.forward_port = tunnel
            .forward(
                info.ssh_port,
                row.forward_port,
                p.vms.traffic_counter(&vm_id),
            )
            .await
            .map_err(retry)?;
        p.store.put(row).map_err(retry)?;
        let lan = join_lan(&p, &tunnel, &vm_id, &row.task).await;
        let status = VmStatus {
            phase: if row.phase == Phase::Paused {
                VmPhase::Paused
            } else {
                VmPhase::Running
            },
            host_key: row.vm_host_key.clone(),
            boot_ms: row.boot_ms,
        };
        pay.send(&Frame::Status(status)).await.map_err(retry)?;
        self.link = Some(Link {
            tunnel,
            pay,
            _lan: lan,
        });
        Ok(())
    }

    /// The publisher changed what it pays for (storage) or the compute score
    /// it pays at (after measuring the VM); the rates stay the announcement's.
    fn terms_changed(&self, row: &mut ContractRow, t: &Terms) -> Result<(), ProviderError> {
        if t.storage_paid != row.storage_paid {
            tracing::info!(task = %self.task, storage_paid = t.storage_paid, "publisher changed storage payment");
            row.storage_paid = t.storage_paid;
        }
        if t.compute_per_core < row.compute_score {
            tracing::warn!(task = %self.task, claimed = row.compute_score, paid_at = t.compute_per_core, "the publisher measured less compute than claimed");
            row.compute_score = t.compute_per_core;
        }
        self.p.store.put(row)?;
        Ok(())
    }

    /// A metering tick: the VM's usage priced, or the VM's end.
    async fn meter(&mut self, row: &mut ContractRow, machine: Option<&Contract>) -> Option<Event> {
        let m = machine?;
        if m.is_over() {
            return None;
        }
        let vm = row.vm.clone()?;
        let info = self.p.vms.info(&vm).await.ok()?;
        if !matches!(info.state, VmState::Running | VmState::Paused) {
            return Some(Event::End {
                reason: format!("the VM stopped ({:?})", info.state),
            });
        }
        row.usage = metered(row, &info.usage);
        row.accrued = proto::price(&row.rates, row.compute_score, &row.usage);
        Some(Event::Tick {
            now: Instant::now(),
            accrued: row.accrued,
        })
    }

    /// The channel at the new tip, as the machine sees it.
    fn channel_at(&self, row: &ContractRow) -> Option<Event> {
        let channel = row.channel?;
        let ch = self.p.ledger.channel(&channel);
        Some(Event::Tip {
            channel: ch.map(|ch| ChannelAt {
                height: self.p.ledger.height(),
                expiry_height: ch.expiry_height,
                settle_at: ch.settle_at,
            }),
        })
    }

    /// A contract can end without the publisher: its task was cancelled
    /// (or pruned) on chain.
    fn over_without_publisher(&self, row: &ContractRow) -> Option<String> {
        let cancelled = self
            .p
            .ledger
            .task(&row.task)
            .is_none_or(|t| t.cancelled_at.is_some());
        (row.vm.is_some() && cancelled).then(|| "task cancelled or pruned on chain".to_string())
    }

    /// Hands a voucher to the payee, which checks it and stores it before
    /// it counts; then the row records what is paid.
    fn take_voucher(&mut self, row: &mut ContractRow, v: SignedVoucher) -> Option<Event> {
        if row.channel != Some(v.voucher.channel) {
            tracing::warn!(task = %self.task, channel = %v.voucher.channel, "voucher for another channel refused");
            return None;
        }
        match self.p.payee.receive(v) {
            Ok(Received::New { paid, .. }) => {
                self.p.stats.vouchers.inc();
                if let Some(sent) = self.reported.take() {
                    self.p
                        .stats
                        .voucher_latency
                        .observe(sent.elapsed().as_secs_f64());
                }
                row.paid = paid;
                if let Err(e) = self.p.store.put(row) {
                    tracing::warn!(task = %self.task, error = %e, "contract row not saved");
                }
                Some(Event::Paid {
                    now: Instant::now(),
                    paid,
                })
            }
            Ok(Received::Repeat) => None,
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "voucher refused");
                None
            }
        }
    }

    /// Carries out one action; `true` when the contract is over for good.
    async fn act(
        &mut self,
        row: &mut ContractRow,
        m: &mut Contract,
        action: Action,
    ) -> Result<bool, ProviderError> {
        let p = self.p.clone();
        row.report_seq = m.report_seq;
        match action {
            Action::Report { seq } => {
                if let Some(link) = &mut self.link {
                    let report = UsageReport {
                        seq,
                        usage: row.usage.clone(),
                        accrued: row.accrued,
                        last: false,
                    };
                    match link.pay.send(&Frame::Usage(report)).await {
                        Ok(()) => {
                            self.reported.get_or_insert_with(Instant::now);
                        }
                        Err(e) => tracing::warn!(task = %self.task, error = %e, "report not sent"),
                    }
                }
                p.store.put(row)?;
            }
            Action::Pause | Action::Resume => {
                let paused = action == Action::Pause;
                let vm = row.vm.clone().unwrap_or_default();
                let done = match paused {
                    true => {
                        tracing::warn!(task = %self.task, accrued = %row.accrued, paid = %row.paid, connected = self.link.is_some(), "unpaid: pausing the VM");
                        p.vms.pause(&vm).await
                    }
                    false => {
                        tracing::info!(task = %self.task, "paid: resuming the VM");
                        p.vms.resume(&vm).await
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(task = %self.task, error = %e, "pause/resume failed");
                }
                row.phase = m.phase;
                p.store.put(row)?;
                if let Some(link) = &mut self.link {
                    let s = VmStatus {
                        phase: if paused {
                            VmPhase::Paused
                        } else {
                            VmPhase::Running
                        },
                        host_key: None,
                        boot_ms: 0,
                    };
                    let _ = link.pay.send(&Frame::Status(s)).await;
                }
            }
            Action::Claim => {
                if let Some(channel) = row.channel {
                    match p.payee.claim_now(&channel) {
                        Ok(Some(tx)) => tracing::info!(task = %self.task, %tx, "claimed"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(task = %self.task, error = %e, "claim refused"),
                    }
                }
            }
            Action::Finish { reason } => self.finish(row, m, &reason).await?,
            Action::Close => return self.close_step(row).await,
            Action::Done => return self.done(row),
        }
        Ok(false)
    }

    /// Stops the VM, sends the last report (when connected) and waits
    /// briefly for the last voucher; the contract is `Closing` from here.
    async fn finish(
        &mut self,
        row: &mut ContractRow,
        m: &mut Contract,
        reason: &str,
    ) -> Result<(), ProviderError> {
        let p = self.p.clone();
        if let Some(vm) = &row.vm {
            let _ = p.vms.stop(vm).await;
            if let Ok(info) = p.vms.info(vm).await {
                row.usage = metered(row, &info.usage);
                row.accrued = proto::price(&row.rates, row.compute_score, &row.usage);
            }
        }
        row.phase = Phase::Closing;
        row.end_reason = Some(reason.to_string());
        p.store.put(row)?;
        if let Some(mut link) = self.link.take() {
            row.report_seq += 1;
            m.report_seq = row.report_seq;
            let report = UsageReport {
                seq: row.report_seq,
                usage: row.usage.clone(),
                accrued: row.accrued,
                last: true,
            };
            if link.pay.send(&Frame::Usage(report)).await.is_ok() {
                let deadline = Instant::now() + LAST_VOUCHER_TIMEOUT;
                while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, link.pay.recv()).await {
                    if let Frame::Voucher(v) = frame {
                        if let Some(Event::Paid { now, paid }) = self.take_voucher(row, v) {
                            m.on(Event::Paid { now, paid });
                        }
                        break;
                    }
                }
                let _ = link
                    .pay
                    .send(&Frame::Bye {
                        reason: reason.to_string(),
                    })
                    .await;
            }
            link.tunnel.close().await;
        }
        p.store.put(row)?;
        tracing::info!(task = %self.task, %reason, paid = %row.paid, accrued = %row.accrued, "contract over; closing the channel");
        // A volume nobody pays for is not kept.
        if row.storage_gib > 0 && !row.storage_paid {
            let name = volume_name(&self.task);
            match p.vms.remove_volume(&name) {
                Ok(()) => {
                    tracing::info!(task = %self.task, volume = %name, "unpaid volume removed")
                }
                Err(e) => {
                    tracing::warn!(task = %self.task, error = %e, "could not remove the unpaid volume")
                }
            }
        }
        Ok(())
    }

    /// One close step; `true` when the channel is gone (the contract is over).
    async fn close_step(&mut self, row: &mut ContractRow) -> Result<bool, ProviderError> {
        let Some(channel) = row.channel else {
            return self.done(row);
        };
        match self.p.payee.close_step(&channel) {
            Ok(CloseStep::Gone) => self.done(row),
            Ok(step) => {
                tracing::debug!(task = %self.task, ?step, "closing");
                Ok(false)
            }
            Err(PayError::Unknown(_)) => self.done(row),
            Err(e) => {
                tracing::warn!(task = %self.task, %channel, error = %e, "close step failed; retrying at the next block");
                Ok(false)
            }
        }
    }

    fn done(&self, row: &mut ContractRow) -> Result<bool, ProviderError> {
        row.phase = if self.failed {
            Phase::Failed
        } else {
            Phase::Ended
        };
        self.p.store.put(row)?;
        tracing::info!(task = %self.task, phase = ?row.phase, paid = %row.paid, "contract closed");
        Ok(true)
    }
}

/// Starts the contract's VM (the first time) and waits for its sshd.
async fn boot(
    p: &Provider,
    task: Hash,
    rules: Rules,
    row: &mut ContractRow,
    machine: &mut Option<Contract>,
    terms: &Terms,
) -> Result<String, Session> {
    let started = Instant::now();
    let vm = p
        .vms
        .start(StartVm {
            image: row.image_id.clone(),
            cores: row.cores as u32,
            cpu_quota: None,
            mem_mib: row.memory_mib,
            volume: (row.storage_gib > 0).then(|| volume_name(&task)),
            volume_gib: (row.storage_gib > 0).then_some(row.storage_gib),
            // The disk the task asked for (what the market counted).
            scratch_gib: p
                .ledger
                .task(&row.task)
                .map(|t| crate::market::scratch_gib(&t.announcement.vm)),
            network: None,
            // The bandwidth the task bought: at least the
            // announcement's minimum, each way.
            bandwidth_mbps: p
                .ledger
                .task(&row.task)
                .map(|t| t.announcement.vm.min_bandwidth_mbps)
                .filter(|mbps| *mbps > 0),
            authorized_key: terms.vm_key.clone(),
        })
        .await
        .map_err(|e| Session::Fatal(format!("VM launch: {e}")))?;
    row.vm = Some(vm.id.clone());
    row.started_ms = Some(now_ms());
    row.phase = Phase::Running;
    p.store.put(row).map_err(retry)?;
    *machine = Some(Contract::new(
        rules,
        started,
        Instant::now(),
        row.paid,
        false,
    ));
    row.vm_host_key = p
        .vms
        .wait_ready(&vm.id, Duration::from_secs(180))
        .await
        .map_err(|e| Session::Fatal(e.to_string()))?;
    row.boot_ms = started.elapsed().as_millis() as u64;
    p.store.put(row).map_err(retry)?;
    tracing::info!(%task, vm = %vm.id, boot_ms = row.boot_ms, "VM ready");
    Ok(vm.id)
}

/// Admits the publisher's channel once it is on chain, waiting up to
/// `wait` for it to be mined (then: retry, while the contract's rules
/// pause the unpaid VM). A channel with the wrong parties, too short an
/// expiry or already settling ends the contract.
async fn admit_when_mined(
    p: &Provider,
    channel: &Hash,
    publisher: &zennet_chain::Address,
    min_expiry: u64,
    wait: Duration,
) -> Result<(), Session> {
    let mut tip = p.ledger.tip();
    let deadline = Instant::now() + wait;
    loop {
        match p.payee.admit(channel, publisher, min_expiry) {
            Ok(_) => return Ok(()),
            Err(e @ PayError::NotOnChain(_)) if Instant::now() >= deadline => {
                return Err(retry(e));
            }
            Err(PayError::NotOnChain(_)) => {}
            Err(
                e @ (PayError::WrongParties { .. }
                | PayError::ExpiresTooSoon { .. }
                | PayError::Settling { .. }),
            ) => return Err(Session::Fatal(e.to_string())),
            Err(e) => return Err(retry(e)),
        }
        let _ = tokio::time::timeout_at(deadline, tip.changed()).await;
    }
}

/// Dials the publisher, opens `zennet-pay`, joins and waits for the terms.
async fn join(p: Arc<Provider>, row: ContractRow) -> Result<Joined, Session> {
    let tunnel = Tunnel::dial(
        &row.endpoint,
        row.host_key_fingerprint,
        p.config.ssh_key.clone(),
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
        task: row.task,
    })
    .await
    .map_err(retry)?;
    match tokio::time::timeout(TERMS_TIMEOUT, pay.recv()).await {
        Err(_) => Err(Session::Retry(format!(
            "publisher sent no terms within {} s",
            TERMS_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(retry(e)),
        Ok(Ok(frame)) => answer_to_join(frame).map(|terms| Joined { tunnel, pay, terms }),
    }
}

/// What the publisher's first frame means for the contract. A refusal ends
/// it, except the one saying this contract's session is still open: that
/// is this node's previous session (after a dropped connection or a
/// restart), which the publisher has not torn down yet, so dial again.
fn answer_to_join(frame: Frame) -> Result<Terms, Session> {
    match frame {
        Frame::Terms(terms) => Ok(terms),
        Frame::Bye { reason } if reason == proto::BYE_SESSION_OPEN => Err(Session::Retry(format!(
            "publisher: {reason} (our previous one, still closing)"
        ))),
        Frame::Bye { reason } => Err(Session::Fatal(format!("publisher refused: {reason}"))),
        other => Err(Session::Retry(format!("expected terms, got {other:?}"))),
    }
}

/// Joins VM `vm_id`'s private-network NIC to the publisher's switch over
/// the tunnel. Without it the VM still runs (a publisher that has no
/// switch refuses the subsystem; a backend may give no such NIC): the
/// private network is the publisher's to use, not a term of the contract.
async fn join_lan(p: &Provider, tunnel: &Tunnel, vm_id: &str, task: &Hash) -> Option<LanLink> {
    let nic = match p.vms.connect_lan(vm_id).await {
        Ok(Some(nic)) => nic,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(vm = %vm_id, error = %e, "private network: cannot reach the VM's NIC");
            return None;
        }
    };
    let mut stream = match tunnel.open_subsystem(proto::LAN_SUBSYSTEM).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(vm = %vm_id, error = %e, "private network: the publisher offers none");
            return None;
        }
    };
    // The publisher's switch learns which task's network this is.
    if let Err(e) = stream.write_all(&task.0).await {
        tracing::warn!(vm = %vm_id, error = %e, "private network: link lost");
        return None;
    }
    let mut nic = zennet_tunnel::counter::Counted::new(nic, p.vms.traffic_counter(vm_id));
    let vm = vm_id.to_string();
    Some(LanLink(tokio::spawn(async move {
        match tokio::io::copy_bidirectional(&mut nic, &mut stream).await {
            Ok((out, into)) => {
                tracing::debug!(%vm, out, into, "private network link closed")
            }
            Err(e) => tracing::debug!(%vm, error = %e, "private network link ended"),
        }
    })))
}

/// The node takes interval and lease only from the announcement it
/// accepted: terms that say otherwise are refused, with the reason.
pub fn check_terms(row: &ContractRow, t: &Terms) -> Result<(), String> {
    if t.payout_interval_secs != row.payout_interval_secs {
        return Err(format!(
            "the publisher's terms say a payout interval of {} s; its announcement says {} s",
            t.payout_interval_secs, row.payout_interval_secs
        ));
    }
    if t.lease_secs != row.lease_secs {
        return Err(format!(
            "the publisher's terms say a lease of {} s; its announcement says {} s",
            t.lease_secs, row.lease_secs
        ));
    }
    Ok(())
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
        // The tunnel's bytes, plus the guest's own internet traffic each
        // way (zero in isolated mode), all at `per_traffic_gb`.
        traffic_bytes: counters.traffic_bytes
            + counters.net_from_guest_bytes
            + counters.net_to_guest_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::task::Rates;
    use zennet_chain::{Address, Hash};

    #[test]
    fn the_private_nic_boots_with_the_mac_the_publisher_looks_for() {
        assert_eq!(zennet_vm::LAN_MAC, proto::LAN_BOOT_MAC);
    }

    fn row() -> ContractRow {
        ContractRow {
            task: Hash([1; 32]),
            publisher: Address([2; 20]),
            endpoint: "127.0.0.1:1".into(),
            host_key_fingerprint: Hash([3; 32]),
            image_id: "zennet-tiny".into(),
            cores: 1,
            memory_mib: 256,
            storage_gib: 0,
            compute_score: 1,
            rates: Rates::default(),
            acceptance_tx: Hash([4; 32]),
            phase: Phase::Accepted,
            channel: None,
            payout_interval_secs: 2,
            lease_secs: 1800,
            vm_key: None,
            storage_paid: false,
            vm: None,
            vm_host_key: None,
            boot_ms: 0,
            forward_port: 0,
            started_ms: None,
            paid: 0,
            accrued: 0,
            usage: Usage::default(),
            report_seq: 0,
            end_reason: None,
        }
    }

    fn terms(interval: i32, lease: u32) -> Terms {
        Terms {
            channel: Hash([5; 32]),
            payout_interval_secs: interval,
            lease_secs: lease,
            vm_key: String::new(),
            storage_paid: false,
            compute_per_core: 1,
        }
    }

    #[test]
    fn a_session_still_open_is_dialled_again_and_other_refusals_end_the_contract() {
        assert!(answer_to_join(Frame::Terms(terms(2, 1800))).is_ok());
        let open = Frame::Bye {
            reason: proto::BYE_SESSION_OPEN.into(),
        };
        assert!(matches!(answer_to_join(open), Err(Session::Retry(_))));
        let refused = Frame::Bye {
            reason: "task cancelled".into(),
        };
        match answer_to_join(refused) {
            Err(Session::Fatal(r)) => assert!(r.contains("task cancelled"), "{r}"),
            _ => panic!("a refusal ends the contract"),
        }
    }

    #[test]
    fn terms_that_differ_from_the_announcement_are_refused() {
        assert!(check_terms(&row(), &terms(2, 1800)).is_ok());
        // The cheat: a huge payout interval, so the node works for an hour
        // before it may ask for payment.
        let huge = check_terms(&row(), &terms(3600, 1800)).unwrap_err();
        assert!(huge.contains("payout interval of 3600 s"), "{huge}");
        assert!(huge.contains("announcement says 2 s"), "{huge}");
        // Prepay turned into postpay, and a longer lease, likewise.
        assert!(check_terms(&row(), &terms(-2, 1800)).is_err());
        let lease = check_terms(&row(), &terms(2, 86_400)).unwrap_err();
        assert!(lease.contains("lease"), "{lease}");
    }
}
