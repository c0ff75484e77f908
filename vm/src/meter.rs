//! Metering: every second, each live VM's counters are read through its
//! backend and its uplink's kernel counters, the tunnel bytes counted for
//! it are drained, and all are integrated into the usage the store keeps.
//! A VM whose guest powered off is stopped (and everything it had on the
//! host freed); one whose process died otherwise is handed to recovery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::Exit;
use crate::error::VmError;
use crate::net;
use crate::runtime::{Runtime, now_ms};
use crate::store::VmState;

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
                dead.push((id.clone(), vm.instance.exit()));
                continue;
            }
            let bytes = net::counters(&vm.network);
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
            let cpu_ns = s.cpu_ns.saturating_sub(vm.last_cpu_ns);
            u.cpu_ns += cpu_ns;
            vm.last_cpu_ns = s.cpu_ns;
            if dt > 0.0 {
                self.cpu_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), cpu_ns as f64 / 1e9 / dt);
            }
            u.memory_bytes = s.memory_bytes;
            u.memory_byte_seconds += s.memory_bytes as f64 * dt;
            u.io_read_bytes = u.io_read_bytes.max(s.io_read_bytes);
            u.io_write_bytes = u.io_write_bytes.max(s.io_write_bytes);
            u.disk_read_bytes = u.disk_read_bytes.max(s.disk_read_bytes);
            u.disk_write_bytes = u.disk_write_bytes.max(s.disk_write_bytes);
            u.traffic_bytes += traffic;
            // A counter below its last reading is a new uplink (relaunch).
            let grew = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
            u.net_from_guest_bytes += grew(bytes.from_guest, vm.last_net.from_guest);
            u.net_to_guest_bytes += grew(bytes.to_guest, vm.last_net.to_guest);
            vm.last_net = bytes;
            u.seconds += dt;
            store.put_usage(id, &u, now_ms())?;
        }
        let gone: Vec<_> = dead.iter().filter_map(|(id, _)| live.remove(id)).collect();
        self.cpu_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains_key(id));
        drop(live);
        for vm in gone {
            // Reaps the exited process and frees what the backend set up.
            vm.instance.shutdown(Duration::ZERO).await;
        }
        for (id, exit) in dead {
            let Some(mut r) = self.store().get(&id)? else {
                continue;
            };
            if exit == Some(Exit::Clean) {
                tracing::info!(vm = %id, "the guest powered off; VM stopped");
                r.state = VmState::Stopped;
                self.release(&mut r).await;
                self.store().put(&r)?;
                continue;
            }
            let tail = r
                .process
                .as_ref()
                .map(|p| crate::console::read(&p.serial_log))
                .unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            tracing::warn!(vm = %id, console = %tail.join(" | "), "VM process died");
            self.recover_one(r).await?;
        }
        Ok(())
    }
}
