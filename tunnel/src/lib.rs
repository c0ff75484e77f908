//! The SSH tunnel between a provider node and a publisher, both ends
//! (russh, interoperating with OpenSSH).
//!
//! # Layout
//! * [`keys`]: Ed25519 SSH keys on disk (0600) and the SHA-256
//!   fingerprints the chain names them by.
//! * [`server`]: the publisher's end — a russh server that admits only the
//!   keys its [`server::Gate`] allows (the publisher's gate: an on-chain
//!   acceptance names the key), hands each opened subsystem stream to its
//!   owner, and binds remote forwards on loopback only.
//! * [`client`]: the node's end — dials, checks the server's host key
//!   against the pinned fingerprint, authenticates, opens a subsystem and a
//!   remote forward whose connections it carries to a local port.
//! * [`counter`]: the byte counter the forward adds to as bytes pass; the
//!   counter handle belongs to whoever meters it (the VM runtime), so the
//!   tunnel knows nothing about what it carries.
//!
//! The tunnel does not speak any payment protocol: the subsystem's name is
//! a parameter and its stream is handed out as bytes (`zennet-proto`
//! frames it).
//!
//! Why russh: a maintained pure-Rust SSH implementation with both server
//! and client, remote forwards and subsystems, tested here against the
//! stock OpenSSH client.

pub mod client;
pub mod counter;
pub mod keys;
pub mod server;

pub use client::{Tunnel, TunnelError};
pub use counter::ByteCounter;
pub use server::{Connection, Forwards, Gate, Limits, SshServer};
