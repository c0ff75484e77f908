//! The node's HTTP JSON API (axum), one router per service merged here
//! (chain and node, provider, publisher, fs, storage: one file each, so adding a
//! service's routes touches only its file), and the types both the API and
//! the CLI's client use. Amounts are decimal strings of the base unit;
//! hashes and addresses are 0x-hex. Errors are `{"error": "..."}` with a
//! 4xx (or 5xx) status.
//!
//! `/metrics` (Prometheus text) is one more route of the table. The web
//! dashboard (`/ui/`, [`crate::dashboard`]) is merged in beside the table,
//! with its own check: a browser holds a session cookie, never the token.
//!
//! Every route needs the home's API token (`Authorization: Bearer
//! <HOME/api_token>`): the API can start VMs and spend the wallet, and
//! loopback is shared by every local user (and, without isolation, by
//! guests). The check is one middleware over the router, which is built
//! from one table ([`routes`]), so a route cannot be added without it, and
//! the test iterates that table.

mod chain;
mod dashboard;
mod fs;
mod metrics;
mod provider;
mod publisher;
mod storage;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zennet_chain::{ChainError, Hash};

use crate::node::Node;

pub use chain::{
    AccountView, BlockView, IdentitiesView, Info, NodeInfo, PeerView, SubmitTx, Submitted, TxView,
};
pub use dashboard::DashboardLogin;
pub use publisher::{AnnounceTask, PublisherInfo, SetPaying};

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One route: its path and its handlers by method.
pub type Route = (&'static str, MethodRouter<Arc<Node>>);

/// Every service's routes: the one table the router is built from.
pub fn routes() -> Vec<Route> {
    let mut all = chain::routes();
    all.extend(dashboard::routes());
    all.extend(fs::routes());
    all.extend(metrics::routes());
    all.extend(provider::routes());
    all.extend(publisher::routes());
    all.extend(storage::routes());
    all
}

/// Every route, behind the token check (unknown paths too), and the web
/// dashboard under `/ui/`, behind its session cookie instead.
pub fn router(node: Arc<Node>, token: String) -> Router {
    let token: Arc<str> = token.into();
    let ui = crate::dashboard::router(node.clone());
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let token = token.clone();
                async move { require_token(&token, req, next).await }
            },
        ))
        .with_state(node)
        .merge(ui)
}

/// 401 with one line unless the request carries `token`.
async fn require_token(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "the node API needs its token: send `Authorization: Bearer` with the contents of HOME/api_token (the zennet CLI does)".into(),
        )
        .into_response(),
    }
}

/// Compares without an early exit, so timing tells nothing of the token.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ChainError> for ApiError {
    fn from(e: ChainError) -> ApiError {
        let status = match e {
            ChainError::Store(_) | ChainError::Io(_) | ChainError::Corrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ChainError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

pub(crate) fn parse<T: std::str::FromStr<Err = ChainError>>(s: &str) -> Result<T, ApiError> {
    s.parse::<T>().map_err(|e| bad_request(e.to_string()))
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) fn parse_hash(id: &str) -> Result<Hash, ApiError> {
    parse(id)
}

/// A service this node does not run: 503 with how to start it.
pub(crate) fn unavailable(msg: &str) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, msg.into())
}

/// The status for an error of a service: 400 for a request the caller can
/// fix, 404 for something that is not there, 500 otherwise.
pub(crate) fn status(bad_request: bool, not_found: bool) -> StatusCode {
    match (bad_request, not_found) {
        (true, _) => StatusCode::BAD_REQUEST,
        (_, true) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;
    use tower::ServiceExt;

    /// A node on an in-memory dev chain, no services.
    pub(crate) fn node() -> Arc<Node> {
        let key = zennet_chain::SecretKey::generate();
        let genesis = zennet_chain::Genesis::dev(key.address(), 0);
        Node::with_sync(zennet_chain::Chain::in_memory(genesis).unwrap(), None, None)
    }

    /// The attacker is any local process (or a guest) talking to the API
    /// without the token, or with a wrong one: every route of the table,
    /// by every method, answers 401 with one line, and runs nothing.
    #[tokio::test]
    async fn every_route_needs_the_token() {
        let token = "a".repeat(64);
        let app = router(node(), token.clone());
        let table = routes();
        assert!(table.len() >= 25, "{} routes", table.len());
        for (path, _) in table {
            let path = path
                .split('/')
                .map(|s| if s.starts_with('{') { "0x00" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in [Method::GET, Method::POST] {
                for auth in [
                    None,
                    Some("Bearer nope".to_string()),
                    Some(format!("Bearer {}", "b".repeat(64))),
                ] {
                    let mut req = Request::builder().method(method.clone()).uri(&path);
                    if let Some(a) = &auth {
                        req = req.header(header::AUTHORIZATION, a);
                    }
                    let resp = app
                        .clone()
                        .oneshot(req.body(Body::from("{}")).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(
                        resp.status(),
                        StatusCode::UNAUTHORIZED,
                        "{method} {path} with {auth:?}"
                    );
                    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                        .await
                        .unwrap();
                    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
                    assert!(err.error.contains("api_token") && !err.error.contains('\n'));
                }
            }
        }
        // With the token, the same request reaches its handler.
        let resp = app
            .oneshot(
                Request::builder()
                    .uri("/v1/info")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
