//! Recovery: on start, the store is reconciled with reality — VMs still
//! alive are re-attached through the backend, dead ones with a persistent
//! volume are relaunched, the rest are marked failed — and whatever a VM
//! that no longer runs still has on the host (run directory, network
//! namespace, uplink: say the node was killed half-way through a start
//! or a stop) is removed.

use std::time::Instant;

use crate::error::VmError;
use crate::net::{self, NetBytes};
use crate::runtime::{Live, Proxy, Runtime};
use crate::spec::NetworkSpec;
use crate::store::{VmRow, VmState};

impl Runtime {
    pub(crate) async fn recover(&self) -> Result<(), VmError> {
        let records = self.store().all()?;
        for mut r in records {
            if matches!(r.state, VmState::Running | VmState::Paused) {
                self.recover_one(r).await?;
            } else if self.has_leftovers(&r) {
                tracing::info!(vm = %r.spec.id, "removing what a stopped VM left on the host");
                self.release(&mut r).await;
                self.store().put(&r)?;
            }
        }
        Ok(())
    }

    fn has_leftovers(&self, r: &VmRow) -> bool {
        r.process.is_some()
            || self.run_dir(&r.spec.id).exists()
            || r.spec.network.netns().is_some_and(net::exists)
    }

    pub(crate) async fn recover_one(&self, mut r: VmRow) -> Result<(), VmError> {
        let id = r.spec.id.clone();
        if r.backend != self.backend.name() {
            tracing::warn!(vm = %id, recorded = %r.backend, "VM of another backend; leaving it alone");
            r.state = VmState::Failed;
            self.store().put(&r)?;
            return Ok(());
        }
        if let Some(p) = r.process.clone()
            && let Some(instance) = self.backend.attach(&r.spec, &p).await?
        {
            tracing::info!(vm = %id, pid = p.pid, "re-attached running VM");
            let last_cpu_ns = instance.sample().await.map(|s| s.cpu_ns).unwrap_or(0);
            let proxy = Proxy::start(&r.spec).await;
            self.live.lock().await.insert(
                id,
                Live {
                    instance,
                    last_cpu_ns,
                    last_net: net::counters(&r.spec.network),
                    last_sample: Instant::now(),
                    network: r.spec.network.clone(),
                    _proxy: proxy,
                },
            );
            return Ok(());
        }
        if let Some(p) = r.process.clone() {
            // Frees what the backend set up (the cgroup) for the dead VM.
            self.backend
                .destroy(&r.spec, &p, std::time::Duration::ZERO)
                .await;
        }
        if r.spec.persistent.is_some() {
            tracing::info!(vm = %id, "relaunching VM with a persistent volume");
            self.release(&mut r).await;
            if r.spec.network == NetworkSpec::UserNat && self.backend.uses_netns() {
                // A record of an earlier node: the guest moves behind the
                // operator's network policy.
                let (policy, vm) = (self.config.network.clone(), id.clone());
                r.spec.network = tokio::task::spawn_blocking(move || {
                    net::plan(&policy, &vm, policy.mode, policy.bandwidth_mbps)
                })
                .await
                .map_err(|e| VmError::Io(std::io::Error::other(e)))??;
            }
            return self.launch(r).await;
        }
        r.state = VmState::Failed;
        self.release(&mut r).await;
        self.store().put(&r)?;
        Ok(())
    }

    /// Launches `r` through the backend and records the outcome.
    pub(crate) async fn launch(&self, mut r: VmRow) -> Result<(), VmError> {
        let id = r.spec.id.clone();
        let run_dir = self.run_dir(&id);
        let _ = std::fs::remove_dir_all(&run_dir);
        let (network, pool) = (r.spec.network.clone(), self.config.network.pool);
        let prepared = tokio::task::spawn_blocking(move || net::setup(&network, &pool))
            .await
            .map_err(|e| VmError::Io(std::io::Error::other(e)))
            .and_then(|r| r);
        let launched = match prepared {
            Ok(()) => self.backend.launch(&r.spec, &run_dir).await,
            Err(e) => Err(e),
        };
        match launched {
            Ok(instance) => {
                r.state = VmState::Running;
                r.process = Some(instance.process().clone());
                self.store().put(&r)?;
                let proxy = Proxy::start(&r.spec).await;
                self.live.lock().await.insert(
                    id,
                    Live {
                        instance,
                        last_cpu_ns: 0,
                        last_net: NetBytes::default(),
                        last_sample: Instant::now(),
                        network: r.spec.network.clone(),
                        _proxy: proxy,
                    },
                );
                Ok(())
            }
            Err(e) => {
                r.state = VmState::Failed;
                r.process = None;
                self.release(&mut r).await;
                self.store().put(&r)?;
                Err(e)
            }
        }
    }
}
