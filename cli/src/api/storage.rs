//! Paid replicas under `/v1/fs/`: announce a storage task (`store`),
//! cancel it, see the tasks and held contracts (`storage`), challenge
//! replicas now (`prove`); and `/v1/storage/{id}`, a storage task as the
//! chain holds it. The service is `zennet_fs::storage`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::Deserialize;
use zennet_chain::StorageRecord;
use zennet_fs::FileId;
use zennet_fs::api::{StorageTaskView, StorageView, StoreRequest};
use zennet_fs::storage::Storage;

use super::{ApiError, ApiResult, bad_request, unavailable};
use crate::node::Node;

pub(super) fn routes() -> Vec<super::Route> {
    vec![
        ("/v1/fs/store", post(store)),
        ("/v1/fs/store/{id}/stop", post(stop)),
        ("/v1/fs/storage", get(view)),
        ("/v1/fs/prove/{id}", post(prove)),
        ("/v1/storage/{id}", get(record)),
    ]
}

/// A storage task as the chain holds it (any node answers, storage
/// market or not).
async fn record(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<StorageRecord> {
    let id = super::parse_hash(&i)?;
    node.chain()
        .storage(&id)
        .map(Json)
        .ok_or_else(|| super::not_found(format!("no storage task {id} on chain")))
}

fn service(node: &Node) -> Result<Arc<Storage>, ApiError> {
    node.fs()
        .and_then(|fs| fs.storage())
        .ok_or_else(|| unavailable("the storage market is not running on this node"))
}

fn id(s: &str) -> Result<FileId, ApiError> {
    FileId::parse(s).map_err(|e| bad_request(e.to_string()))
}

async fn store(
    State(node): State<Arc<Node>>,
    Json(req): Json<StoreRequest>,
) -> ApiResult<StorageTaskView> {
    Ok(Json(service(&node)?.store(req).await?))
}

async fn stop(
    State(node): State<Arc<Node>>,
    Path(i): Path<String>,
) -> ApiResult<serde_json::Value> {
    let txs = service(&node)?.cancel(&id(&i)?)?;
    Ok(Json(serde_json::json!({ "cancelled": txs })))
}

#[derive(Deserialize)]
struct FileQuery {
    file: Option<String>,
}

async fn view(State(node): State<Arc<Node>>, Query(q): Query<FileQuery>) -> ApiResult<StorageView> {
    let file = q.file.as_deref().map(id).transpose()?;
    Ok(Json(service(&node)?.view(file.as_ref())))
}

async fn prove(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<StorageView> {
    Ok(Json(service(&node)?.prove(&id(&i)?).await?))
}
