//! What an image is made of, as data.

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_is_valid() {
        default_recipe().validate().unwrap();
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
