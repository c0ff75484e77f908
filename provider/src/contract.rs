//! A contract as a pure state machine: events in (time passing with the
//! VM's usage, a voucher stored, the publisher connecting or dropping, a
//! new chain tip, the contract ended), actions out (report, pause,
//! resume, claim, finish, close). No I/O and no clock: every event carries
//! the time, so tests drive it in virtual time, and the session loop
//! ([`crate::session`]) only does what the actions say.
//!
//! The money rules it enforces:
//! * A report is due every payout interval while the publisher is
//!   connected; payment is late when the oldest report not covered by a
//!   voucher is older than `pause_after` intervals (prepay: as soon as
//!   usage passes what was paid). Late means paused — whether or not the
//!   publisher is connected — and paused past the grace period means the
//!   contract ends.
//! * Seeing the payer start settling, or the channel come within the
//!   claim margin of its expiry, means claim at once and end: work done
//!   after that could not be paid.
//! * The lease ends the contract.
//! * Once over, the contract is `Closing` until its channel is gone from
//!   the chain (closed or reclaimed); each new tip is another close step.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zennet_chain::Amount;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// AcceptTask submitted, not yet mined.
    Accepting,
    /// Accepted on chain; waiting for the publisher's terms.
    Accepted,
    Running,
    Paused,
    /// Over; the channel's close is not mined yet.
    Closing,
    Ended,
    Failed,
}

impl Phase {
    /// Still holding this node's resources (or its money in flight).
    pub fn active(self) -> bool {
        !matches!(self, Phase::Ended | Phase::Failed)
    }
}

/// The rules of one contract, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Seconds between reports (the announcement's payout interval).
    pub interval: Duration,
    /// Negative payout interval: work runs only while paid ahead.
    pub prepay: bool,
    /// Payment is late this long after an uncovered report.
    pub late_after: Duration,
    /// Paused for lack of payment this long: the contract ends.
    pub grace: Duration,
    pub lease: Duration,
    /// Blocks before expiry (or settlement) at which the voucher is claimed.
    pub claim_margin: u64,
}

/// The channel as the chain shows it at a tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAt {
    pub height: u64,
    pub expiry_height: u64,
    pub settle_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed; the VM's metered usage comes to `accrued`.
    Tick {
        now: Instant,
        accrued: Amount,
    },
    /// The payee stored a voucher: the channel pays `paid` in all.
    Paid {
        now: Instant,
        paid: Amount,
    },
    Connected {
        now: Instant,
    },
    Disconnected {
        now: Instant,
    },
    /// A new chain tip; `None`: the channel is no longer on chain.
    Tip {
        channel: Option<ChannelAt>,
    },
    /// The contract is over for a reason from outside (the publisher's
    /// `Bye`, the task cancelled on chain, the VM stopped).
    End {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a usage report with this seq.
    Report {
        seq: u64,
    },
    Pause,
    Resume,
    /// Claim the held voucher on chain now.
    Claim,
    /// Stop the VM, send the last report if connected, wait briefly for
    /// the last voucher; the contract is now `Closing`.
    Finish {
        reason: String,
    },
    /// One close step (submit or retry the channel's close; claim first
    /// if settlement is near).
    Close,
    /// The channel is gone from the chain: the contract is over.
    Done,
}

/// One contract's state between events.
pub struct Contract {
    rules: Rules,
    pub phase: Phase,
    pub accrued: Amount,
    pub paid: Amount,
    pub report_seq: u64,
    pub end_reason: Option<String>,
    started: Instant,
    connected: bool,
    /// Reports not yet covered by a voucher: (accrued, sent at).
    outstanding: VecDeque<(Amount, Instant)>,
    /// Since when payment has been due without a covering voucher.
    covered_at: Instant,
    paused_at: Option<Instant>,
    next_report: Instant,
}

impl Contract {
    /// A running contract whose VM started at `started`; `paused` when it
    /// was paused for lack of payment (a node restart keeps it so).
    pub fn new(rules: Rules, started: Instant, now: Instant, paid: Amount, paused: bool) -> Self {
        Contract {
            rules,
            phase: if paused {
                Phase::Paused
            } else {
                Phase::Running
            },
            accrued: 0,
            paid,
            report_seq: 0,
            end_reason: None,
            started,
            connected: false,
            outstanding: VecDeque::new(),
            covered_at: now,
            paused_at: paused.then_some(now),
            next_report: now,
        }
    }

    /// A contract already over, restored to finish its close.
    pub fn closing(rules: Rules, now: Instant, reason: String) -> Self {
        let mut c = Contract::new(rules, now, now, 0, false);
        c.phase = Phase::Closing;
        c.end_reason = Some(reason);
        c
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Closing | Phase::Ended | Phase::Failed)
    }

    /// Feeds one event; returns what to do, in order.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Ended | Phase::Failed) {
            return out;
        }
        if self.phase == Phase::Closing {
            match event {
                Event::Tip { channel: None } => {
                    self.phase = Phase::Ended;
                    out.push(Action::Done);
                }
                Event::Tip { .. } => out.push(Action::Close),
                Event::Paid { paid, .. } => self.paid = self.paid.max(paid),
                _ => {}
            }
            return out;
        }
        match event {
            Event::Tick { now, accrued } => {
                self.accrued = accrued;
                if self.connected && now >= self.next_report {
                    self.report(now, &mut out);
                }
                self.check(now, &mut out);
            }
            Event::Paid { now, paid } => {
                self.paid = self.paid.max(paid);
                while self
                    .outstanding
                    .front()
                    .is_some_and(|(a, _)| *a <= self.paid)
                {
                    self.covered_at = self.outstanding.pop_front().expect("front").1;
                }
                if self.outstanding.is_empty() {
                    self.covered_at = now;
                }
                self.check(now, &mut out);
            }
            Event::Connected { now } => {
                self.connected = true;
                // The publisher hears where things stand at once.
                self.report(now, &mut out);
            }
            Event::Disconnected { .. } => self.connected = false,
            Event::Tip { channel } => match channel {
                None => self.finish("the channel is gone from the chain".into(), &mut out),
                Some(ch) => {
                    if ch.settle_at.is_some() {
                        out.push(Action::Claim);
                        self.finish("the publisher is settling the channel".into(), &mut out);
                    } else if ch.height + self.rules.claim_margin >= ch.expiry_height {
                        out.push(Action::Claim);
                        self.finish("the channel is about to expire".into(), &mut out);
                    }
                }
            },
            Event::End { reason } => self.finish(reason, &mut out),
        }
        out
    }

    fn report(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.report_seq += 1;
        self.next_report = now + self.rules.interval;
        self.outstanding.push_back((self.accrued, now));
        out.push(Action::Report {
            seq: self.report_seq,
        });
    }

    /// Lateness, grace and lease at `now`.
    fn check(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.started + self.rules.lease {
            return self.finish("lease ended".into(), out);
        }
        let late = if self.rules.prepay {
            self.accrued > self.paid
        } else {
            now.duration_since(self.covered_at) > self.rules.late_after
        };
        match (late, self.paused_at) {
            (true, None) => {
                self.paused_at = Some(now);
                self.phase = Phase::Paused;
                out.push(Action::Pause);
            }
            (false, Some(_)) => {
                self.paused_at = None;
                self.phase = Phase::Running;
                out.push(Action::Resume);
            }
            (true, Some(at)) if now.duration_since(at) > self.rules.grace => {
                self.finish("terminated: unpaid past the grace period".into(), out)
            }
            _ => {}
        }
    }

    fn finish(&mut self, reason: String, out: &mut Vec<Action>) {
        self.phase = Phase::Closing;
        self.end_reason = Some(reason.clone());
        out.push(Action::Finish { reason });
        out.push(Action::Close);
    }
}
