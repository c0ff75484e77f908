//! Manifests, and finding built images on disk.
//!
//! A manifest names an image by id and content: each file's name, role,
//! SHA-256 and size, its read-only disks (name, file, SHA-256, size, what is
//! on them), the Debian packages (name, version, .deb SHA-256) it was built
//! from, the kernel parameters it needs and the least RAM it runs in. Every
//! file name in it is a plain name inside the image directory, so a manifest
//! can never point the VM runtime at another host file. Its `hash` is the SHA-256
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
/// Format 2 added `disks` and `min_memory_mib`.
pub const MANIFEST_FORMAT: u32 = 2;

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
    /// Read-only disks the VM runtime attaches beside the kernel and
    /// initramfs; see [`ImageDisk`].
    pub disks: Vec<ImageDisk>,
    /// The initramfs's Debian packages.
    pub packages: Vec<PackageRef>,
    /// The least guest RAM (MiB) the image is meant to run in.
    pub min_memory_mib: u32,
    /// SHA-256 (hex) of the canonical JSON of everything above.
    pub hash: String,
}

/// A disk that comes with an image. The VM runtime attaches each one as a
/// virtio-blk device with serial [`ImageDisk::serial`], opened read-only and
/// passed as a descriptor (`-drive file=/proc/self/fd/N,readonly=on,...`).
/// Read-only matters twice: one disk file serves every VM of the image, and
/// a guest is root in its VM, so only the host can keep it from writing.
/// [`Image::verify`] re-hashes it like the other files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDisk {
    /// 1-13 lowercase letters, digits and `-`, never `data`.
    pub name: String,
    pub role: DiskRole,
    /// File name inside the image directory (`<name>.ext4`).
    pub file: String,
    pub sha256: String,
    pub size: u64,
    /// Always true for disks this crate builds; a runtime must give each VM
    /// its own copy of a disk that is not.
    pub read_only: bool,
    /// The Debian packages unpacked onto it.
    pub packages: Vec<PackageRef>,
    /// The archives whose members are on it.
    pub downloads: Vec<DownloadRef>,
    /// `mke2fs -V` of the build host. The disk's bytes depend on it, so two
    /// hosts with different e2fsprogs versions may hash the disk differently.
    pub built_with: String,
}

/// What the guest's init does with an image disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskRole {
    /// Mounted read-only and merged under the root filesystem: its files
    /// appear at their own paths (`/usr/bin/java`), below a writable layer
    /// in RAM. Several root disks stack, the first listed on top.
    Root,
}

/// An archive (see [`crate::Download`]) by address and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRef {
    pub url: String,
    pub sha256: String,
}

impl DiskRole {
    /// The role as the manifest and the guest's `/etc/zennet/disks` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
        }
    }
}

impl ImageDisk {
    /// The virtio serial the host gives this disk and the guest finds it by.
    pub fn serial(&self) -> String {
        disk_serial(&self.name)
    }
}

/// `zennet-<name>`: the serial of the image disk called `name`.
pub(crate) fn disk_serial(name: &str) -> String {
    format!("{}{name}", guest::IMAGE_DISK_SERIAL_PREFIX)
}

/// Whether `name` can name a disk: its serial must fit virtio-blk's 20
/// bytes and must not be the persistent volume's.
pub(crate) fn valid_disk_name(name: &str) -> bool {
    (1..=13).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && disk_serial(name) != guest::DATA_DISK_SERIAL
}

/// A file name that stays inside the image directory and is not one of the
/// build's own files.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && name != MANIFEST_FILE
        && name != "inputs"
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

    /// Sets `hash` to [`Manifest::compute_hash`]: what a tool that writes
    /// or derives a manifest (a custom image) does last.
    pub fn seal(mut self) -> Self {
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
        manifest.check_names().map_err(bad)?;
        Ok(manifest)
    }

    /// Every file and disk name is plain and used once.
    fn check_names(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        let names = self
            .files
            .iter()
            .map(|f| &f.name)
            .chain(self.disks.iter().map(|d| &d.file));
        for name in names {
            if !plain_file_name(name) {
                return Err(format!(
                    "file name {name:?} is not a plain file name inside the image directory"
                ));
            }
            if seen.contains(&name) {
                return Err(format!("file name {name:?} is listed twice"));
            }
            seen.push(name);
        }
        let mut disks = Vec::new();
        for disk in &self.disks {
            if !valid_disk_name(&disk.name) || disks.contains(&&disk.name) {
                return Err(format!(
                    "disk name {:?} is invalid or listed twice",
                    disk.name
                ));
            }
            disks.push(&disk.name);
        }
        Ok(())
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

    /// Where `disk` (one of this image's) is on the host.
    pub fn disk_path(&self, disk: &ImageDisk) -> PathBuf {
        self.dir.join(&disk.file)
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

    /// Re-hashes the files and disks against the manifest (sizes first,
    /// then SHA-256).
    pub fn verify(&self) -> Result<(), ImageError> {
        let files = self
            .manifest
            .files
            .iter()
            .map(|f| (&f.name, &f.sha256, f.size));
        let disks = self
            .manifest
            .disks
            .iter()
            .map(|d| (&d.file, &d.sha256, d.size));
        for (name, sha256, expected_size) in files.chain(disks) {
            let path = self.dir.join(name);
            let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
            let actual = if size == expected_size {
                sha256_file(&path)?
            } else {
                format!("(a file of {size} bytes, not {expected_size})")
            };
            if actual != *sha256 {
                return Err(ImageError::Corrupt {
                    path,
                    expected: sha256.clone(),
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
            disks: Vec::new(),
            packages: vec![PackageRef {
                name: "busybox-static".into(),
                version: "1:1.35.0-4+deb12u1+b1".into(),
                sha256: "cc".repeat(32),
            }],
            min_memory_mib: 128,
            hash: String::new(),
        }
        .seal()
    }

    fn root_disk(contents: &[u8]) -> ImageDisk {
        ImageDisk {
            name: "root".into(),
            role: DiskRole::Root,
            file: "root.ext4".into(),
            sha256: hex::encode(Sha256::digest(contents)),
            size: contents.len() as u64,
            read_only: true,
            packages: vec![PackageRef {
                name: "openjdk-17-jre-headless".into(),
                version: "17.0.21.1+2-1~deb12u1".into(),
                sha256: "dd".repeat(32),
            }],
            downloads: vec![DownloadRef {
                url: "https://files.pythonhosted.org/packages/pyspark-4.3.0.tar.gz".into(),
                sha256: "ee".repeat(32),
            }],
            built_with: "mke2fs 1.47.0 (5-Feb-2023)".into(),
        }
    }

    /// An image directory holding `manifest`'s files with these contents.
    fn write_image(dir: &Path, manifest: &Manifest, contents: &[(&str, &[u8])]) -> PathBuf {
        let image_dir = dir.join(&manifest.id);
        fs::create_dir_all(&image_dir).unwrap();
        for (name, data) in contents {
            fs::write(image_dir.join(name), data).unwrap();
        }
        let path = image_dir.join(MANIFEST_FILE);
        fs::write(&path, serde_json::to_string_pretty(manifest).unwrap()).unwrap();
        path
    }

    #[test]
    fn canonical_json_sorts_keys_and_leaves_out_the_hash() {
        let json = sample().canonical_json();
        assert!(json.starts_with(
            r#"{"boot_args":["console=ttyS0"],"disks":[],"files":[{"name":"vmlinux","role":"kernel","#
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
            "f7b645755ccf72da302393cfa9f7798bf89e6c78bd78c10d4f12650e429250cc"
        );
        let mut with_disk = sample();
        with_disk.disks.push(root_disk(b"ext4"));
        assert_eq!(
            with_disk.seal().hash,
            "1bab74c0329bc75854a365df019f8542ab3ebf1e53dd88af0087267ccda4fd4b"
        );
        let pretty = serde_json::to_string_pretty(&sample()).unwrap();
        let reparsed: Manifest = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed.compute_hash(), sample().hash);
    }

    #[test]
    fn a_tampered_root_disk_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let disk = b"an ext4 image".as_slice();
        let mut manifest = sample();
        manifest.id = "zennet-spark".into();
        manifest.files[0].sha256 = hex::encode(Sha256::digest(b"abc"));
        manifest.files[1].sha256 = hex::encode(Sha256::digest(b"abcd"));
        manifest.disks.push(root_disk(disk));
        let manifest = manifest.seal();
        write_image(
            dir.path(),
            &manifest,
            &[
                ("vmlinux", b"abc"),
                ("initramfs.cpio.gz", b"abcd"),
                ("root.ext4", disk),
            ],
        );
        let image = load(dir.path(), "zennet-spark").unwrap();
        image.verify().unwrap();
        assert_eq!(image.manifest.disks[0].serial(), "zennet-root");
        assert_eq!(
            image.disk_path(&image.manifest.disks[0]),
            dir.path().join("zennet-spark/root.ext4")
        );

        // One byte flipped, same size: the hash catches it.
        let disk_path = dir.path().join("zennet-spark/root.ext4");
        fs::write(&disk_path, b"an ext4 imagf").unwrap();
        match image.verify() {
            Err(ImageError::Corrupt { path, .. }) => assert_eq!(path, disk_path),
            other => panic!("a flipped byte in the root disk passed: {other:?}"),
        }
        // Grown or truncated: caught by its size before hashing.
        fs::write(&disk_path, b"an ext4 image, with more").unwrap();
        assert!(matches!(image.verify(), Err(ImageError::Corrupt { .. })));
        fs::remove_file(&disk_path).unwrap();
        assert!(matches!(image.verify(), Err(ImageError::Io { .. })));

        // A manifest edited to match a replaced disk no longer seals.
        let mut edited = manifest.clone();
        edited.disks[0].sha256 = hex::encode(Sha256::digest(b"evil"));
        write_image(dir.path(), &edited, &[("root.ext4", b"evil")]);
        assert!(matches!(
            load(dir.path(), "zennet-spark"),
            Err(ImageError::BadManifest { .. })
        ));
    }

    #[test]
    fn manifests_cannot_point_outside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"host data").unwrap();
        let evil_names = [
            "../secret",
            "/etc/shadow",
            "sub/../../secret",
            ".",
            "..",
            "",
            MANIFEST_FILE,
        ];
        for name in evil_names {
            let mut manifest = sample();
            let mut disk = root_disk(b"host data");
            disk.file = name.into();
            manifest.disks.push(disk);
            let path = write_image(dir.path(), &manifest.seal(), &[]);
            let err = load(dir.path(), "zennet-tiny").unwrap_err();
            assert!(
                matches!(&err, ImageError::BadManifest { path: p, .. } if *p == path),
                "{name:?}: {err}"
            );
        }
        let mut manifest = sample();
        manifest.files[1].name = "../secret".into();
        write_image(dir.path(), &manifest.seal(), &[]);
        assert!(load(dir.path(), "zennet-tiny").is_err());

        let mut manifest = sample();
        manifest.disks.push(root_disk(b""));
        let mut twin = root_disk(b"");
        twin.file = "vmlinux".into();
        twin.name = "other".into();
        manifest.disks.push(twin);
        write_image(dir.path(), &manifest.seal(), &[]);
        assert!(
            load(dir.path(), "zennet-tiny").is_err(),
            "a disk reusing the kernel's file"
        );

        let mut manifest = sample();
        let mut data = root_disk(b"");
        data.name = "data".into();
        manifest.disks.push(data);
        write_image(dir.path(), &manifest.seal(), &[]);
        assert!(
            load(dir.path(), "zennet-tiny").is_err(),
            "a disk posing as the data volume"
        );
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
