//! Wiring between the network and the chain: validates gossip before it
//! propagates, answers sync requests, and catches up with heavier peers
//! headers first (check the whole header chain's seals, then fetch bodies).
//! Peers that send invalid data are banned.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc::UnboundedReceiver;
use zennet_chain::codec::{decode, encode};
use zennet_chain::{
    Block, BlockError, ChainError, Header, ImportOutcome, MempoolError, SignedTx, TxError,
};
use zennet_net::{
    MAX_BLOCKS, MAX_HEADERS, NetEvent, NetHandle, PeerId, Status, SyncRequest, SyncResponse,
    Verdict, hash_bytes, parse_hashes,
};

use crate::node::{Node, now_ms};

/// How often to compare chains with a peer even without news.
const RESYNC: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(node: Arc<Node>, net: NetHandle, mut events: UnboundedReceiver<NetEvent>) {
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => handle(&node, &net, e),
                None => return,
            },
            _ = resync.tick() => {
                if let Ok(peers) = net.peers().await
                    && let Some(peer) = pick(&peers)
                {
                    spawn_sync(&node, &net, peer);
                }
            }
        }
    }
}

fn pick(peers: &[zennet_net::PeerInfo]) -> Option<PeerId> {
    if peers.is_empty() {
        return None;
    }
    let i = (now_ms() as usize / 1000) % peers.len();
    peers[i].peer_id.parse().ok()
}

fn handle(node: &Arc<Node>, net: &NetHandle, event: NetEvent) {
    match event {
        NetEvent::PeerConnected { peer, .. } => spawn_sync(node, net, peer),
        NetEvent::PeerDisconnected { .. } => {}
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
            let verdict = gossip_tx(node, &net.clone(), source, &bytes);
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
    let height = block.header.height;
    let n = node.clone();
    let result = tokio::task::spawn_blocking(move || n.import_block(block)).await;
    match result {
        Ok(Ok(
            ImportOutcome::Extended { .. }
            | ImportOutcome::Reorganized { .. }
            | ImportOutcome::SideChain { .. },
        )) => Verdict::Accept,
        Ok(Ok(ImportOutcome::AlreadyKnown)) => Verdict::Ignore,
        Ok(Err(ChainError::Block(BlockError::UnknownParent(_)))) => {
            // We are behind (or the sender is ahead of us): catch up from it.
            spawn_sync(node, net, source);
            Verdict::Ignore
        }
        Ok(Err(ChainError::Block(BlockError::TimestampInFuture { .. }))) => Verdict::Ignore,
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
    let chain = node.chain();
    Ok(match request {
        SyncRequest::Status => {
            let tip = chain.tip();
            SyncResponse::Status(Status::new(
                chain.genesis_hash(),
                tip.header.height,
                tip.hash,
                tip.total_difficulty,
            ))
        }
        SyncRequest::Headers { locator, max } => {
            let locator = parse_hashes(&locator).context("locator holds a malformed hash")?;
            let headers = chain.headers_after(&locator, max.min(MAX_HEADERS) as usize)?;
            SyncResponse::Headers(headers.iter().map(|h| encode(h).into()).collect())
        }
        SyncRequest::Blocks { hashes } => {
            if hashes.len() > MAX_BLOCKS {
                bail!("at most {MAX_BLOCKS} blocks per request");
            }
            let hashes = parse_hashes(&hashes).context("malformed block hash")?;
            let mut blocks = Vec::new();
            for h in hashes {
                // Blocks whose announcements were pruned cannot be served whole.
                if let Some(block) = chain.block_by_hash(&h)?.and_then(|b| b.into_block()) {
                    blocks.push(block.encode().into());
                }
            }
            SyncResponse::Blocks(blocks)
        }
    })
}

pub fn spawn_sync(node: &Arc<Node>, net: &NetHandle, peer: PeerId) {
    let (node, net) = (node.clone(), net.clone());
    tokio::spawn(async move {
        if let Err(e) = sync_with(&node, &net, peer).await {
            tracing::debug!(%peer, error = %e, "sync stopped");
        }
    });
}

/// Catches up with `peer` while it reports more total difficulty than us.
async fn sync_with(node: &Arc<Node>, net: &NetHandle, peer: PeerId) -> Result<()> {
    let _one_at_a_time = node.sync_lock.lock().await;
    loop {
        // A peer that does not answer must not hold the sync lock for long.
        let status = tokio::time::timeout(STATUS_TIMEOUT, net.request(peer, SyncRequest::Status))
            .await
            .map_err(|_| anyhow!("no status answer within {STATUS_TIMEOUT:?}"))?;
        let status = match status? {
            SyncResponse::Status(s) => s,
            other => bail!("unexpected answer to status: {other:?}"),
        };
        let (genesis, ours) = {
            let chain = node.chain();
            (chain.genesis_hash(), chain.tip().total_difficulty)
        };
        if status.genesis() != Some(genesis) {
            net.ban(peer, "is on another chain");
            bail!("peer is on another chain");
        }
        let theirs = status
            .total_difficulty()
            .ok_or_else(|| anyhow!("malformed status"))?;
        if theirs <= ours {
            return Ok(());
        }
        tracing::info!(%peer, their_height = status.height, "syncing from a heavier peer");

        let locator = node.chain().locator()?;
        let request = SyncRequest::Headers {
            locator: locator.iter().map(hash_bytes).collect(),
            max: MAX_HEADERS,
        };
        let headers = match net.request(peer, request).await? {
            SyncResponse::Headers(h) => h,
            other => bail!("unexpected answer to headers: {other:?}"),
        };
        if headers.is_empty() {
            bail!("peer claims more work but sent no headers");
        }
        let headers: Vec<Header> = match headers.iter().map(|b| decode(b, 4096, "header")).collect()
        {
            Ok(h) => h,
            Err(e) => {
                net.ban(peer, format!("sent malformed headers: {e}"));
                return Err(e.into());
            }
        };
        if let Err(e) = verify_headers(node, &headers).await {
            net.ban(peer, format!("sent invalid headers: {e}"));
            return Err(e);
        }

        for chunk in headers.chunks(MAX_BLOCKS) {
            let hashes = chunk.iter().map(|h| hash_bytes(&h.hash())).collect();
            let blocks = match net.request(peer, SyncRequest::Blocks { hashes }).await? {
                SyncResponse::Blocks(b) => b,
                other => bail!("unexpected answer to blocks: {other:?}"),
            };
            if blocks.len() != chunk.len() {
                bail!("peer served {} of {} blocks", blocks.len(), chunk.len());
            }
            for (bytes, header) in blocks.iter().zip(chunk) {
                let block = Block::decode(bytes, 4 << 20)?;
                if block.header != *header {
                    net.ban(peer, "served a block that does not match its header");
                    bail!("block does not match its header");
                }
                let n = node.clone();
                match tokio::task::spawn_blocking(move || n.import_block(block)).await? {
                    Ok(_) => {}
                    Err(
                        e @ (ChainError::Store(_) | ChainError::Io(_) | ChainError::Corrupt(_)),
                    ) => {
                        return Err(e.into());
                    }
                    Err(e) => {
                        net.ban(peer, format!("served an invalid block: {e}"));
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// Checks linkage and every seal of a header chain whose first parent we have.
async fn verify_headers(node: &Arc<Node>, headers: &[Header]) -> Result<()> {
    let node = node.clone();
    let headers = headers.to_vec();
    tokio::task::spawn_blocking(move || {
        let chain = node.chain();
        let first = &headers[0];
        let mut parent = chain
            .header(&first.parent)?
            .ok_or_else(|| anyhow!("first header's parent {} is unknown", first.parent))?;
        let now = now_ms();
        for h in &headers {
            chain.verify_header(h, &parent, now)?;
            parent = h.clone();
        }
        Ok(())
    })
    .await?
}
