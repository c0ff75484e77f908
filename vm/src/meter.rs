//! Metering: every second, each live VM's counters are read through its
//! backend, the tunnel bytes counted for it are drained, and both are
//! integrated into the usage the store keeps. A VM whose process died is
//! handed to recovery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::VmError;
use crate::runtime::{Runtime, now_ms};

impl Runtime {
    /// Samples every live VM once a second, for as long as the runtime runs.
    pub async fn meter(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = self.sample_all().await {
                tracing::warn!(error = %e, "metering failed");
            }
        }
    }

    /// One metering pass over every live VM.
    pub async fn sample_all(&self) -> Result<(), VmError> {
        let mut dead = Vec::new();
        let mut live = self.live.lock().await;
        for (id, vm) in live.iter_mut() {
            if !vm.instance.is_alive() {
                dead.push(id.clone());
                continue;
            }
            let s = vm.instance.sample().await?;
            let traffic = self
                .traffic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .map_or(0, |c| c.swap(0, Ordering::Relaxed));
            let now = Instant::now();
            let dt = now.duration_since(vm.last_sample).as_secs_f64();
            vm.last_sample = now;
            let store = self.store();
            let mut u = store.usage(id)?;
            u.cpu_ns += s.cpu_ns.saturating_sub(vm.last_cpu_ns);
            vm.last_cpu_ns = s.cpu_ns;
            u.memory_bytes = s.memory_bytes;
            u.memory_byte_seconds += s.memory_bytes as f64 * dt;
            u.io_read_bytes = u.io_read_bytes.max(s.io_read_bytes);
            u.io_write_bytes = u.io_write_bytes.max(s.io_write_bytes);
            u.disk_read_bytes = u.disk_read_bytes.max(s.disk_read_bytes);
            u.disk_write_bytes = u.disk_write_bytes.max(s.disk_write_bytes);
            u.traffic_bytes += traffic;
            u.seconds += dt;
            store.put_usage(id, &u, now_ms())?;
        }
        let gone: Vec<_> = dead.iter().filter_map(|id| live.remove(id)).collect();
        drop(live);
        for vm in gone {
            // Reaps the exited process and frees what the backend set up.
            vm.instance.shutdown(Duration::ZERO).await;
        }
        for id in dead {
            tracing::warn!(vm = %id, "VM process died");
            let record = self.store().get(&id)?;
            if let Some(r) = record {
                self.recover_one(r).await?;
            }
        }
        Ok(())
    }
}
