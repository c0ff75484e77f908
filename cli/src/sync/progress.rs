//! What catching up is doing, as `zennet chain sync`, `chain info`, the
//! dashboard and `/metrics` show it: the phase, where it started, the
//! height it is heading for, snapshot chunks checked, and when peers'
//! chains were last compared with ours (so "not syncing" can be told
//! apart from "not asked yet").

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::node::now_ms;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Set while a catch-up runs.
    pub running: Option<SyncRun>,
    /// When the last comparison with peers ended (node clock, ms).
    pub checked_ms: Option<u64>,
    /// Peers that answered it.
    pub peers_answered: usize,
    /// The highest chain any of them claimed.
    pub best_peer_height: Option<u64>,
    /// Whether it found a peer with more work than us (a catch-up follows).
    pub behind: bool,
    /// False when this node has no networking (nothing to sync from).
    pub network: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRun {
    pub phase: SyncPhase,
    pub started_ms: u64,
    /// Our height when the catch-up began.
    pub from_height: u64,
    /// The best peer's height.
    pub target_height: u64,
    /// Snapshot chunks checked so far, of `chunks_total` (phase `snapshot`).
    pub chunks_done: u64,
    pub chunks_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPhase {
    /// Fast sync: headers up to the snapshot height, every seal checked.
    Headers,
    /// Fast sync: state chunks, each checked against the manifest.
    Snapshot,
    /// Blocks executed one by one (headers first).
    Blocks,
}

impl SyncStatus {
    /// One line for people: the phase and how far it got at `height`.
    pub fn summary(&self, height: u64) -> String {
        match &self.running {
            Some(r) if r.phase == SyncPhase::Snapshot => format!(
                "fast sync: state chunk {} of {} (snapshot at height {})",
                r.chunks_done, r.chunks_total, r.target_height
            ),
            Some(r) => {
                let done = height.saturating_sub(r.from_height);
                let all = r.target_height.saturating_sub(r.from_height).max(1);
                format!(
                    "{}: height {height} of {} ({}%)",
                    r.phase,
                    r.target_height,
                    (done * 100 / all).min(100)
                )
            }
            None if !self.network => "off (no networking)".into(),
            None if self.behind => "a peer is ahead; catching up".into(),
            None => "idle: no peer is ahead".into(),
        }
    }
}

impl std::fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncPhase::Headers => "headers",
            SyncPhase::Snapshot => "snapshot",
            SyncPhase::Blocks => "blocks",
        })
    }
}

/// The node's copy, updated by the sync tasks.
#[derive(Default)]
pub struct Progress(Mutex<SyncStatus>);

impl Progress {
    pub fn get(&self, network: bool) -> SyncStatus {
        SyncStatus {
            network,
            ..self.lock().clone()
        }
    }

    /// A comparison with peers ended.
    pub(crate) fn checked(&self, answered: usize, best: Option<u64>, behind: bool) {
        let mut s = self.lock();
        s.checked_ms = Some(now_ms());
        s.peers_answered = answered;
        s.best_peer_height = best;
        s.behind = behind;
    }

    /// Enters `phase` heading for `target` (keeps where the run began).
    pub(crate) fn phase(&self, phase: SyncPhase, height: u64, target: u64) {
        let mut s = self.lock();
        let run = s.running.get_or_insert(SyncRun {
            phase,
            started_ms: now_ms(),
            from_height: height,
            target_height: target,
            chunks_done: 0,
            chunks_total: 0,
        });
        if run.phase != phase {
            tracing::info!(%phase, height, target, "sync phase");
        }
        run.phase = phase;
        run.target_height = target.max(height);
    }

    pub(crate) fn chunks(&self, done: u64, total: u64) {
        if let Some(run) = self.lock().running.as_mut() {
            (run.chunks_done, run.chunks_total) = (done, total);
        }
    }

    pub(crate) fn ended(&self) {
        self.lock().running = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_where_it_began_and_ends_cleanly() {
        let p = Progress::default();
        assert_eq!(p.get(true).running, None);
        p.phase(SyncPhase::Headers, 0, 20_000);
        p.phase(SyncPhase::Snapshot, 0, 19_900);
        p.chunks(3, 10);
        assert_eq!(
            p.get(true).summary(0),
            "fast sync: state chunk 3 of 10 (snapshot at height 19900)"
        );
        p.phase(SyncPhase::Blocks, 19_900, 20_010);
        assert_eq!(
            p.get(true).summary(10_005),
            "blocks: height 10005 of 20010 (50%)"
        );
        let run = p.get(true).running.unwrap();
        assert_eq!((run.from_height, run.target_height), (0, 20_010));
        assert_eq!(
            (run.phase, run.chunks_done, run.chunks_total),
            (SyncPhase::Blocks, 3, 10)
        );
        p.checked(2, Some(20_010), false);
        p.ended();
        let s = p.get(false);
        assert_eq!(
            (s.running.clone(), s.peers_answered, s.network),
            (None, 2, false)
        );
        assert!(s.checked_ms.is_some());
        assert_eq!(s.summary(1), "off (no networking)");
        assert_eq!(p.get(true).summary(1), "idle: no peer is ahead");
        // A target below where we are (a peer heavier on a shorter fork)
        // never reads as negative progress.
        p.phase(SyncPhase::Blocks, 500, 400);
        assert_eq!(p.get(true).running.unwrap().target_height, 500);
    }
}
