//! The VM runtime's errors: one variant per failure, each naming the thing
//! and, where there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cores must be between 1 and {max}, not {got}")]
    BadCores { got: u32, max: u32 },
    #[error("mem-mib must be at least {min}, not {got}")]
    TooLittleMemory { got: u64, min: u64 },
    #[error("cpu quota {quota} must be above 0 and at most the {cores} cores")]
    BadQuota { quota: f64, cores: u32 },
    #[error("volume name {0:?} must be 1-64 letters, digits, '-' or '_'")]
    BadVolumeName(String),
    #[error("disk-gib must be 1 to {max}, not {got}")]
    BadVolumeSize { got: u32, max: u32 },
    #[error("scratch-gib must be 1 to {max}, not {got}")]
    BadScratchSize { got: u32, max: u32 },
    #[error(
        "not enough room: the VM wants {want} {what}, {free} free (stop a VM, or raise [provider] limits in config.toml)"
    )]
    NoRoom {
        what: &'static str,
        want: u64,
        free: u64,
    },
    #[error(
        "every uid of [provider] vm_uid_range {range} is taken; widen the range in config.toml"
    )]
    NoUid { range: String },
    #[error(
        "no free /30 left in [provider] guest_subnet {pool} for another VM uplink; widen it in config.toml"
    )]
    NoUplink { pool: String },
    #[error(
        "{path} has SHA-256 {actual}, but its image manifest says {expected}; rebuild the image with `zennet image build`"
    )]
    ImageCorrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("volume {0} is attached to a running VM")]
    VolumeInUse(String),
    #[error("{0} (build it with `zennet image build`)")]
    Image(zennet_images::ImageError),
    #[error(
        "image disks (zennet-spark's and zennet-dask's root disks) need the QEMU backend; \
         this node runs Xen"
    )]
    ImageDisksNeedQemu,
    #[error("authorized key: {0}")]
    BadKey(zennet_images::ImageError),
    #[error("no VM {0}")]
    NoSuchVm(String),
    #[error("no running VM {0}")]
    NotRunning(String),
    #[error("VM {vm} runs under the {recorded} backend; this node runs {running}")]
    OtherBackend {
        vm: String,
        recorded: String,
        running: &'static str,
    },
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program} ({hint}): {source}")]
    Spawn {
        program: String,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    ToolFailed { program: String, stderr: String },
    #[error("VM {vm} did not come up: {reason}; its output: {tail}")]
    NoStart {
        vm: String,
        reason: Box<VmError>,
        tail: String,
    },
    #[error("VM {vm} printed no {marker} within {secs}s (serial log {log})")]
    NotReady {
        vm: String,
        marker: &'static str,
        secs: u64,
        log: PathBuf,
    },
    #[error("QMP socket {path}: {reason}")]
    QmpConnect { path: PathBuf, reason: String },
    #[error("QMP {command}: {reason}")]
    Qmp {
        command: &'static str,
        reason: String,
    },
    #[error("QMP {command}: no answer within 10 s")]
    QmpTimeout { command: &'static str },
    #[error(
        "cannot {action} cgroup {group}: {reason} (the node must run as root on a host with cgroups mounted)"
    )]
    Cgroup {
        group: String,
        action: &'static str,
        reason: String,
    },
    #[error("VM store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("VM store: the record of VM {vm} does not parse ({source}); the database is damaged")]
    Corrupt {
        vm: String,
        source: serde_json::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl VmError {
    /// A refusal of the request itself (the caller can fix it), as opposed
    /// to a failure of the host.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            VmError::BadCores { .. }
                | VmError::TooLittleMemory { .. }
                | VmError::BadQuota { .. }
                | VmError::BadVolumeName(_)
                | VmError::BadVolumeSize { .. }
                | VmError::BadScratchSize { .. }
                | VmError::NoRoom { .. }
                | VmError::VolumeInUse(_)
                | VmError::Image(_)
                | VmError::BadKey(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, VmError::NoSuchVm(_) | VmError::NotRunning(_))
    }
}
