//! A contract's phase, and the state the session loop keeps between
//! events while the publisher is connected.

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
    /// Accepted on chain; connecting to the publisher.
    Accepted,
    Running,
    Paused,
    Ended,
    Failed,
}

impl Phase {
    pub fn active(self) -> bool {
        !matches!(self, Phase::Ended | Phase::Failed)
    }
}

/// Payment timing of one connected session.
pub struct PaymentClock {
    /// Reports not yet covered by a voucher: (accrued, sent at).
    outstanding: VecDeque<(Amount, Instant)>,
    /// When the last report covered by a voucher was sent (or the session
    /// started, or payment caught up).
    covered_at: Instant,
    /// When the VM was paused for lack of payment.
    pub paused_at: Option<Instant>,
    pub next_report: Instant,
}

impl PaymentClock {
    pub fn new(paused: bool) -> PaymentClock {
        let now = Instant::now();
        PaymentClock {
            outstanding: VecDeque::new(),
            covered_at: now,
            paused_at: paused.then_some(now),
            next_report: now,
        }
    }

    /// A report of `accrued` went out now.
    pub fn reported(&mut self, accrued: Amount) {
        self.outstanding.push_back((accrued, Instant::now()));
    }

    /// Payment reached `paid`: the reports it covers are settled.
    pub fn paid(&mut self, paid: Amount) {
        while self.outstanding.front().is_some_and(|(a, _)| *a <= paid) {
            self.covered_at = self.outstanding.pop_front().expect("front").1;
        }
        if self.outstanding.is_empty() {
            self.covered_at = Instant::now();
        }
    }

    /// How long since the last covered report.
    pub fn uncovered_for(&self) -> Duration {
        self.covered_at.elapsed()
    }
}
