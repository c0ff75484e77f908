//! Files over HTTP (Chiral's "style 1"), on the node's own listener
//! (`[fs] http_listen`), without the API token, so `curl`, browsers and
//! later BitTorrent clients (as a BEP 19 web seed) can fetch them:
//!
//! - `GET /file/{id}`: the content of a single-file torrent (a JSON listing
//!   for a directory), with `Range` (one range), `Content-Length`, `ETag`
//!   (the info-hash) and `If-None-Match`;
//! - `GET /file/{id}/chunk/{n}`: part `n` exactly as stored (ciphertext for
//!   an encrypted file), `ETag` its SHA-1;
//! - `GET /file/{id}/{name}/{path…}`: one file, laid out as BEP 19 asks of
//!   a web seed (`url-list` = `http://host/file/{id}/`);
//! - `GET /metainfo/{id}`: the bencoded info dict, whose SHA-1 is the id;
//! - `GET /app`: the browser app ([`crate::app`]), which reads the routes
//!   above from this and other nodes: they answer any origin (CORS, GET
//!   and HEAD, no credentials).
//!
//! `HEAD` answers the same headers. Unknown or malformed ids get 404,
//! chunks past the end and unsatisfiable ranges 416, each with a one-line
//! body saying why. In `paid` mode a request must carry an
//! `X-Zennet-Voucher` header (a voucher on the payer's channel to this
//! node, hex of its borsh encoding) that pays for what it fetches in
//! advance; otherwise 402 says how much is due.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use tower_http::cors::{Any, CorsLayer};
use zennet_chain::SignedVoucher;

use crate::metainfo::{FileId, PIECE_LEN};
use crate::payment::Account;
use crate::payment::part_cost;
use crate::service::{Fs, HttpMode, Role, file_view};
use crate::store::StoredFile;

pub const VOUCHER_HEADER: &str = "x-zennet-voucher";

pub fn router(fs: Arc<Fs>) -> Router {
    Router::new()
        .route("/file/{id}", get(whole))
        .route("/file/{id}/chunk/{n}", get(chunk))
        .route("/file/{id}/{*path}", get(inner))
        .route("/metainfo/{id}", get(metainfo))
        .layer(cors())
        .merge(crate::app::router())
        .with_state(fs)
}

/// Any page may read the files (they are public), by GET or HEAD and
/// without credentials, so the browser app served by one node can fetch
/// from another. No `Access-Control-Allow-Private-Network`: Chromium
/// keeps public web sites from reading a node on a private address.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::HEAD])
        .allow_headers([header::RANGE, header::IF_NONE_MATCH])
        .expose_headers([
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ETAG,
            header::ACCEPT_RANGES,
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// The info dict exactly as hashed: a client checks its SHA-1 against the
/// id before it trusts a byte of it.
async fn metainfo(State(fs): State<Arc<Fs>>, Path(id): Path<String>) -> Response {
    match lookup(&fs, &id) {
        Ok(f) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::ETAG, format!("\"{}\"", f.meta.id)),
                // Content-addressed: it never changes under its id.
                (
                    header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable".to_string(),
                ),
            ],
            f.meta.bytes.clone(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn whole(State(fs): State<Arc<Fs>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let f = match lookup(&fs, &id) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if f.meta.is_dir() {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&file_view(&f)).unwrap_or_default(),
        )
            .into_response();
    }
    let etag = format!("\"{}\"", f.meta.id);
    serve(&fs, &f, 0, f.meta.length(), etag, &headers).await
}

async fn chunk(
    State(fs): State<Arc<Fs>>,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let f = match lookup(&fs, &id) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let count = f.meta.piece_count();
    let index = match n.parse::<u32>() {
        Ok(i) if i < count => i,
        Ok(i) => {
            return text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "chunk {i} is past the end: {} has {count} chunks (0..{})",
                    f.meta.id,
                    count.saturating_sub(1)
                ),
            );
        }
        Err(_) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("{n:?} is not a chunk number"),
            );
        }
    };
    let etag = format!("\"{}\"", hex::encode(f.meta.piece_hash(index)));
    let start = index as u64 * PIECE_LEN;
    serve(&fs, &f, start, f.meta.piece_len(index), etag, &headers).await
}

async fn inner(
    State(fs): State<Arc<Fs>>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let f = match lookup(&fs, &id) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut parts = path.split('/');
    if parts.next() != Some(f.meta.name()) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{path:?} is not in {} (paths start with its name)",
                f.meta.id
            ),
        );
    }
    let rest: Vec<&str> = parts.collect();
    let span = f
        .meta
        .spans()
        .into_iter()
        .enumerate()
        .find(|(_, s)| s.path.iter().map(String::as_str).eq(rest.iter().copied()));
    match span {
        Some((i, s)) => {
            let etag = format!("\"{}-{i}\"", f.meta.id);
            serve(&fs, &f, s.offset, s.length, etag, &headers).await
        }
        None => text(
            StatusCode::NOT_FOUND,
            format!("{path:?} is not in {}", f.meta.id),
        ),
    }
}

#[allow(clippy::result_large_err)]
fn lookup(fs: &Fs, id: &str) -> Result<StoredFile, Response> {
    let Ok(parsed) = FileId::parse(id) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a file id (40 hex digits)"),
        ));
    };
    fs.store()
        .file(&parsed)
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no file {parsed} here")))
}

/// Serves `len` bytes of `f`'s content from `start`, honouring `Range`.
async fn serve(
    fs: &Arc<Fs>,
    f: &StoredFile,
    start: u64,
    len: u64,
    etag: String,
    headers: &HeaderMap,
) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, len) {
            Ok(r) => r,
            Err(Unsatisfiable) => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    format!("range {r:?} is outside the {len} bytes\n"),
                )
                    .into_response();
            }
        },
    };
    let (from, to) = range.unwrap_or((0, len));
    let first = ((start + from) / PIECE_LEN) as u32;
    let last = ((start + to).saturating_sub(1) / PIECE_LEN) as u32;
    if to > from
        && let Some(missing) = (first..=last).find(|i| !f.have.get(*i))
    {
        return text(
            StatusCode::NOT_FOUND,
            format!("part {missing} of {} is not held here yet", f.meta.id),
        );
    }
    if let Err(r) = charge(fs, f, to - from, headers) {
        return r;
    }
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp_headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    resp_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(to - from));
    let status = match range {
        Some(_) => {
            resp_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {from}-{}/{len}", to.saturating_sub(1)))
                    .expect("digits"),
            );
            StatusCode::PARTIAL_CONTENT
        }
        None => StatusCode::OK,
    };
    let body = body(fs.clone(), f.meta.id, start + from, start + to);
    (status, resp_headers, body).into_response()
}

/// In paid mode: takes the request's voucher and checks it pays, in
/// advance, for what this request fetches.
#[allow(clippy::result_large_err)]
fn charge(fs: &Fs, f: &StoredFile, bytes: u64, headers: &HeaderMap) -> Result<(), Response> {
    let price = f.price_per_mib;
    if fs.config().http != HttpMode::Paid || price == 0 {
        return Ok(());
    }
    let cost = part_cost(price, bytes);
    let due = |payer: Option<zennet_chain::Address>, why: &str| {
        let owed = payer.map_or(0, |p| fs.account(p, Role::Earned).unpaid());
        text(
            StatusCode::PAYMENT_REQUIRED,
            format!(
                "{why}: this request costs {cost} ({price} per MiB) and {owed} is owed; send a voucher in {VOUCHER_HEADER}"
            ),
        )
    };
    let Some(raw) = headers.get(VOUCHER_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(due(None, "payment required"));
    };
    let voucher: SignedVoucher = match hex::decode(raw.trim().trim_start_matches("0x"))
        .ok()
        .and_then(|b| borsh::from_slice(&b).ok())
    {
        Some(v) => v,
        None => return Err(due(None, "the voucher header is not a hex borsh voucher")),
    };
    let Ok(payer) = voucher.signer(&fs.config().genesis) else {
        return Err(due(None, "the voucher's signature does not verify"));
    };
    match fs.payee.receive(payer, voucher) {
        Ok(delta) => fs.book(payer, Role::Earned, Account::paid(delta), true),
        Err(e) => return Err(due(Some(payer), &format!("voucher refused: {e}"))),
    }
    let a = fs.account(payer, Role::Earned);
    if a.paid < a.owed + cost {
        return Err(due(Some(payer), "the voucher does not cover this request"));
    }
    let parts = bytes.div_ceil(PIECE_LEN);
    fs.book(
        payer,
        Role::Earned,
        Account::served(parts, bytes, cost),
        true,
    );
    Ok(())
}

/// The bytes `[from, to)` of the content, read part by part off the
/// runtime, two parts ahead of the socket.
fn body(fs: Arc<Fs>, id: FileId, from: u64, to: u64) -> Body {
    let mut pieces = Vec::new();
    let mut pos = from;
    while pos < to {
        let take = (PIECE_LEN - pos % PIECE_LEN).min(to - pos);
        pieces.push((pos, take));
        pos += take;
    }
    let stream = futures::stream::iter(pieces)
        .map(move |(pos, take)| {
            let store = fs.store().clone();
            async move {
                tokio::task::spawn_blocking(move || store.read_range(&id, pos, take))
                    .await
                    .map_err(std::io::Error::other)?
                    .map(bytes::Bytes::from)
                    .map_err(std::io::Error::other)
            }
        })
        .buffered(2);
    Body::from_stream(stream)
}

/// A `Range` header no byte of the content satisfies.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// One `bytes=` range within `len` as `[from, to)`; `Ok(None)` for what
/// is served whole (several ranges, another unit).
pub fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (from, to) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        (len.saturating_sub(n), len)
    } else {
        let from: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let to = if b.is_empty() {
            len
        } else {
            let last: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if last < from {
                return Err(Unsatisfiable);
            }
            (last + 1).min(len)
        };
        (from, to)
    };
    if from >= len {
        return Err(Unsatisfiable);
    }
    Ok(Some((from, to)))
}

fn text(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-200", 100), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(Some((50, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-4", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=x-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=0-", 0), Err(Unsatisfiable));
    }
}
