//! Publisher routes: tasks (announce, list, cancel, payment switches) and
//! the VMs it pays for.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use zennet_chain::Hash;
use zennet_publisher::{Publisher, PublisherError};

use super::{ApiError, ApiResult, Submitted, bad_request, parse_hash, status, unavailable};
use crate::node::Node;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherInfo {
    pub endpoint: String,
    pub host_key_fingerprint: Hash,
    /// Private key `zennet vm ssh` logs into VMs with.
    pub vm_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnounceTask {
    /// The task file's TOML text.
    pub toml: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPaying {
    pub paying: Option<bool>,
    pub storage: Option<bool>,
}

pub(super) fn routes() -> Vec<super::Route> {
    vec![
        ("/v1/publisher", get(publisher_info)),
        (
            "/v1/publisher/tasks",
            get(publisher_tasks).post(publisher_announce),
        ),
        ("/v1/publisher/tasks/{id}/cancel", post(publisher_cancel)),
        ("/v1/publisher/tasks/{id}/pay", post(publisher_pay)),
        ("/v1/publisher/tasks/{id}/lan", post(publisher_join_lan)),
        (
            "/v1/publisher/tasks/{id}/lan/leave",
            post(publisher_leave_lan),
        ),
        ("/v1/publisher/vms", get(publisher_vms)),
        ("/v1/publisher/apps", get(publisher_apps)),
        ("/v1/publisher/vms/{id}", get(publisher_vm)),
        ("/v1/publisher/vms/{id}/stop", post(publisher_stop_vm)),
    ]
}

async fn publisher_apps(State(node): State<Arc<Node>>) -> ApiResult<crate::apps::AppsList> {
    let apps = node.apps().ok_or_else(|| {
        unavailable("this node is not a publisher; restart it with `zennet node run --publish`")
    })?;
    Ok(Json(apps.list()?))
}

fn publisher(node: &Node) -> Result<&Arc<Publisher>, ApiError> {
    node.publisher().ok_or_else(|| {
        unavailable("this node is not a publisher; restart it with `zennet node run --publish`")
    })
}

impl From<PublisherError> for ApiError {
    fn from(e: PublisherError) -> ApiError {
        ApiError(status(e.is_bad_request(), e.is_not_found()), e.to_string())
    }
}

async fn publisher_info(State(node): State<Arc<Node>>) -> ApiResult<PublisherInfo> {
    let p = publisher(&node)?;
    Ok(Json(PublisherInfo {
        endpoint: p.endpoint().to_string(),
        host_key_fingerprint: p.host_key_fingerprint(),
        vm_key: p.vm_key_path().display().to_string(),
    }))
}

async fn publisher_announce(
    State(node): State<Arc<Node>>,
    Json(req): Json<AnnounceTask>,
) -> ApiResult<Submitted> {
    let file = zennet_publisher::taskfile::TaskFile::parse(&req.toml)
        .map_err(|e| bad_request(e.to_string()))?;
    let hash = publisher(&node)?.announce(file).await?;
    Ok(Json(Submitted { hash }))
}

async fn publisher_tasks(
    State(node): State<Arc<Node>>,
) -> ApiResult<Vec<zennet_publisher::TaskView>> {
    Ok(Json(publisher(&node)?.tasks()?))
}

async fn publisher_cancel(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Submitted> {
    let hash = publisher(&node)?.cancel(&parse_hash(&id)?)?;
    Ok(Json(Submitted { hash }))
}

/// Puts this host on the task's private network (`zennet job` runs the
/// job's host-side programs in the namespace it returns).
async fn publisher_join_lan(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<zennet_publisher::LanHostView> {
    Ok(Json(publisher(&node)?.join_lan(&parse_hash(&id)?)?))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeftLan {
    /// Whether this host was on the network.
    pub was_on: bool,
}

async fn publisher_leave_lan(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<LeftLan> {
    let was_on = publisher(&node)?.leave_lan(&parse_hash(&id)?);
    Ok(Json(LeftLan { was_on }))
}

async fn publisher_pay(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Json(req): Json<SetPaying>,
) -> ApiResult<zennet_publisher::store::TaskRow> {
    Ok(Json(publisher(&node)?.set_paying(
        &parse_hash(&id)?,
        req.paying,
        req.storage,
    )?))
}

async fn publisher_vms(State(node): State<Arc<Node>>) -> ApiResult<Vec<zennet_publisher::VmView>> {
    Ok(Json(publisher(&node)?.vms()?))
}

async fn publisher_vm(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<zennet_publisher::VmView> {
    Ok(Json(publisher(&node)?.vm(&id)?))
}

async fn publisher_stop_vm(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<zennet_publisher::VmView> {
    Ok(Json(publisher(&node)?.stop_vm(&id)?))
}
