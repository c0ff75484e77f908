//! Usage counters and the one price formula. Both sides compute it the same
//! way, in integers, so a report's `accrued` can be checked exactly.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use zennet_chain::Amount;
use zennet_chain::task::Rates;

/// Counters since the contract started. Each report repeats the totals,
/// so a lost report costs nothing.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Usage {
    /// Wall time the VM has been metered.
    pub wall_ms: u64,
    /// CPU time from the VM's cgroup.
    pub cpu_ms: u64,
    /// Guest memory held × seconds.
    pub memory_mib_secs: u64,
    /// Persistent volume size × seconds (0 when storage is not paid).
    pub storage_gib_secs: u64,
    /// Bytes carried by the tunnel's port forward.
    pub traffic_bytes: u64,
}

/// What `usage` costs at `rates` on a machine scoring `compute_per_core`
/// compute units per core: CPU-seconds × score is compute-unit-seconds.
pub fn price(rates: &Rates, compute_per_core: u32, usage: &Usage) -> Amount {
    let u = |v: u64| v as u128;
    let compute =
        u(usage.cpu_ms) * u(compute_per_core as u64) * rates.per_compute_unit_second / 1000;
    let memory = u(usage.memory_mib_secs) * rates.per_memory_gib_hour / (1024 * 3600);
    let storage = u(usage.storage_gib_secs) * rates.per_storage_gib_hour / 3600;
    let traffic = u(usage.traffic_bytes) * rates.per_traffic_gb / 1_000_000_000;
    let base = u(usage.wall_ms) * rates.base_per_second / 1000;
    compute + memory + storage + traffic + base
}

/// The most `price` can reach per second for a VM of `cores` cores and
/// `memory_mib`, with `storage_gib` of paid volume — the publisher's own
/// bound on what a report may claim.
pub fn max_price_per_sec(
    rates: &Rates,
    compute_per_core: u32,
    cores: u32,
    memory_mib: u64,
    storage_gib: u32,
) -> Amount {
    price(
        rates,
        compute_per_core,
        &Usage {
            wall_ms: 1000,
            cpu_ms: 1000 * cores as u64,
            memory_mib_secs: memory_mib,
            storage_gib_secs: storage_gib as u64,
            traffic_bytes: 0,
        },
    ) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_adds_every_rate() {
        let rates = Rates {
            per_compute_unit_second: 1000,
            per_memory_gib_hour: 3_600_000,
            per_storage_gib_hour: 3600,
            per_traffic_gb: 1_000_000_000,
            base_per_second: 10,
        };
        let usage = Usage {
            wall_ms: 2000,
            cpu_ms: 1500,
            memory_mib_secs: 1024 * 2,
            storage_gib_secs: 2,
            traffic_bytes: 5,
        };
        // compute 1.5 s × 4 CU × 1000 + memory 2 GiB·s × 1000/s + storage 2 + traffic 5 + base 20
        assert_eq!(price(&rates, 4, &usage), 6000 + 2000 + 2 + 5 + 20);
        assert!(
            max_price_per_sec(&rates, 4, 1, 1024, 0)
                >= price(
                    &rates,
                    4,
                    &Usage {
                        wall_ms: 1000,
                        cpu_ms: 1000,
                        memory_mib_secs: 1024,
                        ..Default::default()
                    }
                )
        );
    }
}
