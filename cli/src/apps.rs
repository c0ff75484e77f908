//! Web apps by app id (the Zephyr seed's "web applications with their own
//! id, a virtual hostname"): a publisher's node runs an HTTP reverse proxy
//! on `[publisher] apps_listen` that sends `Host: APPID.zennet.localhost`
//! to the `web_port` of that task's VMs, round-robin across the ones
//! running now.
//!
//! Each request reaches its VM the way `zennet vm ssh` does: OpenSSH
//! through the VM's tunnel port, here as `ssh -W 127.0.0.1:PORT` (a TCP
//! connection inside the guest, carried on the SSH connection), pinned to
//! the VM's host key. So nothing new listens on any provider's host, the
//! bytes are the tunnel's (metered like the rest), and the proxy needs no
//! route to the VMs. `*.localhost` resolves to loopback in browsers and
//! curl, so `http://APPID.zennet.localhost:PORT/` works with no DNS set-up.
//! Errors are plain text: 404 for a host that is no app here, 502 when the
//! app has no running VM or its VM does not answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use zennet_publisher::{AppView, Publisher, VmView};

/// The host suffix apps are named under.
pub const SUFFIX: &str = ".zennet.localhost";
/// How long a VM has to answer a request's head.
const ANSWER: Duration = Duration::from_secs(30);

/// The proxy, as the node's API shows it.
pub struct Apps {
    publisher: Arc<Publisher>,
    /// The publisher's directory (VM key, known_hosts files).
    dir: PathBuf,
    next: AtomicUsize,
    pub addr: SocketAddr,
}

/// `GET /v1/publisher/apps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppsList {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    pub apps: Vec<AppEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppEntry {
    pub url: String,
    #[serde(flatten)]
    pub app: AppView,
}

impl Apps {
    /// Listens on `listen` and serves until the process ends.
    pub async fn start(publisher: Arc<Publisher>, dir: PathBuf, listen: &str) -> Result<Arc<Apps>> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} for web apps; change [publisher] apps_listen")
            })?;
        let apps = Arc::new(Apps {
            publisher,
            dir,
            next: AtomicUsize::new(0),
            addr: listener.local_addr()?,
        });
        let router = axum::Router::new().fallback(proxy).with_state(apps.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "web app proxy stopped");
            }
        });
        tracing::info!(addr = %apps.addr, "web app proxy");
        Ok(apps)
    }

    pub fn list(&self) -> Result<AppsList, zennet_publisher::PublisherError> {
        Ok(AppsList {
            listen: self.addr,
            apps: self
                .publisher
                .apps()?
                .into_iter()
                .map(|app| AppEntry {
                    url: format!("http://{}{SUFFIX}:{}/", app.app, self.addr.port()),
                    app,
                })
                .collect(),
        })
    }

    /// One request through `vm`'s tunnel to its `port`.
    async fn forward(&self, vm: &VmView, port: u16, req: Request) -> Result<Response> {
        let ssh_port = vm.ssh_port.context("the VM's tunnel is down")?;
        let key = self.dir.join("vm_key");
        let known_hosts = self
            .dir
            .join(format!("known_hosts-{}", crate::trade::short(&vm.id)));
        let ssh = crate::trade::ssh_to_vm(
            &key,
            &known_hosts,
            vm.host_key.as_deref(),
            ssh_port,
            &["-W".into(), format!("127.0.0.1:{port}")],
        )?;
        let mut child = tokio::process::Command::from(ssh)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run ssh (install openssh-client)")?;
        let io = tokio::io::join(
            child.stdout.take().context("ssh's stdout")?,
            child.stdin.take().context("ssh's stdin")?,
        );
        let answer = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
            tokio::spawn(async move {
                // The connection (and ssh) lasts until the body is read.
                let _ = conn.await;
                drop(child);
            });
            sender.send_request(req).await
        };
        let response = tokio::time::timeout(ANSWER, answer)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} s", ANSWER.as_secs()))??;
        Ok(response.map(Body::new))
    }
}

async fn proxy(State(apps): State<Arc<Apps>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let host = host.as_str();
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
    let Some(id) = name.strip_suffix(SUFFIX) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{host:?} is not an app host: use http://APPID{SUFFIX}:PORT/ (see `zennet app list`)"
            ),
        );
    };
    let app = match apps.publisher.app(id) {
        Ok(a) => a,
        Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
    };
    if app.vms.is_empty() {
        return text(
            StatusCode::BAD_GATEWAY,
            format!("app {id} has no running VM now (see `zennet vm list`)"),
        );
    }
    let vm = &app.vms[apps.next.fetch_add(1, Ordering::Relaxed) % app.vms.len()];
    match apps.forward(vm, app.web_port, req).await {
        Ok(r) => r,
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!(
                "app {id}: VM {} did not answer on port {}: {e:#}",
                vm.id, app.web_port
            ),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, format!("{body}\n")).into_response()
}
