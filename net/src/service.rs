//! The swarm task and its typed command/event API.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::identify;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, noise, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot};
use zennet_chain::{Address, Hash, SecretKey};

use crate::content::{Content, ContentCommand};
use crate::limit::{Rate, RateLimiter};
use crate::protocol::{
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, SYNC_PROTOCOL, SyncRequest, SyncResponse,
};

/// Largest gossip message: a full block.
const MAX_GOSSIP_BYTES: usize = 2 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to re-dial unreachable bootstrap peers and refresh Kademlia.
const MAINTENANCE: Duration = Duration::from_secs(5);
/// Gossiped transactions a peer may relay to us: a busy relay forwards
/// many users' transactions, a flood beyond this is dropped unread.
pub const TX_RATE: Rate = Rate {
    per_second: 200.0,
    burst: 2000.0,
};
/// Gossiped blocks: a new tip every block time, and a burst after a partition.
pub const BLOCK_RATE: Rate = Rate {
    per_second: 20.0,
    burst: 200.0,
};

pub struct NetConfig {
    /// The node's chain key; it is also its libp2p identity.
    pub secret: SecretKey,
    /// Only peers on this chain are kept.
    pub genesis: Hash,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub max_peers: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("network transport: {0}")]
    Transport(String),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
}

/// What the node is told by the network.
#[derive(Debug)]
pub enum NetEvent {
    PeerConnected {
        peer: PeerId,
        address: Option<Address>,
    },
    PeerDisconnected {
        peer: PeerId,
    },
    /// A gossiped block; answer with [`NetHandle::validate`].
    Block {
        source: PeerId,
        message_id: MessageId,
        bytes: Vec<u8>,
    },
    /// A gossiped transaction; answer with [`NetHandle::validate`].
    Tx {
        source: PeerId,
        message_id: MessageId,
        bytes: Vec<u8>,
    },
    /// A sync request; answer with [`NetHandle::respond`].
    Request {
        id: u64,
        peer: PeerId,
        request: SyncRequest,
    },
}

/// The node's verdict on a gossiped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: propagate it.
    Accept,
    /// Not invalid, but not to be propagated (duplicate, unknown parent…).
    Ignore,
    /// Invalid: drop it and penalise the sender.
    Reject,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    /// The peer's chain address (its libp2p key is its chain key).
    pub address: Option<Address>,
    pub remote_addr: String,
}

enum Command {
    PublishBlock(Vec<u8>),
    PublishTx(Vec<u8>),
    Dial(Multiaddr),
    Request {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    Respond {
        id: u64,
        response: SyncResponse,
    },
    Validate {
        message_id: MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Ban {
        peer: PeerId,
        reason: String,
    },
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Content(ContentCommand),
}

/// Cheap to clone; every method is a message to the swarm task.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub local_peer_id: PeerId,
    pub(crate) streams: libp2p_stream::Control,
}

impl NetHandle {
    pub fn publish_block(&self, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::PublishBlock(bytes));
    }

    pub fn publish_tx(&self, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::PublishTx(bytes));
    }

    pub(crate) fn content(&self, command: ContentCommand) {
        let _ = self.commands.send(Command::Content(command));
    }

    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.commands.send(Command::Dial(addr));
    }

    pub async fn request(
        &self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<SyncResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    pub fn respond(&self, id: u64, response: SyncResponse) {
        let _ = self.commands.send(Command::Respond { id, response });
    }

    pub fn validate(&self, message_id: MessageId, source: PeerId, verdict: Verdict) {
        let _ = self.commands.send(Command::Validate {
            message_id,
            source,
            verdict,
        });
    }

    /// Disconnects `peer` and refuses it from now on.
    pub fn ban(&self, peer: PeerId, reason: impl Into<String>) {
        let _ = self.commands.send(Command::Ban {
            peer,
            reason: reason.into(),
        });
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Peers(tx))
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Listen addresses, each ending in `/p2p/<our peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ListenAddrs(tx))
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    gossip: gossipsub::Behaviour,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    streams: libp2p_stream::Behaviour,
}

pub struct Network;

impl Network {
    /// Builds the swarm, starts listening and dialling, and spawns the task
    /// that owns it.
    pub async fn start(
        config: NetConfig,
    ) -> Result<(NetHandle, mpsc::UnboundedReceiver<NetEvent>), NetError> {
        let keypair = crate::keypair(&config.secret);
        let local_peer_id = keypair.public().to_peer_id();
        let chain_tag = hex_prefix(&config.genesis);
        let protocol_version = format!("/zennet/{chain_tag}");
        let blocks_topic = IdentTopic::new(format!("zennet/{chain_tag}/blocks"));
        let txs_topic = IdentTopic::new(format!("zennet/{chain_tag}/txs"));
        let max_peers = config.max_peers;

        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_behaviour(|key| {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(MAX_GOSSIP_BYTES)
                    .heartbeat_interval(Duration::from_millis(700))
                    .build()
                    .map_err(|e| e.to_string())?;
                let gossip = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let mut kad_config = kad::Config::new(StreamProtocol::try_from_owned(format!(
                    "/zennet/{chain_tag}/kad/1"
                ))?);
                kad_config.set_query_timeout(Duration::from_secs(30));
                let kad = kad::Behaviour::with_config(
                    key.public().to_peer_id(),
                    MemoryStore::with_config(
                        key.public().to_peer_id(),
                        kad::store::MemoryStoreConfig {
                            max_provided_keys: crate::content::MAX_PROVIDED_KEYS,
                            ..Default::default()
                        },
                    ),
                    kad_config,
                );
                let sync = request_response::cbor::Behaviour::with_codec(
                    request_response::cbor::codec::Codec::default()
                        .set_request_size_maximum(MAX_REQUEST_BYTES)
                        .set_response_size_maximum(MAX_RESPONSE_BYTES),
                    [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
                );
                Ok(Behaviour {
                    blocked: Default::default(),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(max_peers))
                            .with_max_established_per_peer(Some(2))
                            .with_max_pending_incoming(Some(max_peers)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        protocol_version.clone(),
                        key.public(),
                    )),
                    kad,
                    gossip,
                    sync,
                    streams: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();

        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        for topic in [&blocks_topic, &txs_topic] {
            swarm
                .behaviour_mut()
                .gossip
                .subscribe(topic)
                .map_err(|e| NetError::Transport(e.to_string()))?;
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        // Wait until every listener is up so the addresses can be reported.
        let mut listening = 0;
        while listening < config.listen.len() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "p2p listening");
                    listening += 1;
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NetError::Transport(error.to_string()));
                }
                _ => {}
            }
        }

        let streams = swarm.behaviour().streams.new_control();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut task = Task {
            swarm,
            local_peer_id,
            protocol_version,
            blocks_topic,
            txs_topic,
            bootstrap: config.bootstrap,
            events: events_tx,
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            connected: HashMap::new(),
            banned: HashSet::new(),
            tx_limit: RateLimiter::new(TX_RATE),
            block_limit: RateLimiter::new(BLOCK_RATE),
            limited: 0,
            content: Content::default(),
        };
        task.dial_bootstrap();
        tokio::spawn(task.run(commands_rx));
        Ok((
            NetHandle {
                commands: commands_tx,
                local_peer_id,
                streams,
            },
            events_rx,
        ))
    }
}

struct Task {
    swarm: Swarm<Behaviour>,
    local_peer_id: PeerId,
    protocol_version: String,
    blocks_topic: IdentTopic,
    txs_topic: IdentTopic,
    bootstrap: Vec<Multiaddr>,
    events: mpsc::UnboundedSender<NetEvent>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<SyncResponse, NetError>>>,
    inbound: HashMap<u64, ResponseChannel<SyncResponse>>,
    next_inbound: u64,
    /// Connected peers and the address of one of their connections.
    connected: HashMap<PeerId, Multiaddr>,
    banned: HashSet<PeerId>,
    tx_limit: RateLimiter<PeerId>,
    block_limit: RateLimiter<PeerId>,
    /// Gossip messages dropped by the rate limits (logged now and then).
    limited: u64,
    content: Content,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut maintenance = tokio::time::interval(MAINTENANCE);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.handle_command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
                _ = maintenance.tick() => self.maintain(),
            }
        }
        tracing::debug!("network task stopped");
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Some(peer) = peer_of(&addr) {
                if peer == self.local_peer_id || self.connected.contains_key(&peer) {
                    continue;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
    }

    fn maintain(&mut self) {
        if self.connected.is_empty() {
            self.dial_bootstrap();
        }
        if !self.connected.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::PublishBlock(bytes) => self.publish(true, bytes),
            Command::PublishTx(bytes) => self.publish(false, bytes),
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Respond { id, response } => {
                if let Some(channel) = self.inbound.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
            Command::Validate {
                message_id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&message_id, &source, acceptance);
            }
            Command::Ban { peer, reason } => self.ban(peer, &reason),
            Command::Content(c) => self.content.handle(&mut self.swarm, c),
            Command::Peers(reply) => {
                let peers = self
                    .connected
                    .iter()
                    .map(|(peer, addr)| PeerInfo {
                        peer_id: peer.to_string(),
                        address: crate::peer_address(peer),
                        remote_addr: addr.to_string(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs(reply) => {
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(Protocol::P2p(self.local_peer_id)))
                    .collect();
                let _ = reply.send(addrs);
            }
        }
    }

    fn publish(&mut self, block: bool, bytes: Vec<u8>) {
        let topic = if block {
            &self.blocks_topic
        } else {
            &self.txs_topic
        };
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossip
            .publish(topic.clone(), bytes)
        {
            // No subscribed peers yet is normal for a lone node.
            tracing::debug!(error = %e, block, "gossip publish");
        }
    }

    fn ban(&mut self, peer: PeerId, reason: &str) {
        if self.banned.insert(peer) {
            tracing::warn!(%peer, reason, "banning peer");
        }
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.block_peer(peer);
        behaviour.gossip.blacklist_peer(&peer);
        behaviour.kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn emit(&self, event: NetEvent) {
        let _ = self.events.send(event);
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.connected
                    .insert(peer_id, endpoint.get_remote_address().clone());
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.emit(NetEvent::PeerConnected {
                        peer: peer_id,
                        address: crate::peer_address(&peer_id),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                self.tx_limit.remove(&peer_id);
                self.block_limit.remove(&peer_id);
                tracing::info!(peer = %peer_id, "peer disconnected");
                self.emit(NetEvent::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != self.protocol_version {
                    tracing::info!(peer = %peer_id, theirs = %info.protocol_version, "peer is on another chain");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                for addr in info.listen_addrs {
                    if is_dialable(&addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let is_block = message.topic == self.blocks_topic.hash();
                let limit = if is_block {
                    &mut self.block_limit
                } else {
                    &mut self.tx_limit
                };
                if !limit.allow(&propagation_source, std::time::Instant::now()) {
                    // Over its share: dropped unread and not forwarded.
                    self.swarm
                        .behaviour_mut()
                        .gossip
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    self.limited += 1;
                    if self.limited.is_power_of_two() {
                        tracing::warn!(peer = %propagation_source, dropped = self.limited, is_block, "gossip over the rate limit");
                    }
                    return;
                }
                let event = if is_block {
                    NetEvent::Block {
                        source: propagation_source,
                        message_id,
                        bytes: message.data,
                    }
                } else {
                    NetEvent::Tx {
                        source: propagation_source,
                        message_id,
                        bytes: message.data,
                    }
                };
                self.emit(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.handle_sync(event),
            // Discovery: connect to peers Kademlia learns about.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, ..
            })) if !self.connected.contains_key(&peer)
                && !self.banned.contains(&peer)
                && peer != self.local_peer_id =>
            {
                let _ = self.swarm.dial(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.content.on_kad(&e);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "outgoing connection failed");
            }
            _ => {}
        }
    }

    fn handle_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let id = self.next_inbound;
                    self.next_inbound += 1;
                    self.inbound.insert(id, channel);
                    self.emit(NetEvent::Request { id, peer, request });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Unspecified addresses (0.0.0.0) are listen addresses, not dial targets.
fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn hex_prefix(h: &Hash) -> String {
    h.to_string()[2..18].to_string()
}
