//! `GET /metrics`: the node's Prometheus metrics (see
//! [`crate::observe::metrics`]), behind the API token like every route —
//! Prometheus sends it with `authorization: {credentials_file:
//! HOME/api_token}` (see `deploy/prometheus/prometheus.yml`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::node::Node;
use crate::observe::{Snapshot, metrics};

pub(super) fn routes() -> Vec<super::Route> {
    vec![("/metrics", get(scrape))]
}

async fn scrape(State(node): State<Arc<Node>>) -> Response {
    let snapshot = Snapshot::gather(&node).await;
    let stats = node.provider().map(|p| p.stats());
    match metrics::render(&snapshot, stats) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => super::ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
        .into_response(),
    }
}
