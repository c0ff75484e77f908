//! Zennet publisher side, plus the protocol both sides speak.
//!
//! * [`wire`]: the `zennet-pay` frames (length-prefixed borsh) and the
//!   shared price formula.
//! * [`sshkey`]: Ed25519 SSH keys on disk (0600) and their on-chain
//!   fingerprints.
//! * [`server`]: the russh SSH server nodes dial into; only keys named by
//!   an on-chain acceptance get in.
pub mod server;
pub mod sshkey;
pub mod wire;
