//! Zennet provider agent — not built yet.
//!
//! This crate will hold the provider side: hardware benchmark, market
//! policy, the QEMU and Xen VM runtimes, cgroups, metering, the payee and
//! recovery (see DESIGN.md, "Provider agent").
