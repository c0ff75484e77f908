//! The node's HTTP JSON API (axum), one router per service merged here
//! (chain and node, provider, publisher, fs: one file each, so adding a
//! service's routes touches only its file), and the types both the API and
//! the CLI's client use. Amounts are decimal strings of the base unit;
//! hashes and addresses are 0x-hex. Errors are `{"error": "..."}` with a
//! 4xx (or 5xx) status.

mod chain;
mod fs;
mod provider;
mod publisher;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zennet_chain::{ChainError, Hash};

use crate::node::Node;

pub use chain::{
    AccountView, BlockView, IdentitiesView, Info, NodeInfo, PeerView, SubmitTx, Submitted, TxView,
};
pub use publisher::{AnnounceTask, PublisherInfo, SetPaying};

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Every service's routes, on one router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .merge(chain::router())
        .merge(fs::router())
        .merge(provider::router())
        .merge(publisher::router())
        .with_state(node)
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
