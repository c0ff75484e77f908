//! The downloading side of the peer wire: stock BitTorrent seeders as a
//! source of parts for `download`, and the tracker client that finds them.
//!
//! A connection handshakes as the initiator, says it is interested, and
//! once unchoked asks for whole parts as 16 KiB blocks ([`WINDOW`] parts
//! at a time), assembling each part before the session verifies it like
//! any other. The peer's bitfield and `have`s tell the scheduler what it
//! holds; a choke voids what was asked (BEP 3), and the parts go back to
//! the scheduler. Bounded like the serving side: lengths checked before
//! reading, blocks only inside parts asked for, at most [`MAX_UNASKED`]
//! bytes of blocks nobody asked for (late answers after a choke), and a
//! peer that keeps us choked for [`CHOKED_FOR`] is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::seed::read_msg;
use super::tracker::{self, Announce, Event as TrackerEvent};
use super::wire::{self, BLOCK, Block, HANDSHAKE_LEN, Handshake, Msg};
use crate::bitfield::Bitfield;
use crate::download::{AbortOnDrop, Event, PartSource, Shared};
use crate::error::{FsError, PeerWireError, TrackerError};
use crate::metainfo::Metainfo;
use crate::schedule::Dropped;

/// Parts asked of one peer at once (16 blocks each).
const WINDOW: usize = 8;
/// Connecting and handshaking.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that keeps us choked this long is left.
const CHOKED_FOR: Duration = Duration::from_secs(60);
/// Bytes of blocks not asked for (or no longer) tolerated per peer.
const MAX_UNASKED: u64 = 4 << 20;
/// Trackers are asked again at their interval, within these bounds.
const REANNOUNCE: (Duration, Duration) = (Duration::from_secs(15), Duration::from_secs(120));

/// Connects to `addr` and runs a download session with it.
pub(crate) async fn session(sh: Arc<Shared>, addr: SocketAddr, key: usize) -> Result<(), FsError> {
    let connected = BtSource::connect(addr, &sh.meta, sh.fs.bt.peer_id).await;
    sh.connecting.fetch_sub(1, Ordering::SeqCst);
    match connected {
        Ok(source) => {
            tracing::info!(peer = %addr, file = %sh.meta.id, "fetching from a BitTorrent peer");
            crate::download::session(sh, source, key).await
        }
        Err(e) => {
            sh.give_up(key, Dropped::Gone(e.to_string()));
            Ok(())
        }
    }
}

/// What the reader task passes on.
enum Incoming {
    Choke,
    Unchoke,
    Have(u32),
    Bitfield(Vec<u8>),
    Piece {
        index: u32,
        begin: u32,
        data: Vec<u8>,
    },
    End(PeerWireError),
}

pub(crate) struct BtSource {
    wr: OwnedWriteHalf,
    incoming: mpsc::Receiver<Incoming>,
    _reader: AbortOnDrop<()>,
    meta: Arc<Metainfo>,
    /// Choked since (None: unchoked).
    choked: Option<Instant>,
    asked: HashMap<u32, Assembly>,
    unasked: u64,
    out: Vec<u8>,
}

/// A part being put together from its blocks.
struct Assembly {
    data: Vec<u8>,
    got: Vec<bool>,
    missing: usize,
}

impl BtSource {
    async fn connect(
        addr: SocketAddr,
        meta: &Arc<Metainfo>,
        peer_id: [u8; 20],
    ) -> Result<BtSource, PeerWireError> {
        let handshake = async {
            let mut stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            stream
                .write_all(&Handshake::new(meta.id.0, peer_id).encode())
                .await?;
            let mut buf = [0u8; HANDSHAKE_LEN];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf).await?;
            Ok::<_, PeerWireError>((stream, Handshake::decode(&buf)?))
        };
        let (stream, theirs) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| PeerWireError::Timeout)??;
        if theirs.info_hash != meta.id.0 {
            return Err(PeerWireError::BadHandshake(format!(
                "answered for {} instead",
                hex::encode(theirs.info_hash)
            )));
        }
        if theirs.peer_id == peer_id {
            return Err(PeerWireError::BadHandshake("connected to itself".into()));
        }
        let (rd, mut wr) = stream.into_split();
        let mut out = Vec::new();
        wire::encode(&Msg::Interested, &mut out);
        wr.write_all(&out).await?;
        out.clear();
        let (tx, incoming) = mpsc::channel(64);
        let reader = tokio::spawn(read_peer(rd, meta.piece_count(), tx));
        Ok(BtSource {
            wr,
            incoming,
            _reader: AbortOnDrop(reader),
            meta: meta.clone(),
            choked: Some(Instant::now()),
            asked: HashMap::new(),
            unasked: 0,
            out,
        })
    }

    /// Takes a block; a whole part when it was the last one missing.
    fn block(&mut self, index: u32, begin: u32, data: Vec<u8>) -> Result<Option<Vec<u8>>, Dropped> {
        let Some(a) = self.asked.get_mut(&index) else {
            self.unasked += data.len() as u64;
            if self.unasked > MAX_UNASKED {
                return Err(Dropped::Protocol(format!(
                    "sent over {MAX_UNASKED} bytes of blocks nobody asked for"
                )));
            }
            return Ok(None);
        };
        let b = (begin / BLOCK) as usize;
        let expected = a
            .data
            .len()
            .saturating_sub(begin as usize)
            .min(BLOCK as usize);
        if !begin.is_multiple_of(BLOCK) || b >= a.got.len() || data.len() != expected {
            return Err(Dropped::Protocol(format!(
                "sent {} bytes at {begin} of part {index}, not a block asked for",
                data.len()
            )));
        }
        if a.got[b] {
            self.unasked += data.len() as u64;
            return Ok(None);
        }
        a.data[begin as usize..begin as usize + data.len()].copy_from_slice(&data);
        a.got[b] = true;
        a.missing -= 1;
        if a.missing > 0 {
            return Ok(None);
        }
        Ok(self.asked.remove(&index).map(|a| a.data))
    }
}

impl PartSource for BtSource {
    fn room(&self) -> usize {
        if self.choked.is_some() { 0 } else { WINDOW }
    }

    async fn ask(&mut self, index: u32) -> Result<(), Dropped> {
        let len = self.meta.piece_len(index);
        let blocks = len.div_ceil(BLOCK as u64) as usize;
        for b in 0..blocks {
            let begin = b as u32 * BLOCK;
            let length = (len - begin as u64).min(BLOCK as u64) as u32;
            wire::encode(
                &Msg::Request(Block {
                    index,
                    begin,
                    length,
                }),
                &mut self.out,
            );
        }
        self.asked.insert(
            index,
            Assembly {
                data: vec![0; len as usize],
                got: vec![false; blocks],
                missing: blocks,
            },
        );
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Dropped> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.wr
            .write_all(&self.out)
            .await
            .map_err(|e| Dropped::Gone(e.to_string()))?;
        self.out.clear();
        Ok(())
    }

    async fn recv(&mut self) -> Result<Event, Dropped> {
        loop {
            let next = match self.choked {
                Some(since) => tokio::time::timeout_at(since + CHOKED_FOR, self.incoming.recv())
                    .await
                    .map_err(|_| {
                        Dropped::Gone(format!("kept us choked for {} s", CHOKED_FOR.as_secs()))
                    })?,
                None => self.incoming.recv().await,
            };
            let m = next.ok_or_else(|| Dropped::Gone("closed the connection".into()))?;
            match m {
                Incoming::Unchoke => {
                    self.choked = None;
                    return Ok(Event::Ready);
                }
                Incoming::Choke => {
                    if self.choked.is_none() {
                        self.choked = Some(Instant::now());
                    }
                    let lost: Vec<u32> = self.asked.drain().map(|(i, _)| i).collect();
                    return Ok(Event::Lost(lost));
                }
                Incoming::Have(i) => return Ok(Event::Has(vec![i])),
                Incoming::Bitfield(bits) => {
                    let b = Bitfield::from_bytes(&bits, self.meta.piece_count())
                        .map_err(|e| Dropped::Protocol(e.to_string()))?;
                    return Ok(Event::Has(b.ones().collect()));
                }
                Incoming::Piece { index, begin, data } => {
                    if let Some(part) = self.block(index, begin, data)? {
                        return Ok(Event::Part(index, part));
                    }
                }
                Incoming::End(PeerWireError::Closed) => {
                    return Err(Dropped::Gone("closed the connection".into()));
                }
                Incoming::End(e) => return Err(Dropped::Protocol(e.to_string())),
            }
        }
    }
}

/// Reads what the peer sends: checked lengths, part numbers in range.
async fn read_peer(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    pieces: u32,
    tx: mpsc::Sender<Incoming>,
) {
    let max = wire::max_len(pieces);
    let mut buf = Vec::new();
    loop {
        let m = match read_msg(&mut rd, &mut buf, max).await {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Incoming::End(e)).await;
                return;
            }
        };
        let out = match m {
            Msg::Choke => Incoming::Choke,
            Msg::Unchoke => Incoming::Unchoke,
            Msg::Have(i) if i < pieces => Incoming::Have(i),
            Msg::Have(i) => Incoming::End(PeerWireError::Malformed {
                id: 4,
                why: format!("have {i} of a {pieces}-part file"),
            }),
            Msg::Bitfield(b) => Incoming::Bitfield(b.to_vec()),
            Msg::Piece { index, begin, data } => Incoming::Piece {
                index,
                begin,
                data: data.to_vec(),
            },
            // Nothing is served on this connection: its requests, keep-
            // alives and interest need no answer.
            _ => continue,
        };
        let end = matches!(out, Incoming::End(_));
        if tx.send(out).await.is_err() || end {
            return;
        }
    }
}

/// Announces the download to `trackers` (and reads this node's own
/// tracker) until aborted, passing every peer found on.
pub(crate) async fn find_peers(
    sh: Arc<Shared>,
    trackers: Vec<String>,
    found: mpsc::Sender<std::net::SocketAddr>,
) {
    let Some(port) = sh.fs.bt.listen_addr().map(|a| a.port()) else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client for trackers");
            return;
        }
    };
    let mut event = TrackerEvent::Started;
    loop {
        let mut wait = REANNOUNCE.1;
        let mut peers = sh.fs.bt.tracked_peers(&sh.meta.id);
        let a = Announce {
            info_hash: sh.meta.id.0,
            peer_id: sh.fs.bt.peer_id,
            port,
            left: Some(sh.left()),
            uploaded: 0,
            downloaded: 0,
            event,
            numwant: tracker::MAX_NUMWANT,
        };
        for url in &trackers {
            match announce(&client, url, &a).await {
                Ok(answer) => {
                    tracing::debug!(tracker = %url, peers = answer.peers.len(), "tracker answered");
                    wait = wait.min(answer.interval);
                    peers.extend(answer.peers);
                }
                Err(e) => tracing::info!(tracker = %url, error = %e, "tracker not usable"),
            }
        }
        for p in peers {
            if found.send(p).await.is_err() {
                return;
            }
        }
        event = TrackerEvent::None;
        tokio::time::sleep(wait.clamp(REANNOUNCE.0, REANNOUNCE.1)).await;
    }
}

/// One announce to the tracker at `url`.
async fn announce(
    client: &reqwest::Client,
    url: &str,
    a: &Announce,
) -> Result<tracker::Answered, TrackerError> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}{}", tracker::announce_query(a));
    let unreachable = |e: reqwest::Error| TrackerError::BadAnswer(format!("cannot reach it: {e}"));
    let mut resp = client.get(&full).send().await.map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(TrackerError::BadAnswer(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > 1 << 20 {
            return Err(TrackerError::BadAnswer("over 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    tracker::parse_answer(&body)
}
