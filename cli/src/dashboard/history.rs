//! Earnings over time, for the provider page's chart: while the node runs
//! it samples its totals — vouchered (the publishers' vouchers it holds)
//! and settled (paid out on chain) — every minute and keeps a day of them
//! in memory. The stores hold only the latest voucher per channel, so
//! this history starts when the node does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zennet_chain::Amount;
use zennet_provider::{ContractView, Provider, ProviderError};

use crate::node::Node;

/// How often the totals are sampled, and how many samples are kept.
const EVERY: Duration = Duration::from_secs(60);
const KEEP: usize = 24 * 60;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at_ms: u64,
    pub vouchered: Amount,
    pub settled: Amount,
}

#[derive(Default)]
pub struct Earnings {
    points: Mutex<VecDeque<Point>>,
}

impl Earnings {
    pub fn record(&self, p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if points.len() == KEEP {
            points.pop_front();
        }
        points.push_back(p);
    }

    pub fn points(&self) -> Vec<Point> {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.iter().copied().collect()
    }
}

/// What the chain has paid out of a contract's channel `ch` (as the
/// chain has it now): its `claimed` while it exists; once closed (gone
/// from the state) the voucher the close claimed.
pub fn settled(ch: Option<&zennet_chain::Channel>, c: &ContractView) -> Amount {
    match ch {
        Some(ch) => ch.claimed,
        None if c.close_tx.is_some() => c.paid,
        None => 0,
    }
}

/// Vouchered and settled over every contract.
pub fn totals(p: &Provider) -> Result<Point, ProviderError> {
    let mut point = Point {
        at_ms: crate::node::now_ms(),
        vouchered: 0,
        settled: 0,
    };
    for c in p.contracts()? {
        point.vouchered += c.paid;
        let ch = c.channel.and_then(|id| p.channel(&id));
        point.settled += settled(ch.as_ref(), &c);
    }
    Ok(point)
}

/// Samples the provider's totals until the node shuts down.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(EVERY);
    while !node.is_shutting_down() {
        tick.tick().await;
        let Some(p) = node.provider() else { return };
        match totals(p) {
            Ok(point) => node.earnings().record(point),
            Err(e) => tracing::warn!(error = %e, "dashboard: cannot sample earnings"),
        }
    }
}

/// The two totals over time as an inline SVG line chart.
pub fn chart(points: &[Point]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return r#"<p class="muted">No samples yet (one a minute).</p>"#.into();
    };
    if points.len() < 2 {
        return r#"<p class="muted">One sample so far (one a minute).</p>"#.into();
    }
    let (w, h, left, bottom) = (720.0, 180.0, 90.0, 20.0);
    let span = (last.at_ms - first.at_ms).max(1) as f64;
    let top = points
        .iter()
        .map(|p| p.vouchered.max(p.settled))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let line = |value: fn(&Point) -> Amount| {
        points
            .iter()
            .map(|p| {
                let x = left + (w - left) * (p.at_ms - first.at_ms) as f64 / span;
                let y = (h - bottom) * (1.0 - value(p) as f64 / top);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let minutes = (last.at_ms - first.at_ms) / 60_000;
    format!(
        r##"<svg id="earnings-history" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="earnings over time"><line x1="{left}" y1="{base}" x2="{w}" y2="{base}" stroke="#aab"/><text x="0" y="12" font-size="12">{top}</text><text x="0" y="{base}" font-size="12">0</text><text x="{left}" y="{lab}" font-size="12">{minutes} min ago</text><text x="{now}" y="{lab}" font-size="12">now</text><polyline fill="none" stroke="#e0a100" stroke-width="2" points="{v}"><title>vouchered</title></polyline><polyline fill="none" stroke="#1e7b34" stroke-width="2" points="{s}"><title>settled on chain</title></polyline></svg>"##,
        base = h - bottom,
        lab = h - 4.0,
        now = w - 30.0,
        v = line(|p| p.vouchered),
        s = line(|p| p.settled),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_of_samples_is_kept_and_charted() {
        let e = Earnings::default();
        assert!(chart(&e.points()).contains("No samples"));
        e.record(Point {
            at_ms: 0,
            vouchered: 0,
            settled: 0,
        });
        assert!(chart(&e.points()).contains("One sample"));
        for i in 0..(KEEP as u64 + 10) {
            e.record(Point {
                at_ms: i * 60_000,
                vouchered: u128::from(i) * 10,
                settled: u128::from(i) * 5,
            });
        }
        let points = e.points();
        assert_eq!(points.len(), KEEP);
        assert_eq!(points[0].at_ms, 10 * 60_000);
        let svg = chart(&points);
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
        assert!(svg.contains(&format!("{} min ago", KEEP - 1)));
    }
}
