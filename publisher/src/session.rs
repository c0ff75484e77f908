//! One admitted node's `zennet-pay` session: `Join`, the channel (opened
//! on chain before the terms go out), terms, then a voucher for every
//! usage report — for no more than the publisher's own bound: the most the
//! accepted VM could have used since the contract started, at the task's
//! rates. A negative payout interval prepays that many seconds ahead.
//! Payment stops on cancel, lease end, or when the operator switches it
//! off.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use zennet_chain::task::{Acceptance, TaskRecord};
use zennet_chain::{Amount, Hash, SignedVoucher};
use zennet_proto::{self as proto, Frame, PayStream, Terms, Usage, UsageReport, VmPhase};
use zennet_tunnel::Connection;

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
        let existing = self.store().contract(&task, &node)?;
        let known = existing.is_some();
        let mut c = match existing {
            Some(c) => c,
            None => ContractRow {
                task,
                node,
                acceptance: acceptance.tx,
                channel: None,
                reported: 0,
                usage: Usage::default(),
                phase: VmPhase::Booting,
                host_key: None,
                boot_ms: 0,
                started_ms: now_ms(),
                ended_ms: None,
                end_reason: None,
            },
        };
        // A node whose contract was under way when the task was cancelled
        // still gets its last usage paid; a new one is turned away.
        if record.cancelled_at.is_some() && known && c.ended_ms.is_none() {
            c.end_reason.get_or_insert_with(|| "task cancelled".into());
        }
        if c.ended_ms.is_some() || (record.cancelled_at.is_some() && !known) {
            let reason = c
                .end_reason
                .clone()
                .unwrap_or_else(|| "task cancelled".into());
            pay.send(&refuse(reason)).await.ok();
            return Ok(());
        }
        let a = &record.announcement;
        let storage_gib = a.vm.persistent_storage_gib;
        let mem = acceptance.cores as u64 * a.vm.memory_mib_per_core as u64;
        let per_sec = proto::max_price_per_sec(
            &a.rates,
            acceptance.compute_score,
            acceptance.cores as u32,
            mem,
            storage_gib,
        );
        let interval = a.payout_interval_secs;
        let lease_secs = a.lease_max_secs;
        if c.channel.is_none() {
            let genesis = self.ledger.genesis();
            let deposit = per_sec * (lease_secs as u128 + interval.unsigned_abs() as u128 + 30);
            let lease_blocks = (lease_secs as u64 * 1000).div_ceil(genesis.consensus.block_time_ms);
            let expiry_height = self.ledger.height()
                + 2 * lease_blocks
                + 2 * genesis.economics.channel_challenge_period
                + 50;
            let channel = self.payer.open(node, deposit, expiry_height)?;
            c.channel = Some(channel.channel);
            self.store().put_contract(&c)?;
            tracing::info!(%task, %node, channel = %channel.channel, %deposit, "channel opened");
        }
        let channel = c.channel.expect("set above");
        self.wait_channel(&channel).await?;
        let task_row = self.own_task(&task)?;
        let mut terms = Terms {
            channel,
            payout_interval_secs: interval,
            lease_secs,
            vm_key: self.vm_key_line.clone(),
            storage_paid: task_row.storage_paid,
        };
        pay.send(&Frame::Terms(terms.clone())).await?;
        if let Some(v) = self.payer.last_voucher(&channel)? {
            // A reconnecting node gets the last voucher again.
            let _ = pay.send(&Frame::Voucher(v)).await;
        } else if interval < 0 {
            // Prepay: the first |interval| seconds before any work.
            let ahead = per_sec * interval.unsigned_abs() as u128;
            if let Some(v) = self.payer.pay(&channel, ahead, ahead)? {
                let _ = pay.send(&Frame::Voucher(v)).await;
            }
        }

        let (end_tx, mut end_rx) = mpsc::unbounded_channel();
        self.live().insert(
            (task, node),
            Live {
                end: end_tx,
                ports: conn.forwards.clone(),
            },
        );
        let lease_end = tokio::time::Instant::now()
            + Duration::from_millis(
                (c.started_ms + lease_secs as u64 * 1000).saturating_sub(now_ms()),
            );
        // A contract that was ending when the node dropped ends now.
        let mut ending = c.end_reason.is_some();
        if let Some(reason) = c.end_reason.clone() {
            let _ = pay.send(&Frame::Bye { reason }).await;
        }
        let result = loop {
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
                }
                Ok(Frame::Usage(mut r)) => {
                    let row = self.own_task(&task)?;
                    if row.storage_paid != terms.storage_paid {
                        // The node stops (or starts) billing the volume.
                        terms.storage_paid = row.storage_paid;
                        pay.send(&Frame::Terms(terms.clone())).await?;
                    }
                    if !row.storage_paid {
                        let storage = Usage {
                            storage_gib_secs: r.usage.storage_gib_secs,
                            ..Default::default()
                        };
                        let cost = proto::price(&a.rates, acceptance.compute_score, &storage);
                        r.accrued = r.accrued.saturating_sub(cost);
                    }
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
                    break Ok(());
                }
                Ok(other) => {
                    break Err(PublisherError::UnexpectedFrame(format!("{other:?}")));
                }
                Err(e) => {
                    tracing::info!(%task, %node, error = %e, "node disconnected; waiting for it to come back");
                    break Ok(());
                }
            }
        };
        self.live().remove(&(task, node));
        result
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

    async fn wait_channel(&self, channel: &Hash) -> Result<(), PublisherError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if self.payer.is_open(channel) {
                return Ok(());
            }
            if self.ledger.included_at(channel).is_some() || tokio::time::Instant::now() > deadline
            {
                return Err(PublisherError::ChannelNotOpen(*channel));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
