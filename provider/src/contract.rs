//! A contract as a pure state machine: events in (time passing with the
//! VM's usage, a voucher stored, the publisher connecting or dropping, a
//! new chain tip, the contract ended), actions out (report, pause,
//! resume, claim, finish, close). No I/O and no clock: every event carries
//! the time, so tests drive it in virtual time, and the session loop
//! ([`crate::session`]) only does what the actions say.
//!
//! The money rules it enforces:
//! * A report is due every payout interval while the publisher is
//!   connected; payment is late when usage stays uncovered `pause_after`
//!   intervals after the last full payment or after the tunnel came up
//!   (prepay: as soon as usage passes what was paid, save the answer time
//!   of the report sent when the tunnel comes up — a long boot is billed
//!   before the publisher can be asked). Late means paused — whether or
//!   not the publisher is connected — and paused past the grace period
//!   means the contract ends.
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
    /// The tunnel came up; the VM's usage so far comes to `accrued` (the
    /// session meters it first: the boot ran before any tick, and the
    /// report sent now must ask for it).
    Connected {
        now: Instant,
        accrued: Amount,
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
    /// What had accrued when the tunnel last came up, and when.
    asked_on_connect: Option<(Amount, Instant)>,
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
            asked_on_connect: None,
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

    /// How long until the VM is paused unless a voucher comes, at `now`:
    /// `None` when nothing is owed, or it is paused or over already. It
    /// is the same clock [`Contract::late`] reads, so it says what will
    /// happen, not a guess.
    pub fn pause_in(&self, now: Instant) -> Option<Duration> {
        if self.is_over() || self.paused_at.is_some() || self.accrued <= self.paid {
            return None;
        }
        let since = if self.rules.prepay {
            match self.asked_on_connect {
                Some((a, at)) if self.connected && a > self.paid => at,
                // Prepay owed without a question out: paused on the next check.
                _ => return Some(Duration::ZERO),
            }
        } else {
            self.covered_at
        };
        Some(
            self.rules
                .late_after
                .saturating_sub(now.duration_since(since)),
        )
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
            Event::Connected { now, accrued } => {
                self.accrued = self.accrued.max(accrued);
                self.connected = true;
                if self.outstanding.is_empty() {
                    // Nothing was asked for yet (first connect after the
                    // boot) or all of it was paid: the clock starts now.
                    self.covered_at = now;
                }
                // Prepay's answer time for what accrued unasked runs from
                // the connect that first asked for it: a publisher that
                // drops and redials without paying gets no fresh clock.
                let unanswered = self.asked_on_connect.is_some_and(|(a, _)| a > self.paid);
                if !unanswered {
                    self.asked_on_connect = Some((self.accrued, now));
                }
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
        if self.accrued > self.paid {
            self.outstanding.push_back((self.accrued, now));
        }
        out.push(Action::Report {
            seq: self.report_seq,
        });
    }

    /// Lateness, grace and lease at `now`.
    fn check(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.started + self.rules.lease {
            return self.finish("lease ended".into(), out);
        }
        let late = self.late(now);
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

    /// Whether payment is late at `now`: postpaid, when usage has been
    /// uncovered for `late_after` (counted from the last full payment,
    /// or from when the tunnel came up: a long boot is billed but the
    /// publisher could not be asked for it before); prepay, as soon as
    /// usage passes what was paid, except while the report sent when the
    /// tunnel came up (asking for what accrued meanwhile) is within its
    /// answer time.
    fn late(&self, now: Instant) -> bool {
        let owed = self.accrued > self.paid;
        if self.rules.prepay {
            let answering = self.connected
                && self.asked_on_connect.is_some_and(|(a, at)| {
                    a > self.paid && now.duration_since(at) <= self.rules.late_after
                });
            owed && !answering
        } else {
            owed && now.duration_since(self.covered_at) > self.rules.late_after
        }
    }

    fn finish(&mut self, reason: String, out: &mut Vec<Action>) {
        self.phase = Phase::Closing;
        self.end_reason = Some(reason.clone());
        out.push(Action::Finish { reason });
        out.push(Action::Close);
    }
}

#[cfg(test)]
mod tests {
    //! Every money rule of the contract, driven in virtual time (tokio's
    //! paused clock), each with the cheat it stops.

    use super::*;
    use tokio::time::advance;

    const SEC: Duration = Duration::from_secs(1);

    fn rules() -> Rules {
        Rules {
            interval: 2 * SEC,
            prepay: false,
            late_after: 4 * SEC,
            grace: 10 * SEC,
            lease: 3600 * SEC,
            claim_margin: 20,
        }
    }

    /// One second passes with usage at `accrued`.
    async fn tick(c: &mut Contract, accrued: Amount) -> Vec<Action> {
        advance(SEC).await;
        c.on(Event::Tick {
            now: Instant::now(),
            accrued,
        })
    }

    fn running(r: Rules) -> Contract {
        let now = Instant::now();
        let mut c = Contract::new(r, now, now, 0, false);
        assert_eq!(
            c.on(Event::Connected { now, accrued: 0 }),
            vec![Action::Report { seq: 1 }]
        );
        c
    }

    fn finished(actions: &[Action]) -> Option<&str> {
        actions.iter().find_map(|a| match a {
            Action::Finish { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn reports_every_interval_and_a_paying_publisher_keeps_it_running() {
        let mut c = running(rules());
        let mut reports = 0;
        for s in 1..=20u128 {
            let actions = tick(&mut c, s * 10).await;
            assert!(!actions.contains(&Action::Pause), "second {s}: {actions:?}");
            if actions.iter().any(|a| matches!(a, Action::Report { .. })) {
                reports += 1;
                // The publisher pays each report at once.
                c.on(Event::Paid {
                    now: Instant::now(),
                    paid: s * 10,
                });
            }
        }
        assert_eq!(reports, 10, "one report per 2 s interval");
        assert_eq!(c.phase, Phase::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_that_stops_paying_gets_its_vm_paused_then_terminated() {
        let mut c = running(rules());
        let mut paused_at = None;
        let mut finish = None;
        for s in 1..=30u64 {
            let actions = tick(&mut c, s as Amount * 10).await;
            if actions.contains(&Action::Pause) {
                paused_at = Some(s);
            }
            if let Some(r) = finished(&actions) {
                finish = Some((s, r.to_string()));
                break;
            }
        }
        // Late after 4 s without a covering voucher, paused; 10 s grace.
        assert_eq!(paused_at, Some(5));
        let (at, reason) = finish.expect("terminated");
        assert_eq!(at, 16);
        assert!(reason.contains("unpaid past the grace period"), "{reason}");
        assert_eq!(c.phase, Phase::Closing);
    }

    /// The countdown the dashboard shows is the clock the pause obeys: it
    /// runs down while a report goes unanswered, the pause comes when it
    /// reaches zero, and a covering voucher starts it again.
    #[tokio::test(start_paused = true)]
    async fn the_pause_countdown_is_the_pause_clock() {
        let mut c = running(rules());
        assert_eq!(c.pause_in(Instant::now()), None, "nothing owed yet");
        let mut seen = Vec::new();
        for s in 1..=6u128 {
            let actions = tick(&mut c, s * 10).await;
            seen.push((c.pause_in(Instant::now()), actions.contains(&Action::Pause)));
        }
        let remaining: Vec<Option<u64>> =
            seen.iter().map(|(d, _)| d.map(|d| d.as_secs())).collect();
        assert_eq!(remaining, [Some(3), Some(2), Some(1), Some(0), None, None]);
        assert!(seen[4].1, "paused when the countdown ran out");
        c.on(Event::Paid {
            now: Instant::now(),
            paid: 60,
        });
        tick(&mut c, 70).await;
        assert_eq!(c.pause_in(Instant::now()), Some(3 * SEC));
    }

    #[tokio::test(start_paused = true)]
    async fn paying_late_resumes_the_vm() {
        let mut c = running(rules());
        let mut all = Vec::new();
        for s in 1..=6 {
            all.extend(tick(&mut c, s * 10).await);
        }
        assert!(all.contains(&Action::Pause));
        let actions = c.on(Event::Paid {
            now: Instant::now(),
            paid: 60,
        });
        assert_eq!(actions, vec![Action::Resume]);
        assert_eq!(c.phase, Phase::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnected_publisher_does_not_keep_the_vm_running_unpaid() {
        // The cheat: connect, get the VM, drop the tunnel and never pay.
        let mut c = running(rules());
        c.on(Event::Disconnected {
            now: Instant::now(),
        });
        let mut paused = false;
        let mut reports = 0;
        let mut finish = None;
        for s in 1..=30 {
            let actions = tick(&mut c, s * 10).await;
            paused |= actions.contains(&Action::Pause);
            reports += actions
                .iter()
                .filter(|a| matches!(a, Action::Report { .. }))
                .count();
            if finished(&actions).is_some() {
                finish = Some(s);
                break;
            }
        }
        assert!(paused, "paused although nobody is connected");
        assert_eq!(reports, 0, "nobody to report to");
        assert_eq!(finish, Some(16), "terminated after the grace period");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_boot_gets_its_first_report_answered_before_any_pause() {
        // The VM boots for 36 s (TCG) before the tunnel comes up: the boot
        // is billed, and the first report asks for it. Neither side has
        // been late yet, under postpaid or prepay.
        for prepay in [false, true] {
            let r = Rules { prepay, ..rules() };
            let launched = Instant::now();
            let mut c = Contract::new(r, launched, launched, 0, false);
            advance(36 * SEC).await;
            let now = Instant::now();
            assert_eq!(
                c.on(Event::Connected { now, accrued: 360 }),
                vec![Action::Report { seq: 1 }]
            );
            assert!(
                !tick(&mut c, 370).await.contains(&Action::Pause),
                "prepay {prepay}"
            );
            let paid = if prepay { 400 } else { 360 };
            assert!(
                c.on(Event::Paid {
                    now: Instant::now(),
                    paid
                })
                .is_empty()
            );
            for s in 0..3 {
                assert!(!tick(&mut c, 375 + s).await.contains(&Action::Pause));
            }
            assert_eq!(c.phase, Phase::Running);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_that_never_answers_the_boot_report_is_paused() {
        // The cheat: take the booted VM and never pay for anything.
        let launched = Instant::now();
        let mut c = Contract::new(rules(), launched, launched, 0, false);
        advance(36 * SEC).await;
        c.on(Event::Connected {
            now: Instant::now(),
            accrued: 360,
        });
        let mut paused_at = None;
        for s in 1..=6 {
            if tick(&mut c, 360 + s * 10).await.contains(&Action::Pause) {
                paused_at.get_or_insert(s);
            }
        }
        assert_eq!(paused_at, Some(5), "late 4 s after the report it ignored");
    }

    #[tokio::test(start_paused = true)]
    async fn a_prepay_publisher_that_redials_gets_no_fresh_answer_time() {
        // The cheat: never pay, and drop the tunnel and come back every 3 s,
        // just before the answer time runs out, hoping each connect
        // restarts it (and resumes the VM) for free compute.
        let r = Rules {
            prepay: true,
            ..rules()
        };
        let launched = Instant::now();
        let mut c = Contract::new(r, launched, launched, 0, false);
        advance(36 * SEC).await;
        let mut accrued = 360;
        c.on(Event::Connected {
            now: Instant::now(),
            accrued,
        });
        let mut ran = 0;
        for s in 1..=60 {
            if s % 3 == 0 {
                c.on(Event::Disconnected {
                    now: Instant::now(),
                });
                c.on(Event::Connected {
                    now: Instant::now(),
                    accrued,
                });
            }
            if c.phase == Phase::Running {
                ran += 1;
                accrued += 10;
            }
            tick(&mut c, accrued).await;
            if c.is_over() {
                break;
            }
        }
        // The answer time (4 s) and the tick that sees it run out.
        assert!(ran <= 5, "ran {ran} s unpaid after the boot report");
        assert!(c.is_over(), "ended after the grace period");
    }

    #[tokio::test(start_paused = true)]
    async fn prepay_pauses_as_soon_as_usage_passes_what_was_paid() {
        let r = Rules {
            prepay: true,
            ..rules()
        };
        let now = Instant::now();
        let mut c = Contract::new(r, now, now, 25, false);
        c.on(Event::Connected { now, accrued: 0 });
        assert!(!tick(&mut c, 20).await.contains(&Action::Pause));
        assert!(tick(&mut c, 30).await.contains(&Action::Pause));
        let actions = c.on(Event::Paid {
            now: Instant::now(),
            paid: 60,
        });
        assert_eq!(actions, vec![Action::Resume]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_at_contract_start_means_claim_and_finish_at_once() {
        // The cheat: open the channel, start settling it, and get work done
        // that could never be claimed after `settle_at`.
        let mut c = running(rules());
        let actions = c.on(Event::Tip {
            channel: Some(ChannelAt {
                height: 10,
                expiry_height: 10_000,
                settle_at: Some(15),
            }),
        });
        assert_eq!(actions[0], Action::Claim);
        assert!(finished(&actions).unwrap().contains("settling"));
        assert_eq!(actions.last(), Some(&Action::Close));
        // No more work, reports or pauses once over.
        assert!(tick(&mut c, 1_000).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiring_channel_is_claimed_before_it_is_too_late() {
        let mut c = running(rules());
        let far = c.on(Event::Tip {
            channel: Some(ChannelAt {
                height: 79,
                expiry_height: 100,
                settle_at: None,
            }),
        });
        assert!(far.is_empty());
        let near = c.on(Event::Tip {
            channel: Some(ChannelAt {
                height: 80,
                expiry_height: 100,
                settle_at: None,
            }),
        });
        assert_eq!(near[0], Action::Claim);
        assert!(finished(&near).unwrap().contains("expire"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_ends_the_contract() {
        let r = Rules {
            lease: 5 * SEC,
            ..rules()
        };
        let mut c = running(r);
        let mut end = None;
        for s in 1..=10 {
            let actions = tick(&mut c, 0).await;
            c.on(Event::Paid {
                now: Instant::now(),
                paid: 0,
            });
            if let Some(reason) = finished(&actions) {
                end = Some((s, reason.to_string()));
                break;
            }
        }
        assert_eq!(end, Some((5, "lease ended".to_string())));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_repeats_close_steps_until_the_channel_is_gone() {
        // After `kill -9` between "contract over" and the close being
        // mined, a restarted node rebuilds the machine as Closing.
        let mut c = Contract::closing(rules(), Instant::now(), "lease ended".into());
        assert!(c.is_over());
        let tip = |c: &mut Contract, gone: bool| {
            c.on(Event::Tip {
                channel: (!gone).then_some(ChannelAt {
                    height: 50,
                    expiry_height: 100,
                    settle_at: None,
                }),
            })
        };
        assert_eq!(tip(&mut c, false), vec![Action::Close]);
        assert_eq!(tip(&mut c, false), vec![Action::Close]);
        assert!(
            tick(&mut c, 10).await.is_empty(),
            "no reports while closing"
        );
        assert_eq!(tip(&mut c, true), vec![Action::Done]);
        assert_eq!(c.phase, Phase::Ended);
        assert!(tip(&mut c, true).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_keeps_a_paused_vm_paused_until_paid() {
        let now = Instant::now();
        let mut c = Contract::new(rules(), now, now, 0, true);
        assert_eq!(c.phase, Phase::Paused);
        c.on(Event::Connected { now, accrued: 0 });
        let actions = c.on(Event::Paid {
            now: Instant::now(),
            paid: 10,
        });
        assert_eq!(actions, vec![Action::Resume]);
    }
}
