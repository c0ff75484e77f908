//! Zennet networking on libp2p: TCP + noise + yamux, identify, Kademlia
//! discovery from bootstrap addresses, gossipsub topics for blocks and
//! transactions (validated by the node before they propagate), a
//! request-response protocol for header-first chain sync and state
//! snapshots, connection limits, per-peer rate limits on gossip, and banning
//! of peers that send invalid data.
//!
//! One task owns the swarm ([`Network::start`]); the node talks to it through
//! a typed [`NetHandle`] and receives [`NetEvent`]s. The libp2p identity is
//! the node's chain key (secp256k1), so every peer id maps to a chain address
//! ([`peer_address`]).
//!
//! [`content`] adds what the file network needs: Kademlia provider
//! records on a key and raw application streams.

pub mod content;
mod limit;
mod protocol;
mod service;

pub use libp2p::gossipsub::MessageId;
pub use libp2p::{Multiaddr, PeerId};
pub use limit::{Rate, RateLimiter};
pub use protocol::{
    MAX_BLOCKS, MAX_HEADERS, Status, SyncRequest, SyncResponse, hash_bytes, parse_hashes,
};
pub use service::{
    BLOCK_RATE, NetConfig, NetError, NetEvent, NetHandle, Network, PeerInfo, TX_RATE, Verdict,
};

use zennet_chain::{Address, PublicKey, SecretKey};

/// The libp2p keypair for a chain key.
pub fn keypair(secret: &SecretKey) -> libp2p::identity::Keypair {
    let mut bytes = secret.to_bytes();
    let sk = libp2p::identity::secp256k1::SecretKey::try_from_bytes(&mut bytes)
        .expect("a valid chain key is a valid secp256k1 key");
    libp2p::identity::secp256k1::Keypair::from(sk).into()
}

pub fn peer_id(secret: &SecretKey) -> PeerId {
    keypair(secret).public().to_peer_id()
}

/// The peer id of the node whose chain key has public key `key` (the file
/// network reaches a storage node by the key of its on-chain identity).
pub fn peer_id_of(key: &PublicKey) -> Option<PeerId> {
    let public = libp2p::identity::secp256k1::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(public).to_peer_id())
}

/// The chain address behind a peer id (secp256k1 peers only).
pub fn peer_address(peer: &PeerId) -> Option<Address> {
    let public =
        libp2p::identity::PublicKey::try_decode_protobuf(peer_public_key_bytes(peer)?).ok()?;
    let secp = public.try_into_secp256k1().ok()?;
    PublicKey::from_slice(&secp.to_bytes()).ok()?.address().ok()
}

/// Small keys are inlined in the peer id with the identity multihash.
fn peer_public_key_bytes(peer: &PeerId) -> Option<&[u8]> {
    let mh = peer.as_ref();
    (mh.code() == 0).then(|| mh.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_maps_back_to_the_chain_address() {
        let key = SecretKey::generate();
        assert_eq!(peer_address(&peer_id(&key)), Some(key.address()));
        assert_eq!(peer_id_of(&key.public_key()), Some(peer_id(&key)));
        let ed = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert_eq!(peer_address(&ed), None);
    }
}
