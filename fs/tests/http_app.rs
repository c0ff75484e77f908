//! The HTTP routes the browser app needs, through the node's real router:
//! `/metainfo/{id}` (the exact info dict, checked by SHA-1), the CORS
//! headers on the file routes (any origin, GET and HEAD, no credentials,
//! errors readable too) and their absence on the page, and the page's
//! Content-Security-Policy.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use sha1::{Digest, Sha1};
use tower::ServiceExt;
use zennet_chain::SecretKey;
use zennet_fs::api::AddRequest;
use zennet_fs::payment::NoPayments;
use zennet_fs::{Fs, FsConfig, Metainfo};
use zennet_net::{NetConfig, Network};

async fn fs_in(dir: &std::path::Path) -> Arc<Fs> {
    let key = SecretKey::generate();
    let (net, mut events) = Network::start(NetConfig {
        secret: key.clone(),
        genesis: zennet_chain::Hash([7; 32]),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        max_peers: 8,
    })
    .await
    .unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let config = FsConfig::new(dir.join("fs"), 98765, zennet_chain::Hash::ZERO);
    Fs::start(config, net, key, Arc::new(NoPayments), Arc::new(NoPayments)).unwrap()
}

async fn call(fs: &Arc<Fs>, method: Method, uri: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    zennet_fs::http::router(fs.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body(resp: Response<Body>) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

fn header_of<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

const ORIGIN: &str = "http://127.0.0.1:1234";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metainfo_route_and_cors_headers() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_in(dir.path()).await;
    let path = dir.path().join("f.bin");
    std::fs::write(&path, vec![5u8; 300 * 1024]).unwrap();
    let added = fs
        .add(AddRequest {
            path,
            encrypt: false,
            key: None,
            price_per_mib: None,
        })
        .await
        .unwrap();
    let id = added.id;

    // The info dict exactly as hashed: its SHA-1 is the id.
    let resp = call(
        &fs,
        Method::GET,
        &format!("/metainfo/{id}"),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "access-control-allow-origin"), Some("*"));
    assert_eq!(header_of(&resp, "etag"), Some(format!("\"{id}\"").as_str()));
    assert!(header_of(&resp, "access-control-allow-credentials").is_none());
    let bytes = body(resp).await;
    assert_eq!(Sha1::digest(&bytes).as_slice(), &id.0[..]);
    let meta = Metainfo::from_network(&bytes, &id).unwrap();
    assert_eq!(meta.piece_count(), 2);
    let resp = call(&fs, Method::HEAD, &format!("/metainfo/{id}"), &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body(resp).await.is_empty());

    // Unknown and malformed ids: 404 with a reason a page can read.
    for bad in ["ab".repeat(20), "nothex".to_string()] {
        let resp = call(
            &fs,
            Method::GET,
            &format!("/metainfo/{bad}"),
            &[("origin", ORIGIN)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(header_of(&resp, "access-control-allow-origin"), Some("*"));
        let text = String::from_utf8(body(resp).await).unwrap();
        assert!(
            text.contains("no file") || text.contains("not a file id"),
            "{text}"
        );
    }

    // A part: readable from any origin, with the headers the app reads.
    let resp = call(
        &fs,
        Method::GET,
        &format!("/file/{id}/chunk/1"),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "access-control-allow-origin"), Some("*"));
    let exposed = header_of(&resp, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["content-length", "content-range", "etag", "accept-ranges"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    assert_eq!(body(resp).await.len(), 300 * 1024 - 256 * 1024);
    // Past the end: 416, still readable cross-origin.
    let resp = call(
        &fs,
        Method::GET,
        &format!("/file/{id}/chunk/2"),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&resp, "access-control-allow-origin"), Some("*"));

    // A preflight for a ranged GET is allowed; only GET and HEAD are.
    let resp = call(
        &fs,
        Method::OPTIONS,
        &format!("/file/{id}"),
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ],
    )
    .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(header_of(&resp, "access-control-allow-origin"), Some("*"));
    let methods = header_of(&resp, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("HEAD"),
        "{methods}"
    );
    assert!(
        !methods.contains("POST") && !methods.contains("PUT"),
        "{methods}"
    );
    let allowed = header_of(&resp, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("range"), "{allowed}");
    assert!(header_of(&resp, "access-control-allow-credentials").is_none());
    // Other methods are not served at all.
    let resp = call(
        &fs,
        Method::POST,
        &format!("/file/{id}"),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_page_has_a_strict_policy_and_no_cors() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_in(dir.path()).await;
    let resp = call(&fs, Method::GET, "/app", &[("origin", ORIGIN)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        header_of(&resp, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = header_of(&resp, "content-security-policy")
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header_of(&resp, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header_of(&resp, "referrer-policy"), Some("no-referrer"));
    assert!(header_of(&resp, "access-control-allow-origin").is_none());
    let html = String::from_utf8(body(resp).await).unwrap();
    // Everything it loads is its own: no inline script, no other host.
    assert!(html.contains(r#"<script src="app/app.js" defer></script>"#));
    assert!(!html.contains("<script>") && !html.contains("//cdn"));

    for (path, kind) in [
        ("/app/app.js", "text/javascript"),
        ("/app/app.css", "text/css"),
    ] {
        let resp = call(&fs, Method::GET, path, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert!(header_of(&resp, "content-type").unwrap().starts_with(kind));
        assert_eq!(header_of(&resp, "x-content-type-options"), Some("nosniff"));
        assert!(!body(resp).await.is_empty());
    }
    // The script fetches only the routes above (and narrows its policy).
    let resp = call(&fs, Method::GET, "/app/app.js", &[]).await;
    let js = String::from_utf8(body(resp).await).unwrap();
    assert!(js.contains("/metainfo/") && js.contains("/chunk/"));
    assert!(js.contains("connect-src"));
    let resp = call(&fs, Method::GET, "/app/other.js", &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
