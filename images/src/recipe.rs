//! What an image is made of, as data: the [`Recipe`] type, its read-only
//! disks ([`DiskRecipe`]) and pinned downloads ([`Download`]), their
//! validation, and the recipe of `zennet-tiny`. The other images' recipes are
//! in `catalog.rs`.

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::manifest::{DiskRole, valid_disk_name};

/// Id of the default thin image.
pub const DEFAULT_IMAGE_ID: &str = "zennet-tiny";

/// The Debian packages, files and kernel modules an image is built from.
/// The guest's init and config files come with this crate (`images/guest/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// The image id: a directory name and what announcements call the image.
    pub id: String,
    /// A Debian kernel package, or a metapackage standing for one
    /// (`linux-image-cloud-amd64`); its bzImage becomes the PVH `vmlinux`.
    pub kernel_package: String,
    /// Packages unpacked to take [`Recipe::files`] from.
    pub packages: Vec<String>,
    /// Absolute paths copied from those packages into the initramfs. ELF
    /// files bring their program interpreter and shared libraries along.
    pub files: Vec<String>,
    /// Kernel modules init loads at boot, in this order after their
    /// dependencies; ones the kernel has built in are skipped.
    pub modules: Vec<String>,
    /// Kernel parameters every boot of the image needs.
    pub boot_args: Vec<String>,
    /// Read-only disks that come with the image, for what does not fit in
    /// an initramfs (a JRE and Spark's jars, a Python stack).
    pub disks: Vec<DiskRecipe>,
    /// The least guest RAM (MiB) the image is meant to run in; the market
    /// refuses smaller VMs for it.
    pub min_memory_mib: u32,
}

/// A read-only ext4 disk of an image: whole Debian packages (with what they
/// depend on) and members of pinned downloads, plus a few links and files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecipe {
    /// The disk's name: its file is `<name>.ext4` and the host attaches it
    /// with the virtio serial `zennet-<name>` (see [`crate::ImageDisk`]).
    pub name: String,
    /// What the guest's init does with it.
    pub role: DiskRole,
    /// Debian packages unpacked whole onto the disk, together with every
    /// package they depend on (`Pre-Depends` and `Depends`, the first
    /// alternative when none is on the disk), except [`DiskRecipe::left_out`].
    pub packages: Vec<String>,
    /// Dependencies deliberately left off the disk (install-time tools,
    /// libraries only unused features load). A dependency that is neither on
    /// the disk nor listed here fails the build, so a package upgrade that
    /// brings a new dependency is noticed.
    pub left_out: Vec<String>,
    /// Archives fetched by URL and pinned by SHA-256, cached once.
    pub downloads: Vec<Download>,
    /// Symlinks the packages' install scripts would have made (the build runs
    /// no package scripts), such as `/usr/bin/java`.
    pub links: Vec<DiskLink>,
    /// Files this crate adds (launchers, environment).
    pub files: Vec<DiskFile>,
    /// ELF files on the disk allowed to lack shared libraries: parts of a
    /// package the image does not use (the JRE's AWT and sound libraries).
    /// Every other ELF file must find each library it needs on the disk or
    /// in the initramfs, or the build fails.
    pub unchecked: Vec<String>,
}

/// A gzipped tar archive fetched over HTTPS, checked against its pinned
/// SHA-256, of which the members under [`Download::from`] go to
/// [`Download::to`] on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// The file name in the download cache (`.cache/downloads/`).
    pub file: String,
    pub url: String,
    pub sha256: String,
    /// Bytes, for progress before the server says.
    pub size: u64,
    /// A directory inside the archive, with a trailing `/`.
    pub from: String,
    /// An absolute directory on the disk.
    pub to: String,
    /// Patterns (`*` matches anything, `/` included) of paths relative to
    /// `from` that are not copied. Each must match at least one member, so
    /// a stale pattern is noticed when the pin moves.
    pub exclude: Vec<String>,
}

/// A symlink on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLink {
    pub path: String,
    pub target: String,
}

/// A file on a disk with its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

/// The recipe of `zennet-tiny`: Debian 12's cloud kernel (smaller than the
/// generic one, and ext4 built in), busybox, dropbear as sshd, mke2fs for
/// the persistent volume, and the virtio drivers QEMU's q35 machine needs.
pub fn default_recipe() -> Recipe {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    Recipe {
        id: DEFAULT_IMAGE_ID.to_owned(),
        kernel_package: "linux-image-cloud-amd64".to_owned(),
        packages: strings(&[
            "busybox-static",
            "dropbear-bin",
            "e2fsprogs",
            // Shared libraries of dropbear and mke2fs.
            "libc6",
            "libcrypt1",
            "libtomcrypt1",
            "libtommath1",
            "libgmp10",
            "zlib1g",
            "libext2fs2",
            "libcom-err2",
            "libblkid1",
            "libuuid1",
        ]),
        files: strings(&[
            "/bin/busybox",
            "/usr/sbin/dropbear",
            "/usr/bin/dropbearkey",
            "/sbin/mke2fs",
            "/etc/mke2fs.conf",
        ]),
        modules: strings(&[
            "virtio_pci",
            "virtio_net",
            "virtio_blk",
            "virtio_rng",
            "qemu_fw_cfg",
            // Built into the cloud kernel; listed so a recipe on the generic
            // kernel, where they are modules, still mounts /data.
            "ext4",
            "crc32c_generic",
        ]),
        boot_args: strings(&["console=ttyS0", "panic=-1"]),
        disks: Vec::new(),
        // The accelerator probe boots it in 128 MiB.
        min_memory_mib: 128,
    }
}

impl Recipe {
    /// Refuses recipes that would make unsafe paths or unparseable args.
    pub(crate) fn validate(&self) -> Result<(), ImageError> {
        let bad = |reason: String| ImageError::BadRecipe {
            id: self.id.clone(),
            reason,
        };
        let id_ok = self
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && self.id.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !id_ok {
            return Err(bad(
                "the id must be lowercase letters, digits, `-` and `_`, starting with a letter or digit"
                    .into(),
            ));
        }
        if self.kernel_package.is_empty() {
            return Err(bad("no kernel package".into()));
        }
        for file in &self.files {
            if !file.starts_with('/') || file.split('/').any(|part| part == "..") {
                return Err(bad(format!(
                    "file `{file}` must be an absolute path without `..`"
                )));
            }
        }
        if let Some(arg) = self
            .boot_args
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(bad(format!(
                "boot arg {arg:?} is empty or contains whitespace"
            )));
        }
        let mut names = Vec::new();
        for disk in &self.disks {
            if !valid_disk_name(&disk.name) {
                return Err(bad(format!(
                    "disk name `{}` must be 1-13 lowercase letters, digits and `-`, and not `data`",
                    disk.name
                )));
            }
            if names.contains(&&disk.name) {
                return Err(bad(format!("two disks are named `{}`", disk.name)));
            }
            names.push(&disk.name);
            disk.validate()
                .map_err(|reason| bad(format!("disk `{}`: {reason}", disk.name)))?;
        }
        Ok(())
    }
}

impl DiskRecipe {
    fn validate(&self) -> Result<(), String> {
        if self.packages.is_empty() && self.downloads.is_empty() {
            return Err("it has neither packages nor downloads".into());
        }
        let paths = self
            .links
            .iter()
            .map(|l| &l.path)
            .chain(self.files.iter().map(|f| &f.path))
            .chain(self.downloads.iter().map(|d| &d.to))
            .chain(self.unchecked.iter());
        for path in paths {
            if !safe_absolute(path) {
                return Err(format!("`{path}` must be an absolute path without `..`"));
            }
        }
        for download in &self.downloads {
            let plain = !download.file.is_empty()
                && !download.file.starts_with('.')
                && !download.file.contains('/');
            if !plain {
                return Err(format!(
                    "download file name `{}` must be a plain file name",
                    download.file
                ));
            }
            if !download.url.starts_with("https://") {
                return Err(format!(
                    "download {} must be fetched over https",
                    download.url
                ));
            }
            if download.sha256.len() != 64
                || !download.sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!("download {} needs a hex SHA-256", download.url));
            }
            if !download.from.ends_with('/') || download.from.split('/').any(|p| p == "..") {
                return Err(format!(
                    "download member directory `{}` must end with `/` and have no `..`",
                    download.from
                ));
            }
        }
        Ok(())
    }
}

fn safe_absolute(path: &str) -> bool {
    path.starts_with('/') && path.len() > 1 && !path.split('/').any(|part| part == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_is_valid() {
        default_recipe().validate().unwrap();
    }

    #[test]
    fn unsafe_disks_are_refused() {
        let disk = || DiskRecipe {
            name: "root".into(),
            role: DiskRole::Root,
            packages: vec!["python3".into()],
            left_out: Vec::new(),
            downloads: Vec::new(),
            links: Vec::new(),
            files: Vec::new(),
            unchecked: Vec::new(),
        };
        let with = |disks: Vec<DiskRecipe>| Recipe {
            disks,
            ..default_recipe()
        };
        with(vec![disk()]).validate().unwrap();

        for name in ["data", "", "Root", "a/b", "much-too-long-name"] {
            let err = with(vec![DiskRecipe {
                name: name.into(),
                ..disk()
            }])
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("disk name"), "{name}: {err}");
        }
        assert!(with(vec![disk(), disk()]).validate().is_err());

        let mut escaping = disk();
        escaping.links.push(DiskLink {
            path: "/usr/../../etc/passwd".into(),
            target: "x".into(),
        });
        assert!(with(vec![escaping]).validate().is_err());

        let download = Download {
            file: "x.tar.gz".into(),
            url: "https://example.org/x.tar.gz".into(),
            sha256: "ab".repeat(32),
            size: 1,
            from: "x/".into(),
            to: "/opt/x".into(),
            exclude: Vec::new(),
        };
        let mut ok = disk();
        ok.downloads.push(download.clone());
        with(vec![ok]).validate().unwrap();
        for bad in [
            Download {
                url: "http://example.org/x.tar.gz".into(),
                ..download.clone()
            },
            Download {
                file: "../x.tar.gz".into(),
                ..download.clone()
            },
            Download {
                sha256: "abc".into(),
                ..download.clone()
            },
            Download {
                from: "x/../../".into(),
                ..download.clone()
            },
        ] {
            let mut disk = disk();
            disk.downloads.push(bad.clone());
            assert!(with(vec![disk]).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unsafe_recipes_are_refused() {
        let mut recipe = default_recipe();
        recipe.id = "../etc".into();
        assert!(recipe.validate().is_err());

        let mut recipe = default_recipe();
        recipe.files.push("/lib/../../etc/shadow".into());
        assert!(recipe.validate().is_err());

        let mut recipe = default_recipe();
        recipe.boot_args.push("console=ttyS0 quiet".into());
        assert!(recipe.validate().is_err());
    }
}
