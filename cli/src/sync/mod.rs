//! Wiring between the network and the chain: validates gossip before it
//! propagates, answers sync and snapshot requests, and catches up with
//! heavier peers.
//!
//! * `catchup`: headers first from the best peer (every seal checked on all
//!   cores), bodies spread over every heavier peer in parallel; a peer that
//!   claims more work but serves nothing new, or times out, is struck and
//!   then banned, so it never holds sync for long.
//! * `fast`: snapshot fast sync — headers, a manifest checked against the
//!   snapshot header's state root, chunks from several peers in parallel,
//!   each checked on its own (a bad one bans its sender).
//! * `peers`: per-peer bounds (side blocks, strikes) and the hold-back queue
//!   for blocks from a peer whose clock runs ahead.
//! * `progress`: what a catch-up is doing, for `zennet chain sync`, `chain
//!   info`, the dashboard and `/metrics`.
//! * `rebroadcast`: our own transactions are gossiped again until mined.
//!
//! What is never a peer's fault: a pruned body (we asked for history that
//! is gone), a timestamp ahead of our clock (held back), our own database
//! errors.

mod catchup;
mod fast;
pub mod peers;
mod progress;
mod rebroadcast;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc::UnboundedReceiver;
use zennet_chain::codec::encode;
use zennet_chain::snapshot::{Source, encode_chunk};
use zennet_chain::{Block, BlockError, ChainError, ImportOutcome, MempoolError, SignedTx, TxError};
use zennet_net::{
    MAX_BLOCKS, MAX_HEADERS, NetEvent, NetHandle, PeerId, Status, SyncRequest, SyncResponse,
    Verdict, parse_hashes,
};

use crate::node::{Node, now_ms};

pub use catchup::spawn_sync;
pub use progress::{Progress, SyncPhase, SyncStatus};
pub use rebroadcast::Rebroadcast;

/// How often to compare chains with peers even without news.
const RESYNC: Duration = Duration::from_secs(10);
/// How often held-back blocks are looked at.
const HOLD_TICK: Duration = Duration::from_millis(500);

pub async fn run(node: Arc<Node>, net: NetHandle, mut events: UnboundedReceiver<NetEvent>) {
    let mut resync = tokio::time::interval(RESYNC);
    let mut hold = tokio::time::interval(HOLD_TICK);
    let mut rebroadcast = tokio::time::interval(rebroadcast::EVERY / 2);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => handle(&node, &net, e),
                None => return,
            },
            _ = resync.tick() => spawn_sync(&node, &net),
            _ = hold.tick() => release_held(&node, &net),
            _ = rebroadcast.tick() => node.rebroadcast(),
        }
    }
}

fn handle(node: &Arc<Node>, net: &NetHandle, event: NetEvent) {
    match event {
        NetEvent::PeerConnected { .. } => spawn_sync(node, net),
        NetEvent::PeerDisconnected { peer } => node.peers().forget(&peer),
        NetEvent::Block {
            source,
            message_id,
            bytes,
        } => {
            let (node, net) = (node.clone(), net.clone());
            tokio::spawn(async move {
                let verdict = gossip_block(&node, &net, source, bytes).await;
                net.validate(message_id, source, verdict);
            });
        }
        NetEvent::Tx {
            source,
            message_id,
            bytes,
        } => {
            let verdict = gossip_tx(node, net, source, &bytes);
            net.validate(message_id, source, verdict);
        }
        NetEvent::Request { id, peer, request } => {
            let (node, net) = (node.clone(), net.clone());
            tokio::task::spawn_blocking(move || {
                let response =
                    answer(&node, request).unwrap_or_else(|e| SyncResponse::Error(e.to_string()));
                tracing::trace!(%peer, "answered sync request");
                net.respond(id, response);
            });
        }
    }
}

async fn gossip_block(
    node: &Arc<Node>,
    net: &NetHandle,
    source: PeerId,
    bytes: Vec<u8>,
) -> Verdict {
    let max = node.chain().genesis().limits.max_block_bytes as usize;
    let block = match Block::decode(&bytes, max) {
        Ok(b) => b,
        Err(e) => {
            net.ban(source, format!("sent an undecodable block: {e}"));
            return Verdict::Reject;
        }
    };
    import_from(node, net, source, block).await
}

/// Imports a block a peer sent us and judges the peer by the outcome.
async fn import_from(node: &Arc<Node>, net: &NetHandle, source: PeerId, block: Block) -> Verdict {
    let height = block.header.height;
    let n = node.clone();
    let held = block.clone();
    let result = tokio::task::spawn_blocking(move || n.import_block(block)).await;
    match result {
        Ok(Ok(ImportOutcome::Extended { .. } | ImportOutcome::Reorganized { .. })) => {
            Verdict::Accept
        }
        Ok(Ok(ImportOutcome::SideChain { .. })) => {
            if let Err(reason) = node.peers().side_block(source, now_ms()) {
                net.ban(source, reason);
                return Verdict::Reject;
            }
            Verdict::Accept
        }
        Ok(Ok(ImportOutcome::AlreadyKnown)) => Verdict::Ignore,
        Ok(Err(ChainError::Block(BlockError::UnknownParent(_)))) => {
            // We are behind (or the sender is ahead of us): catch up.
            spawn_sync(node, net);
            Verdict::Ignore
        }
        Ok(Err(ChainError::Block(BlockError::TimestampInFuture { .. }))) => {
            // The sender's clock runs ahead: not a lie, not yet valid here.
            let max_future = node.chain().genesis().consensus.max_future_ms;
            if node.hold().hold(source, held, now_ms(), max_future) {
                tracing::debug!(%source, height, "holding a block from the future");
            }
            Verdict::Ignore
        }
        Ok(Err(ChainError::Block(BlockError::Pruned))) => Verdict::Ignore,
        Ok(Err(e @ (ChainError::Store(_) | ChainError::Io(_) | ChainError::Corrupt(_)))) => {
            tracing::error!(error = %e, "cannot import gossiped block");
            Verdict::Ignore
        }
        Ok(Err(e)) => {
            net.ban(source, format!("sent invalid block {height}: {e}"));
            Verdict::Reject
        }
        Err(_) => Verdict::Ignore,
    }
}

fn release_held(node: &Arc<Node>, net: &NetHandle) {
    let due = node.hold().due(now_ms());
    if due.is_empty() {
        return;
    }
    let (node, net) = (node.clone(), net.clone());
    tokio::spawn(async move {
        for (peer, block) in due {
            let verdict = import_from(&node, &net, peer, block).await;
            tracing::debug!(%peer, ?verdict, "released a held block");
        }
    });
}

fn gossip_tx(node: &Arc<Node>, net: &NetHandle, source: PeerId, bytes: &[u8]) -> Verdict {
    let max = node.chain().genesis().limits.max_tx_bytes as usize;
    let tx = match SignedTx::decode(bytes, max) {
        Ok(t) => t,
        Err(e) => {
            net.ban(source, format!("sent an undecodable transaction: {e}"));
            return Verdict::Reject;
        }
    };
    match node.submit_remote_tx(tx) {
        Ok(_) => Verdict::Accept,
        // Invalid no matter the state: the sender relayed garbage.
        Err(
            ChainError::BadSignature(_)
            | ChainError::Tx(TxError::WrongChain { .. } | TxError::TooLarge { .. }),
        ) => Verdict::Reject,
        // Could be valid on another node's view of the chain.
        Err(ChainError::Mempool(MempoolError::Invalid(_)) | ChainError::Mempool(_)) => {
            Verdict::Ignore
        }
        Err(_) => Verdict::Ignore,
    }
}

fn answer(node: &Node, request: SyncRequest) -> Result<SyncResponse> {
    Ok(match request {
        SyncRequest::Status => {
            let chain = node.chain();
            let tip = chain.tip();
            let mut status = Status::new(
                chain.genesis_hash(),
                tip.header.height,
                tip.hash,
                tip.total_difficulty,
            );
            status.snapshot_base = chain.snapshot_base();
            SyncResponse::Status(status)
        }
        SyncRequest::Headers { locator, max } => {
            let locator = parse_hashes(&locator).context("locator holds a malformed hash")?;
            let headers = node
                .chain()
                .headers_after(&locator, max.min(MAX_HEADERS) as usize)?;
            SyncResponse::Headers(headers.iter().map(|h| encode(h).into()).collect())
        }
        SyncRequest::Blocks { hashes } => {
            if hashes.len() > MAX_BLOCKS {
                bail!("at most {MAX_BLOCKS} blocks per request");
            }
            let hashes = parse_hashes(&hashes).context("malformed block hash")?;
            let chain = node.chain();
            let mut blocks = Vec::new();
            for h in hashes {
                // Pruned bodies travel as hashes; header-only blocks (below
                // our own snapshot) we cannot serve at all.
                if let Some(block) = chain.block_by_hash(&h)?.filter(|b| !b.header_only) {
                    blocks.push(encode(&block).into());
                }
            }
            SyncResponse::Blocks(blocks)
        }
        SyncRequest::SnapshotManifest { height } => {
            servable(node, height)?;
            SyncResponse::Manifest(node.manifest(height)?.to_vec().into())
        }
        SyncRequest::SnapshotChunk {
            height,
            depth,
            index,
        } => {
            servable(node, height)?;
            let chunk = node
                .with_reader(|store| store.read(|s| Source::new(s, height)?.chunk(depth, index)))?;
            SyncResponse::Chunk(encode_chunk(&chunk).into())
        }
    })
}

/// Snapshots are served at the newest snapshot height and the one before
/// it (a joiner may still be fetching that one), never below our own base.
fn servable(node: &Node, height: u64) -> Result<()> {
    let chain = node.chain();
    let c = &chain.genesis().consensus;
    let newest = c
        .snapshot_height(chain.tip().header.height)
        .context("no snapshot yet: the chain is younger than the reorg horizon")?;
    if height != newest && height + c.snapshot_interval != newest {
        bail!("snapshots are served at {newest} (and the one before), not {height}");
    }
    if height < chain.snapshot_base() {
        bail!(
            "this node's state starts at {}, below which it has none",
            chain.snapshot_base()
        );
    }
    Ok(())
}
