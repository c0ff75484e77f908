//! Zennet file network — not built yet.
//!
//! This crate will hold content-addressed parts, torrent-compatible
//! metainfo, paid transfers, proof of storage and BitTorrent/HTTP serving
//! (see DESIGN.md, "File network").
