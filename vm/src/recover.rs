//! Recovery: on start, the store is reconciled with reality — VMs still
//! alive are re-attached through the backend, dead ones with a persistent
//! volume are relaunched, the rest are marked failed.

use std::time::Instant;

use crate::error::VmError;
use crate::runtime::{Live, Runtime};
use crate::store::{VmRow, VmState};

impl Runtime {
    pub(crate) async fn recover(&self) -> Result<(), VmError> {
        let records = self.store().all()?;
        for r in records {
            if matches!(r.state, VmState::Running | VmState::Paused) {
                self.recover_one(r).await?;
            }
        }
        Ok(())
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
            self.live.lock().await.insert(
                id,
                Live {
                    instance,
                    last_cpu_ns,
                    last_sample: Instant::now(),
                },
            );
            return Ok(());
        }
        if r.spec.persistent.is_some() {
            tracing::info!(vm = %id, "relaunching VM with a persistent volume");
            return self.launch(r).await;
        }
        r.state = VmState::Failed;
        if let Some(p) = r.process.take() {
            // Frees what the backend set up (the cgroup) for the dead VM.
            self.backend
                .destroy(&r.spec, &p, std::time::Duration::ZERO)
                .await;
        }
        self.store().put(&r)?;
        Ok(())
    }

    /// Launches `r` through the backend and records the outcome.
    pub(crate) async fn launch(&self, mut r: VmRow) -> Result<(), VmError> {
        let id = r.spec.id.clone();
        let run_dir = self.config.dir.join("vms").join(&id);
        let _ = std::fs::remove_dir_all(&run_dir);
        match self.backend.launch(&r.spec, &run_dir).await {
            Ok(instance) => {
                r.state = VmState::Running;
                r.process = Some(instance.process().clone());
                self.store().put(&r)?;
                self.live.lock().await.insert(
                    id,
                    Live {
                        instance,
                        last_cpu_ns: 0,
                        last_sample: Instant::now(),
                    },
                );
                Ok(())
            }
            Err(e) => {
                r.state = VmState::Failed;
                r.process = None;
                self.store().put(&r)?;
                Err(e)
            }
        }
    }
}
