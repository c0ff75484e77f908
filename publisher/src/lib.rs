//! Zennet publisher — not built yet.
//!
//! This crate will hold the publisher side: task announcements, the SSH
//! server nodes dial into, VM handles and the payer (see DESIGN.md,
//! "Publisher").
