//! Which part to ask which seeder for: a pure state machine, driven by the
//! downloader's sessions with the time passed in, so its rules are tested
//! in virtual time without a network.
//!
//! - Rarest first: among the parts a seeder has that nobody is fetching,
//!   the one fewest seeders have; ties are broken by a per-seeder offset so
//!   seeders start in different places.
//! - Speed: each seeder's rate is measured from what it delivered; a
//!   request older than its expected time (queue length × part size ÷
//!   rate, at least `min_timeout`) goes stale and its part is free for
//!   others again. A seeder with stale requests and nothing delivered for
//!   `gone_after` is given up.
//! - Endgame: when every missing part is requested, an idle seeder asks
//!   for a part already requested elsewhere (oldest request first, at most
//!   `endgame_copies` requests per part, and only while that seeder has
//!   fewer than `endgame_window` requests of its own outstanding); the
//!   first verified copy wins.
//! - A seeder that sent a bad part is dropped and never asked again.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::metainfo::PIECE_LEN;

#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub min_timeout: Duration,
    pub gone_after: Duration,
    pub endgame_copies: usize,
    /// A seeder takes endgame copies only while it has fewer requests
    /// than this outstanding (there is no cancel, so each copy may be
    /// served in full).
    pub endgame_window: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            min_timeout: Duration::from_secs(5),
            gone_after: Duration::from_secs(30),
            endgame_copies: 2,
            endgame_window: 2,
        }
    }
}

/// Why a seeder is no longer used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// It sent a part whose SHA-1 does not match: never asked (or paid) again.
    Corrupt(u32),
    /// It broke the protocol (a part it was not asked for, a bad frame).
    Protocol(String),
    /// It refused to serve (e.g. unpaid), or went away.
    Gone(String),
    /// Stale requests and nothing delivered for `gone_after`.
    Slow,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dropped::Corrupt(i) => write!(f, "sent a corrupt part {i}"),
            Dropped::Protocol(why) => write!(f, "broke the protocol: {why}"),
            Dropped::Gone(why) => write!(f, "{why}"),
            Dropped::Slow => f.write_str("too slow: requests timed out"),
        }
    }
}

/// What a delivered part turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The first copy: the part is held now.
    First,
    /// Held already (an endgame copy, or a stale request answered late).
    Duplicate,
}

#[derive(Debug)]
struct Request<P> {
    peer: P,
    at: Duration,
    stale: bool,
}

#[derive(Debug)]
struct Peer {
    have: Bitfield,
    offset: u32,
    outstanding: usize,
    bytes: u64,
    first_request: Option<Duration>,
    last_delivery: Option<Duration>,
    dropped: Option<Dropped>,
}

impl Peer {
    /// Bytes per second delivered since the first request (None before any).
    fn rate(&self, now: Duration) -> Option<f64> {
        let since = now.checked_sub(self.first_request?)?.as_secs_f64();
        (self.bytes > 0 && since > 0.0).then(|| self.bytes as f64 / since)
    }
}

pub struct Scheduler<P> {
    config: ScheduleConfig,
    have: Bitfield,
    availability: Vec<u16>,
    requests: HashMap<u32, Vec<Request<P>>>,
    peers: HashMap<P, Peer>,
}

impl<P: Copy + Eq + Hash + std::fmt::Debug> Scheduler<P> {
    /// `have`: the parts already held (resume, deduplication).
    pub fn new(have: Bitfield, config: ScheduleConfig) -> Scheduler<P> {
        Scheduler {
            config,
            availability: vec![0; have.len() as usize],
            have,
            requests: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    pub fn add_peer(&mut self, peer: P, have: Bitfield, offset: u32) {
        assert_eq!(have.len(), self.have.len(), "checked by the caller");
        for i in have.ones() {
            self.availability[i as usize] += 1;
        }
        self.peers.insert(
            peer,
            Peer {
                have,
                offset,
                outstanding: 0,
                bytes: 0,
                first_request: None,
                last_delivery: None,
                dropped: None,
            },
        );
    }

    /// `peer` holds part `index` now (a BitTorrent `have`); false if it
    /// was known already.
    pub fn has(&mut self, peer: P, index: u32) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if index >= p.have.len() || p.have.get(index) {
            return false;
        }
        p.have.set(index);
        if p.dropped.is_none() {
            self.availability[index as usize] += 1;
        }
        true
    }

    /// `peer` will not deliver `index` after all (a BitTorrent peer
    /// choked us): the part is free for others again.
    pub fn release(&mut self, peer: P, index: u32) {
        let Some(reqs) = self.requests.get_mut(&index) else {
            return;
        };
        let before = reqs.len();
        reqs.retain(|r| r.peer != peer);
        if reqs.len() < before
            && let Some(p) = self.peers.get_mut(&peer)
        {
            p.outstanding = p.outstanding.saturating_sub(1);
        }
        if reqs.is_empty() {
            self.requests.remove(&index);
        }
    }

    /// Stops using `peer`; its requests are freed for others.
    pub fn drop_peer(&mut self, peer: P, why: Dropped) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.dropped.is_some() {
            return;
        }
        for i in p.have.ones() {
            self.availability[i as usize] -= 1;
        }
        p.dropped = Some(why);
        p.outstanding = 0;
        for reqs in self.requests.values_mut() {
            reqs.retain(|r| r.peer != peer);
        }
        self.requests.retain(|_, r| !r.is_empty());
    }

    pub fn dropped(&self, peer: P) -> Option<&Dropped> {
        self.peers.get(&peer).and_then(|p| p.dropped.as_ref())
    }

    /// The next part to ask `peer` for, recorded as requested at `now`.
    pub fn next(&mut self, peer: P, now: Duration) -> Option<u32> {
        let p = self.peers.get(&peer)?;
        if p.dropped.is_some() {
            return None;
        }
        let n = self.have.len();
        let mut best: Option<(u16, u32, u32)> = None;
        for k in 0..n {
            let i = (k + p.offset % n.max(1)) % n;
            if self.have.get(i) || !p.have.get(i) || self.is_requested(i) {
                continue;
            }
            let rarity = self.availability[i as usize];
            if best.is_none_or(|(r, _, _)| rarity < r) {
                best = Some((rarity, k, i));
                if rarity <= 1 {
                    break;
                }
            }
        }
        let chosen = match best {
            Some((_, _, i)) => Some(i),
            None => self.endgame_pick(peer, p),
        }?;
        self.record(peer, chosen, now);
        Some(chosen)
    }

    /// A part arrived from `peer` and verified.
    pub fn delivered(&mut self, peer: P, index: u32, bytes: u64, now: Duration) -> Delivery {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.outstanding = p.outstanding.saturating_sub(1);
            p.bytes += bytes;
            p.last_delivery = Some(now);
        }
        if self.have.get(index) {
            return Delivery::Duplicate;
        }
        self.have.set(index);
        // Copies asked of others will arrive as duplicates.
        if let Some(reqs) = self.requests.remove(&index) {
            for r in reqs {
                if r.peer != peer
                    && let Some(p) = self.peers.get_mut(&r.peer)
                {
                    p.outstanding = p.outstanding.saturating_sub(1);
                }
            }
        }
        Delivery::First
    }

    /// Marks requests that took longer than expected as stale (their parts
    /// are free for others) and gives up seeders that stopped delivering.
    /// Returns the seeders given up.
    pub fn expire(&mut self, now: Duration) -> Vec<P> {
        let mut slow = Vec::new();
        for reqs in self.requests.values_mut() {
            for r in reqs.iter_mut().filter(|r| !r.stale) {
                let p = &self.peers[&r.peer];
                let expected = match p.rate(now) {
                    Some(rate) => Duration::from_secs_f64(
                        (p.outstanding.max(1) as f64 * PIECE_LEN as f64 / rate) * 4.0,
                    ),
                    None => self.config.min_timeout,
                }
                .max(self.config.min_timeout);
                if now.saturating_sub(r.at) > expected {
                    r.stale = true;
                }
            }
        }
        for (peer, p) in &self.peers {
            if p.dropped.is_some() {
                continue;
            }
            let since = p.last_delivery.or(p.first_request);
            let waiting = self
                .requests
                .values()
                .flatten()
                .any(|r| r.peer == *peer && r.stale);
            if waiting && since.is_some_and(|t| now.saturating_sub(t) > self.config.gone_after) {
                slow.push(*peer);
            }
        }
        for peer in &slow {
            self.drop_peer(*peer, Dropped::Slow);
        }
        slow
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    pub fn missing(&self) -> u32 {
        self.have.len() - self.have.count()
    }

    /// Missing parts no usable seeder has.
    pub fn stalled(&self) -> bool {
        (0..self.have.len()).any(|i| {
            !self.have.get(i)
                && !self
                    .peers
                    .values()
                    .any(|p| p.dropped.is_none() && p.have.get(i))
        })
    }

    /// Why each dropped seeder was dropped.
    pub fn drop_reasons(&self) -> Vec<(P, Dropped)> {
        self.peers
            .iter()
            .filter_map(|(peer, p)| p.dropped.clone().map(|d| (*peer, d)))
            .collect()
    }

    /// Requested of someone and not stale.
    fn is_requested(&self, i: u32) -> bool {
        self.requests
            .get(&i)
            .is_some_and(|reqs| reqs.iter().any(|r| !r.stale))
    }

    fn endgame_pick(&self, peer: P, p: &Peer) -> Option<u32> {
        // Only once nothing missing is left unrequested, and only for a
        // seeder that is nearly idle.
        if p.outstanding >= self.config.endgame_window
            || (0..self.have.len()).any(|i| !self.have.get(i) && !self.is_requested(i))
        {
            return None;
        }
        self.requests
            .iter()
            .filter(|(i, reqs)| {
                p.have.get(**i)
                    && !self.have.get(**i)
                    && reqs.len() < self.config.endgame_copies
                    && !reqs.iter().any(|r| r.peer == peer)
            })
            .min_by_key(|(i, reqs)| (reqs.iter().map(|r| r.at).min(), **i))
            .map(|(i, _)| *i)
    }

    fn record(&mut self, peer: P, index: u32, now: Duration) {
        let p = self.peers.get_mut(&peer).expect("known peer");
        p.outstanding += 1;
        p.first_request.get_or_insert(now);
        self.requests.entry(index).or_default().push(Request {
            peer,
            at: now,
            stale: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn bits(n: u32, held: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for i in held {
            b.set(*i);
        }
        b
    }

    #[test]
    fn rarest_parts_go_first() {
        let mut s = Scheduler::new(Bitfield::new(4), ScheduleConfig::default());
        s.add_peer(1, Bitfield::full(4), 0);
        s.add_peer(2, bits(4, &[0, 1, 2]), 0);
        // Part 3 only peer 1 has.
        assert_eq!(s.next(1, S), Some(3));
        assert_eq!(s.next(2, S), Some(0));
        assert_eq!(s.next(2, S), Some(1));
    }

    #[test]
    fn every_part_is_asked_once_until_the_endgame() {
        let n = 64;
        let mut s = Scheduler::new(Bitfield::new(n), ScheduleConfig::default());
        for p in 0..3u32 {
            s.add_peer(p, Bitfield::full(n), p * 21);
        }
        let mut asked = Vec::new();
        for round in 0..n {
            let p = round % 3;
            asked.push(s.next(p, S).unwrap());
        }
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked.len() as u32,
            n,
            "no part asked twice before the endgame"
        );
        // Endgame: every part is requested; a busy seeder copies nothing,
        // a nearly idle one copies the oldest request.
        assert_eq!(s.next(0, S), None, "peer 0 has 22 parts outstanding");
        for i in asked.iter().copied() {
            if i % 3 == 0 {
                s.delivered(0, i, PIECE_LEN, S);
            }
        }
        let copy = s.next(0, S).expect("endgame copy");
        assert_eq!(s.delivered(1, copy, PIECE_LEN, 2 * S), Delivery::First);
        assert_eq!(s.delivered(0, copy, PIECE_LEN, 2 * S), Delivery::Duplicate);
    }

    #[test]
    fn a_corrupt_seeder_is_dropped_and_its_parts_move() {
        let mut s = Scheduler::new(Bitfield::new(2), ScheduleConfig::default());
        s.add_peer("bad", Bitfield::full(2), 0);
        s.add_peer("good", Bitfield::full(2), 1);
        let a = s.next("bad", S).unwrap();
        let b = s.next("good", S).unwrap();
        assert_ne!(a, b);
        s.drop_peer("bad", Dropped::Corrupt(a));
        assert_eq!(s.next("bad", S), None, "never asked again");
        assert_eq!(s.next("good", S), Some(a));
        assert_eq!(s.dropped("bad"), Some(&Dropped::Corrupt(a)));
        assert!(!s.stalled());
        s.drop_peer("good", Dropped::Gone("left".into()));
        assert!(s.stalled(), "nobody left has the missing parts");
    }

    #[test]
    fn a_slow_seeders_parts_move_in_virtual_time() {
        let cfg = ScheduleConfig::default();
        let mut s = Scheduler::new(Bitfield::new(4), cfg.clone());
        s.add_peer('s', Bitfield::full(4), 0);
        s.add_peer('f', Bitfield::full(4), 2);
        let slow = s.next('s', Duration::ZERO).unwrap();
        let fast = s.next('f', Duration::ZERO).unwrap();
        assert_eq!(s.delivered('f', fast, PIECE_LEN, S / 10), Delivery::First);
        // Before the timeout the slow seeder's part is not offered to others.
        let other = s.next('f', S / 10).unwrap();
        assert_ne!(other, slow);
        assert!(s.expire(cfg.min_timeout / 2).is_empty());
        s.delivered('f', other, PIECE_LEN, S / 5);
        let last = s.next('f', S / 5).unwrap();
        s.delivered('f', last, PIECE_LEN, S / 4);
        // Endgame may copy it, but only one copy in flight beside the slow one.
        assert_eq!(s.next('f', S / 4), Some(slow));
        s.delivered('f', slow, PIECE_LEN, S / 3);
        assert!(s.is_complete());
        // The slow seeder's late answer is a duplicate.
        assert_eq!(
            s.delivered('s', slow, PIECE_LEN, cfg.min_timeout),
            Delivery::Duplicate
        );
    }

    #[test]
    fn a_have_makes_a_part_available_and_a_choke_releases_it() {
        let mut s = Scheduler::new(Bitfield::new(2), ScheduleConfig::default());
        s.add_peer("bt", Bitfield::new(2), 0);
        assert_eq!(s.next("bt", S), None, "it holds nothing yet");
        assert!(s.has("bt", 1));
        assert!(!s.has("bt", 1), "known already");
        assert!(!s.has("bt", 7), "out of range");
        assert_eq!(s.next("bt", S), Some(1));
        s.add_peer("z", Bitfield::full(2), 0);
        assert_eq!(s.next("z", S), Some(0), "part 1 is asked of bt");
        s.release("bt", 1);
        assert_eq!(s.next("z", S), Some(1), "released: free for others");
    }

    #[test]
    fn stale_requests_free_their_part_and_silence_drops_the_seeder() {
        let cfg = ScheduleConfig::default();
        let mut s = Scheduler::new(Bitfield::new(3), cfg.clone());
        s.add_peer(1, Bitfield::full(3), 0);
        let stuck = s.next(1, Duration::ZERO).unwrap();
        s.add_peer(2, bits(3, &[stuck]), 0);
        assert_eq!(s.next(2, S), None, "its only part is requested elsewhere");
        s.expire(cfg.min_timeout + S);
        assert_eq!(
            s.next(2, cfg.min_timeout + S),
            Some(stuck),
            "stale: free again"
        );
        let gone = s.expire(cfg.gone_after + 2 * S);
        assert_eq!(gone, vec![1]);
        assert_eq!(s.dropped(1), Some(&Dropped::Slow));
    }
}
