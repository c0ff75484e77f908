//! What the provider measures as it runs, for the node's `/metrics`: how
//! long publishers take to answer a usage report with a voucher, and how
//! often a contract's tunnel had to be dialled again. Everything else the
//! metrics show is read from the stores at scrape time.
//!
//! The metric types are the `prometheus` crate's (TiKV's client, which
//! writes the text format Prometheus and `promtool` read); they are
//! handles onto shared values, so the node's registry reads these.

use prometheus::{Histogram, HistogramOpts, IntCounter};

#[derive(Clone)]
pub struct ProviderStats {
    /// Seconds from a usage report to the next voucher on that contract.
    pub voucher_latency: Histogram,
    /// Sessions joined again after a contract's link was lost.
    pub tunnel_reconnects: IntCounter,
    /// Vouchers accepted (new, checked, stored).
    pub vouchers: IntCounter,
}

impl Default for ProviderStats {
    fn default() -> ProviderStats {
        // Vouchers answer reports sent every payout interval (seconds to
        // minutes); 10 ms to 2 min covers a local and a distant publisher,
        // and a later one lands in +Inf.
        let latency = HistogramOpts::new(
            "provider_voucher_latency_seconds",
            "Time from a usage report to the publisher's next voucher",
        )
        .buckets(vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ]);
        ProviderStats {
            voucher_latency: Histogram::with_opts(latency).expect("valid histogram options"),
            tunnel_reconnects: IntCounter::new(
                "provider_tunnel_reconnects_total",
                "Publisher sessions joined again after a contract's link was lost",
            )
            .expect("valid counter options"),
            vouchers: IntCounter::new(
                "provider_vouchers_total",
                "Vouchers accepted from publishers",
            )
            .expect("valid counter options"),
        }
    }
}

impl std::fmt::Debug for ProviderStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderStats")
            .field("vouchers", &self.vouchers.get())
            .field("tunnel_reconnects", &self.tunnel_reconnects.get())
            .field(
                "voucher_latency_count",
                &self.voucher_latency.get_sample_count(),
            )
            .finish()
    }
}
