//! Catching up with heavier peers, headers first.
//!
//! A round asks every peer for its status at once (bounded wait), ranks the
//! heavier ones, and takes headers from the best that serves them: every
//! header's rules and seal are checked before any body is asked for.
//! Bodies are then requested in batches spread over all heavier peers at
//! once and imported in order. Whoever claims more work but serves nothing
//! new, or does not answer, is struck and soon banned; whoever serves
//! something invalid is banned at once. Every wait is bounded, so no peer
//! holds the sync lock for long.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;
use zennet_chain::codec::decode;
use zennet_chain::{BlockError, ChainError, Header, StoredBlock};
use zennet_net::{
    MAX_BLOCKS, MAX_HEADERS, NetHandle, PeerId, Status, SyncRequest, SyncResponse, hash_bytes,
};

use super::SyncPhase;
use crate::node::{Node, now_ms};

pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Body requests in flight per peer.
const IN_FLIGHT_PER_PEER: usize = 2;
/// Peers fast sync would like to fetch from, and how long it waits for
/// them after the first heavier peer shows up.
const FAST_SYNC_PEERS: usize = 3;
const FAST_SYNC_SETTLE: Duration = Duration::from_secs(3);
/// Longest we wait for a header from a fast clock to become acceptable.
const MAX_CLOCK_WAIT: Duration = Duration::from_secs(30);

/// A heavier peer and what it claims.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub peer: PeerId,
    pub status: Status,
    pub td: u128,
}

/// Starts a catch-up unless one is running (it will see the news).
pub fn spawn_sync(node: &Arc<Node>, net: &NetHandle) {
    let (node, net) = (node.clone(), net.clone());
    tokio::spawn(async move {
        let Ok(_one_at_a_time) = node.sync_lock.try_lock() else {
            return;
        };
        let result = catch_up(&node, &net).await;
        node.sync_progress().ended();
        if let Err(e) = result {
            tracing::debug!(error = %e, "sync stopped");
        }
    });
}

async fn catch_up(node: &Arc<Node>, net: &NetHandle) -> Result<()> {
    loop {
        let mut candidates = heavier_peers(node, net).await?;
        if candidates.is_empty() {
            return Ok(());
        }
        if node.fast_sync() && super::fast::wanted(node, &candidates) {
            // Chunks come from several peers at once: give discovery a
            // moment to find more than the first one or two.
            if candidates.len() < FAST_SYNC_PEERS {
                tokio::time::sleep(FAST_SYNC_SETTLE).await;
                candidates = heavier_peers(node, net).await?;
            }
            match super::fast::fast_sync(node, net, &candidates).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "fast sync failed; syncing block by block"),
            }
        }
        let height = node.chain().tip().header.height;
        node.sync_progress()
            .phase(SyncPhase::Blocks, height, candidates[0].status.height);
        if !round(node, net, &candidates).await? {
            return Ok(());
        }
    }
}

/// Every connected peer's status, asked at once; the heavier ones, best first.
pub(super) async fn heavier_peers(node: &Arc<Node>, net: &NetHandle) -> Result<Vec<Candidate>> {
    let peers = net.peers().await?;
    let (genesis, ours) = {
        let chain = node.chain();
        (chain.genesis_hash(), chain.tip().total_difficulty)
    };
    let mut asks = JoinSet::new();
    for p in peers {
        let Ok(peer) = p.peer_id.parse::<PeerId>() else {
            continue;
        };
        let net = net.clone();
        asks.spawn(async move {
            let r =
                tokio::time::timeout(STATUS_TIMEOUT, net.request(peer, SyncRequest::Status)).await;
            (peer, r)
        });
    }
    let mut out = Vec::new();
    let (mut answered, mut best) = (0, None::<u64>);
    while let Some(joined) = asks.join_next().await {
        let Ok((peer, answer)) = joined else { continue };
        let status = match answer {
            Ok(Ok(SyncResponse::Status(s))) => s,
            _ => continue,
        };
        if status.genesis() != Some(genesis) {
            net.ban(peer, "is on another chain");
            continue;
        }
        let Some(td) = status.total_difficulty() else {
            net.ban(peer, "sent a malformed status");
            continue;
        };
        answered += 1;
        best = best.max(Some(status.height));
        if td > ours {
            out.push(Candidate { peer, status, td });
        }
    }
    node.sync_progress()
        .checked(answered, best, !out.is_empty());
    out.sort_by_key(|c| std::cmp::Reverse(c.td));
    Ok(out)
}

/// Strikes a peer that claimed more work but did not deliver; bans it once
/// it has too many strikes.
pub(super) fn strike(node: &Node, net: &NetHandle, peer: PeerId, why: &str) {
    tracing::info!(%peer, why, "peer did not serve the work it claims");
    if let Err(reason) = node.peers().strike(peer, why) {
        net.ban(peer, reason);
    }
}

/// What a header request gave.
enum Headers {
    New(Vec<Header>, Option<u64>),
    Nothing,
}

/// One round: headers from the best peer that serves them, then bodies
/// from all. Returns whether the chain moved.
async fn round(node: &Arc<Node>, net: &NetHandle, candidates: &[Candidate]) -> Result<bool> {
    for c in candidates {
        let headers = match headers_from(node, net, c.peer).await {
            Ok(Headers::New(h, wait_until)) => (h, wait_until),
            Ok(Headers::Nothing) => {
                // Blocks that reached us by gossip between its status and
                // its headers are no lie: on a busy chain that race is
                // common, and striking for it banned honest peers.
                if node.chain().tip().total_difficulty < c.td {
                    strike(
                        node,
                        net,
                        c.peer,
                        "claims more work but serves no new headers",
                    );
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(peer = %c.peer, error = %e, "no headers");
                continue;
            }
        };
        node.peers().served(&c.peer);
        tracing::info!(peer = %c.peer, their_height = c.status.height, headers = headers.0.len(), "syncing from a heavier peer");
        let moved = bodies(node, net, c, candidates, &headers.0).await?;
        if let Some(at) = headers.1 {
            // The next header is from a clock ahead of ours: wait for it.
            let wait = Duration::from_millis(at.saturating_sub(now_ms())).min(MAX_CLOCK_WAIT);
            tokio::time::sleep(wait).await;
        }
        return Ok(moved || headers.1.is_some());
    }
    Ok(false)
}

/// Headers after our locator from `peer`, checked. Invalid ones ban the peer.
async fn headers_from(node: &Arc<Node>, net: &NetHandle, peer: PeerId) -> Result<Headers> {
    let locator = node.chain().locator()?;
    let request = SyncRequest::Headers {
        locator: locator.iter().map(hash_bytes).collect(),
        max: MAX_HEADERS,
    };
    let raw = match ask(net, peer, request).await {
        Ok(SyncResponse::Headers(h)) => h,
        Ok(other) => {
            strike(
                node,
                net,
                peer,
                &format!("answered headers with {}", kind(&other)),
            );
            return Err(anyhow!("unexpected answer"));
        }
        Err(e) => {
            strike(node, net, peer, "did not answer a headers request");
            return Err(e);
        }
    };
    let headers: Vec<Header> = match raw.iter().map(|b| decode(b, 4096, "header")).collect() {
        Ok(h) => h,
        Err(e) => {
            net.ban(peer, format!("sent malformed headers: {e}"));
            return Err(e.into());
        }
    };
    let node2 = node.clone();
    let checked = tokio::task::spawn_blocking(move || check_headers(&node2, headers)).await?;
    match checked {
        Ok(h) => Ok(h),
        Err(reason) => {
            net.ban(peer, reason.clone());
            Err(anyhow!(reason))
        }
    }
}

/// Drops headers we already have, checks the rest from their known parent:
/// linkage, rules, seals, and that the fork is not deeper than the horizon.
/// `Err` is the ban reason.
fn check_headers(node: &Node, headers: Vec<Header>) -> Result<Headers, String> {
    let chain = node.chain();
    let known = |h: &Header| matches!(chain.header(&h.hash()), Ok(Some(_)));
    let first_new = headers.iter().position(|h| !known(h));
    let Some(first_new) = first_new else {
        return Ok(Headers::Nothing);
    };
    let headers = &headers[first_new..];
    let parent = match chain.header(&headers[0].parent) {
        Ok(Some(p)) => p,
        _ => {
            return Err(format!(
                "sent headers whose parent {} is unknown",
                headers[0].parent
            ));
        }
    };
    let is_tip = headers[0].parent == chain.tip().hash;
    if !is_tip && parent.height < chain.fork_floor() {
        return Err(format!(
            "feeds a fork from height {} (deeper than the reorg horizon; floor {})",
            parent.height,
            chain.fork_floor()
        ));
    }
    let (good, failure) = chain.verify_headers(&parent, headers, now_ms());
    match failure {
        None => Ok(Headers::New(headers.to_vec(), None)),
        Some(BlockError::TimestampInFuture { got, .. }) => {
            let max_future = chain.genesis().consensus.max_future_ms;
            Ok(Headers::New(
                headers[..good].to_vec(),
                Some(got.saturating_sub(max_future)),
            ))
        }
        Some(e) => Err(format!(
            "sent an invalid header at {}: {e}",
            parent.height + 1 + good as u64
        )),
    }
}

/// Downloads and imports the bodies of `headers`, batches spread over every
/// candidate, imported in order. Returns whether the chain moved.
async fn bodies(
    node: &Arc<Node>,
    net: &NetHandle,
    source: &Candidate,
    candidates: &[Candidate],
    headers: &[Header],
) -> Result<bool> {
    let batches: Vec<Vec<Header>> = headers.chunks(MAX_BLOCKS).map(<[Header]>::to_vec).collect();
    let servers: Vec<PeerId> = candidates.iter().map(|c| c.peer).collect();
    let max_in_flight = (servers.len() * IN_FLIGHT_PER_PEER).max(1);
    let mut tasks: JoinSet<(usize, PeerId, Result<Vec<StoredBlock>>)> = JoinSet::new();
    let mut next_batch = 0;
    let mut ready: BTreeMap<usize, Vec<StoredBlock>> = BTreeMap::new();
    let mut next_import = 0;
    let mut moved = false;
    let mut retried = std::collections::HashSet::new();
    let spawn = |tasks: &mut JoinSet<_>, i: usize, peer: PeerId, batch: Vec<Header>| {
        let net = net.clone();
        tasks.spawn(async move { (i, peer, fetch(&net, peer, &batch).await) });
    };
    while next_import < batches.len() {
        while next_batch < batches.len() && tasks.len() < max_in_flight {
            let peer = servers[next_batch % servers.len()];
            spawn(&mut tasks, next_batch, peer, batches[next_batch].clone());
            next_batch += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (i, peer, result) = joined?;
        match result {
            Ok(blocks) if blocks.len() == batches[i].len() => {
                ready.insert(i, blocks);
            }
            outcome => {
                // This peer lacks them (another fork) or failed: the header
                // source must have them. A second failure ends the round.
                if let Err(e) = &outcome {
                    tracing::debug!(%peer, error = %e, "body request failed");
                }
                if peer == source.peer || !retried.insert(i) {
                    if peer == source.peer {
                        strike(
                            node,
                            net,
                            peer,
                            "did not serve the bodies of its own headers",
                        );
                    }
                    break;
                }
                spawn(&mut tasks, i, source.peer, batches[i].clone());
            }
        }
        while let Some(blocks) = ready.remove(&next_import) {
            match import_batch(node, net, source.peer, &batches[next_import], blocks).await? {
                Imported::All => moved = true,
                Imported::Stopped(any) => return Ok(moved || any),
            }
            next_import += 1;
        }
    }
    tasks.abort_all();
    Ok(moved)
}

enum Imported {
    All,
    /// Stopped early; whether anything was imported first.
    Stopped(bool),
}

async fn import_batch(
    node: &Arc<Node>,
    net: &NetHandle,
    peer: PeerId,
    headers: &[Header],
    blocks: Vec<StoredBlock>,
) -> Result<Imported> {
    let mut any = false;
    for (stored, header) in blocks.into_iter().zip(headers) {
        if stored.header != *header || !stored.check_tx_root() {
            net.ban(peer, "served a block that does not match its header");
            return Ok(Imported::Stopped(any));
        }
        let Some(block) = stored.into_block() else {
            // Announcement bodies pruned everywhere this far back: what is
            // left checks (header, seal, tx root) but cannot be executed.
            // The state has to come from a snapshot (`fast`).
            tracing::warn!(
                height = header.height,
                "blocks this old have pruned announcement bodies; the state must come from a snapshot (--fast-sync)"
            );
            node.need_snapshot();
            return Ok(Imported::Stopped(any));
        };
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.import_block(block)).await? {
            Ok(_) => any = true,
            Err(e @ (ChainError::Store(_) | ChainError::Io(_) | ChainError::Corrupt(_))) => {
                return Err(e.into());
            }
            Err(ChainError::Block(BlockError::TimestampInFuture { .. } | BlockError::Pruned)) => {
                return Ok(Imported::Stopped(any));
            }
            Err(e) => {
                net.ban(peer, format!("served an invalid block: {e}"));
                return Ok(Imported::Stopped(any));
            }
        }
    }
    Ok(Imported::All)
}

/// Blocks by hash from `peer`, decoded (garbage bans the peer).
async fn fetch(net: &NetHandle, peer: PeerId, headers: &[Header]) -> Result<Vec<StoredBlock>> {
    let hashes = headers.iter().map(|h| hash_bytes(&h.hash())).collect();
    match ask(net, peer, SyncRequest::Blocks { hashes }).await? {
        SyncResponse::Blocks(raw) => {
            let blocks: Result<Vec<StoredBlock>, _> = raw
                .iter()
                .map(|b| StoredBlock::decode(b, 4 << 20))
                .collect();
            blocks.map_err(|e| {
                net.ban(peer, format!("sent undecodable blocks: {e}"));
                e.into()
            })
        }
        other => Err(anyhow!("unexpected answer to blocks: {}", kind(&other))),
    }
}

/// A request with the sync timeout.
pub(super) async fn ask(
    net: &NetHandle,
    peer: PeerId,
    request: SyncRequest,
) -> Result<SyncResponse> {
    ask_within(net, peer, request, REQUEST_TIMEOUT).await
}

pub(super) async fn ask_within(
    net: &NetHandle,
    peer: PeerId,
    request: SyncRequest,
    timeout: Duration,
) -> Result<SyncResponse> {
    match tokio::time::timeout(timeout, net.request(peer, request)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(anyhow!("no answer within {timeout:?}")),
    }
}

pub(super) fn kind(r: &SyncResponse) -> &'static str {
    match r {
        SyncResponse::Status(_) => "a status",
        SyncResponse::Headers(_) => "headers",
        SyncResponse::Blocks(_) => "blocks",
        SyncResponse::Manifest(_) => "a manifest",
        SyncResponse::Chunk(_) => "a chunk",
        SyncResponse::Error(_) => "an error",
    }
}
