//! `POST /v1/dashboard/login`: a one-time code for the web dashboard
//! (`zennet dashboard` turns it into the link to open).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use crate::node::Node;

#[derive(Debug, Serialize, Deserialize)]
pub struct DashboardLogin {
    /// The path to open on the API address: `/ui/login?code=…`.
    pub path: String,
    /// Seconds the code stays valid.
    pub valid_secs: u64,
}

pub(super) fn routes() -> Vec<super::Route> {
    vec![("/v1/dashboard/login", post(login))]
}

async fn login(State(node): State<Arc<Node>>) -> Json<DashboardLogin> {
    Json(DashboardLogin {
        path: format!("/ui/login?code={}", node.dashboard().issue_code()),
        valid_secs: crate::dashboard::CODE_TTL.as_secs(),
    })
}
