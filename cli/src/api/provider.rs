//! Provider routes: the VM runtime (`zennet agent vm …`) and the market
//! (`zennet agent tasks|status|accept|reject`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use zennet_provider::{ContractView, Provider, ProviderError, TaskVerdict};
use zennet_vm::{Runtime, StartVm, VmError, VmInfo};

use super::{ApiError, ApiResult, Submitted, parse_hash, status, unavailable};
use crate::node::Node;

pub(super) fn routes() -> Vec<super::Route> {
    vec![
        ("/v1/agent/vms", get(agent_vms).post(agent_start)),
        ("/v1/agent/vms/{id}/stop", post(agent_stop)),
        ("/v1/agent/tasks", get(provider_tasks)),
        ("/v1/agent/contracts", get(provider_contracts)),
        ("/v1/agent/prices", get(provider_prices)),
        ("/v1/agent/tasks/{id}/accept", post(provider_accept)),
        ("/v1/agent/tasks/{id}/reject", post(provider_reject)),
    ]
}

const NOT_A_PROVIDER: &str =
    "this node is not a provider; restart it with `zennet node run --provide`";

fn vms(node: &Node) -> Result<&Arc<Runtime>, ApiError> {
    node.vms().ok_or_else(|| unavailable(NOT_A_PROVIDER))
}

fn provider(node: &Node) -> Result<&Arc<Provider>, ApiError> {
    node.provider().ok_or_else(|| unavailable(NOT_A_PROVIDER))
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> ApiError {
        ApiError(status(e.is_bad_request(), e.is_not_found()), e.to_string())
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> ApiError {
        ApiError(status(e.is_bad_request(), e.is_not_found()), e.to_string())
    }
}

async fn agent_vms(State(node): State<Arc<Node>>) -> ApiResult<Vec<VmInfo>> {
    Ok(Json(vms(&node)?.list().await?))
}

async fn agent_start(State(node): State<Arc<Node>>, Json(req): Json<StartVm>) -> ApiResult<VmInfo> {
    Ok(Json(vms(&node)?.start(req).await?))
}

async fn agent_stop(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult<VmInfo> {
    Ok(Json(vms(&node)?.stop(&id).await?))
}

async fn provider_tasks(State(node): State<Arc<Node>>) -> ApiResult<Vec<TaskVerdict>> {
    Ok(Json(provider(&node)?.tasks()?))
}

async fn provider_contracts(State(node): State<Arc<Node>>) -> ApiResult<Vec<ContractView>> {
    Ok(Json(provider(&node)?.contracts()?))
}

async fn provider_prices(
    State(node): State<Arc<Node>>,
) -> ApiResult<zennet_provider::prices::PriceSuggestion> {
    Ok(Json(provider(&node)?.prices()))
}

async fn provider_accept(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<ContractView> {
    Ok(Json(provider(&node)?.accept(&parse_hash(&id)?).await?))
}

async fn provider_reject(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Submitted> {
    let task = parse_hash(&id)?;
    provider(&node)?.reject(&task)?;
    Ok(Json(Submitted { hash: task }))
}
