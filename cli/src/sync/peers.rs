//! Per-peer bookkeeping for sync, as pure state driven by the caller's
//! clock (tested in virtual time):
//!
//! * [`PeerBook`]: side blocks a peer made us store within one horizon's
//!   worth of time (over the bound: ban — storage per peer is bounded), and
//!   strikes for claiming more work without serving it (a peer that keeps
//!   doing so is dropped within a bounded time);
//! * [`HoldBack`]: blocks whose timestamp is ahead of our clock, kept until
//!   it is acceptable — a peer whose clock runs ahead is not lying.

use std::collections::{BTreeMap, HashMap, VecDeque};

use zennet_chain::Block;
use zennet_net::PeerId;

/// Strikes (timeouts or empty answers while claiming more work) before a
/// peer is banned.
pub const MAX_STRIKES: u32 = 2;

pub struct PeerBook {
    side_limit: usize,
    window_ms: u64,
    side: HashMap<PeerId, VecDeque<u64>>,
    strikes: HashMap<PeerId, u32>,
}

impl PeerBook {
    /// At most `side_limit` side blocks per peer in any `window_ms`.
    pub fn new(side_limit: usize, window_ms: u64) -> PeerBook {
        PeerBook {
            side_limit,
            window_ms,
            side: HashMap::new(),
            strikes: HashMap::new(),
        }
    }

    /// Records a side block stored from `peer` at `now_ms`; `Err` (the ban
    /// reason) when that exceeds its share.
    pub fn side_block(&mut self, peer: PeerId, now_ms: u64) -> Result<(), String> {
        let times = self.side.entry(peer).or_default();
        while times
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) > self.window_ms)
        {
            times.pop_front();
        }
        times.push_back(now_ms);
        if times.len() > self.side_limit {
            return Err(format!(
                "fed more than {} side blocks within {} s (a low-difficulty fork)",
                self.side_limit,
                self.window_ms / 1000
            ));
        }
        Ok(())
    }

    /// Records a strike; `Err` (the ban reason) once there are too many.
    pub fn strike(&mut self, peer: PeerId, why: &str) -> Result<(), String> {
        let n = self.strikes.entry(peer).or_default();
        *n += 1;
        if *n >= MAX_STRIKES {
            return Err(format!("{why} ({n} times)"));
        }
        Ok(())
    }

    /// A peer that served what it claimed is in good standing again.
    pub fn served(&mut self, peer: &PeerId) {
        self.strikes.remove(peer);
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.side.remove(peer);
        self.strikes.remove(peer);
    }
}

/// Blocks held at most, in all and per peer; and how far ahead a block may
/// be to be held at all (further ahead it is ignored, not held).
pub const MAX_HELD: usize = 256;
pub const MAX_HELD_PER_PEER: usize = 32;
pub const MAX_AHEAD_MS: u64 = 10 * 60 * 1000;

#[derive(Default)]
pub struct HoldBack {
    /// By the time the block becomes acceptable.
    held: BTreeMap<(u64, u64), (PeerId, Block)>,
    per_peer: HashMap<PeerId, usize>,
    seq: u64,
}

impl HoldBack {
    /// Holds `block` until `timestamp - max_future_ms`; false if it is too
    /// far ahead or the peer (or everyone) already has too many held.
    pub fn hold(&mut self, peer: PeerId, block: Block, now_ms: u64, max_future_ms: u64) -> bool {
        let ts = block.header.timestamp_ms;
        if ts > now_ms + MAX_AHEAD_MS {
            return false;
        }
        let n = self.per_peer.entry(peer).or_default();
        if *n >= MAX_HELD_PER_PEER || self.held.len() >= MAX_HELD {
            return false;
        }
        *n += 1;
        self.seq += 1;
        self.held
            .insert((ts.saturating_sub(max_future_ms), self.seq), (peer, block));
        true
    }

    /// Blocks whose time has come, oldest first.
    pub fn due(&mut self, now_ms: u64) -> Vec<(PeerId, Block)> {
        let later = self.held.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.held, later);
        due.into_values()
            .inspect(|(peer, _)| {
                if let Some(n) = self.per_peer.get_mut(peer) {
                    *n -= 1;
                }
            })
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    #[cfg(test)]
    pub fn next_due(&self) -> Option<u64> {
        self.held.keys().next().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zennet_chain::Header;

    fn block(ts: u64) -> Block {
        Block {
            header: Header {
                parent: zennet_chain::Hash::ZERO,
                height: 1,
                timestamp_ms: ts,
                tx_root: zennet_chain::Hash::ZERO,
                state_root: zennet_chain::Hash::ZERO,
                difficulty: 1,
                miner: zennet_chain::Address::ZERO,
                extra: vec![],
                mix_digest: zennet_chain::Hash::ZERO,
                nonce: 0,
            },
            txs: vec![],
        }
    }

    #[test]
    fn a_side_block_flood_is_banned_and_an_occasional_fork_is_not() {
        let (flood, honest) = (PeerId::random(), PeerId::random());
        let mut book = PeerBook::new(10, 200_000);
        let t = 1_000_000;
        for i in 0..10 {
            book.side_block(flood, t + i).unwrap();
        }
        assert!(book.side_block(flood, t + 11).is_err(), "over the bound");
        // One fork block a minute for an hour is fine.
        for i in 0..60 {
            book.side_block(honest, t + i * 60_000).unwrap();
        }
    }

    #[test]
    fn a_peer_that_keeps_claiming_work_it_does_not_serve_is_banned() {
        let p = PeerId::random();
        let mut book = PeerBook::new(10, 1);
        assert!(book.strike(p, "no headers").is_ok());
        book.served(&p);
        assert!(
            book.strike(p, "no headers").is_ok(),
            "serving resets the strikes"
        );
        assert!(book.strike(p, "no headers").is_err());
    }

    #[test]
    fn blocks_from_a_fast_clock_are_held_until_their_time_and_bounded() {
        let p = PeerId::random();
        let mut hold = HoldBack::default();
        let now = 1_000_000;
        assert!(hold.hold(p, block(now + 20_000), now, 15_000));
        assert!(hold.hold(p, block(now + 40_000), now, 15_000));
        assert!(
            !hold.hold(p, block(now + MAX_AHEAD_MS + 1), now, 15_000),
            "too far ahead"
        );
        assert!(hold.due(now).is_empty());
        assert_eq!(hold.next_due(), Some(now + 5_000));
        let first = hold.due(now + 5_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.header.timestamp_ms, now + 20_000);
        assert_eq!(hold.due(now + 25_000).len(), 1);
        assert_eq!(hold.len(), 0);
        for i in 0..MAX_HELD_PER_PEER as u64 {
            assert!(hold.hold(p, block(now + 20_000 + i), now, 15_000));
        }
        assert!(
            !hold.hold(p, block(now + 20_000), now, 15_000),
            "per-peer bound"
        );
        assert!(hold.hold(PeerId::random(), block(now + 20_000), now, 15_000));
    }
}
