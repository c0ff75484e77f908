//! The Xen backend: an `xl` domain configuration for the same VM spec the
//! QEMU backend runs (PVH guest, direct kernel boot), and the `xl` calls
//! that create and destroy it.
//!
//! Not run on Xen: this machine has no Xen hypervisor. The configuration
//! generator is unit-tested against a known spec; `create`/`destroy` only
//! shell out to `xl`, and fail with a clear error where it is absent.
//! Differences from QEMU that a Xen host must provide: networking goes
//! through a bridge (`xenbr0`) rather than user-mode NAT with a host
//! forward, and CPU limits use the credit scheduler's cap instead of a
//! cgroup quota.

use std::path::Path;
use std::process::Command;

use crate::AgentError;
use crate::qemu::VmSpec;

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
pub fn create(config_file: &Path) -> Result<(), AgentError> {
    xl(&["create", &config_file.display().to_string()])
}

/// Stops the domain of `vm_id` at once (`xl destroy`).
pub fn destroy(vm_id: &str) -> Result<(), AgentError> {
    xl(&["destroy", &format!("zennet-{vm_id}")])
}

fn xl(args: &[&str]) -> Result<(), AgentError> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|e| AgentError::Launch(format!("cannot run xl (is this a Xen dom0?): {e}")))?;
    if !out.status.success() {
        return Err(AgentError::Launch(format!(
            "xl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
            kernel_args: vec!["console=hvc0".into(), "zennet.authorized_key=QUJD".into()],
            scratch_gib: 2,
            persistent: Some(("/vol/data.img".into(), 4)),
            ssh_port: 2222,
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
    fn quotes_are_escaped() {
        assert_eq!(quote("a'b"), "'a\\'b'");
    }
}
