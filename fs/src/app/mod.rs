//! The browser app: a static page at `/app` on the node's HTTP file
//! server that downloads a file with no backend of its own. It fetches
//! the metainfo and the parts from one or more nodes' HTTP servers in
//! parallel, checks each part's SHA-1 against the metainfo (WebCrypto)
//! before using it, decrypts encrypted parts (AES-256-GCM, WebCrypto, the
//! layout of [`crate::crypt`]), retries a failed or bad part on another
//! node, and offers the assembled file for saving.
//!
//! # The link
//!
//! ```text
//! http://NODE/app#ID[:KEY][&node=URL]...[&save]
//! ```
//!
//! - `ID`: the file id, 40 hex digits;
//! - `KEY`: for an encrypted file, its file key (64 hex digits);
//! - `node=URL`: another node's HTTP file server (`http://host:port`),
//!   repeatable; the node that served the page is always used too;
//! - `save`: save the file as soon as it is assembled (otherwise the page
//!   offers a link).
//!
//! Everything is in the fragment, which browsers never send to a server:
//! the key stays in the browser. `zennet fs link ID` prints such a link.
//!
//! # What it fetches
//!
//! `GET /metainfo/{id}` (the bencoded info dict, checked against the id
//! by SHA-1 before it is parsed) from every node, then
//! `GET /file/{id}/chunk/{n}` for the parts, a few in flight per node.
//! Those routes carry CORS headers (`Access-Control-Allow-Origin: *`,
//! GET and HEAD, no credentials) so a page served by one node may read
//! another; the page itself carries none.
//!
//! # Why it is written this way
//!
//! Plain HTML, CSS and one script embedded in the binary: no JavaScript
//! toolchain, no third-party code, nothing loaded from elsewhere. The
//! Content-Security-Policy allows only the page's own script and style;
//! `connect-src` must allow any http(s) node, since the nodes are named
//! in the fragment, so the script narrows it (a `<meta>` policy, which
//! only ever adds restrictions) to the nodes of its link before it
//! fetches anything. Parts are kept as one Blob each and the file is a
//! Blob of those, never one buffer, so the browser may page them to
//! disk. WebCrypto hashes only whole buffers, so the SHA-256 the page
//! shows of the assembled file is a small streaming implementation in
//! the script, read back part by part.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's policy before the script narrows `connect-src` to the
/// nodes of its link.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self' http: https:; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// `/app` and its script and style.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/app",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app/app.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The page changes with the binary; a stale copy must not outlive it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
