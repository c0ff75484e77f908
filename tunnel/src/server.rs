//! The publisher's SSH server (russh). Clients get in only with a key the
//! [`Gate`] admits (for the publisher: the key an on-chain `AcceptTask`
//! names); any other key is refused at authentication. An admitted
//! connection may open the one subsystem the server was started with
//! (`zennet-pay`; its stream goes to the owner as a [`Connection`]) and ask
//! for remote port forwards (`tcpip-forward`), which bind on the server's
//! loopback only, so `ssh -p PORT root@127.0.0.1` reaches the VM's sshd.
//! Nothing else is offered: no shell, no exec, no direct-tcpip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelStream, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zennet_chain::Hash;

use crate::keys::fingerprint;

/// Decides which client keys get in (by SHA-256 fingerprint).
pub trait Gate: Send + Sync + 'static {
    fn admits(&self, key: &Hash) -> bool;
}

/// An admitted client's subsystem stream, with the loopback ports its
/// session forwards.
pub struct Connection {
    /// Fingerprint of the key the client authenticated with.
    pub key: Hash,
    pub peer: Option<SocketAddr>,
    /// The subsystem's byte stream.
    pub stream: ChannelStream<Msg>,
    pub forwards: Forwards,
}

/// Loopback ports bound for one SSH session's remote forwards; they close
/// with the session.
#[derive(Clone, Default)]
pub struct Forwards(Arc<Mutex<Vec<u16>>>);

impl Forwards {
    pub fn ports(&self) -> Vec<u16> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn add(&self, port: u16) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(port);
    }
}

/// Algorithm preferences for both ends of the tunnel: AES-GCM first (the
/// CPU does it in hardware almost everywhere; ChaCha20 stays as fallback
/// for clients that prefer it, such as OpenSSH).
pub fn preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
        ]),
        ..Default::default()
    }
}

/// A running server.
pub struct SshServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SshServer {
    /// Listens on `listen` and hands each stream of the subsystem
    /// `subsystem` to the returned receiver.
    pub async fn start(
        listen: &str,
        host_key: PrivateKey,
        gate: Arc<dyn Gate>,
        subsystem: &'static str,
    ) -> std::io::Result<(SshServer, mpsc::Receiver<Connection>)> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let config = Arc::new(russh::server::Config {
            methods,
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            // Bigger than the defaults (2 MiB, 32 KiB): fewer window
            // adjustments and packets for bulk traffic through the forward.
            window_size: 16 << 20,
            maximum_packet_size: 65535,
            preferred: preferred(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(64);
        let mut server = Acceptor {
            gate,
            tx,
            subsystem,
        };
        let task = tokio::spawn(async move {
            if let Err(e) = server.run_on_socket(config, &listener).await {
                tracing::error!(error = %e, "SSH server stopped");
            }
        });
        tracing::info!(%local_addr, "SSH server listening");
        Ok((SshServer { local_addr, task }, rx))
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Acceptor {
    gate: Arc<dyn Gate>,
    tx: mpsc::Sender<Connection>,
    subsystem: &'static str,
}

impl russh::server::Server for Acceptor {
    type Handler = SessionHandler;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> SessionHandler {
        SessionHandler {
            gate: self.gate.clone(),
            tx: self.tx.clone(),
            subsystem: self.subsystem,
            peer,
            key: None,
            channels: HashMap::new(),
            forwards: Forwards::default(),
            listeners: Vec::new(),
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::debug!(%error, "SSH session ended");
    }
}

struct SessionHandler {
    gate: Arc<dyn Gate>,
    tx: mpsc::Sender<Connection>,
    subsystem: &'static str,
    peer: Option<SocketAddr>,
    /// Set once the client authenticated.
    key: Option<Hash>,
    /// Session channels opened but not yet bound to a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    forwards: Forwards,
    listeners: Vec<JoinHandle<()>>,
}

impl Drop for SessionHandler {
    fn drop(&mut self) {
        // The forwarded ports live exactly as long as the session.
        for l in &self.listeners {
            l.abort();
        }
    }
}

impl russh::server::Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.gate.admits(&fingerprint(offer.public_key)) {
            true => Auth::Accept,
            false => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if self.gate.admits(&fp) {
            tracing::info!(key = %fp, peer = ?self.peer, "node admitted");
            self.key = Some(fp);
            Ok(Auth::Accept)
        } else {
            tracing::info!(key = %fp, peer = ?self.peer, "refused: no acceptance on chain names this key");
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.key.is_some() && self.channels.len() < 4 {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(key), true) = (self.key, name == self.subsystem) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let conn = Connection {
            key,
            peer: self.peer,
            stream: channel.into_stream(),
            forwards: self.forwards.clone(),
        };
        if self.tx.send(conn).await.is_err() {
            tracing::warn!(
                subsystem = self.subsystem,
                "the owner is gone; dropping a subsystem stream"
            );
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.key.is_none() || self.listeners.len() >= 4 {
            return Ok(false);
        }
        // Whatever address the node names, the port opens on loopback
        // only: it is the publisher's way in, nobody else's.
        let requested = u16::try_from(*port).unwrap_or(0);
        let listener = match TcpListener::bind(("127.0.0.1", requested)).await {
            Ok(l) => l,
            Err(_) if requested != 0 => match TcpListener::bind(("127.0.0.1", 0)).await {
                Ok(l) => l,
                Err(_) => return Ok(false),
            },
            Err(_) => return Ok(false),
        };
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        *port = bound as u32;
        self.forwards.add(bound);
        let handle = session.handle();
        // Clients match forwarded channels by the address they asked for.
        let address = address.to_string();
        self.listeners.push(tokio::spawn(async move {
            while let Ok((mut tcp, from)) = listener.accept().await {
                let handle = handle.clone();
                let address = address.clone();
                tokio::spawn(async move {
                    let opened = handle
                        .channel_open_forwarded_tcpip(
                            address,
                            bound as u32,
                            from.ip().to_string(),
                            from.port() as u32,
                        )
                        .await;
                    match opened {
                        Ok(channel) => {
                            let mut stream = channel.into_stream();
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "node refused a forwarded connection")
                        }
                    }
                });
            }
        }));
        tracing::info!(port = bound, "remote forward bound on loopback");
        Ok(true)
    }
}
