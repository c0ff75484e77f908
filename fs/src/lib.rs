//! Zennet's file network (ZenFS): content-addressed parts, a BitTorrent
//! v1 metainfo whose info-hash is the file id, a store with a quota,
//! encryption, discovery by Kademlia provider records, a paid
//! multi-source downloader with resume that also takes parts from stock
//! BitTorrent seeders and web seeds, HTTP serving, and the BitTorrent
//! peer wire and a tracker for stock clients.
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
//! - `download`: one session per source of parts (Zennet seeders, stock
//!   BitTorrent peers, web seeds), verification, payment per part.
//! - [`merkle`]: the SHA-256 tree over 16 KiB leaves (BEP 52's layout)
//!   that proofs of storage are checked against; proofs of one leaf.
//! - [`pos`]: proof of storage: challenges drawn from a block hash, the
//!   `/zennet/fs-pos/1` frames, and why this scheme (Sia's, not the RFC's
//!   salted bit).
//! - [`replica`]: the replica contract's decisions as pure state machines
//!   (the owner's challenge, pass/fail, pay, release; the storage node's
//!   unpaid grace), tested in virtual time.
//! - [`storage`]: paid replicas, both sides: storage tasks on chain, the
//!   owner's challenges and payments, the storage node's policy
//!   (`[fs.store]`), fetch, pinning and answers.
//! - [`service`]: [`Fs`], what the node runs and its API calls.
//! - [`http`]: `GET /file/{id}` and `/file/{id}/chunk/{n}` for curl,
//!   browsers and web seeding; `/metainfo/{id}`; CORS for the app.
//! - [`bittorrent`]: the peer wire for stock clients (serving and
//!   fetching), the tracker on the HTTP listener, `.torrent` files and
//!   magnet links.
//! - `webseed`: a BEP 19 web seed as a source of parts for `download`.
//! - [`app`]: the browser app at `/app` (HTML and JS in the binary) that
//!   fetches, verifies, decrypts and saves a file from several nodes.
//! - [`api`]: request and view types of the node's API.
//! - [`error`]: one error enum per layer.
//!
//! Without the default `node` feature only the formats and the store are
//! built (no libp2p, HTTP or runtime): what the fuzz targets need,
//! `bittorrent::wire` and `bittorrent::tracker` included.
//!
//! Crates: `serde_bencode` encodes canonically (sorted keys); metainfo
//! from peers is hashed as received and must re-encode to the same bytes,
//! so the id is right even for input the crate would re-encode
//! differently. `sha1`/`sha2` and `aes-gcm` are RustCrypto's, the
//! versions already in the lock file; `libp2p-stream` (through `net`)
//! gives the part protocol plain streams, framed here with a fixed binary
//! layout rather than a request-response codec, so a session keeps many
//! parts in flight on one stream and frames are capped per kind.
//! `tower-http`'s CORS layer (already in the tree through reqwest) answers
//! preflights and sets the headers by the spec, rather than by hand.

pub mod api;
#[cfg(feature = "node")]
pub mod app;
pub mod bitfield;
pub mod bittorrent;
#[cfg(feature = "node")]
pub mod channels;
pub mod crypt;
#[cfg(feature = "node")]
mod download;
pub mod error;
#[cfg(feature = "node")]
pub mod http;
pub mod merkle;
pub mod metainfo;
pub mod payment;
pub mod pos;
pub mod replica;
pub mod schedule;
#[cfg(feature = "node")]
mod seed;
#[cfg(feature = "node")]
pub mod service;
#[cfg(feature = "node")]
pub mod storage;
pub mod store;
#[cfg(feature = "node")]
mod webseed;
pub mod wire;

pub use bitfield::Bitfield;
pub use error::{
    CryptError, FsError, MetainfoError, PaymentError, PeerWireError, StorageError, StoreError,
    TrackerError, WireError,
};
pub use metainfo::{FileId, Metainfo, PIECE_LEN};
#[cfg(feature = "node")]
pub use service::{Fs, FsConfig, HttpMode};
pub use store::Store;
