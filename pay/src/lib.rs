//! Payment channels off chain, for any service: the VM market pays VM time
//! through it, the file network will pay file parts through it. Only the
//! *bound* — how much may be owed so far — is service-specific, and the
//! caller supplies it.
//!
//! # Layout
//! * [`payer`]: [`Payer`] — open a channel (or reuse one to the same payee
//!   and top it up), sign the next voucher for no more than the caller's
//!   bound and the deposit, settle, reclaim.
//! * [`payee`]: [`Payee`] — admit a channel (on chain, from the expected
//!   payer, to us), check each voucher ([`check`]) and persist it before it
//!   counts, claim when the payer settles or expiry nears, close.
//! * [`check`]: the payee's voucher rules as one pure function with one
//!   error variant per rule ([`VoucherRejected`]).
//! * [`store`]: the [`PayStore`] trait, the records it keeps
//!   ([`Outgoing`] for the payer, [`Incoming`] for the payee) and an
//!   in-memory store for tests; [`sqlite`]: the SQLite store nodes use.
//! * [`error`]: the error type, [`PayError`].
//!
//! Both sides act on chain through [`zennet_chain::Ledger`] only.
//!
//! # One channel per (payer, payee), or one per job
//! A channel costs two transactions (open, close) and a deposit locked
//! until it ends, so a service that pays the same peer for many small
//! things — a downloader paying each seeder per verified part — keeps ONE
//! channel per (payer, payee) and reuses it across files and jobs:
//! [`Payer::channel_for`] returns the open channel to that payee when its
//! unspent deposit and expiry cover what is needed, tops it up when the
//! deposit runs low, and opens one only when there is none. Vouchers are
//! cumulative over the channel's life, so the bound is cumulative too:
//! what was paid on the channel before plus, for files, price × parts
//! verified since (the caller keeps that count).
//!
//! The VM market opens one channel per contract instead ([`Payer::open`]):
//! a contract is long, its deposit is sized to its lease, its end is the
//! channel's close (which refunds the rest at once), and a node that
//! vanishes strands only that contract's deposit until expiry. The types
//! here assume neither: a channel is (payer, payee, deposit, expiry).
//!
//! Persist before it counts: the payer records a voucher's seq and
//! cumulative before the voucher leaves (a restart never reuses a seq);
//! the payee stores a voucher before the caller may treat it as paid (a
//! `kill -9` never loses a voucher it acted on).

pub mod check;
pub mod error;
pub mod payee;
pub mod payer;
pub mod sqlite;
pub mod store;

pub use check::{VoucherRejected, check_voucher};
pub use error::PayError;
pub use payee::{Payee, Received};
pub use payer::Payer;
pub use sqlite::SqliteStore;
pub use store::{Incoming, MemoryStore, Outgoing, PayStore, StoreError};
