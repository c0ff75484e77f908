//! Snapshot fast sync: join a long chain in seconds from a verified state.
//!
//! 1. Pick the newest snapshot height the heavier peers serve (a multiple of
//!    the genesis' interval, at least the reorg horizon below their tips).
//! 2. Download every header from our tip to it, checking linkage, rules and
//!    each seal (on all cores) — the snapshot is trusted only through a
//!    header whose proof of work we checked.
//! 3. Fetch the manifest from one server and check it against that header's
//!    state root; a manifest that does not add up bans its sender.
//! 4. Fetch the chunks from every server in parallel; each is checked
//!    against its manifest summary as it arrives, and a bad one bans its
//!    sender and goes to another server.
//! 5. Install headers and state in one SQL transaction; normal sync goes on
//!    from there (the blocks after the snapshot are executed as usual).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::task::JoinSet;
use zennet_chain::codec::decode;
use zennet_chain::snapshot::{Assembly, Manifest, decode_chunk};
use zennet_chain::{BlockError, Header};
use zennet_net::{MAX_HEADERS, NetHandle, PeerId, SyncRequest, SyncResponse, hash_bytes};

use super::SyncPhase;
use super::catchup::{Candidate, ask, ask_within, kind, strike};
use crate::node::{Node, now_ms};

/// A manifest costs the server a pass over its state.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNKS_IN_FLIGHT_PER_PEER: usize = 4;

/// The snapshot height to fetch and who serves it.
fn target(node: &Node, candidates: &[Candidate]) -> Option<(u64, Vec<PeerId>)> {
    let chain = node.chain();
    let c = &chain.genesis().consensus;
    let ours = chain.tip().header.height;
    let best = candidates
        .iter()
        .filter_map(|p| {
            c.snapshot_height(p.status.height)
                .filter(|h| *h >= p.status.snapshot_base)
        })
        .max()?;
    if best <= ours {
        return None;
    }
    let servers = candidates
        .iter()
        .filter(|p| {
            let newest = c.snapshot_height(p.status.height);
            (newest == Some(best) || newest == Some(best + c.snapshot_interval))
                && p.status.snapshot_base <= best
        })
        .map(|p| p.peer)
        .collect();
    Some((best, servers))
}

/// Whether a snapshot ahead of us is on offer.
pub(super) fn wanted(node: &Node, candidates: &[Candidate]) -> bool {
    target(node, candidates).is_some()
}

/// Runs fast sync; `Ok(false)` when there was nothing to do.
pub(super) async fn fast_sync(
    node: &Arc<Node>,
    net: &NetHandle,
    candidates: &[Candidate],
) -> Result<bool> {
    let Some((height, mut servers)) = target(node, candidates) else {
        return Ok(false);
    };
    let started = Instant::now();
    tracing::info!(
        height,
        servers = servers.len(),
        "fast sync: fetching headers"
    );
    let ours = node.chain().tip().header.height;
    node.sync_progress().phase(SyncPhase::Headers, ours, height);
    let headers = headers_to(node, net, candidates, height).await?;
    let header = headers
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("no headers"))?;
    tracing::info!(
        height,
        headers = headers.len(),
        ms = started.elapsed().as_millis() as u64,
        "fast sync: headers checked"
    );

    let manifest = manifest(node, net, &mut servers, &header).await?;
    let chunks = manifest.chunks();
    node.sync_progress()
        .phase(SyncPhase::Snapshot, ours, height);
    node.sync_progress().chunks(0, chunks);
    let mut assembly = Assembly::new(manifest);
    fetch_chunks(node, net, &mut servers, &mut assembly).await?;
    tracing::info!(
        height,
        chunks,
        ms = started.elapsed().as_millis() as u64,
        "fast sync: state checked"
    );

    let n = node.clone();
    tokio::task::spawn_blocking(move || n.install_snapshot(&headers, assembly)).await??;
    tracing::info!(
        height,
        ms = started.elapsed().as_millis() as u64,
        "fast sync: snapshot installed"
    );
    Ok(true)
}

/// Headers from our tip's child up to `height`, checked, from the first
/// candidate that serves them all.
async fn headers_to(
    node: &Arc<Node>,
    net: &NetHandle,
    candidates: &[Candidate],
    height: u64,
) -> Result<Vec<Header>> {
    'peers: for c in candidates.iter().filter(|c| c.status.height >= height) {
        let mut parent = node.chain().tip().header.clone();
        let mut out: Vec<Header> = Vec::new();
        while parent.height < height {
            let request = SyncRequest::Headers {
                locator: vec![hash_bytes(&parent.hash())],
                max: MAX_HEADERS,
            };
            let raw = match ask(net, c.peer, request).await {
                Ok(SyncResponse::Headers(h)) if !h.is_empty() => h,
                Ok(other) => {
                    strike(
                        node,
                        net,
                        c.peer,
                        &format!("answered headers with {}", kind(&other)),
                    );
                    continue 'peers;
                }
                Err(_) => {
                    strike(node, net, c.peer, "did not answer a headers request");
                    continue 'peers;
                }
            };
            let batch: Vec<Header> = match raw.iter().map(|b| decode(b, 4096, "header")).collect() {
                Ok(h) => h,
                Err(e) => {
                    net.ban(c.peer, format!("sent malformed headers: {e}"));
                    continue 'peers;
                }
            };
            let batch: Vec<Header> = batch.into_iter().filter(|h| h.height <= height).collect();
            let (n, p) = (node.clone(), parent.clone());
            let checked = batch.clone();
            let (good, failure) = tokio::task::spawn_blocking(move || {
                n.chain().verify_headers(&p, &checked, now_ms())
            })
            .await?;
            match failure {
                None if good > 0 => {}
                // Our own clock is behind theirs: not a lie; try later.
                Some(BlockError::TimestampInFuture { .. }) => {
                    bail!("snapshot headers are ahead of our clock")
                }
                other => {
                    net.ban(
                        c.peer,
                        format!(
                            "sent an invalid header: {}",
                            other.map_or("none".into(), |e| e.to_string())
                        ),
                    );
                    continue 'peers;
                }
            }
            parent = batch[good - 1].clone();
            out.extend(batch.into_iter().take(good));
        }
        node.peers().served(&c.peer);
        return Ok(out);
    }
    bail!("no peer served the headers up to {height}")
}

/// The manifest at `header`, from the first server whose manifest checks.
async fn manifest(
    node: &Arc<Node>,
    net: &NetHandle,
    servers: &mut Vec<PeerId>,
    header: &Header,
) -> Result<Manifest> {
    let mut tried = 0;
    while tried < servers.len() {
        let peer = servers[tried];
        tried += 1;
        let request = SyncRequest::SnapshotManifest {
            height: header.height,
        };
        let bytes = match ask_within(net, peer, request, MANIFEST_TIMEOUT).await {
            Ok(SyncResponse::Manifest(b)) => b,
            Ok(other) => {
                tracing::debug!(%peer, answer = kind(&other), "no manifest");
                continue;
            }
            Err(e) => {
                strike(node, net, peer, &format!("did not serve a manifest: {e}"));
                continue;
            }
        };
        let checked = Manifest::decode(&bytes).and_then(|m| m.check(header).map(|()| m));
        match checked {
            Ok(m) => return Ok(m),
            Err(e) => {
                net.ban(peer, format!("served a bad snapshot manifest: {e}"));
                servers.retain(|p| *p != peer);
                tried -= 1;
            }
        }
    }
    bail!(
        "no server provided a manifest that checks against header {}",
        header.height
    )
}

/// Every chunk, spread over the servers; bad ones ban their sender.
async fn fetch_chunks(
    node: &Arc<Node>,
    net: &NetHandle,
    servers: &mut Vec<PeerId>,
    assembly: &mut Assembly,
) -> Result<()> {
    let (height, depth) = (assembly.manifest().height, assembly.manifest().depth);
    let mut queue: VecDeque<u64> = assembly.missing().into();
    let total = assembly.manifest().chunks();
    let mut done = total - queue.len() as u64;
    let mut tasks: JoinSet<(u64, PeerId, Result<SyncResponse>)> = JoinSet::new();
    let mut turn = 0usize;
    let mut failures = 0usize;
    loop {
        if servers.is_empty() {
            bail!("every snapshot server failed");
        }
        let max = servers.len() * CHUNKS_IN_FLIGHT_PER_PEER;
        while tasks.len() < max
            && let Some(index) = queue.pop_front()
        {
            let peer = servers[turn % servers.len()];
            turn += 1;
            let net = net.clone();
            tasks.spawn(async move {
                let request = SyncRequest::SnapshotChunk {
                    height,
                    depth,
                    index,
                };
                (
                    index,
                    peer,
                    ask_within(&net, peer, request, CHUNK_TIMEOUT).await,
                )
            });
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (index, peer, answer) = joined?;
        let result = match answer {
            Ok(SyncResponse::Chunk(bytes)) => {
                decode_chunk(&bytes).and_then(|c| assembly.add(index, c))
            }
            Ok(other) => {
                tracing::debug!(%peer, index, answer = kind(&other), "no chunk");
                failures += 1;
                queue.push_back(index);
                if failures > 4 * queue.len().max(16) {
                    bail!("snapshot servers keep failing");
                }
                continue;
            }
            Err(e) => {
                strike(
                    node,
                    net,
                    peer,
                    &format!("did not serve chunk {index}: {e}"),
                );
                failures += 1;
                queue.push_back(index);
                continue;
            }
        };
        match result {
            Ok(()) => {
                done += 1;
                node.sync_progress().chunks(done, total);
            }
            Err(e) => {
                net.ban(peer, format!("served a bad snapshot chunk: {e}"));
                servers.retain(|p| *p != peer);
                queue.push_back(index);
            }
        }
    }
}

impl Node {
    /// Installs an assembled snapshot under the chain lock.
    pub(crate) fn install_snapshot(&self, headers: &[Header], assembly: Assembly) -> Result<()> {
        self.chain().install_snapshot(headers, assembly, now_ms())?;
        self.bump();
        Ok(())
    }
}
