//! Manifests, and finding built images on disk.
//!
//! A manifest names an image by id and content: each file's name, role,
//! SHA-256 and size, the Debian packages (name, version, .deb SHA-256) it was
//! built from, and the kernel parameters it needs. Its `hash` is the SHA-256
//! of the manifest's canonical JSON without the `hash` field: object keys
//! sorted bytewise, no whitespace, strings escaped as serde_json writes them
//! (there are no floats). Two hosts that build the same recipe from the same
//! package versions get the same files and so the same hash, which is what
//! announcements quote.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::guest;

/// Version of the manifest layout; bumped when fields change meaning.
pub const MANIFEST_FORMAT: u32 = 1;

pub(crate) const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub format: u32,
    /// `uname -r` of the image's kernel.
    pub kernel_release: String,
    /// Kernel parameters every boot needs; see [`Image::kernel_args`].
    pub boot_args: Vec<String>,
    pub files: Vec<ImageFile>,
    pub packages: Vec<PackageRef>,
    /// SHA-256 (hex) of the canonical JSON of everything above.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    pub role: FileRole,
    /// File name inside the image directory.
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// PVH-bootable ELF kernel, for QEMU's `-kernel`.
    Kernel,
    /// gzipped newc cpio, for QEMU's `-initrd`.
    Initramfs,
}

/// A Debian package an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    /// SHA-256 of the .deb file.
    pub sha256: String,
}

impl Manifest {
    /// The canonical JSON the hash covers (the manifest minus `hash`).
    pub fn canonical_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a manifest always serializes");
        if let Value::Object(fields) = &mut value {
            fields.remove("hash");
        }
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// SHA-256 (hex) of [`Manifest::canonical_json`].
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json()))
    }

    pub fn file(&self, role: FileRole) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.role == role)
    }

    pub(crate) fn seal(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }

    pub(crate) fn read(path: &Path) -> Result<Self, ImageError> {
        let text = fs::read_to_string(path).map_err(ImageError::io(path))?;
        let bad = |reason: String| ImageError::BadManifest {
            path: path.to_owned(),
            reason,
        };
        let manifest: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        let computed = manifest.compute_hash();
        if computed != manifest.hash {
            return Err(bad(format!(
                "its hash field says {} but its contents hash to {computed}",
                manifest.hash
            )));
        }
        for role in [FileRole::Kernel, FileRole::Initramfs] {
            if manifest.file(role).is_none() {
                return Err(bad(format!("it lists no {role:?} file")));
            }
        }
        Ok(manifest)
    }
}

/// Writes JSON with object keys sorted and no whitespace, independent of how
/// serde_json orders maps (its `preserve_order` feature may be on in the
/// workspace).
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A built image on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub manifest: Manifest,
    /// The directory holding the image's files.
    pub dir: PathBuf,
}

impl Image {
    /// The PVH `vmlinux`, for QEMU's `-kernel`.
    pub fn kernel(&self) -> PathBuf {
        self.path_of(FileRole::Kernel)
    }

    /// The initramfs, for QEMU's `-initrd`.
    pub fn initramfs(&self) -> PathBuf {
        self.path_of(FileRole::Initramfs)
    }

    fn path_of(&self, role: FileRole) -> PathBuf {
        let file = self
            .manifest
            .file(role)
            .expect("Manifest::read and the build guarantee both roles");
        self.dir.join(&file.name)
    }

    /// The kernel parameters for one boot that lets `authorized_keys` (lines
    /// of OpenSSH `.pub` files) log in as root; join them with spaces for
    /// QEMU's `-append`.
    pub fn kernel_args(&self, authorized_keys: &[&str]) -> Result<Vec<String>, ImageError> {
        guest::kernel_args(&self.manifest.boot_args, authorized_keys)
    }

    /// Re-hashes the files against the manifest (sizes first, then SHA-256).
    pub fn verify(&self) -> Result<(), ImageError> {
        for file in &self.manifest.files {
            let path = self.dir.join(&file.name);
            let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
            let actual = if size == file.size {
                sha256_file(&path)?
            } else {
                format!("(a file of {size} bytes, not {})", file.size)
            };
            if actual != file.sha256 {
                return Err(ImageError::Corrupt {
                    path,
                    expected: file.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Loads the image `id` from `images_dir` without re-hashing its files
/// (the manifest's own hash is checked); [`Image::verify`] does the rest.
pub fn load(images_dir: &Path, id: &str) -> Result<Image, ImageError> {
    let dir = images_dir.join(id);
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Err(ImageError::NotFound {
            id: id.to_owned(),
            dir: images_dir.to_owned(),
        });
    }
    let manifest = Manifest::read(&path)?;
    if manifest.id != id {
        return Err(ImageError::BadManifest {
            path,
            reason: format!("it describes image `{}`, not `{id}`", manifest.id),
        });
    }
    Ok(Image { manifest, dir })
}

/// All images built in `images_dir`, by id. A missing directory holds none.
pub fn list(images_dir: &Path) -> Result<Vec<Image>, ImageError> {
    let entries = match fs::read_dir(images_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(images_dir)(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ImageError::io(images_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Dot entries are the build's own: download cache, store, lock.
        if !name.starts_with('.') && entry.path().join(MANIFEST_FILE).is_file() {
            ids.push(name);
        }
    }
    ids.sort();
    ids.iter().map(|id| load(images_dir, id)).collect()
}

/// SHA-256 (hex) of a file's contents, read in chunks.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(ImageError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(ImageError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            id: "zennet-tiny".into(),
            format: MANIFEST_FORMAT,
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            boot_args: vec!["console=ttyS0".into()],
            files: vec![
                ImageFile {
                    role: FileRole::Kernel,
                    name: "vmlinux".into(),
                    sha256: "aa".repeat(32),
                    size: 3,
                },
                ImageFile {
                    role: FileRole::Initramfs,
                    name: "initramfs.cpio.gz".into(),
                    sha256: "bb".repeat(32),
                    size: 4,
                },
            ],
            packages: vec![PackageRef {
                name: "busybox-static".into(),
                version: "1:1.35.0-4+deb12u1+b1".into(),
                sha256: "cc".repeat(32),
            }],
            hash: String::new(),
        }
        .seal()
    }

    #[test]
    fn canonical_json_sorts_keys_and_leaves_out_the_hash() {
        let json = sample().canonical_json();
        assert!(json.starts_with(
            r#"{"boot_args":["console=ttyS0"],"files":[{"name":"vmlinux","role":"kernel","#
        ));
        assert!(!json.contains("\"hash\""));
        assert!(!json.contains(' '));
    }

    #[test]
    fn hash_covers_every_field_but_itself() {
        let manifest = sample();
        assert_eq!(manifest.hash.len(), 64);
        assert_eq!(manifest.hash, manifest.compute_hash());

        let mut other = manifest.clone();
        other.hash = "ff".repeat(32);
        assert_eq!(other.compute_hash(), manifest.hash);

        other.packages[0].version = "1:1.35.0-5".into();
        assert_ne!(other.compute_hash(), manifest.hash);
    }

    #[test]
    fn hash_is_pinned() {
        // Changing the canonical form changes every image id + hash pair
        // that announcements quote: bump MANIFEST_FORMAT if it must change.
        assert_eq!(
            sample().hash,
            "35136e92b7267cd393a94ae2c7764cbd5610e01779f7a686e963dbadfa11d756"
        );
        let pretty = serde_json::to_string_pretty(&sample()).unwrap();
        let reparsed: Manifest = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed.compute_hash(), sample().hash);
    }

    #[test]
    fn tampered_manifests_and_files_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let image_dir = dir.path().join("zennet-tiny");
        fs::create_dir_all(&image_dir).unwrap();
        fs::write(image_dir.join("vmlinux"), b"abc").unwrap();
        fs::write(image_dir.join("initramfs.cpio.gz"), b"abcd").unwrap();

        let mut manifest = sample();
        manifest.files[0].sha256 = hex::encode(Sha256::digest(b"abc"));
        manifest.files[1].sha256 = hex::encode(Sha256::digest(b"abcd"));
        let manifest = manifest.seal();
        let path = image_dir.join(MANIFEST_FILE);
        fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();

        let image = load(dir.path(), "zennet-tiny").unwrap();
        image.verify().unwrap();
        assert_eq!(image.kernel(), image_dir.join("vmlinux"));
        assert_eq!(list(dir.path()).unwrap(), vec![image.clone()]);

        fs::write(image_dir.join("vmlinux"), b"abd").unwrap();
        assert!(matches!(image.verify(), Err(ImageError::Corrupt { .. })));

        let mut edited = manifest.clone();
        edited.kernel_release = "6.1.0-57-cloud-amd64".into();
        fs::write(&path, serde_json::to_string(&edited).unwrap()).unwrap();
        assert!(matches!(
            load(dir.path(), "zennet-tiny"),
            Err(ImageError::BadManifest { .. })
        ));
        assert!(matches!(
            load(dir.path(), "other"),
            Err(ImageError::NotFound { .. })
        ));
    }
}
