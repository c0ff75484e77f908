//! Zennet's file network, part 1 (ZenFS).
//!
//! # Layout
//! - [`metainfo`]: the BEP 3 info dictionary; a file's id is its info-hash.
//! - [`bitfield`]: which parts a node holds (BitTorrent layout).
//! - [`crypt`]: AES-256-GCM per part, keys derived from the chain key.
//! - [`store`]: parts on disk by SHA-1, SQLite index, quota, export.
//! - [`error`]: one error enum per layer.

pub mod bitfield;
pub mod crypt;
pub mod error;
pub mod metainfo;
pub mod store;
pub mod wire;

pub use bitfield::Bitfield;
pub use error::{CryptError, FsError, MetainfoError, StoreError, WireError};
pub use metainfo::{FileId, Metainfo, PIECE_LEN};
pub use store::Store;
