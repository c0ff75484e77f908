//! Zennet's VM images, built on the provider's machine from Debian packages
//! alone (and, for Spark, one pinned archive from PyPI).
//!
//! # The images
//!
//! * `zennet-tiny` (the default): everything in RAM, described below.
//! * `zennet-spark`: the same kernel and initramfs plus a read-only ext4
//!   root disk (about 480 MB) with Debian's `openjdk-17-jre-headless` and
//!   its run-time libraries, `/usr/bin/java`, and under `/opt/spark/jars`
//!   the 175 of the 279 jars of the PyPI `pyspark` 4.3.0 sdist that Spark
//!   core, SQL and a standalone worker load (Hive, Connect, Kubernetes,
//!   YARN, MLlib, GraphX, Streaming, the REPL and other platforms' native
//!   code are left out; see `catalog.rs`). There are no Spark start
//!   scripts (they need bash): `spark-class CLASS ARGS` runs
//!   `java -cp '/opt/spark/jars/*' CLASS ARGS` with `SPARK_HOME=/opt/spark`,
//!   `SPARK_SCALA_VERSION=2.13` and `JAVA_HOME` set, which a worker passes
//!   on to its executors. `min_memory_mib` is 2048.
//! * `zennet-dask`: the same with a root disk (about 90 MB) of Debian's
//!   `python3` and `python3-distributed` (`dask-scheduler`, `dask-worker`);
//!   `min_memory_mib` is 1024.
//!
//! Module map: `recipe.rs` (the recipe types, `zennet-tiny`'s recipe),
//! `catalog.rs` (the other recipes, lookup by id), `build.rs` (the build and
//! its cache), `apt.rs` (packages and their dependencies), `download.rs`
//! (pinned HTTPS downloads), `kernel.rs` (vmlinux out of a bzImage),
//! `modules.rs`, `cpio.rs` and `initramfs.rs` (the initramfs), `disk.rs`
//! (image disks as ext4), `manifest.rs` (manifests, finding and verifying
//! images), `share.rs` (an image as a file of the file network: the tree
//! `zennet image publish` adds, installing a fetched one after checking it
//! against the announced manifest hash), `guest.rs` (the host-guest contract and the files in
//! `images/guest/`), `progress.rs`, `host.rs` (running host tools),
//! `error.rs`.
//!
//! # What `zennet-tiny` contains
//!
//! * `vmlinux`: the ELF kernel from Debian's `linux-image-cloud-amd64`,
//!   booted by QEMU through PVH (`qemu-system-x86_64 -M q35 -kernel vmlinux`),
//!   which skips the bzImage's self-decompression, slow under emulation.
//! * `initramfs.cpio.gz`: the whole guest, running from RAM:
//!   busybox (from `busybox-static`), dropbear as sshd, `mke2fs`, the shared
//!   libraries these need (from `libc6` and friends), the virtio modules the
//!   kernel does not have built in (virtio_pci, virtio_net, virtio_blk,
//!   virtio_rng, qemu_fw_cfg and their dependencies), and a small init
//!   (`images/guest/init`). At boot init mounts proc/sys/dev, loads the
//!   modules, configures eth0 for QEMU user networking (10.0.2.15/24 via
//!   10.0.2.2, DNS 10.0.2.3; `zennet.ip=`, `zennet.gw=`, `zennet.dns=`
//!   override), mounts the persistent volume at `/data` (the virtio disk
//!   with serial [`DATA_DISK_SERIAL`], else `/dev/vdb`; a blank one is
//!   formatted ext4 with a journal first), installs root's authorized keys
//!   from the kernel command line ([`AUTHORIZED_KEY_PARAM`]) and from fw_cfg
//!   ([`FW_CFG_AUTHORIZED_KEYS`]), makes an ed25519 host key (kept on
//!   `/data` when there is one) and prints it after [`HOST_KEY_MARKER`],
//!   then hands PID 1 to busybox init, which runs dropbear on port 22 (root,
//!   keys only) and prints [`READY_MARKER`] on the serial console once it
//!   listens. `poweroff` and `reboot` in the guest shut down cleanly.
//! * `manifest.json`: the image id, each file's name, SHA-256 and size, the
//!   image's disks (none here), the Debian packages (name, version, .deb
//!   SHA-256), the kernel parameters the image needs and its least RAM,
//!   sealed by a hash; see [`Manifest`].
//!
//! dropbear runs with a 2 MiB receive window (`-W 2097152`): its default of
//! 24 KiB caps data sent into the VM through an SSH forward at about
//! 5 MB/s. `/etc/hosts` names the guest (`zennet`), which the JVM needs.
//!
//! # Image disks
//!
//! An image may carry read-only disks, declared in its manifest
//! ([`ImageDisk`]: name, file, SHA-256, size, read-only, role, and the
//! packages and downloads on it) and re-hashed by [`Image::verify`] like the
//! kernel and initramfs. The VM runtime attaches each as a virtio-blk
//! device with serial [`ImageDisk::serial`] (`zennet-root`), opened
//! read-only and passed as a descriptor:
//!
//! ```text
//!   -drive if=none,id=root,file=/proc/self/fd/N,format=raw,readonly=on \
//!   -device virtio-blk-pci,drive=root,serial=zennet-root
//! ```
//!
//! The initramfs lists them (`/etc/zennet/disks`). Init mounts each
//! read-only under `/run/zennet/disks/<serial>` (on a tmpfs `/run`), makes
//! an overlay whose lower layers are the `root` disks and whose upper layer
//! is a tmpfs (`/run/zennet/overlay`), copies the initramfs's own files into
//! that upper layer, moves `/proc`, `/sys`, `/dev` and `/run` over, and
//! `switch_root`s into it, running itself again (`--second-stage`) to
//! carry on with the network, `/data`, keys and sshd. Why an overlay root
//! rather than mounting the disk somewhere: Debian's packages are full of
//! absolute paths (the JRE's `conf` links to `/etc/java-17-openjdk`,
//! Python's prefix is `/usr`, ELF interpreters and library paths), so they
//! work unchanged only at their own paths; the RAM layer keeps `/` writable
//! (logs, `__pycache__`, Spark's work directory) while the disk stays
//! pristine and shared; and because the initramfs's files win, init, sshd
//! and their libraries are the same in every image. A disk that is missing
//! or does not mount is logged, and the guest boots on the initramfs alone,
//! still reachable. Guest writes outside `/data` cost RAM.
//!
//! Disks are built in `disk.rs`: the packages (with their `Depends`
//! closure, minus what the recipe leaves out) unpacked whole, the kept
//! members of pinned downloads, a few links and files; every ELF file must
//! find its libraries; `mke2fs -d` writes the ext4 without root, and
//! `debugfs` then pins owners and times so the bytes are the same on every
//! host with the same e2fsprogs version.
//!
//! # How it is built
//!
//! [`build`] asks apt which version of each package it would install
//! (`apt-cache show`; a kernel metapackage is followed to its kernel),
//! fetches the .deb files with `apt-get download` into a cache (checking
//! each against the SHA-256 in apt's signed index), and unpacks them with
//! `dpkg-deb -x` into a scratch directory. Nothing is installed on the host.
//! The kernel's bzImage header locates the compressed vmlinux, which is
//! decompressed (gzip, xz, lz4 or zstd), checked for the PVH ELF note and
//! trimmed of the decompressor's relocation table. The initramfs is written
//! as a newc cpio with sorted entries, mtime 0 and root ownership, gzipped
//! without a timestamp, so the same packages give the same bytes and the
//! same manifest hash on any host. A build whose inputs (recipe, guest
//! files, package versions) have not changed checks the existing files and
//! does nothing else. Images are published with an atomic symlink swap.
//!
//! The host needs apt, dpkg, e2fsprogs (for image disks) and, to boot
//! images, QEMU: see `images/HOST-PACKAGES`.
//!
//! # Booting
//!
//! ```text
//! qemu-system-x86_64 -M q35 -accel tcg -m 256 -nodefaults -no-user-config \
//!   -display none -serial file:console.log \
//!   -kernel vmlinux -initrd initramfs.cpio.gz -append "<Image::kernel_args, space-joined>" \
//!   -netdev user,id=n,hostfwd=tcp:127.0.0.1:PORT-:22 -device virtio-net-pci,netdev=n \
//!   -device virtio-rng-pci \
//!   -drive if=none,id=data,file=data.img,format=raw \
//!   -device virtio-blk-pci,drive=data,serial=zennet-data
//! ```
//!
//! `virtio-rng-pci` matters: without it the guest's first use of
//! `getrandom` (the host key) waits about a second for the kernel to gather
//! entropy on its own. On a 2-core host under TCG, `-smp 1`, launch to
//! [`READY_MARKER`] takes about 2.3-2.9 s (the kernel reaches `/init` after
//! about 1.3 s of guest time); `-smp 2` takes about 3.2-3.7 s.
//!
//! # Choices
//!
//! * The cloud kernel, not the generic one: a third of the download, ext4
//!   built in, and about 0.4 s sooner to `/init` under TCG. A recipe can name
//!   `linux-image-amd64` instead; its xz payload and ext4 modules work too.
//! * The persistent volume is ext4 with a journal (Debian's `mke2fs`, not
//!   busybox's ext2-only one), since a provider may kill a guest at any time.
//!   Only an all-zero start marks a volume as blank, so a volume that fails
//!   to mount is left alone rather than reformatted.
//! * PID 1 ends up being busybox init, so sshd is respawned if it dies,
//!   orphans are reaped and a shutdown unmounts `/data` first.
//! * Module soft dependencies (`softdep=`) name aliases, which only
//!   `depmod` output resolves; recipes list such modules themselves.
//! * Downloads use `ureq` (blocking, as the build is) with rustls and the
//!   platform's certificate store, so TLS-intercepting proxies with a
//!   trusted CA work; the pinned SHA-256 and size are what make the bytes
//!   trustworthy. Archives are read with the `tar` crate, streamed through
//!   gzip, taking regular files only, so no member can land outside the
//!   disk's tree.
//! * Disk dependencies are resolved from apt's own metadata (`Depends`,
//!   `Pre-Depends`) rather than listed by hand, with an explicit list of
//!   what is left out (package tools, AWT and sound libraries), so an
//!   upgrade that adds a dependency brings it along.

mod apt;
mod build;
mod catalog;
mod cpio;
mod disk;
mod download;
mod error;
mod guest;
mod host;
mod initramfs;
mod kernel;
mod manifest;
mod modules;
mod progress;
mod recipe;
mod share;

pub use build::{build, build_with_progress, spark_host_jars};
pub use catalog::{DASK_IMAGE_ID, IMAGE_IDS, SPARK_IMAGE_ID, dask_recipe, recipe, spark_recipe};
pub use error::ImageError;
pub use guest::{
    AUTHORIZED_KEY_PARAM, DATA_DISK_SERIAL, FW_CFG_AUTHORIZED_KEYS, HOST_KEY_MARKER,
    IMAGE_DISK_SERIAL_PREFIX, READY_MARKER, kernel_args,
};
pub use manifest::{
    DiskRole, DownloadRef, FileRole, Image, ImageDisk, ImageFile, MANIFEST_FORMAT, Manifest,
    PackageRef, list, load,
};
pub use progress::Progress;
pub use recipe::{
    DEFAULT_IMAGE_ID, DiskFile, DiskLink, DiskRecipe, Download, Recipe, default_recipe,
};
pub use share::{install, publish_layout};
