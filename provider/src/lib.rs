//! The provider side of the VM market: which tasks this node takes, and
//! each contract from acceptance to the channel's close.
//!
//! # Layout
//! * [`market`]: the operator's policy — [`market::evaluate`] one task,
//!   [`market::choose`] among offers (knapsack by profit per bottleneck
//!   resource, spread over publishers).
//! * [`service`]: [`Provider`] — the market loop, accept/reject, the views.
//! * [`images`]: images a task names by file id — when to fetch one (once,
//!   before accepting, never again after a failure), through the node's
//!   [`images::ImageSource`].
//! * [`session`]: one contract's runner and its session loop over the
//!   tunnel (`zennet-tunnel`), the VM (`zennet-vm`) and the payee
//!   (`zennet-pay`).
//! * [`contract`]: the contract's [`Phase`] and the session's payment clock.
//! * [`store`]: `contracts.db` — [`store::ContractRow`] and the rejected
//!   tasks.
//! * [`prices`]: [`prices::PriceSuggestion`] — `[market]` minimums from
//!   what other providers took on chain, and the income they would bring.
//! * [`stats`]: [`ProviderStats`] — voucher latency and tunnel reconnects,
//!   measured live for the node's `/metrics`.
//! * [`view`]: what the API shows ([`ContractView`], [`TaskVerdict`]).
//! * [`error`]: the error type, [`ProviderError`].
//!
//! The provider never depends on the publisher crate: the protocol both
//! speak is `zennet-proto`.

pub mod contract;
pub mod error;
pub mod images;
pub mod market;
pub mod prices;
pub mod service;
pub mod session;
pub mod stats;
pub mod store;
pub mod view;

pub use contract::Phase;
pub use error::ProviderError;
pub use service::{Provider, ProviderConfig};
pub use stats::ProviderStats;
pub use view::{ContractView, TaskVerdict};
