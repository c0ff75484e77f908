//! File network routes under `/v1/fs/`: the store (add and the adds in
//! progress, list, info, seed, rm), downloads and their progress, the service's status and winding
//! down its channels (`settle`), `.torrent` files and magnet links. Files themselves are served on the
//! `[fs] http_listen` listener, not here.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use zennet_fs::api::{
    AddRequest, Added, AddingView, FileView, GetRequest, InfoView, SeedRequest, StatusView,
    TorrentRequest, TorrentView, TransferView, WindDownView,
};
use zennet_fs::{FileId, Fs, FsError};

use super::{ApiError, ApiResult, unavailable};
use crate::node::Node;

/// The `/v1/fs/…` routes of the node's API.
pub(super) fn routes() -> Vec<super::Route> {
    vec![
        ("/v1/fs/files", get(list).post(add)),
        ("/v1/fs/adding", get(adding)),
        ("/v1/fs/files/{id}", get(file)),
        ("/v1/fs/files/{id}/info", get(info)),
        ("/v1/fs/files/{id}/seed", post(seed)),
        ("/v1/fs/files/{id}/rm", post(rm)),
        ("/v1/fs/files/{id}/torrent", post(torrent)),
        ("/v1/fs/get", post(start_get)),
        ("/v1/fs/transfers/{id}", get(transfer)),
        ("/v1/fs/status", get(status)),
        ("/v1/fs/settle", post(settle)),
    ]
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> ApiError {
        use zennet_fs::StoreError;
        let status = match &e {
            FsError::Store(StoreError::Unknown(_)) | FsError::NoTransfer(_) => {
                StatusCode::NOT_FOUND
            }
            FsError::Store(StoreError::Db(_) | StoreError::Io { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

fn service(node: &Node) -> Result<&Arc<Fs>, ApiError> {
    node.fs()
        .ok_or_else(|| unavailable("the file service is not running on this node"))
}

fn id(s: &str) -> Result<FileId, ApiError> {
    FileId::parse(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn list(State(node): State<Arc<Node>>) -> ApiResult<Vec<FileView>> {
    Ok(Json(service(&node)?.list()))
}

async fn adding(State(node): State<Arc<Node>>) -> ApiResult<Vec<AddingView>> {
    Ok(Json(service(&node)?.adding()))
}

async fn add(State(node): State<Arc<Node>>, Json(req): Json<AddRequest>) -> ApiResult<Added> {
    Ok(Json(service(&node)?.add(req).await?))
}

async fn file(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<FileView> {
    Ok(Json(service(&node)?.file(&id(&i)?)?))
}

async fn info(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<InfoView> {
    Ok(Json(service(&node)?.info(id(&i)?).await?))
}

async fn seed(
    State(node): State<Arc<Node>>,
    Path(i): Path<String>,
    Json(req): Json<SeedRequest>,
) -> ApiResult<FileView> {
    Ok(Json(service(&node)?.seed(
        &id(&i)?,
        req.seeding,
        req.price_per_mib,
    )?))
}

async fn rm(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<serde_json::Value> {
    let file = id(&i)?;
    service(&node)?.remove(&file)?;
    Ok(Json(serde_json::json!({ "removed": file })))
}

async fn torrent(
    State(node): State<Arc<Node>>,
    Path(i): Path<String>,
    Json(req): Json<TorrentRequest>,
) -> ApiResult<TorrentView> {
    Ok(Json(service(&node)?.torrent(&id(&i)?, &req)?))
}

async fn start_get(
    State(node): State<Arc<Node>>,
    Json(req): Json<GetRequest>,
) -> ApiResult<TransferView> {
    Ok(Json(service(&node)?.get(req)?))
}

async fn transfer(State(node): State<Arc<Node>>, Path(i): Path<String>) -> ApiResult<TransferView> {
    Ok(Json(service(&node)?.transfer(&id(&i)?)?))
}

async fn status(State(node): State<Arc<Node>>) -> ApiResult<StatusView> {
    Ok(Json(service(&node)?.status()?))
}

async fn settle(State(node): State<Arc<Node>>) -> ApiResult<Vec<WindDownView>> {
    Ok(Json(service(&node)?.settle()?))
}
