//! The serving side of the peer wire: accept peers (or dial a leecher the
//! tracker heard from), handshake, send our bitfield, unchoke, answer
//! requests with blocks read from the store.
//!
//! Bounded: a slot under the peer cap is taken before a byte is read (a
//! connection over the cap is closed at once); the handshake must arrive
//! within [`HANDSHAKE_TIMEOUT`]; message lengths are checked before their
//! body is read; at most [`MAX_QUEUE`] requests wait per peer (more are
//! ignored); each peer
//! keeps at most two parts cached. A peer that sends garbage, asks for a
//! part this node does not hold or a block outside its part, or stays silent for [`IDLE`] is dropped with a logged reason.
//!
//! A reader task parses and checks what the peer sends and passes it on
//! a bounded channel; the session's own loop owns the socket's write half
//! and the request queue, so a cancel can remove a request not served yet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::wire::{self, BLOCK, Block, HANDSHAKE_LEN, Handshake, Msg};
use crate::bitfield::Bitfield;
use crate::error::PeerWireError;
use crate::metainfo::{FileId, Metainfo};
use crate::payment::Account;
use crate::service::Fs;
use crate::store::StoredFile;

/// The peer's handshake must arrive within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer silent this long is dropped (BEP 3 peers keep alive every 2 min).
pub const IDLE: Duration = Duration::from_secs(180);
/// We send a keep-alive after this much silence of ours.
const KEEP_ALIVE: Duration = Duration::from_secs(90);
/// Requests waiting per peer (32 MiB of blocks, 24 KiB of queue); more
/// are ignored. transmission 3.00 was seen with over 256 outstanding.
pub const MAX_QUEUE: usize = 2048;
/// Connecting to a leecher.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes gathered before a write (a few blocks per syscall).
const WRITE_BATCH: usize = 64 << 10;

/// Accepts peers while the file service lives.
pub(crate) async fn accept(fs: Weak<Fs>, listener: tokio::net::TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "BitTorrent accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(fs) = fs.upgrade() else { break };
        let Some(slot) = fs.bt.slot() else {
            tracing::debug!(peer = %addr, "BitTorrent peer cap reached; connection closed");
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = inbound(&fs, stream, addr, slot).await {
                fs.bt.drop_peer(addr, &e.to_string());
            }
        });
    }
}

/// Connects to a leecher that announced, as the initiator.
pub(crate) async fn dial(fs: Arc<Fs>, addr: SocketAddr, file: FileId) {
    let Some(slot) = fs.bt.slot() else {
        tracing::debug!(peer = %addr, "peer cap reached; not dialling");
        return;
    };
    let attempt = async {
        let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerWireError::Timeout)??;
        let mut stream = stream;
        stream
            .write_all(&Handshake::new(file.0, fs.bt.peer_id).encode())
            .await?;
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != file.0 {
            return Err(PeerWireError::BadHandshake(format!(
                "answered for {} instead of {file}",
                hex::encode(theirs.info_hash)
            )));
        }
        Ok((stream, theirs))
    };
    let result = match (served_file(&fs, file), attempt.await) {
        (Ok(f), Ok((stream, theirs))) => {
            tracing::info!(peer = %addr, %file, "dialled a leecher");
            serve(&fs, stream, addr, f, theirs, slot).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = result {
        fs.bt.drop_peer(addr, &e.to_string());
    }
}

async fn inbound(
    fs: &Arc<Fs>,
    mut stream: TcpStream,
    addr: SocketAddr,
    slot: OwnedSemaphorePermit,
) -> Result<(), PeerWireError> {
    let theirs = read_handshake(&mut stream).await?;
    let file = FileId(theirs.info_hash);
    let f = served_file(fs, file)?;
    stream
        .write_all(&Handshake::new(file.0, fs.bt.peer_id).encode())
        .await?;
    serve(fs, stream, addr, f, theirs, slot).await
}

/// `file`, if stock clients are served it here.
fn served_file(fs: &Fs, file: FileId) -> Result<StoredFile, PeerWireError> {
    fs.store().file(&file).filter(super::served).ok_or_else(|| {
        PeerWireError::BadHandshake(format!(
            "{file} is not served to BitTorrent clients here (not seeded, or priced)"
        ))
    })
}

async fn read_handshake(stream: &mut TcpStream) -> Result<Handshake, PeerWireError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| PeerWireError::Timeout)?
        .map_err(eof)?;
    Handshake::decode(&buf)
}

fn eof(e: std::io::Error) -> PeerWireError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PeerWireError::Closed
    } else {
        PeerWireError::Io(e)
    }
}

/// Why a session ended on the reader's side.
enum FromPeer {
    Request(Block),
    Cancel(Block),
    End(Result<(), PeerWireError>),
}

/// Serves `file` to a peer whose handshake is done. `Ok` when the peer
/// left; `Err` says why it was dropped.
async fn serve(
    fs: &Arc<Fs>,
    stream: TcpStream,
    addr: SocketAddr,
    f: StoredFile,
    theirs: Handshake,
    _slot: OwnedSemaphorePermit,
) -> Result<(), PeerWireError> {
    let file = f.meta.id;
    if theirs.peer_id == fs.bt.peer_id {
        return Err(PeerWireError::BadHandshake("connected to itself".into()));
    }
    let _live = fs.bt.connect(file, addr);
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut out = Vec::with_capacity(WRITE_BATCH + BLOCK as usize + 64);
    wire::encode(&Msg::Bitfield(f.have.as_bytes()), &mut out);
    wire::encode(&Msg::Unchoke, &mut out);
    wr.write_all(&out).await?;
    out.clear();
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_peer(rd, f.meta.clone(), f.have.clone(), tx));
    let _abort = AbortOnDrop(reader);
    let mut queue: VecDeque<Block> = VecDeque::new();
    let mut cache = PartCache::default();
    let served = Served { fs, file };
    loop {
        // Everything the peer has sent so far, then one block.
        loop {
            let m = if queue.is_empty() {
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                }
                match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        wire::encode(&Msg::KeepAlive, &mut out);
                        continue;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match m {
                Some(FromPeer::Request(b)) => {
                    // Over the cap a request is ignored, not the peer
                    // dropped (libtorrent does the same): transmission
                    // pipelines hundreds of requests and asks again for
                    // what it was not sent.
                    if queue.len() < MAX_QUEUE {
                        queue.push_back(b);
                    } else {
                        tracing::debug!(peer = %addr, "request over the queue cap ignored");
                    }
                }
                Some(FromPeer::Cancel(b)) => queue.retain(|q| *q != b),
                Some(FromPeer::End(r)) => return r,
                None => return Ok(()),
            }
        }
        let Some(b) = queue.pop_front() else { continue };
        let part = cache.get(fs, &f.meta.id, b.index).await?;
        let at = b.begin as usize;
        let data = &part[at..at + b.length as usize];
        fs.limiter.take(b.length as u64).await;
        wire::encode(
            &Msg::Piece {
                index: b.index,
                begin: b.begin,
                data,
            },
            &mut out,
        );
        served.block(b, f.meta.piece_len(b.index));
        if out.len() >= WRITE_BATCH || queue.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Reads and checks what the peer sends; requests go to the session.
async fn read_peer(
    mut rd: OwnedReadHalf,
    meta: Arc<Metainfo>,
    have: Bitfield,
    tx: mpsc::Sender<FromPeer>,
) {
    let max = wire::max_len(meta.piece_count());
    let mut buf = Vec::new();
    let end = loop {
        let m = match read_msg(&mut rd, &mut buf, max).await {
            Ok(m) => m,
            Err(e) => break Err(e),
        };
        let check = match m {
            Msg::Request(b) | Msg::Cancel(b) => check_block(&meta, &have, b),
            Msg::Have(i) if i >= meta.piece_count() => {
                Err(format!("have {i} of a {}-part file", meta.piece_count()))
            }
            Msg::Bitfield(bits) => Bitfield::from_bytes(bits, meta.piece_count())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Msg::Piece { index, .. } => Err(format!("sent piece {index}, which nobody asked for")),
            _ => Ok(()),
        };
        if let Err(why) = check {
            break Err(PeerWireError::Malformed { id: id_of(&m), why });
        }
        let forward = match m {
            Msg::Request(b) => FromPeer::Request(b),
            Msg::Cancel(b) => FromPeer::Cancel(b),
            _ => continue,
        };
        if tx.send(forward).await.is_err() {
            return;
        }
    };
    let end = match end {
        Err(PeerWireError::Closed) => Ok(()),
        other => other,
    };
    let _ = tx.send(FromPeer::End(end)).await;
}

/// Reads one message: the length prefix is checked against `max` before
/// the body is read into `buf` (which grows to at most `max`).
pub(crate) async fn read_msg<'b>(
    rd: &mut OwnedReadHalf,
    buf: &'b mut Vec<u8>,
    max: usize,
) -> Result<Msg<'b>, PeerWireError> {
    let mut prefix = [0u8; 4];
    tokio::time::timeout(IDLE, rd.read_exact(&mut prefix))
        .await
        .map_err(|_| PeerWireError::Timeout)?
        .map_err(eof)?;
    let len = wire::check_len(prefix, max)?;
    buf.clear();
    buf.extend_from_slice(&prefix);
    buf.resize(4 + len, 0);
    tokio::time::timeout(IDLE, rd.read_exact(&mut buf[4..]))
        .await
        .map_err(|_| PeerWireError::Timeout)?
        .map_err(eof)?;
    let (m, _) = wire::decode(buf, max)?.expect("a whole message was read");
    Ok(m)
}

/// A request this node can answer: a held part, a block inside it, no
/// larger than [`BLOCK`].
fn check_block(meta: &Metainfo, have: &Bitfield, b: Block) -> Result<(), String> {
    if b.index >= meta.piece_count() {
        return Err(format!(
            "asked for part {} of a {}-part file",
            b.index,
            meta.piece_count()
        ));
    }
    if !have.get(b.index) {
        return Err(format!(
            "asked for part {}, which is not held here",
            b.index
        ));
    }
    let len = meta.piece_len(b.index);
    if b.length == 0 || b.length > BLOCK || b.begin as u64 + b.length as u64 > len {
        return Err(format!(
            "asked for {} bytes at {} of part {} ({len} bytes, blocks of at most {BLOCK})",
            b.length, b.begin, b.index
        ));
    }
    Ok(())
}

fn id_of(m: &Msg<'_>) -> u8 {
    match m {
        Msg::KeepAlive => 0,
        Msg::Choke => 0,
        Msg::Unchoke => 1,
        Msg::Interested => 2,
        Msg::NotInterested => 3,
        Msg::Have(_) => 4,
        Msg::Bitfield(_) => 5,
        Msg::Request(_) => 6,
        Msg::Piece { .. } => 7,
        Msg::Cancel(_) => 8,
        Msg::Port(_) => 9,
    }
}

/// The last two parts read for a peer (clients ask a part's blocks in a
/// row, so each part is read once).
#[derive(Default)]
struct PartCache {
    parts: VecDeque<(u32, Arc<Vec<u8>>)>,
}

impl PartCache {
    async fn get(
        &mut self,
        fs: &Arc<Fs>,
        file: &FileId,
        index: u32,
    ) -> Result<Arc<Vec<u8>>, PeerWireError> {
        if let Some((_, p)) = self.parts.iter().find(|(i, _)| *i == index) {
            return Ok(p.clone());
        }
        let store = fs.store().clone();
        let id = *file;
        let part = tokio::task::spawn_blocking(move || store.read_part(&id, index))
            .await
            .map_err(|e| PeerWireError::Io(std::io::Error::other(e)))?
            .map_err(|e| PeerWireError::Io(std::io::Error::other(e)))?;
        let part = Arc::new(part);
        if self.parts.len() == 2 {
            self.parts.pop_front();
        }
        self.parts.push_back((index, part.clone()));
        Ok(part)
    }
}

/// Books what stock clients fetched: blocks and bytes for `fs status`, and
/// a part served to the file's account each time a part's last block goes
/// out (stock clients pay nothing).
struct Served<'a> {
    fs: &'a Arc<Fs>,
    file: FileId,
}

impl Served<'_> {
    fn block(&self, b: Block, part_len: u64) {
        let bt = &self.fs.bt;
        bt.served_bytes
            .fetch_add(b.length as u64, Ordering::Relaxed);
        bt.served_blocks.fetch_add(1, Ordering::Relaxed);
        let last = b.begin as u64 + b.length as u64 == part_len;
        self.fs.book_file(
            self.file,
            Account::served(u64::from(last), b.length as u64, 0),
        );
    }
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.fs.flush_file(self.file);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
