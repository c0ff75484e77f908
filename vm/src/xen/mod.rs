//! The Xen backend: an `xl` domain configuration for the same VM spec the
//! QEMU backend runs (PVH guest, direct kernel boot), and the `xl` calls
//! that create, pause, resume, read and destroy it.
//!
//! Not run on Xen: this machine has no Xen hypervisor (so `xl` is not in
//! the host packages setup installs; a Xen dom0 has it with Xen). The
//! configuration generator and the `xl list` parser are unit-tested; the
//! rest only shells out to `xl`, and fails with a clear error where it is
//! absent. The guest's console is read from the log `xenconsoled` writes
//! when started with `--log=guest` (`/var/log/xen/console/guest-NAME.log`).
//! Differences from QEMU that a Xen host must provide: networking goes
//! through a bridge (`xenbr0`) rather than user-mode NAT with a host
//! forward, and CPU limits use the credit scheduler's cap instead of a
//! cgroup quota.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Backend, Instance, Sample};
use crate::error::VmError;
use crate::spec::{Process, VmSpec};

/// Where `xenconsoled --log=guest` writes each guest's console.
const CONSOLE_LOG_DIR: &str = "/var/log/xen/console";

/// [`Backend`] over Xen's `xl` toolstack.
pub struct XenBackend {
    /// The bridge guests' network interfaces join.
    pub bridge: String,
}

#[async_trait]
impl Backend for XenBackend {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn accelerator(&self) -> &'static str {
        "xen"
    }

    /// Xen guests sit on the operator's bridge (dom0's networking), not in
    /// a namespace of the node's.
    fn uses_netns(&self) -> bool {
        false
    }

    async fn launch(&self, spec: &VmSpec, run_dir: &Path) -> Result<Box<dyn Instance>, VmError> {
        // Xen's PV disks carry no serial, by which the guest finds them.
        if !spec.image_disks.is_empty() {
            return Err(VmError::ImageDisksNeedQemu);
        }
        std::fs::create_dir_all(run_dir)?;
        let scratch = run_dir.join("scratch.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&scratch)
            .arg(format!("{}G", spec.scratch_gib))
            .output()
            .map_err(|source| VmError::Spawn {
                program: "qemu-img".into(),
                hint: "install qemu-utils",
                source,
            })?;
        if !out.status.success() {
            return Err(VmError::ToolFailed {
                program: "qemu-img create".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let config_file = run_dir.join("xl.cfg");
        std::fs::write(&config_file, xl_config(spec, &scratch, &self.bridge))?;
        create(&config_file)?;
        let process = Process {
            pid: domid(&spec.id)?.unwrap_or(0),
            run_dir: run_dir.to_path_buf(),
            control: config_file,
            serial_log: console_log(&spec.id),
            serial_socket: None,
            lan_socket: None,
        };
        Ok(Box::new(XenDomain {
            id: spec.id.clone(),
            process,
        }))
    }

    async fn attach(
        &self,
        spec: &VmSpec,
        process: &Process,
    ) -> Result<Option<Box<dyn Instance>>, VmError> {
        Ok(domid(&spec.id)?.map(|_| {
            Box::new(XenDomain {
                id: spec.id.clone(),
                process: process.clone(),
            }) as Box<dyn Instance>
        }))
    }

    async fn destroy(&self, spec: &VmSpec, _process: &Process, _grace: Duration) {
        let _ = destroy(&spec.id);
    }
}

/// A running Xen domain.
struct XenDomain {
    id: String,
    process: Process,
}

#[async_trait]
impl Instance for XenDomain {
    fn process(&self) -> &Process {
        &self.process
    }
    fn is_alive(&self) -> bool {
        domid(&self.id).is_ok_and(|d| d.is_some())
    }
    async fn pause(&self) -> Result<(), VmError> {
        xl(&["pause", &domain_name(&self.id)]).map(drop)
    }
    async fn resume(&self) -> Result<(), VmError> {
        xl(&["unpause", &domain_name(&self.id)]).map(drop)
    }
    async fn sample(&self) -> Result<Sample, VmError> {
        let out = xl(&["list", &domain_name(&self.id)])?;
        let (mem_mib, cpu_secs) = parse_xl_list(&out).ok_or_else(|| VmError::ToolFailed {
            program: "xl list".into(),
            stderr: format!("unexpected output: {out:?}"),
        })?;
        Ok(Sample {
            cpu_ns: (cpu_secs * 1e9) as u64,
            memory_bytes: mem_mib << 20,
            ..Sample::default()
        })
    }
    async fn shutdown(&self, grace: Duration) {
        let _ = xl(&["shutdown", &domain_name(&self.id)]);
        let started = std::time::Instant::now();
        while self.is_alive() && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.is_alive() {
            let _ = destroy(&self.id);
        }
    }
    fn kill(&self) {
        let _ = destroy(&self.id);
    }
}

fn domain_name(vm_id: &str) -> String {
    format!("zennet-{vm_id}")
}

fn console_log(vm_id: &str) -> PathBuf {
    Path::new(CONSOLE_LOG_DIR).join(format!("guest-{}.log", domain_name(vm_id)))
}

/// The domain's id, or `None` when no such domain runs.
fn domid(vm_id: &str) -> Result<Option<u32>, VmError> {
    match xl(&["domid", &domain_name(vm_id)]) {
        Ok(out) => Ok(out.trim().parse().ok()),
        Err(VmError::ToolFailed { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// (memory MiB, CPU seconds) from `xl list NAME`: a header line, then
/// `Name ID Mem VCPUs State Time(s)`.
fn parse_xl_list(out: &str) -> Option<(u64, f64)> {
    let line = out.lines().nth(1)?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    let n = cols.len();
    if n < 6 {
        return None;
    }
    Some((cols[n - 4].parse().ok()?, cols[n - 1].parse().ok()?))
}

/// The `xl.cfg` text for `spec`. Disks are given as paths the Xen host
/// can open: the scratch disk and, if any, the persistent volume.
pub fn xl_config(spec: &VmSpec, scratch: &Path, bridge: &str) -> String {
    let mut disks = vec![format!(
        "'format=qcow2,vdev=xvda,access=rw,target={}'",
        scratch.display()
    )];
    if let Some((volume, _)) = &spec.persistent {
        disks.push(format!(
            "'format=raw,vdev=xvdb,access=rw,target={}'",
            volume.display()
        ));
    }
    // The credit scheduler's cap is in percent of one CPU.
    let cap = (spec.cpu_quota * 100.0).round() as u64;
    let mut cfg = String::new();
    let mut line = |k: &str, v: String| cfg.push_str(&format!("{k} = {v}\n"));
    line("name", quote(&format!("zennet-{}", spec.id)));
    line("type", quote("pvh"));
    line("kernel", quote(&spec.kernel.display().to_string()));
    line("ramdisk", quote(&spec.initramfs.display().to_string()));
    line("cmdline", quote(&spec.kernel_args.join(" ")));
    line("vcpus", spec.cores.to_string());
    line("maxvcpus", spec.cores.to_string());
    line("memory", spec.mem_mib.to_string());
    line("maxmem", spec.mem_mib.to_string());
    line(
        "cpu_weight",
        ((spec.cpu_quota * 256.0).round() as u64).max(1).to_string(),
    );
    line("cpu_cap", cap.to_string());
    line("disk", format!("[ {} ]", disks.join(", ")));
    line("vif", format!("[ 'bridge={bridge}' ]"));
    line("on_poweroff", quote("destroy"));
    line("on_reboot", quote("restart"));
    line("on_crash", quote("destroy"));
    cfg
}

/// Starts the domain described by `config_file` (`xl create`).
pub fn create(config_file: &Path) -> Result<(), VmError> {
    xl(&["create", &config_file.display().to_string()]).map(drop)
}

/// Stops the domain of `vm_id` at once (`xl destroy`).
pub fn destroy(vm_id: &str) -> Result<(), VmError> {
    xl(&["destroy", &domain_name(vm_id)]).map(drop)
}

/// Runs `xl ARGS`; its stdout.
fn xl(args: &[&str]) -> Result<String, VmError> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|source| VmError::Spawn {
            program: "xl".into(),
            hint: "is this a Xen dom0?",
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::ToolFailed {
            program: format!("xl {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_for_a_known_spec() {
        let spec = VmSpec {
            id: "abc123".into(),
            cores: 2,
            cpu_quota: 1.5,
            mem_mib: 512,
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio.gz".into(),
            kernel_sha256: None,
            initramfs_sha256: None,
            image_disks: Vec::new(),
            kernel_args: vec!["console=hvc0".into(), "zennet.authorized_key=QUJD".into()],
            scratch_gib: 2,
            persistent: Some(("/vol/data.img".into(), 4)),
            ssh_port: 2222,
            network: Default::default(),
            run_as: None,
        };
        let cfg = xl_config(&spec, Path::new("/vm/scratch.qcow2"), "xenbr0");
        assert_eq!(
            cfg,
            "name = 'zennet-abc123'\n\
             type = 'pvh'\n\
             kernel = '/img/vmlinux'\n\
             ramdisk = '/img/initramfs.cpio.gz'\n\
             cmdline = 'console=hvc0 zennet.authorized_key=QUJD'\n\
             vcpus = 2\n\
             maxvcpus = 2\n\
             memory = 512\n\
             maxmem = 512\n\
             cpu_weight = 384\n\
             cpu_cap = 150\n\
             disk = [ 'format=qcow2,vdev=xvda,access=rw,target=/vm/scratch.qcow2', 'format=raw,vdev=xvdb,access=rw,target=/vol/data.img' ]\n\
             vif = [ 'bridge=xenbr0' ]\n\
             on_poweroff = 'destroy'\n\
             on_reboot = 'restart'\n\
             on_crash = 'destroy'\n"
        );
    }

    #[test]
    fn xl_list_gives_memory_and_cpu_time() {
        let out = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                   zennet-abc123                                7   512     2     -b----      12.5\n";
        assert_eq!(parse_xl_list(out), Some((512, 12.5)));
        assert_eq!(parse_xl_list("Name ID Mem VCPUs State Time(s)\n"), None);
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quote("a'b"), "'a\\'b'");
    }
}
