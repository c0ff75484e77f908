//! Earnings over time, for the provider page's chart: while the node runs
//! it samples its totals — vouchered (the publishers' vouchers it holds)
//! and settled (paid out on chain) — every minute and keeps a day of them.
//! The stores hold only the latest voucher per channel, so the samples
//! are also appended to `earnings.log` in the home (one line each, three
//! numbers) and read back on start: a restart keeps the chart. A line torn
//! by a kill (no newline) is cut off; the file is rewritten (temp file and rename) when
//! it has grown to two days.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Where samples are appended, and lines written since the last rewrite.
    file: OnceLock<PathBuf>,
    appended: Mutex<usize>,
}

impl Earnings {
    /// Loads the last day of samples kept in `path` and appends every
    /// later one there.
    pub fn persist_to(&self, path: PathBuf) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // A last line without its newline was torn by a kill, even if its
        // numbers happen to parse.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let loaded: Vec<Point> = whole.lines().filter_map(parse).collect();
        if whole.len() < text.len() {
            // Cut the torn tail, so the next sample starts a line of its own.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(whole.len() as u64));
        }
        {
            let mut points = self.lock();
            for p in loaded.iter().skip(loaded.len().saturating_sub(KEEP)) {
                points.push_back(*p);
            }
        }
        *self.appended.lock().unwrap_or_else(|e| e.into_inner()) = loaded.len();
        tracing::debug!(samples = loaded.len(), path = %path.display(), "earnings history");
        let _ = self.file.set(path);
    }

    pub fn record(&self, p: Point) {
        let mut points = self.lock();
        if points.len() == KEEP {
            points.pop_front();
        }
        points.push_back(p);
        let Some(path) = self.file.get() else { return };
        let mut appended = self.appended.lock().unwrap_or_else(|e| e.into_inner());
        let result = if *appended >= 2 * KEEP {
            rewrite(path, &points).map(|()| *appended = points.len())
        } else {
            append(path, &p).map(|()| *appended += 1)
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the earnings history");
        }
    }

    pub fn points(&self) -> Vec<Point> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Point>> {
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn line(p: &Point) -> String {
    format!("{} {} {}\n", p.at_ms, p.vouchered, p.settled)
}

fn parse(l: &str) -> Option<Point> {
    let mut f = l.split(' ');
    let p = Point {
        at_ms: f.next()?.parse().ok()?,
        vouchered: f.next()?.parse().ok()?,
        settled: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(p)
}

fn append(path: &Path, p: &Point) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line(p).as_bytes())
}

fn rewrite(path: &Path, points: &VecDeque<Point>) -> std::io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let text: String = points.iter().map(line).collect();
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
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
    if let Some(dir) = node.home_dir() {
        node.earnings().persist_to(dir.join("earnings.log"));
    }
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

    #[test]
    fn the_history_survives_a_restart_a_torn_line_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("earnings.log");
        let point = |i: u64| Point {
            at_ms: i * 60_000,
            vouchered: u128::from(i) * 10 + u128::MAX / 2,
            settled: u128::from(i),
        };
        let e = Earnings::default();
        e.persist_to(path.clone());
        for i in 0..3 {
            e.record(point(i));
        }
        // Killed while writing the fourth line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"180000 17 3")
            .unwrap();
        let again = Earnings::default();
        again.persist_to(path.clone());
        assert_eq!(again.points(), (0..3).map(point).collect::<Vec<_>>());
        again.record(point(3));
        let after = Earnings::default();
        after.persist_to(path.clone());
        assert_eq!(after.points(), (0..4).map(point).collect::<Vec<_>>());

        // Two days of samples: the file is rewritten, never past two days,
        // and what is read back is the last day.
        for i in 4..(3 * KEEP as u64) {
            again.record(point(i));
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 2 * KEEP + 1, "{lines} lines");
        let third = Earnings::default();
        third.persist_to(path);
        let points = third.points();
        assert_eq!(points.len(), KEEP);
        assert_eq!(points.last(), Some(&point(3 * KEEP as u64 - 1)));
    }
}
