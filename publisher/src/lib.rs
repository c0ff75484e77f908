//! The publisher side of the VM market.
//!
//! # Layout
//! * [`taskfile`]: `task.toml`, what a publisher writes to announce a task.
//! * [`service`]: [`Publisher`] — announce (proof of work solved), cancel,
//!   payment switches, the VMs it pays for, housekeeping (cancelled tasks,
//!   channels left open).
//! * [`session`]: one admitted node's `zennet-pay` session: channel, terms,
//!   a voucher per usage report within the publisher's own bound.
//! * [`capacity`]: the check of a node's claimed compute inside its VM.
//! * [`lan`]: the private network between a task's VMs — a switch with a
//!   port per VM, carried over each node's SSH connection (`zennet-lan`),
//!   addresses assigned here and set in the guest over ssh.
//! * [`lan_host`]: the publisher's own place (`.1`) on a task's network —
//!   a TAP in a namespace of the task's own, where the job's host-side
//!   programs (a Spark master and driver) run.
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
pub mod capacity;
pub mod error;
pub mod lan;
pub mod lan_host;
pub mod service;
pub mod session;
pub mod store;
pub mod taskfile;
pub mod view;

pub use error::PublisherError;
pub use service::{Publisher, PublisherConfig};
pub use view::{AppView, LanHostView, TaskView, VmView, app_id};
