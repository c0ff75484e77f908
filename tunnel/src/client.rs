//! The node's end of the SSH tunnel: it dials the publisher's endpoint,
//! checks the server's host key against the fingerprint in the
//! announcement (a mismatch aborts: it is not the publisher who announced
//! the task), logs in with the key its `AcceptTask` names, opens a
//! subsystem (`zennet-pay` for the VM market) and asks for a remote forward
//! whose connections it carries to the VM's sshd on the node's loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, ChannelOpenHandle, Msg, Session};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{Channel, ChannelStream, Disconnect};
use tokio::net::TcpStream;
use zennet_chain::Hash;

use crate::counter::{ByteCounter, Counted};
use crate::keys::fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "publisher {endpoint} presented host key {got}, but the announcement names {expected}; not connecting"
    )]
    WrongHostKey {
        endpoint: String,
        expected: Hash,
        got: Hash,
    },
    #[error("publisher {endpoint} refused this node's SSH key (is the acceptance mined?)")]
    Refused { endpoint: String },
    #[error("cannot reach publisher {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("SSH with {endpoint}: {reason}")]
    Ssh { endpoint: String, reason: String },
}

impl TunnelError {
    /// Errors that a retry cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TunnelError::WrongHostKey { .. })
    }
}

/// An open tunnel.
pub struct Tunnel {
    handle: client::Handle<ClientHandler>,
    endpoint: String,
    /// Where forwarded connections go; set by [`Tunnel::forward`].
    target: Target,
}

/// The local port forwarded connections reach, and the counter their
/// bytes go to. Unset: forwarded connections are refused.
type Target = Arc<Mutex<Option<(u16, ByteCounter)>>>;

impl Tunnel {
    /// Dials `endpoint`, checks its host key against `host_key` and
    /// authenticates with `key`.
    pub async fn dial(
        endpoint: &str,
        host_key: Hash,
        key: Arc<PrivateKey>,
    ) -> Result<Tunnel, TunnelError> {
        let target: Target = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(None));
        let handler = ClientHandler {
            expected: host_key,
            seen: seen.clone(),
            target: target.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            // Bigger than the defaults (2 MiB, 32 KiB): fewer window
            // adjustments and packets for bulk traffic through the forward.
            window_size: 16 << 20,
            maximum_packet_size: 65535,
            preferred: crate::server::preferred(),
            ..Default::default()
        });
        let connect = tokio::time::timeout(
            Duration::from_secs(20),
            client::connect(config, endpoint.to_string(), handler),
        );
        let mut handle = match connect.await {
            Err(_) => {
                return Err(TunnelError::Unreachable {
                    endpoint: endpoint.into(),
                    reason: "timed out".into(),
                });
            }
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                if let Some(got) = *seen.lock().unwrap_or_else(|p| p.into_inner())
                    && got != host_key
                {
                    return Err(TunnelError::WrongHostKey {
                        endpoint: endpoint.into(),
                        expected: host_key,
                        got,
                    });
                }
                return Err(TunnelError::Unreachable {
                    endpoint: endpoint.into(),
                    reason: e.to_string(),
                });
            }
        };
        let ssh = |e: russh::Error| TunnelError::Ssh {
            endpoint: endpoint.into(),
            reason: e.to_string(),
        };
        let auth = handle
            .authenticate_publickey("zennet", PrivateKeyWithHashAlg::new(key, None))
            .await
            .map_err(ssh)?;
        if !auth.success() {
            return Err(TunnelError::Refused {
                endpoint: endpoint.into(),
            });
        }
        Ok(Tunnel {
            handle,
            endpoint: endpoint.into(),
            target,
        })
    }

    /// Opens the subsystem `name` (the server hands its stream to its owner).
    pub async fn open_subsystem(&self, name: &str) -> Result<ChannelStream<Msg>, TunnelError> {
        let ssh = |e: russh::Error| TunnelError::Ssh {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        };
        let channel = self.handle.channel_open_session().await.map_err(ssh)?;
        channel.request_subsystem(true, name).await.map_err(ssh)?;
        Ok(channel.into_stream())
    }

    /// Asks the publisher to forward a loopback port on its side to
    /// `vm_port` here; returns the publisher's port. `want` re-requests
    /// the port a previous session had (0: any). Every byte forwarded, both
    /// ways, is added to `traffic` as it passes.
    pub async fn forward(
        &self,
        vm_port: u16,
        want: u16,
        traffic: ByteCounter,
    ) -> Result<u16, TunnelError> {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some((vm_port, traffic));
        let port = self
            .handle
            .tcpip_forward("127.0.0.1", want as u32)
            .await
            .map_err(|e| TunnelError::Ssh {
                endpoint: self.endpoint.clone(),
                reason: format!("remote forward refused: {e}"),
            })?;
        Ok(port as u16)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "contract over", "en")
            .await;
    }
}

struct ClientHandler {
    expected: Hash,
    seen: Arc<Mutex<Option<Hash>>>,
    target: Target,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let fp = fingerprint(key);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        Ok(fp == self.expected)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((port, traffic)) = self
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            // No VM to reach yet; dropping the handle refuses the channel.
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
                let _ = channel.close().await;
                return;
            };
            let _ = tcp.set_nodelay(true);
            let mut stream = channel.into_stream();
            let mut tcp = Counted::new(tcp, traffic);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
        });
        Ok(())
    }
}
