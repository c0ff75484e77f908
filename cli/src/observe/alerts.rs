//! Alerts the node raises itself and posts to `[alerts] webhook`: the same
//! conditions as the shipped Prometheus rules
//! (`deploy/prometheus/zennet.rules.yml`), for an operator who runs no
//! Prometheus (hosts ask for webhooks: hostd #238).
//!
//! [`Alerts`] is a pure state machine over [`Snapshot`]s and millisecond
//! timestamps: a condition that holds for its alert's `for` becomes
//! firing (one [`Notice`]), and one that stops holding is resolved (one
//! more). [`run`] is the I/O around it: a snapshot every few seconds, and
//! each notice POSTed as JSON (retried, then logged and dropped — a
//! webhook that is down must not stall the node).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zennet_chain::{Address, Amount};
use zennet_vm::VmState;

use super::Snapshot;
use crate::node::Node;

/// `[alerts]` in config.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// POST every alert that fires or resolves here, as JSON (see README).
    pub webhook: Option<String>,
    /// Work unpaid for longer than this is an alert (default 300; keep it
    /// above a few payout intervals of the tasks you take).
    pub unpaid_after_secs: Option<u64>,
}

/// The default of `[alerts] unpaid_after_secs`.
pub const UNPAID_AFTER: Duration = Duration::from_secs(300);

/// Blocks before a channel's expiry below which vouchers still unclaimed
/// are an alert: the provider claims at `claim_margin_blocks` (20), so
/// by now its claim has failed.
pub const NEAR_EXPIRY_BLOCKS: u64 = 10;
/// Free space on the home's filesystem (or the part store's quota) below
/// which the disk is nearly full.
pub const DISK_FREE_FRACTION: f64 = 0.10;

/// What can fire, with how long its condition must hold first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A VM is paused because its publisher's payment is late.
    VmPaused,
    /// Work done long ago is still not covered by a voucher.
    UnpaidWorkGrowing,
    /// A channel is about to expire with vouchers not claimed.
    ChannelNearExpiry,
    /// The node has no peers.
    NoPeers,
    /// The home's disk or the part store is nearly full.
    DiskNearlyFull,
}

impl Kind {
    /// The rules file's `for:` of the same alert.
    pub fn hold_ms(self) -> u64 {
        match self {
            // Pausing is itself the end of a grace period, and unpaid
            // work is an alert once it is old (its age is the wait).
            Kind::VmPaused | Kind::ChannelNearExpiry | Kind::UnpaidWorkGrowing => 0,
            Kind::NoPeers => 2 * 60_000,
            Kind::DiskNearlyFull => 5 * 60_000,
        }
    }
}

/// One alert changing state: the webhook's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub alert: Kind,
    /// `firing` or `resolved`.
    pub status: String,
    /// The node's chain address.
    pub node: Address,
    /// What the alert is about (`vm`, `task`, …), as in the metrics.
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    /// Unix time in ms.
    pub at_ms: u64,
}

/// Which alerts are pending and firing, per subject.
#[derive(Debug, Default)]
pub struct Alerts {
    /// Condition holding since (ms), by alert and subject.
    since: HashMap<(Kind, String), u64>,
    firing: HashMap<(Kind, String), Condition>,
    /// Each contract's accrual over time, from the oldest sample that
    /// vouchers do not yet cover.
    accrued: HashMap<String, VecDeque<(u64, Amount)>>,
    /// Unpaid work older than this is an alert.
    unpaid_after_ms: u64,
}

impl Alerts {
    pub fn new(unpaid_after: Duration) -> Alerts {
        Alerts {
            unpaid_after_ms: unpaid_after.as_millis() as u64,
            ..Alerts::default()
        }
    }
}

/// How long the oldest work vouchers do not cover has been waiting, from
/// a contract's accrual `history` (kept from its oldest unpaid sample).
/// An honest publisher keeps this under a payout interval or two; one
/// that pays a trickle, or stops, lets it grow without bound.
fn unpaid_age(
    history: &mut VecDeque<(u64, Amount)>,
    accrued: Amount,
    paid: Amount,
    now_ms: u64,
) -> u64 {
    if history.back().is_none_or(|&(_, a)| accrued > a) {
        history.push_back((now_ms, accrued));
    }
    while history.front().is_some_and(|&(_, a)| a <= paid) {
        history.pop_front();
    }
    history
        .front()
        .map_or(0, |&(t, _)| now_ms.saturating_sub(t))
}

/// A condition that holds now, about one subject.
#[derive(Debug, Clone)]
struct Condition {
    labels: BTreeMap<String, String>,
    summary: String,
}

impl Alerts {
    /// The notices this snapshot causes at `now_ms`.
    pub fn evaluate(&mut self, s: &Snapshot, node: Address, now_ms: u64) -> Vec<Notice> {
        let holding = self.conditions(s, now_ms);
        let mut out = Vec::new();
        let notice = |key: &(Kind, String), c: &Condition, status: &str| Notice {
            alert: key.0,
            status: status.into(),
            node,
            labels: c.labels.clone(),
            summary: c.summary.clone(),
            at_ms: now_ms,
        };
        self.since.retain(|k, _| holding.contains_key(k));
        let mut resolved: Vec<_> = self
            .firing
            .iter()
            .filter(|(k, _)| !holding.contains_key(*k))
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        resolved.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, c) in resolved {
            self.firing.remove(&k);
            out.push(notice(&k, &c, "resolved"));
        }
        let mut new: Vec<_> = holding.into_iter().collect();
        new.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, c) in new {
            let since = *self.since.entry(k.clone()).or_insert(now_ms);
            if !self.firing.contains_key(&k) && now_ms.saturating_sub(since) >= k.0.hold_ms() {
                out.push(notice(&k, &c, "firing"));
                self.firing.insert(k, c);
            }
        }
        out
    }

    /// Every condition that holds in `s`, by alert and subject.
    fn conditions(&mut self, s: &Snapshot, now_ms: u64) -> HashMap<(Kind, String), Condition> {
        let mut c = HashMap::new();
        let mut add = |kind: Kind, subject: String, labels: &[(&str, &str)], summary: String| {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            c.insert((kind, subject), Condition { labels, summary });
        };
        for vm in s.vms.iter().filter(|v| v.state == VmState::Paused) {
            add(
                Kind::VmPaused,
                vm.id.clone(),
                &[("vm", &vm.id)],
                format!("VM {} is paused: its publisher's payment is late", vm.id),
            );
        }
        let mut seen = HashMap::new();
        for f in &s.contracts {
            let task = f.view.task.to_string();
            let vm = f.view.vm.clone().unwrap_or_default();
            let mut history = self.accrued.remove(&task).unwrap_or_default();
            let age = unpaid_age(&mut history, f.view.accrued, f.view.paid, now_ms);
            seen.insert(task.clone(), history);
            if age > self.unpaid_after_ms {
                add(
                    Kind::UnpaidWorkGrowing,
                    task.clone(),
                    &[("task", &task), ("vm", &vm)],
                    format!(
                        "task {task}: {} base units unpaid, the oldest for {} s",
                        f.unpaid(),
                        age / 1000
                    ),
                );
            }
            if let Some(blocks) = f.expires_in_blocks
                && blocks < NEAR_EXPIRY_BLOCKS
                && f.unclaimed() > 0
            {
                add(
                    Kind::ChannelNearExpiry,
                    task.clone(),
                    &[("task", &task), ("vm", &vm)],
                    format!(
                        "task {task}: its channel expires in {blocks} blocks with {} base units unclaimed",
                        f.unclaimed()
                    ),
                );
            }
        }
        self.accrued = seen;
        if s.chain.peers == Some(0) {
            add(
                Kind::NoPeers,
                String::new(),
                &[],
                "the node has no peers: it sees no new blocks or tasks".into(),
            );
        }
        if let Some(d) = s.disk
            && d.size_bytes > 0
            && (d.free_bytes as f64) < d.size_bytes as f64 * DISK_FREE_FRACTION
        {
            add(
                Kind::DiskNearlyFull,
                "home".into(),
                &[("disk", "home")],
                format!("{} MiB left on the home's disk", d.free_bytes >> 20),
            );
        }
        if let Some(fs) = &s.fs
            && fs.max_bytes > 0
            && (fs.used_bytes as f64) > fs.max_bytes as f64 * (1.0 - DISK_FREE_FRACTION)
        {
            add(
                Kind::DiskNearlyFull,
                "fs".into(),
                &[("disk", "fs")],
                format!(
                    "the part store holds {} of its {} MiB",
                    fs.used_bytes >> 20,
                    fs.max_bytes >> 20
                ),
            );
        }
        c
    }
}

/// How often the node looks.
const EVERY: Duration = Duration::from_secs(5);

/// Evaluates alerts every few seconds and posts each notice to `webhook`.
pub async fn run(node: Arc<Node>, me: Address, webhook: String, unpaid_after: Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client with a timeout");
    let mut alerts = Alerts::new(unpaid_after);
    let mut tick = tokio::time::interval(EVERY);
    tracing::info!(%webhook, "alerts are posted to the webhook");
    loop {
        tick.tick().await;
        if node.is_shutting_down() {
            return;
        }
        let snapshot = Snapshot::gather(&node).await;
        for n in alerts.evaluate(&snapshot, me, crate::node::now_ms()) {
            tracing::info!(alert = ?n.alert, status = %n.status, summary = %n.summary, "alert");
            post(&client, &webhook, &n).await;
        }
    }
}

/// Three tries, a second apart; then the notice is logged and dropped.
async fn post(client: &reqwest::Client, url: &str, n: &Notice) {
    for attempt in 1..=3 {
        match client.post(url).json(n).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(%url, status = %r.status(), attempt, "webhook refused an alert")
            }
            Err(e) => tracing::warn!(%url, error = %e, attempt, "webhook unreachable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::warn!(%url, alert = ?n.alert, status = %n.status, "alert not delivered");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::DiskFacts;
    use crate::observe::metrics::tests::{contract, vm};

    const ME: Address = Address([7; 20]);

    fn fired(n: &[Notice]) -> Vec<(Kind, &str)> {
        n.iter().map(|n| (n.alert, n.status.as_str())).collect()
    }

    #[test]
    fn a_paused_vm_fires_once_and_resolves_when_it_runs_again() {
        let mut a = Alerts::new(UNPAID_AFTER);
        let mut s = Snapshot {
            vms: vec![vm("vm-1", "running")],
            ..Snapshot::default()
        };
        assert!(a.evaluate(&s, ME, 1_000).is_empty());
        s.vms = vec![vm("vm-1", "paused")];
        let n = a.evaluate(&s, ME, 6_000);
        assert_eq!(fired(&n), [(Kind::VmPaused, "firing")]);
        assert_eq!(n[0].labels["vm"], "vm-1");
        assert_eq!(n[0].node, ME);
        // Still paused: nothing new.
        assert!(a.evaluate(&s, ME, 11_000).is_empty());
        s.vms = vec![vm("vm-1", "running")];
        assert_eq!(
            fired(&a.evaluate(&s, ME, 16_000)),
            [(Kind::VmPaused, "resolved")]
        );
        assert!(a.evaluate(&s, ME, 21_000).is_empty());
    }

    /// Samples every 5 s of a contract accruing 10 units/s for an hour,
    /// paid by `pay(t_ms, accrued)`; the first time the alert fired.
    fn first_unpaid_alert(pay: impl Fn(u64, u128) -> u128) -> Option<u64> {
        let mut a = Alerts::new(UNPAID_AFTER);
        let mut s = Snapshot::default();
        for t in (0..3_600_000u64).step_by(5_000) {
            let accrued = u128::from(t / 100);
            s.contracts = vec![contract(1, "running", accrued, pay(t, accrued))];
            let n = a.evaluate(&s, ME, t);
            if n.iter().any(|n| n.alert == Kind::UnpaidWorkGrowing) {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn an_honest_publisher_raises_no_unpaid_alert() {
        // Pays what was reported at the last 30 s report, 2 s late.
        let honest = |t: u64, _| u128::from(t.saturating_sub(2_000) / 30_000 * 30_000 / 100);
        assert_eq!(first_unpaid_alert(honest), None);
        // Prepaid: always ahead.
        assert_eq!(first_unpaid_alert(|_, accrued| accrued + 100), None);
    }

    /// The cheating publisher pays something on every report, so its
    /// unpaid amount drops again and again, but only a tenth of the work:
    /// the work left unpaid gets older, and the alert fires once it is
    /// five minutes old. One that stops paying altogether, the same.
    #[test]
    fn a_publisher_paying_a_trickle_or_nothing_raises_unpaid_work() {
        let trickle = |t: u64, _| u128::from(t / 30_000 * 30_000 / 1_000);
        let at = first_unpaid_alert(trickle).expect("fires");
        assert!((300_000..=340_000).contains(&at), "fired at {at} ms");
        let at = first_unpaid_alert(|_, _| 0).expect("fires");
        assert!((300_000..=310_000).contains(&at), "fired at {at} ms");
    }

    #[test]
    fn no_peers_and_a_full_disk_fire_after_their_hold() {
        let mut a = Alerts::new(UNPAID_AFTER);
        let mut s = Snapshot::default();
        s.chain.peers = Some(0);
        s.disk = Some(DiskFacts {
            size_bytes: 1000,
            free_bytes: 50,
        });
        assert!(a.evaluate(&s, ME, 0).is_empty());
        assert_eq!(
            fired(&a.evaluate(&s, ME, 120_000)),
            [(Kind::NoPeers, "firing")]
        );
        assert_eq!(
            fired(&a.evaluate(&s, ME, 300_000)),
            [(Kind::DiskNearlyFull, "firing")]
        );
        // A blip of peers resets the hold: no resolve for what never fired.
        s.chain.peers = Some(2);
        s.disk = Some(DiskFacts {
            size_bytes: 1000,
            free_bytes: 500,
        });
        let n = a.evaluate(&s, ME, 305_000);
        assert_eq!(
            fired(&n),
            [
                (Kind::NoPeers, "resolved"),
                (Kind::DiskNearlyFull, "resolved")
            ]
        );
        // Networking off is not "no peers".
        s.chain.peers = None;
        assert!(a.evaluate(&s, ME, 900_000).is_empty());
    }

    #[test]
    fn unclaimed_vouchers_on_a_channel_about_to_expire_fire() {
        let mut a = Alerts::new(UNPAID_AFTER);
        let mut s = Snapshot::default();
        let mut c = contract(1, "running", 100, 100);
        c.expires_in_blocks = Some(NEAR_EXPIRY_BLOCKS);
        s.contracts = vec![c.clone()];
        assert!(a.evaluate(&s, ME, 0).is_empty());
        c.expires_in_blocks = Some(NEAR_EXPIRY_BLOCKS - 1);
        s.contracts = vec![c.clone()];
        assert_eq!(
            fired(&a.evaluate(&s, ME, 5_000)),
            [(Kind::ChannelNearExpiry, "firing")]
        );
        // Claimed in full: resolved.
        c.claimed = Some(100);
        s.contracts = vec![c];
        assert_eq!(
            fired(&a.evaluate(&s, ME, 10_000)),
            [(Kind::ChannelNearExpiry, "resolved")]
        );
    }
}
