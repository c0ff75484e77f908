//! The publisher side of the VM market.
//!
//! # Layout
//! * [`taskfile`]: `task.toml`, what a publisher writes to announce a task.
//! * [`service`]: [`Publisher`] — announce (proof of work solved), cancel,
//!   payment switches, the VMs it pays for, housekeeping (cancelled tasks,
//!   channels left open).
//! * [`session`]: one admitted node's `zennet-pay` session: channel, terms,
//!   a voucher per usage report within the publisher's own bound.
//! * [`admission`]: the SSH server's gate — only keys an on-chain
//!   acceptance of our tasks names get in.
//! * [`store`]: `publisher.db` — tasks and one contract per (task, node).
//! * [`view`]: what the API shows ([`VmView`], [`TaskView`]).
//! * [`error`]: the error type, [`PublisherError`].
//!
//! The channel logic is `zennet-pay`'s [`zennet_pay::Payer`]; the SSH
//! server is `zennet-tunnel`'s; the frames and the price formula are
//! `zennet-proto`'s, shared with the provider.

pub mod admission;
pub mod error;
pub mod service;
pub mod session;
pub mod store;
pub mod taskfile;
pub mod view;

pub use error::PublisherError;
pub use service::{Publisher, PublisherConfig};
pub use view::{TaskView, VmView};
