//! The CLI's client for a running node's API; every request carries the
//! home's API token (`Authorization: Bearer …`).

use anyhow::{Result, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: String, token: String) -> Client {
        Client {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        self.decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        self.decode(resp).await
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        resp: reqwest::Result<reqwest::Response>,
    ) -> Result<T> {
        let resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("node answered {status}"));
            return Err(anyhow!(msg));
        }
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("unexpected answer from the node: {e}"))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the node at {} ({}); is `zennet node run` still running?",
            self.base,
            e.without_url()
        )
    }
}
