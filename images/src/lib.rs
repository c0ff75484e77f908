//! Zennet's default VM images, built on the provider's machine from Debian
//! packages alone.
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
//!   Debian packages (name, version, .deb SHA-256) and the kernel
//!   parameters the image needs, sealed by a hash; see [`Manifest`].
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
//! The host needs apt, dpkg and, to boot images, QEMU: see
//! `images/HOST-PACKAGES`.
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

mod apt;
mod build;
mod cpio;
mod error;
mod guest;
mod initramfs;
mod kernel;
mod manifest;
mod modules;
mod recipe;

pub use build::build;
pub use error::ImageError;
pub use guest::{
    AUTHORIZED_KEY_PARAM, DATA_DISK_SERIAL, FW_CFG_AUTHORIZED_KEYS, HOST_KEY_MARKER, READY_MARKER,
    kernel_args,
};
pub use manifest::{FileRole, Image, ImageFile, MANIFEST_FORMAT, Manifest, PackageRef, list, load};
pub use recipe::{DEFAULT_IMAGE_ID, Recipe, default_recipe};
