//! Zennet VM images — not built yet.
//!
//! This crate will hold the recipes that build the default thin images from
//! Debian packages, their guest init and manifests (see DESIGN.md, "Images").
