//! Zennet's file network, part 1 (ZenFS): content-addressed parts, a
//! BitTorrent v1 metainfo whose info-hash is the file id, a store with a
//! quota, encryption, discovery by Kademlia provider records, a paid
//! multi-source downloader with resume, and HTTP serving.
//!
//! # Layout
//! - [`metainfo`]: the BEP 3 info dictionary; a file's id is its info-hash.
//! - [`bitfield`]: which parts a node holds (BitTorrent layout).
//! - [`crypt`]: AES-256-GCM per part, file keys derived from the chain key.
//! - [`store`]: parts on disk by SHA-1, SQLite index, dedup, quota, export.
//! - [`wire`]: the part protocol's frames, size-checked before reading.
//! - [`schedule`]: which part to ask which seeder for (pure, virtual time).
//! - [`payment`]: the payment seam (payer per seeder, payee) and accounts.
//! - [`channels`]: that seam over the `pay` crate's channels.
//! - `seed`: the part protocol's server side, credit and cut-off.
//! - `download`: sessions per seeder, verification, payment per part.
//! - [`service`]: [`Fs`], what the node runs and its API calls.
//! - [`http`]: `GET /file/{id}` and `/file/{id}/chunk/{n}` for curl,
//!   browsers and web seeding.
//! - [`api`]: request and view types of the node's API.
//! - [`error`]: one error enum per layer.
//!
//! Without the default `node` feature only the formats and the store are
//! built (no libp2p, HTTP or runtime): what the fuzz targets need.
//!
//! Crates: `serde_bencode` encodes canonically (sorted keys); metainfo
//! from peers is hashed as received and must re-encode to the same bytes,
//! so the id is right even for input the crate would re-encode
//! differently. `sha1`/`sha2` and `aes-gcm` are RustCrypto's, the
//! versions already in the lock file; `libp2p-stream` (through `net`)
//! gives the part protocol plain streams, framed here with a fixed binary
//! layout rather than a request-response codec, so a session keeps many
//! parts in flight on one stream and frames are capped per kind.

pub mod api;
pub mod bitfield;
#[cfg(feature = "node")]
pub mod channels;
pub mod crypt;
#[cfg(feature = "node")]
mod download;
pub mod error;
#[cfg(feature = "node")]
pub mod http;
pub mod metainfo;
pub mod payment;
pub mod schedule;
#[cfg(feature = "node")]
mod seed;
#[cfg(feature = "node")]
pub mod service;
pub mod store;
pub mod wire;

pub use bitfield::Bitfield;
pub use error::{CryptError, FsError, MetainfoError, PaymentError, StoreError, WireError};
pub use metainfo::{FileId, Metainfo, PIECE_LEN};
#[cfg(feature = "node")]
pub use service::{Fs, FsConfig, HttpMode};
pub use store::Store;
