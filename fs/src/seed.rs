//! The seeder's side of the part protocol: answer a downloader's hello
//! with a signed offer, serve the metainfo and parts it asks for (in
//! order), take its vouchers, and stop serving it once what it owes goes
//! past the credit the offer announced.
//!
//! What a downloader owes is counted across sessions and files (its
//! account with this node is one channel), so reconnecting does not buy
//! fresh credit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncReadExt;
use zennet_chain::{Address, SignedVoucher};
use zennet_net::PeerId;
use zennet_net::content::Stream;

use crate::bitfield::Bitfield;
use crate::error::{FsError, StoreError, WireError};
use crate::metainfo::{FileId, PIECE_LEN};
use crate::payment::Account;
use crate::payment::part_cost;
use crate::service::{Fs, Role};
use crate::wire::{self, Frame, Offer};

/// A downloader silent this long is dropped.
const IDLE: Duration = Duration::from_secs(120);

pub(crate) async fn serve(fs: Arc<Fs>, peer: PeerId, stream: Stream) {
    let address = zennet_net::peer_address(&peer);
    match session(&fs, peer, address, stream).await {
        Ok(()) | Err(WireError::Closed) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "part session ended"),
    }
    if let Some(a) = address {
        fs.flush_account(a, Role::Earned);
        fs.payee.session_ended(a);
    }
}

async fn session(
    fs: &Arc<Fs>,
    peer: PeerId,
    address: Option<Address>,
    stream: Stream,
) -> Result<(), WireError> {
    let mut receiving = Receiving::default();
    let result = serve_parts(fs, peer, address, stream, &mut receiving).await;
    // A voucher still being committed counts before the session's account
    // is flushed; one that was refused only ends a session already over.
    let _ = receiving.wait().await;
    result
}

async fn serve_parts(
    fs: &Arc<Fs>,
    peer: PeerId,
    address: Option<Address>,
    stream: Stream,
    receiving: &mut Receiving,
) -> Result<(), WireError> {
    let (mut rd, mut wr) = stream.split();
    let file = match read(&mut rd).await? {
        Frame::Hello { file } => file,
        other => return refuse(&mut wr, &format!("expected hello, got {}", name(&other))).await,
    };
    let Some(f) = fs.store.file(&file).filter(|f| f.seeding) else {
        wire::write(
            &mut wr,
            &Frame::NotHere {
                reason: format!("{file} is not seeded here"),
            },
        )
        .await?;
        return wire::flush(&mut wr).await;
    };
    // Replicas of a storage task fetch it for free from its owner and
    // from each other.
    let price = match fs.serves_free(&file, address) {
        true => 0,
        false => f.price_per_mib,
    };
    let Some(payer) = address.or((price == 0).then_some(Address::ZERO)) else {
        return refuse(&mut wr, "paid files are served to secp256k1 peers only").await;
    };
    let credit = part_cost(price, PIECE_LEN) * fs.config.credit_parts as u128;
    if price > 0 && fs.account(payer, Role::Earned).unpaid() > credit {
        let owed = fs.account(payer, Role::Earned).unpaid();
        return refuse(
            &mut wr,
            &format!("{payer} still owes {owed} from earlier transfers; pay it first"),
        )
        .await;
    }
    let offer = Offer {
        file,
        price_per_mib: price,
        credit_parts: fs.config.credit_parts,
        protocols: protocols(fs, &f),
        have: f.have.as_bytes().to_vec(),
        signature: zennet_chain::Signature([0; 65]),
    }
    .sign(&fs.key, fs.config.chain_id, &fs.config.genesis);
    wire::write(&mut wr, &Frame::Offer(offer)).await?;
    wire::flush(&mut wr).await?;
    tracing::debug!(%peer, %file, %price, "offer sent");
    let have: Bitfield = f.have;
    let _flush = FlushOnDrop(fs, file);
    loop {
        match read(&mut rd).await? {
            Frame::GetMeta => {
                wire::write(&mut wr, &Frame::Meta(f.meta.bytes.clone())).await?;
                wire::flush(&mut wr).await?;
            }
            Frame::Get { index } => {
                if !have.get(index) {
                    return refuse(&mut wr, &format!("part {index} is not held here")).await;
                }
                let len = f.meta.piece_len(index);
                let cost = part_cost(price, len);
                if price > 0 {
                    if let Err(e) = receiving.take_finished().await {
                        return refuse_voucher(&mut wr, peer, payer, e).await;
                    }
                    let mut unpaid = fs.account(payer, Role::Earned).unpaid();
                    // Past the credit with a voucher still being
                    // committed: it counts once it is on disk.
                    if unpaid + cost > credit && receiving.pending() {
                        if let Err(e) = receiving.wait().await {
                            return refuse_voucher(&mut wr, peer, payer, e).await;
                        }
                        unpaid = fs.account(payer, Role::Earned).unpaid();
                    }
                    if unpaid + cost > credit {
                        tracing::info!(%peer, %payer, %unpaid, "cutting off a downloader that does not pay");
                        return refuse(
                            &mut wr,
                            &format!(
                                "unpaid: {unpaid} owed beyond the credit of {} parts; pay to continue",
                                fs.config.credit_parts
                            ),
                        )
                        .await;
                    }
                }
                let store = fs.store.clone();
                let id = f.meta.id;
                let bytes = tokio::task::spawn_blocking(move || store.read_part(&id, index))
                    .await
                    .map_err(|e| WireError::Io(std::io::Error::other(e)))?;
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(e @ StoreError::MissingPart { .. }) | Err(e @ StoreError::Io { .. }) => {
                        return refuse(&mut wr, &e.to_string()).await;
                    }
                    Err(e) => return refuse(&mut wr, &e.to_string()).await,
                };
                fs.limiter.take(bytes.len() as u64).await;
                wire::write(&mut wr, &Frame::Part { index, bytes }).await?;
                wire::flush(&mut wr).await?;
                fs.book(payer, Role::Earned, Account::served(1, len, cost), false);
                fs.book_file(id, Account::served(1, len, cost));
            }
            Frame::Pay(v) => {
                if price == 0 && address.is_none() {
                    return refuse(&mut wr, "nothing to pay").await;
                }
                // Vouchers are cumulative: each is checked after the one
                // before is stored.
                if let Err(e) = receiving.wait().await {
                    return refuse_voucher(&mut wr, peer, payer, e).await;
                }
                receiving.start(fs.clone(), payer, file, *v);
            }
            Frame::Bye => {
                return match receiving.wait().await {
                    Ok(()) => Ok(()),
                    Err(e) => refuse_voucher(&mut wr, peer, payer, e).await,
                };
            }
            other => {
                return refuse(&mut wr, &format!("unexpected {} frame", name(&other))).await;
            }
        }
    }
}

/// The voucher being checked and committed, beside the transfer: a
/// signature check and a synchronous SQLite commit (an fsync) take
/// milliseconds, during which the session goes on serving parts within
/// the credit already paid for. Booked by the task itself, so a voucher
/// stored is counted even when the session is gone before it is.
#[derive(Default)]
struct Receiving(Option<tokio::task::JoinHandle<Result<(), FsError>>>);

impl Receiving {
    fn start(&mut self, fs: Arc<Fs>, payer: Address, file: FileId, v: SignedVoucher) {
        self.0 = Some(tokio::task::spawn_blocking(move || {
            let delta = fs.payee.receive(payer, v)?;
            fs.book(payer, Role::Earned, Account::paid(delta), false);
            fs.book_file(file, Account::paid(delta));
            Ok(())
        }));
    }

    fn pending(&self) -> bool {
        self.0.is_some()
    }

    /// The outcome of the voucher being committed, once it is.
    async fn wait(&mut self) -> Result<(), FsError> {
        match self.0.take() {
            None => Ok(()),
            Some(h) => h.await.map_err(|e| {
                FsError::Invalid(format!("checking a voucher was interrupted: {e}"))
            })?,
        }
    }

    /// Like [`Receiving::wait`], but only when the commit is done.
    async fn take_finished(&mut self) -> Result<(), FsError> {
        match &self.0 {
            Some(h) if h.is_finished() => self.wait().await,
            _ => Ok(()),
        }
    }
}

async fn refuse_voucher<W: futures::AsyncWrite + Unpin>(
    w: &mut W,
    peer: PeerId,
    payer: Address,
    e: FsError,
) -> Result<(), WireError> {
    tracing::info!(%peer, %payer, error = %e, "voucher refused");
    refuse(w, &format!("voucher refused: {e}")).await
}

/// Saves what the session's file earned however the session ends.
struct FlushOnDrop<'a>(&'a Fs, crate::metainfo::FileId);

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        self.0.flush_file(self.1);
    }
}

async fn read<R: futures::AsyncRead + Unpin>(rd: &mut R) -> Result<Frame, WireError> {
    tokio::time::timeout(IDLE, wire::read(rd))
        .await
        .map_err(|_| WireError::Timeout)?
}

async fn refuse<W: futures::AsyncWrite + Unpin>(w: &mut W, reason: &str) -> Result<(), WireError> {
    wire::write(
        w,
        &Frame::Refused {
            reason: reason.to_string(),
        },
    )
    .await?;
    wire::flush(w).await
}

/// What the offer for `f` lists: the part protocol, HTTP (with the web
/// seed URL when it serves `f` for free), this node's tracker, and its
/// BitTorrent listener when stock clients are served `f` (so a downloader
/// does not fetch the same seeder twice).
fn protocols(fs: &Fs, f: &crate::store::StoredFile) -> Vec<String> {
    use crate::service::HttpMode;
    let mut p = vec![wire::PROTOCOL_ZENNET.to_string()];
    if fs.config.http != HttpMode::Off {
        let free = fs.config.http == HttpMode::Free || f.price_per_mib == 0;
        match fs.public_http() {
            Some(base) => {
                p.push(match free {
                    true => format!("{}={base}/file/{}/", wire::PROTOCOL_HTTP, f.meta.id),
                    false => wire::PROTOCOL_HTTP.to_string(),
                });
                p.push(format!("{}={base}/announce", wire::PROTOCOL_TRACKER));
            }
            None => p.push(wire::PROTOCOL_HTTP.to_string()),
        }
    }
    if crate::bittorrent::served(f)
        && let Some(addr) = fs.public_bittorrent()
    {
        p.push(format!("{}={addr}", wire::PROTOCOL_BITTORRENT));
    }
    // Each entry is length-prefixed by one byte on the wire.
    p.retain(|e| e.len() <= u8::MAX as usize);
    p
}

fn name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "hello",
        Frame::Offer(_) => "offer",
        Frame::NotHere { .. } => "not-here",
        Frame::GetMeta => "get-meta",
        Frame::Meta(_) => "meta",
        Frame::Get { .. } => "get",
        Frame::Part { .. } => "part",
        Frame::Refused { .. } => "refused",
        Frame::Pay(_) => "pay",
        Frame::Bye => "bye",
    }
}

/// An upload cap shared by all sessions: each part waits for its turn so
/// the average stays at `rate` bytes per second (one part of burst).
pub(crate) struct Limiter {
    rate: u64,
    next: Mutex<tokio::time::Instant>,
}

impl Limiter {
    pub(crate) fn new(rate: u64) -> Limiter {
        Limiter {
            rate,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    pub(crate) async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limiter_keeps_the_average_rate_in_virtual_time() {
        let l = Limiter::new(1 << 20);
        let start = tokio::time::Instant::now();
        for _ in 0..8 {
            l.take(256 << 10).await;
        }
        // 8 quarter-MiB parts at 1 MiB/s: the 8th starts after 1.75 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1750) && took < Duration::from_millis(1800));
        Limiter::new(0).take(1 << 30).await;
    }
}
