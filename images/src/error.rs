//! The one error type of the crate. Every message names the thing that went
//! wrong and, where there is one, the fix.

use std::io;
use std::path::PathBuf;

/// Why building, loading or booting an image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error(
        "cannot run `{program}`: {source}; image builds need Debian's apt, dpkg and e2fsprogs \
         tools (install the packages listed in images/HOST-PACKAGES)"
    )]
    ToolMissing {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error(
        "apt knows no installable version of package `{package}`; run `apt-get update` \
         and check the name with `apt-cache policy {package}`"
    )]
    PackageUnknown { package: String },

    #[error(
        "kernel package `{package}` ships no /boot/vmlinuz and depends on no linux-image \
         package; name a linux-image-*-amd64 package in the recipe"
    )]
    NoKernel { package: String },

    #[error(
        "{path} has SHA-256 {actual} but apt's index says {expected}; delete the file and \
         build again (the mirror may have served a stale file; `apt-get update` may help)"
    )]
    DebHashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "cannot download {url}: {source}; check the network (or HTTPS_PROXY) and build again, \
         which resumes from the packages already cached"
    )]
    DownloadFailed {
        url: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "{url} served {actual}, but the recipe pins {expected}; nothing was kept (a mirror or \
         proxy may be serving another file)"
    )]
    DownloadMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    #[error("{path} is not a readable gzipped tar archive: {reason}")]
    BadArchive { path: PathBuf, reason: String },

    #[error(
        "archive {path} has member `{member}`, which would land outside its directory; \
         the archive is not the one the recipe was written for"
    )]
    UnsafeArchiveMember { path: PathBuf, member: String },

    #[error(
        "exclusion `{pattern}` matches nothing under `{from}` in {path}; the pinned archive \
         changed shape, so review the recipe's `exclude` list"
    )]
    ExcludeMatchesNothing {
        pattern: String,
        from: String,
        path: PathBuf,
    },

    #[error(
        "disk `{disk}` cannot hold {path}: {reason}; only directories, regular files and \
         symlinks with names debugfs can quote go on an image disk"
    )]
    UnsupportedDiskEntry {
        disk: String,
        path: String,
        reason: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is not a usable bzImage kernel: {reason}")]
    NotBzImage { path: PathBuf, reason: String },

    #[error(
        "kernel {path} is compressed with {format}, which this crate cannot unpack \
         (it reads gzip, xz, lz4 and zstd); use a kernel package built with one of those"
    )]
    UnsupportedCompression { path: PathBuf, format: String },

    #[error("the kernel payload of {path} did not decompress: {reason}")]
    Decompress { path: PathBuf, reason: String },

    #[error(
        "the vmlinux inside {path} has no PVH entry note (Xen ELF note 18), so QEMU cannot \
         direct-boot it; use a kernel built with CONFIG_PVH=y"
    )]
    NoPvhNote { path: PathBuf },

    #[error("{path} is not a usable ELF file: {reason}")]
    BadElf { path: PathBuf, reason: String },

    #[error(
        "none of the recipe's packages ships {path}; fix the recipe's `files` list (or a disk's \
         `unchecked` list)"
    )]
    FileNotInPackages { path: String },

    #[error(
        "{needed_by} needs the shared library {library}, which none of the recipe's packages \
         ship; add the Debian package that contains it to the recipe (`dpkg -S {library}` \
         on a Debian host names it)"
    )]
    MissingLibrary { library: String, needed_by: String },

    #[error(
        "kernel {release} has no module `{module}` (neither built in nor a .ko file); fix \
         the recipe's `modules` list"
    )]
    MissingModule { module: String, release: String },

    #[error(
        "kernel module dependencies form a cycle through `{module}`; the kernel package is broken"
    )]
    ModuleCycle { module: String },

    #[error("invalid recipe `{id}`: {reason}")]
    BadRecipe { id: String, reason: String },

    #[error("no image `{id}` in {dir}; build it first (`zennet image build {id}`)")]
    NotFound { id: String, dir: PathBuf },

    #[error("manifest {path} is unreadable: {reason}; rebuild the image (`zennet image build`)")]
    BadManifest { path: PathBuf, reason: String },

    #[error(
        "{path} is not the image the task names: {reason}; the publisher's file does not \
         match its announcement (nothing was installed)"
    )]
    NotTheImage { path: PathBuf, reason: String },

    #[error(
        "{path} has SHA-256 {actual} but the manifest says {expected}; rebuild the image \
         (`zennet image build`)"
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("invalid SSH public key for the guest: {reason}")]
    BadAuthorizedKey { reason: String },

    #[error(
        "the kernel command line would be {len} bytes, over the x86 limit of {max}; pass the \
         keys through QEMU's fw_cfg (`-fw_cfg name=opt/zennet/authorized_keys,file=...`) instead"
    )]
    CmdlineTooLong { len: usize, max: usize },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
