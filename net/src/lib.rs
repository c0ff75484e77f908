//! Zennet networking — not built yet.
//!
//! This crate will hold the libp2p swarm: gossip of blocks and transactions,
//! header-first chain sync, Kademlia discovery and the file network's chunk
//! exchange (see DESIGN.md, "Workspace"). Until then a node runs alone.
