//! Zennet publisher side, plus the protocol both sides speak.
//!
//! * [`wire`]: the `zennet-pay` frames (length-prefixed borsh) and the
//!   shared price formula.
//! * [`sshkey`]: Ed25519 SSH keys on disk (0600) and their on-chain
//!   fingerprints.
//! * [`server`]: the russh SSH server nodes dial into; only keys named by
//!   an on-chain acceptance get in.
//! * [`service`]: the publisher itself — announce from a [`taskfile`],
//!   pay admitted nodes with vouchers, cancel, list and stop VMs; its
//!   state in [`store`].

pub use service::{Publisher, PublisherConfig, PublisherError, TaskView, VmView};
pub mod server;
pub mod service;
pub mod sshkey;
pub mod store;
pub mod taskfile;
pub mod wire;
