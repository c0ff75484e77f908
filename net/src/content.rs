//! What the file network asks of the swarm: Kademlia provider records
//! (announce and find who holds a key, e.g. a file's info-hash) and raw
//! application streams (`libp2p-stream`), on which a service such as `fs`
//! runs its own framed protocol with several requests in flight.
//!
//! A provider record holds only the key, the provider and its addresses,
//! so one record is published per file; prices and part bitfields travel
//! in the application protocol. Streams carry their data between the
//! connection task and the service directly, not through the swarm task.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::{PeerId, StreamProtocol, Swarm};
use tokio::sync::oneshot;

use crate::service::{Behaviour, NetError, NetHandle};

/// A provider search gives up after this long with what it found.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys this node may provide at once (libp2p's default is 1,024).
pub const MAX_PROVIDED_KEYS: usize = 1 << 16;

pub use libp2p::Stream;
pub use libp2p_stream::{Control as StreamControl, IncomingStreams, OpenStreamError};

pub(crate) enum ContentCommand {
    Provide(Vec<u8>),
    Unprovide(Vec<u8>),
    Providers {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// Provider searches in flight.
#[derive(Default)]
pub(crate) struct Content {
    searches: HashMap<QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
}

impl Content {
    pub(crate) fn handle(&mut self, swarm: &mut Swarm<Behaviour>, command: ContentCommand) {
        let kad = &mut swarm.behaviour_mut().kad;
        match command {
            ContentCommand::Provide(key) => {
                if let Err(e) = kad.start_providing(RecordKey::new(&key)) {
                    tracing::warn!(error = %e, "cannot provide a key");
                }
            }
            ContentCommand::Unprovide(key) => kad.stop_providing(&RecordKey::new(&key)),
            ContentCommand::Providers { key, reply } => {
                let id = kad.get_providers(RecordKey::new(&key));
                self.searches.insert(id, (HashSet::new(), reply));
            }
        }
    }

    /// Takes the Kademlia events that answer a provider search.
    pub(crate) fn on_kad(&mut self, event: &kad::Event) -> bool {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return false;
        };
        let QueryResult::GetProviders(result) = result else {
            return false;
        };
        let Some((found, _)) = self.searches.get_mut(id) else {
            return true;
        };
        let done = match result {
            Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                found.extend(providers.iter().copied());
                step.last
            }
            Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
            Err(e) => {
                tracing::debug!(error = %e, "provider search ended");
                true
            }
        };
        if done && let Some((found, reply)) = self.searches.remove(id) {
            let _ = reply.send(found.into_iter().collect());
        }
        true
    }
}

impl NetHandle {
    /// Announces that this node provides `key` (re-published by Kademlia
    /// until [`NetHandle::unprovide`]).
    pub fn provide(&self, key: &[u8]) {
        self.content(ContentCommand::Provide(key.to_vec()));
    }

    pub fn unprovide(&self, key: &[u8]) {
        self.content(ContentCommand::Unprovide(key.to_vec()));
    }

    /// Peers that announced `key` (this node excluded), as found within
    /// [`FIND_TIMEOUT`].
    pub async fn providers(&self, key: &[u8]) -> Result<Vec<PeerId>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.content(ContentCommand::Providers {
            key: key.to_vec(),
            reply,
        });
        let mut peers = match tokio::time::timeout(FIND_TIMEOUT, rx).await {
            Ok(found) => found.map_err(|_| NetError::Stopped)?,
            Err(_) => Vec::new(),
        };
        peers.retain(|p| *p != self.local_peer_id);
        Ok(peers)
    }

    /// A handle to open and accept application streams.
    pub fn streams(&self) -> StreamControl {
        self.streams.clone()
    }
}

/// A protocol name for [`StreamControl::open_stream`] / `accept`.
pub fn stream_protocol(name: &'static str) -> StreamProtocol {
    StreamProtocol::new(name)
}
