//! The replica contract's decisions, as pure state machines fed with the
//! time (Unix milliseconds) and events; the service ([`crate::storage`])
//! only does the I/O they ask for.
//!
//! * [`Replica`] is the owner's view of one replica: when to challenge it
//!   (at random intervals around the announcement's `challenge_secs`),
//!   whether its answer passes (the leaves asked, each proved against the
//!   root), what a pass pays, and when it has failed (a wrong leaf, a
//!   proof for another leaf, an answer later than `answer_ms`, none at
//!   all, or still no data `fetch_ms` after it accepted) and must be
//!   released so that another node takes its slot. A failed replica is
//!   never paid again.
//! * [`Held`] is the storage node's view of a contract it holds: what the
//!   owner owes it, and when to stop holding unpaid data.
//!
//! # What a pass pays
//! `price_per_gib_hour × size × (time since the last paid pass)`, the time
//! counted from when the owner saw the acceptance, capped at
//! [`PAY_CAP_INTERVALS`] mean intervals (a gap longer than that, the owner
//! being offline, is not paid: the replica proved nothing about it) and
//! never past the contract's end ([`storage_cost`]). A pass whose voucher
//! could not be delivered is owed, and paid with the next one.
//!
//! # An owner that does not pay
//! The storage node accrues the same price from when it finished fetching.
//! Once what is owed and unpaid exceeds [`GRACE_INTERVALS`] mean intervals
//! of storage, it stops holding the data (unpins and deletes it, unless it
//! held the file before the contract): an owner paying on time pays at
//! most 1.5 intervals after the last payment, so three intervals tolerate
//! one lost payment and a slow one, but not an owner that stopped paying
//! or pays less than the price.

use std::collections::VecDeque;
use std::fmt;

use primitive_types::U256;
use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::{Address, Amount, Hash, StorageRecord};

use crate::merkle::{self, Proof};
use crate::metainfo::FileId;
use crate::pos::{self, Challenge, LEAVES_PER_CHALLENGE};

/// A pass pays at most this many mean challenge intervals.
pub const PAY_CAP_INTERVALS: u64 = 2;
/// A holder drops data once this many mean intervals of storage are owed.
pub const GRACE_INTERVALS: u64 = 3;
/// Rounds kept in a replica's history (what `fs replicas` shows).
pub const HISTORY: usize = 32;

const GIB_HOUR_MS: u128 = (1 << 30) * 3_600_000;

/// What `size` bytes cost for `ms` milliseconds at `price_per_gib_hour`,
/// rounded up.
pub fn storage_cost(price_per_gib_hour: Amount, size: u64, ms: u64) -> Amount {
    let num = U256::from(price_per_gib_hour) * U256::from(size) * U256::from(ms);
    let q = (num + U256::from(GIB_HOUR_MS - 1)) / U256::from(GIB_HOUR_MS);
    if q > U256::from(u128::MAX) {
        u128::MAX
    } else {
        q.as_u128()
    }
}

/// When the next challenge comes: uniformly within [0.5, 1.5] × `mean`,
/// `r` a random number.
pub fn interval(mean_ms: u64, r: u64) -> u64 {
    mean_ms / 2 + r % (mean_ms + 1)
}

/// The terms of one replica's contract, from the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub task: Hash,
    pub node: Address,
    pub owner: Address,
    pub file: FileId,
    pub size: u64,
    pub root: Hash,
    #[serde(with = "amount_str")]
    pub price_per_gib_hour: Amount,
    pub ends_at_ms: u64,
    /// Mean time between challenges.
    pub challenge_ms: u64,
}

impl Terms {
    pub fn of(record: &StorageRecord, node: Address) -> Terms {
        let a = &record.announcement;
        Terms {
            task: record.id,
            node,
            owner: record.owner,
            file: FileId(a.file.0),
            size: a.size,
            root: a.merkle_root,
            price_per_gib_hour: a.price_per_gib_hour,
            ends_at_ms: a.ends_at_ms,
            challenge_ms: a.challenge_secs as u64 * 1000,
        }
    }

    /// What holding the file costs for `ms`.
    pub fn cost(&self, ms: u64) -> Amount {
        storage_cost(self.price_per_gib_hour, self.size, ms)
    }
}

/// The owner's own limits on a replica's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// An answer later than this after the challenge fails it.
    pub answer_ms: u64,
    /// From the acceptance to the first passed challenge, at most.
    pub fetch_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Accepted; no challenge passed yet (the node is fetching).
    Fetching,
    /// Passed a challenge; challenged on.
    Holding,
    /// Failed; to be released on chain.
    Failed,
    /// Released on chain; its slot is free.
    Released,
    /// The contract ended.
    Ended,
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaState::Fetching => "fetching",
            ReplicaState::Holding => "holding",
            ReplicaState::Failed => "failed",
            ReplicaState::Released => "released",
            ReplicaState::Ended => "ended",
        })
    }
}

/// Why a replica failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// No answer within the owner's `answer_ms`.
    Timeout { round: u32 },
    /// A leaf that does not prove against the root.
    BadProof { round: u32, index: u64, why: String },
    /// Proofs of other leaves than those asked.
    WrongLeaves {
        round: u32,
        asked: Vec<u64>,
        got: Vec<u64>,
    },
    /// Still fetching when the fetch allowance ran out.
    NotReady {
        round: u32,
        have_parts: u32,
        parts: u32,
    },
    /// It refused the challenge.
    Refused { round: u32, reason: String },
    /// It could not be reached, or broke the protocol.
    Gone { round: u32, why: String },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { round } => write!(f, "round {round}: no answer in time"),
            Failure::BadProof { round, index, why } => {
                write!(f, "round {round}: leaf {index} does not prove: {why}")
            }
            Failure::WrongLeaves { round, asked, got } => {
                write!(f, "round {round}: asked for leaves {asked:?}, got {got:?}")
            }
            Failure::NotReady {
                round,
                have_parts,
                parts,
            } => write!(
                f,
                "round {round}: still fetching ({have_parts} of {parts} parts) after the fetch allowance"
            ),
            Failure::Refused { round, reason } => write!(f, "round {round}: refused: {reason}"),
            Failure::Gone { round, why } => write!(f, "round {round}: {why}"),
        }
    }
}

/// A challenge sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub round: u32,
    pub sent_ms: u64,
    pub height: u64,
    pub block: Hash,
    pub leaves: Vec<u64>,
}

/// One challenge as the owner recorded it: with the height and block,
/// anyone can recompute the leaves asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub round: u32,
    pub at_ms: u64,
    pub height: u64,
    pub block: Hash,
    pub leaves: Vec<u64>,
    /// `passed`, `not_ready` or the failure.
    pub outcome: String,
    /// What the pass paid (0 otherwise).
    #[serde(with = "amount_str")]
    pub paid: Amount,
}

/// What the owner's service is to do for a replica now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a challenge ([`Replica::challenge`]).
    Challenge,
    /// Submit `ReleaseStorage` for it ([`Replica::release_submitted`]).
    Release,
}

/// A replica's answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Proofs(Vec<Proof>),
    NotReady { have_parts: u32, parts: u32 },
    Refused(String),
    Gone(String),
}

/// What an answer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed: pay this much now ([`Replica::paid`] once the voucher is signed).
    Pass { pay: Amount },
    /// Still fetching within the allowance: no pay, no failure.
    Wait,
    /// Failed: release it, never pay it again.
    Fail(Failure),
    /// An answer to a challenge no longer waited for (timed out, or
    /// another round): ignored.
    Stale,
}

/// The owner's view of one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub terms: Terms,
    pub timing: Timing,
    pub state: ReplicaState,
    /// When the owner saw the acceptance.
    pub since_ms: u64,
    /// Paid up to here (passes pay from here to the pass).
    pub paid_until_ms: u64,
    pub next_ms: u64,
    pub round: u32,
    pub asked: Option<Asked>,
    pub passed: u32,
    pub not_ready: u32,
    /// What passes earned, and what vouchers paid of it.
    #[serde(with = "amount_str")]
    pub owed: Amount,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    pub failure: Option<Failure>,
    pub release_tx: Option<Hash>,
    pub history: VecDeque<Round>,
}

impl Replica {
    /// A replica whose acceptance the owner sees at `now`; `r` is random.
    pub fn new(terms: Terms, timing: Timing, now: u64, r: u64) -> Replica {
        Replica {
            next_ms: now + interval(terms.challenge_ms, r),
            terms,
            timing,
            state: ReplicaState::Fetching,
            since_ms: now,
            paid_until_ms: now,
            round: 0,
            asked: None,
            passed: 0,
            not_ready: 0,
            owed: 0,
            paid: 0,
            failure: None,
            release_tx: None,
            history: VecDeque::new(),
        }
    }

    /// Whether it is still challenged (and so may still be paid).
    pub fn live(&self) -> bool {
        matches!(self.state, ReplicaState::Fetching | ReplicaState::Holding)
    }

    /// When [`Replica::poll`] next has something to do, if ever.
    pub fn wake_at(&self) -> Option<u64> {
        match self.state {
            ReplicaState::Failed if self.release_tx.is_none() => Some(0),
            _ if !self.live() => None,
            _ => Some(match &self.asked {
                Some(a) => a.sent_ms + self.timing.answer_ms,
                None => self.next_ms.min(self.terms.ends_at_ms),
            }),
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        match self.state {
            ReplicaState::Failed => return self.release_tx.is_none().then_some(Action::Release),
            ReplicaState::Released | ReplicaState::Ended => return None,
            ReplicaState::Fetching | ReplicaState::Holding => {}
        }
        if let Some(a) = &self.asked {
            if now >= a.sent_ms + self.timing.answer_ms {
                let round = a.round;
                self.fail(now, Failure::Timeout { round });
                return Some(Action::Release);
            }
            return None;
        }
        if now >= self.terms.ends_at_ms {
            self.state = ReplicaState::Ended;
            return None;
        }
        (now >= self.next_ms).then_some(Action::Challenge)
    }

    /// Sends the next challenge, drawn from the block at `height`.
    pub fn challenge(&mut self, now: u64, height: u64, block: Hash) -> Challenge {
        self.round += 1;
        let leaves = pos::challenge_leaves(
            &block,
            &self.terms.task,
            &self.terms.node,
            self.round,
            merkle::leaf_count(self.terms.size),
            LEAVES_PER_CHALLENGE,
        );
        self.asked = Some(Asked {
            round: self.round,
            sent_ms: now,
            height,
            block,
            leaves,
        });
        Challenge {
            task: self.terms.task,
            round: self.round,
            height,
            block,
        }
    }

    /// Judges the answer to `round` received at `now`; `r` is random.
    pub fn answer(&mut self, now: u64, round: u32, answer: Answer, r: u64) -> Verdict {
        let Some(asked) = self
            .asked
            .clone()
            .filter(|a| a.round == round && self.live())
        else {
            return Verdict::Stale;
        };
        if now >= asked.sent_ms + self.timing.answer_ms {
            let f = Failure::Timeout { round };
            self.fail(now, f.clone());
            return Verdict::Fail(f);
        }
        let failure = match answer {
            Answer::Proofs(proofs) => match self.check(&asked, &proofs) {
                Ok(()) => {
                    let end = now.min(self.terms.ends_at_ms);
                    let cap = PAY_CAP_INTERVALS * self.terms.challenge_ms;
                    let earned = self
                        .terms
                        .cost(end.saturating_sub(self.paid_until_ms).min(cap));
                    self.owed += earned;
                    self.paid_until_ms = end.max(self.paid_until_ms);
                    self.passed += 1;
                    self.state = ReplicaState::Holding;
                    self.next(now, r, &asked, "passed");
                    return Verdict::Pass {
                        pay: self.owed - self.paid,
                    };
                }
                Err(f) => f,
            },
            Answer::NotReady { have_parts, parts } => {
                if self.state == ReplicaState::Fetching
                    && now < self.since_ms + self.timing.fetch_ms
                {
                    self.not_ready += 1;
                    // Paid from the first pass on, not for the fetch.
                    self.paid_until_ms = now;
                    self.next(now, r, &asked, "not ready");
                    return Verdict::Wait;
                }
                Failure::NotReady {
                    round,
                    have_parts,
                    parts,
                }
            }
            Answer::Refused(reason) => Failure::Refused { round, reason },
            Answer::Gone(why) => Failure::Gone { round, why },
        };
        self.fail(now, failure.clone());
        Verdict::Fail(failure)
    }

    /// A voucher for `amount` of a pass was signed (and is sent).
    pub fn paid(&mut self, round: u32, amount: Amount) {
        self.paid += amount;
        if let Some(r) = self.history.iter_mut().rev().find(|r| r.round == round) {
            r.paid += amount;
        }
    }

    pub fn release_submitted(&mut self, tx: Hash) {
        self.release_tx = Some(tx);
    }

    /// The release transaction was dropped: submit it again.
    pub fn release_lost(&mut self) {
        self.release_tx = None;
    }

    /// The chain shows the replica released (or the owner's node saw it
    /// leave the record): its slot is free.
    pub fn released(&mut self) {
        if self.state == ReplicaState::Failed || self.live() {
            self.state = ReplicaState::Released;
            self.asked = None;
        }
    }

    /// The contract was cancelled or pruned: no more challenges.
    pub fn end(&mut self) {
        if self.live() {
            self.state = ReplicaState::Ended;
            self.asked = None;
        }
    }

    fn check(&self, asked: &Asked, proofs: &[Proof]) -> Result<(), Failure> {
        let round = asked.round;
        let got: Vec<u64> = proofs.iter().map(|p| p.index).collect();
        if got != asked.leaves {
            return Err(Failure::WrongLeaves {
                round,
                asked: asked.leaves.clone(),
                got,
            });
        }
        for p in proofs {
            p.verify(&self.terms.root.0, self.terms.size)
                .map_err(|e| Failure::BadProof {
                    round,
                    index: p.index,
                    why: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn next(&mut self, now: u64, r: u64, asked: &Asked, outcome: &str) {
        self.record(now, asked, outcome.to_string());
        self.asked = None;
        self.next_ms = now + interval(self.terms.challenge_ms, r);
    }

    fn fail(&mut self, now: u64, failure: Failure) {
        if let Some(asked) = self.asked.take() {
            self.record(now, &asked, failure.to_string());
        }
        self.failure = Some(failure);
        self.state = ReplicaState::Failed;
    }

    fn record(&mut self, now: u64, asked: &Asked, outcome: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Round {
            round: asked.round,
            at_ms: now,
            height: asked.height,
            block: asked.block,
            leaves: asked.leaves.clone(),
            outcome,
            paid: 0,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldState {
    /// Our acceptance is submitted, not mined yet.
    Accepting,
    /// Accepted on chain; fetching the parts.
    Fetching,
    /// Every part held and the root checked: answering challenges.
    Holding,
    /// Given up (released, unpaid, cancelled, a bad root…); see the reason.
    Dropped,
    /// The contract ended.
    Ended,
}

impl fmt::Display for HeldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeldState::Accepting => "accepting",
            HeldState::Fetching => "fetching",
            HeldState::Holding => "holding",
            HeldState::Dropped => "dropped",
            HeldState::Ended => "ended",
        })
    }
}

/// What the storage node's service is to do for a contract now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldAction {
    /// Stop holding: unpin (and delete, unless held before) the file.
    Drop(String),
}

/// The storage node's view of a contract it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub terms: Terms,
    pub state: HeldState,
    /// Our `AcceptStorage` (none while its proof of work is searched for).
    pub accept_tx: Option<Hash>,
    pub accepted_ms: u64,
    pub held_since_ms: Option<u64>,
    #[serde(with = "amount_str")]
    pub paid: Amount,
    /// Vouchers taken (passed challenges the owner paid).
    pub receipts: u32,
    /// Challenges answered with proofs.
    pub answered: u32,
    /// The file was in the store before this contract (kept when dropped).
    pub had_file: bool,
    pub reason: Option<String>,
}

impl Held {
    pub fn new(terms: Terms, accept_tx: Option<Hash>, now: u64, had_file: bool) -> Held {
        Held {
            terms,
            state: HeldState::Accepting,
            accept_tx,
            accepted_ms: now,
            held_since_ms: None,
            paid: 0,
            receipts: 0,
            answered: 0,
            had_file,
            reason: None,
        }
    }

    /// Whether the file must stay in the store (pinned).
    pub fn pins(&self) -> bool {
        matches!(
            self.state,
            HeldState::Accepting | HeldState::Fetching | HeldState::Holding
        )
    }

    pub fn grace_ms(&self) -> u64 {
        GRACE_INTERVALS * self.terms.challenge_ms.max(1000)
    }

    /// What holding has earned by `now`.
    pub fn accrued(&self, now: u64) -> Amount {
        match self.held_since_ms {
            Some(since) => self
                .terms
                .cost(now.min(self.terms.ends_at_ms).saturating_sub(since)),
            None => 0,
        }
    }

    pub fn unpaid(&self, now: u64) -> Amount {
        self.accrued(now).saturating_sub(self.paid)
    }

    /// Our acceptance is mined: fetch.
    pub fn accepted(&mut self) {
        if self.state == HeldState::Accepting {
            self.state = HeldState::Fetching;
        }
    }

    /// Every part is held and the tree's root is the announced one.
    pub fn fetched(&mut self, now: u64) {
        if self.state == HeldState::Fetching {
            self.state = HeldState::Holding;
            self.held_since_ms = Some(now);
        }
    }

    /// A voucher of this contract's owner added `amount`.
    pub fn voucher(&mut self, amount: Amount) {
        self.paid += amount;
        self.receipts += 1;
    }

    /// Stops holding for `reason` (the chain released or cancelled it, the
    /// root did not match…).
    pub fn drop_for(&mut self, reason: String) {
        if self.pins() {
            self.state = HeldState::Dropped;
            self.reason = Some(reason);
        }
    }

    pub fn poll(&mut self, now: u64) -> Option<HeldAction> {
        if self.state != HeldState::Holding {
            return None;
        }
        let allowance = self.terms.cost(self.grace_ms());
        let unpaid = self.unpaid(now);
        if unpaid > allowance {
            let why = format!(
                "unpaid: the owner owes {unpaid}, more than the grace of {} s of storage ({allowance})",
                self.grace_ms() / 1000
            );
            self.drop_for(why.clone());
            return Some(HeldAction::Drop(why));
        }
        if now >= self.terms.ends_at_ms + self.grace_ms() {
            self.state = HeldState::Ended;
            return Some(HeldAction::Drop("the contract ended".into()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;
    use zennet_chain::crypto::keccak256;

    use super::*;
    use crate::merkle::{LEAF, Tree, leaf_len};

    /// Mean time between challenges.
    const MEAN: u64 = 10_000;
    const TIMING: Timing = Timing {
        answer_ms: 5_000,
        fetch_ms: 60_000,
    };
    /// A million units per GiB-second: fine enough that rounding moves no
    /// decision by more than a millisecond.
    const PRICE: Amount = 3600 * 1_000_000;

    struct Content {
        data: Vec<u8>,
        tree: Tree,
    }

    fn content(len: usize) -> Content {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 777) as u8).collect();
        Content {
            tree: Tree::of_bytes(&data),
            data,
        }
    }

    fn terms(c: &Content, ends_at_ms: u64) -> Terms {
        Terms {
            task: Hash([7; 32]),
            node: Address([8; 20]),
            owner: Address([9; 20]),
            file: FileId([1; 20]),
            size: c.data.len() as u64,
            root: Hash(c.tree.root()),
            price_per_gib_hour: PRICE,
            ends_at_ms,
            challenge_ms: MEAN,
        }
    }

    fn proof(c: &Content, index: u64) -> Proof {
        let start = (index * LEAF) as usize;
        let len = leaf_len(c.data.len() as u64, index) as usize;
        Proof {
            index,
            leaf: c.data[start..start + len].to_vec(),
            siblings: c.tree.siblings(index).unwrap(),
        }
    }

    /// How the fake replica answers.
    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        Honest,
        /// Honest until this round, then one byte of each leaf is wrong.
        WrongDataFrom(u32),
        /// A valid proof of the leaf after the one asked.
        OtherLeaf,
        /// Honest, but answering this late.
        Late(u64),
        Silent,
        /// Still fetching for this long after accepting.
        FetchingFor(u64),
    }

    /// The fake replica: what it answers to `c` (deriving the leaves from
    /// the block itself, as a real one does) and after how long.
    fn respond(
        b: Behaviour,
        c: &Content,
        t: &Terms,
        ch: &Challenge,
        now: u64,
    ) -> (u64, Option<Answer>) {
        let leaves = pos::challenge_leaves(
            &ch.block,
            &t.task,
            &t.node,
            ch.round,
            merkle::leaf_count(t.size),
            LEAVES_PER_CHALLENGE,
        );
        let honest = || Answer::Proofs(leaves.iter().map(|i| proof(c, *i)).collect());
        match b {
            Behaviour::Honest => (40, Some(honest())),
            Behaviour::WrongDataFrom(round) if ch.round >= round => {
                let mut proofs: Vec<Proof> = leaves.iter().map(|i| proof(c, *i)).collect();
                for p in &mut proofs {
                    p.leaf[0] ^= 0xff;
                }
                (40, Some(Answer::Proofs(proofs)))
            }
            Behaviour::WrongDataFrom(_) => (40, Some(honest())),
            Behaviour::OtherLeaf => {
                let n = merkle::leaf_count(t.size);
                let proofs = leaves.iter().map(|i| proof(c, (i + 1) % n)).collect();
                (40, Some(Answer::Proofs(proofs)))
            }
            Behaviour::Late(ms) => (ms, Some(honest())),
            Behaviour::Silent => (u64::MAX, None),
            Behaviour::FetchingFor(ms) if now < ms => (
                40,
                Some(Answer::NotReady {
                    have_parts: 1,
                    parts: 4,
                }),
            ),
            Behaviour::FetchingFor(_) => (40, Some(honest())),
        }
    }

    struct Run {
        verdicts: Vec<(u64, Verdict)>,
        challenged_at: Vec<u64>,
        released_at: Option<u64>,
        dropped: Option<(u64, String)>,
    }

    /// Drives the owner's machine against the fake replica in virtual
    /// time until `until`, the holder's machine beside it; `pay` is the
    /// share of what its machine says a pass earns that the owner's
    /// vouchers really carry (1.0 honest; 0.5 a cheat that signs half, 0
    /// one that never pays).
    async fn run(
        owner: &mut Replica,
        holder: &mut Held,
        b: Behaviour,
        c: &Content,
        until: u64,
        pay: f64,
    ) -> Run {
        let start = Instant::now();
        let now = || start.elapsed().as_millis() as u64;
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = Run {
            verdicts: vec![],
            challenged_at: vec![],
            released_at: None,
            dropped: None,
        };
        holder.accepted();
        let mut height = 100u64;
        while now() < until {
            let t = now();
            if let Some(HeldAction::Drop(why)) = holder.poll(t)
                && out.dropped.is_none()
            {
                out.dropped = Some((t, why));
            }
            if holder.state == HeldState::Fetching
                && !matches!(b, Behaviour::FetchingFor(ms) if t < ms)
            {
                holder.fetched(t);
            }
            match owner.poll(t) {
                Some(Action::Challenge) => {
                    height += 1;
                    let block = keccak256(&height.to_be_bytes());
                    let ch = owner.challenge(t, height, block);
                    out.challenged_at.push(t);
                    let (delay, answer) = respond(b, c, &owner.terms, &ch, t);
                    // The owner waits at most answer_ms; a later answer
                    // still arrives and is judged (late).
                    let waited = tokio::time::timeout(
                        Duration::from_millis(TIMING.answer_ms + 1_000),
                        tokio::time::sleep(Duration::from_millis(delay.min(10_000_000))),
                    )
                    .await;
                    if let (Ok(()), Some(a)) = (waited, answer) {
                        let v = owner.answer(now(), ch.round, a, rand());
                        if let Verdict::Pass { pay: amount } = v {
                            let given = (amount as f64 * pay) as Amount;
                            owner.paid(ch.round, amount);
                            if given > 0 {
                                holder.voucher(given);
                            }
                        }
                        out.verdicts.push((now(), v));
                    }
                }
                Some(Action::Release) => {
                    owner.release_submitted(Hash([1; 32]));
                    owner.released();
                    out.released_at = Some(now());
                }
                None => {}
            }
            let wake = owner.wake_at().unwrap_or(until).min(t + 1_000).max(t + 1);
            tokio::time::sleep_until(start + Duration::from_millis(wake)).await;
        }
        out
    }

    fn passes(r: &Run) -> usize {
        r.verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Pass { .. }))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn an_honest_replica_passes_at_random_intervals_and_is_paid_for_the_time() {
        let c = content(50 * LEAF as usize + 123);
        let until = 600_000;
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 12345);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(&mut owner, &mut holder, Behaviour::Honest, &c, until, 1.0).await;
        assert_eq!(r.released_at, None);
        assert!(r.dropped.is_none(), "{:?}", r.dropped);
        assert_eq!(owner.state, ReplicaState::Holding);
        assert_eq!(passes(&r), r.challenged_at.len());
        assert_eq!(owner.passed as usize, passes(&r));
        // Random intervals within [0.5, 1.5] x the mean, not all equal.
        let gaps: Vec<u64> = r.challenged_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter()
                .all(|g| *g >= MEAN / 2 && *g <= MEAN * 3 / 2 + 100),
            "{gaps:?}"
        );
        assert!(gaps.iter().any(|g| *g != gaps[0]));
        assert!(r.challenged_at.len() >= 40 && r.challenged_at.len() <= 120);
        // Paid per GiB-hour for the time held: the whole run up to the
        // last pass, never more.
        let last = r.verdicts.last().unwrap().0;
        assert_eq!(owner.paid, owner.owed);
        assert_eq!(holder.paid, owner.paid);
        let rounding = owner.passed as u128;
        assert!(owner.paid <= owner.terms.cost(last) + rounding);
        assert!(owner.paid >= owner.terms.cost(last - 2 * MEAN));
        // Each round is recorded with what it paid; they add up.
        let recorded: Amount = owner.history.iter().map(|h| h.paid).sum();
        assert!(owner.history.len() <= HISTORY);
        assert!(recorded <= owner.paid && recorded > 0);
        // Anyone can recompute a round's leaves from its block.
        let h = owner.history.back().unwrap();
        assert_eq!(
            h.leaves,
            pos::challenge_leaves(
                &h.block,
                &owner.terms.task,
                &owner.terms.node,
                h.round,
                51,
                4
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_loses_its_data_fails_and_is_never_paid_again() {
        let c = content(20 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(
            &mut owner,
            &mut holder,
            Behaviour::WrongDataFrom(4),
            &c,
            200_000,
            1.0,
        )
        .await;
        assert_eq!(passes(&r), 3);
        let paid_before = owner.paid;
        assert!(paid_before > 0);
        assert!(matches!(
            r.verdicts.last().unwrap().1,
            Verdict::Fail(Failure::BadProof { round: 4, .. })
        ));
        assert_eq!(owner.state, ReplicaState::Released);
        assert!(r.released_at.is_some());
        assert_eq!(r.challenged_at.len(), 4, "no challenge after the failure");
        assert_eq!(owner.paid, paid_before);
        // A late honest answer to the failed round changes nothing.
        let late = Answer::Proofs(vec![proof(&c, 0)]);
        assert_eq!(owner.answer(300_000, 4, late, 0), Verdict::Stale);
        assert_eq!(owner.poll(300_000), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_proof_of_another_leaf_fails() {
        let c = content(9 * LEAF as usize + 1);
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(
            &mut owner,
            &mut holder,
            Behaviour::OtherLeaf,
            &c,
            60_000,
            1.0,
        )
        .await;
        assert!(matches!(
            &r.verdicts[0].1,
            Verdict::Fail(Failure::WrongLeaves { round: 1, asked, got }) if asked != got
        ));
        assert_eq!(owner.paid, 0);
        assert!(r.released_at.is_some());
        // The same proofs relabelled with the asked indices fail the root.
        let mut o2 = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let ch = o2.challenge(o2.next_ms, 5, Hash([3; 32]));
        let asked = o2.asked.clone().unwrap().leaves;
        let relabelled = asked
            .iter()
            .map(|i| Proof {
                index: *i,
                ..proof(&c, (i + 1) % 10)
            })
            .collect();
        let v = o2.answer(o2.next_ms + 10, ch.round, Answer::Proofs(relabelled), 0);
        assert!(
            matches!(v, Verdict::Fail(Failure::BadProof { .. })),
            "{v:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_or_silent_replica_times_out() {
        let c = content(4 * LEAF as usize);
        for b in [Behaviour::Late(TIMING.answer_ms + 500), Behaviour::Silent] {
            let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
            let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
            let r = run(&mut owner, &mut holder, b, &c, 60_000, 1.0).await;
            assert!(
                matches!(owner.failure, Some(Failure::Timeout { round: 1 })),
                "{:?}",
                owner.failure
            );
            let first = r.challenged_at[0];
            let released = r.released_at.unwrap();
            assert!(
                released >= first + TIMING.answer_ms && released < first + TIMING.answer_ms + 1_100
            );
            assert_eq!(owner.paid, 0);
            assert_eq!(r.challenged_at.len(), 1);
        }
        // An answer that arrives after the deadline, before the owner
        // polled, fails too.
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let ch = owner.challenge(1_000, 5, Hash([3; 32]));
        let leaves = owner.asked.clone().unwrap().leaves;
        let honest = Answer::Proofs(leaves.iter().map(|i| proof(&c, *i)).collect());
        let v = owner.answer(1_000 + TIMING.answer_ms, ch.round, honest, 0);
        assert_eq!(v, Verdict::Fail(Failure::Timeout { round: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn fetching_is_allowed_for_a_while_then_fails() {
        let c = content(4 * LEAF as usize);
        // Ready after 30 s: the not-ready rounds cost nothing, and the
        // first pass pays from the last of them, not for the fetch.
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(
            &mut owner,
            &mut holder,
            Behaviour::FetchingFor(30_000),
            &c,
            100_000,
            1.0,
        )
        .await;
        assert!(owner.not_ready >= 1);
        assert_eq!(owner.state, ReplicaState::Holding);
        assert!(r.released_at.is_none());
        let first_pass = r
            .verdicts
            .iter()
            .find(|(_, v)| matches!(v, Verdict::Pass { .. }))
            .unwrap();
        let Verdict::Pass { pay } = first_pass.1 else {
            unreachable!()
        };
        assert!(pay <= owner.terms.cost(MEAN * 3 / 2 + 100));
        // Never ready: fails once the allowance is over.
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(
            &mut owner,
            &mut holder,
            Behaviour::FetchingFor(u64::MAX),
            &c,
            200_000,
            1.0,
        )
        .await;
        assert!(matches!(owner.failure, Some(Failure::NotReady { .. })));
        let released = r.released_at.unwrap();
        assert!((TIMING.fetch_ms..=TIMING.fetch_ms + 2 * MEAN).contains(&released));
        assert_eq!(owner.paid, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_stops_holding_for_an_owner_that_never_pays() {
        let c = content(8 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(&mut owner, &mut holder, Behaviour::Honest, &c, 200_000, 0.0).await;
        let (at, why) = r.dropped.expect("dropped");
        assert!(why.contains("unpaid"), "{why}");
        let grace = GRACE_INTERVALS * MEAN;
        let since = holder.held_since_ms.unwrap();
        assert!(at >= since + grace && at <= since + grace + 1_000, "{at}");
        assert!(!holder.pins());
        assert_eq!(holder.state, HeldState::Dropped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_stops_holding_for_an_owner_that_pays_half() {
        let c = content(8 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 10_000_000), Some(Hash([2; 32])), 0, false);
        let r = run(&mut owner, &mut holder, Behaviour::Honest, &c, 400_000, 0.5).await;
        let (at, _) = r.dropped.expect("dropped");
        let grace = GRACE_INTERVALS * MEAN;
        // Half paid: the debt grows at half the rate, so about two graces.
        assert!(at >= 2 * grace - MEAN && at <= 2 * grace + 2 * MEAN, "{at}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_is_paid_at_most_two_intervals_and_never_past_the_end() {
        let c = content(8 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 1_000_000), TIMING, 0, 1);
        // The first pass at 10 s, then the owner is away for 500 s.
        let pass = |o: &mut Replica, at: u64| {
            let ch = o.challenge(at, 1, Hash([at as u8; 32]));
            let leaves = o.asked.clone().unwrap().leaves;
            let proofs = leaves.iter().map(|i| proof(&c, *i)).collect();
            match o.answer(at + 10, ch.round, Answer::Proofs(proofs), 0) {
                Verdict::Pass { pay } => {
                    o.paid(ch.round, pay);
                    pay
                }
                v => panic!("{v:?}"),
            }
        };
        let first = pass(&mut owner, 10_000);
        assert_eq!(first, owner.terms.cost(10_010));
        let after_gap = pass(&mut owner, 510_000);
        assert_eq!(after_gap, owner.terms.cost(PAY_CAP_INTERVALS * MEAN));
        // A pass after the end pays up to the end only.
        let last = pass(&mut owner, 990_000);
        assert_eq!(last, owner.terms.cost(PAY_CAP_INTERVALS * MEAN));
        owner.paid_until_ms = 995_000;
        let end = pass(&mut owner, 1_200_000 - 100_000);
        assert_eq!(end, owner.terms.cost(5_000));
        // And after the end nothing more is asked.
        assert_eq!(owner.poll(1_000_001), None);
        assert_eq!(owner.state, ReplicaState::Ended);
    }

    #[tokio::test(start_paused = true)]
    async fn an_undelivered_payment_is_paid_with_the_next_pass() {
        let c = content(8 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 10_000_000), TIMING, 0, 1);
        let mut pass = |at: u64| {
            let ch = owner.challenge(at, 1, Hash([at as u8; 32]));
            let leaves = owner.asked.clone().unwrap().leaves;
            let proofs = leaves.iter().map(|i| proof(&c, *i)).collect();
            (
                ch.round,
                owner.answer(at + 10, ch.round, Answer::Proofs(proofs), 0),
            )
        };
        let (_, Verdict::Pass { pay: a }) = pass(10_000) else {
            panic!()
        };
        // Not paid (the voucher could not be sent); the next pass carries it.
        let (round, Verdict::Pass { pay: b }) = pass(20_000) else {
            panic!()
        };
        assert_eq!(b, a + owner.terms.cost(10_000));
        owner.paid(round, b);
        assert_eq!(owner.paid, owner.owed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_holder_drops_at_the_end_of_the_contract() {
        let c = content(8 * LEAF as usize);
        let mut owner = Replica::new(terms(&c, 100_000), TIMING, 0, 1);
        let mut holder = Held::new(terms(&c, 100_000), Some(Hash([2; 32])), 0, true);
        let r = run(&mut owner, &mut holder, Behaviour::Honest, &c, 200_000, 1.0).await;
        assert_eq!(owner.state, ReplicaState::Ended);
        assert!(r.challenged_at.iter().all(|t| *t < 100_000));
        let (at, why) = r.dropped.unwrap();
        assert_eq!(why, "the contract ended");
        assert!(at >= 100_000 + holder.grace_ms());
        assert_eq!(holder.state, HeldState::Ended);
        assert!(holder.unpaid(at) <= owner.terms.cost(2 * MEAN));
    }

    #[test]
    fn storage_costs_per_gib_hour_rounded_up() {
        assert_eq!(storage_cost(1000, 1 << 30, 3_600_000), 1000);
        assert_eq!(storage_cost(1000, 1 << 29, 3_600_000), 500);
        assert_eq!(storage_cost(1, 1, 1), 1);
        assert_eq!(storage_cost(0, 1 << 30, 1 << 40), 0);
        assert_eq!(storage_cost(u128::MAX, u64::MAX, u64::MAX), u128::MAX);
        for r in [0, 1, 5_000, u64::MAX] {
            let i = interval(MEAN, r);
            assert!((MEAN / 2..=MEAN * 3 / 2).contains(&i));
        }
    }
}
