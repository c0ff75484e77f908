//! Images as files of the file network: the tree `zennet image publish`
//! adds (exactly the manifest and the files it names, under a directory
//! called by the image id), and installing such a tree fetched from other
//! nodes.
//!
//! A fetched tree is trusted for nothing: the file network has checked
//! each part against the metainfo, which says only that the bytes are the
//! ones the publisher added. What makes them an image worth booting is the
//! manifest hash the announcement quotes, so [`install`] requires the
//! manifest to carry that hash (and to hash to it), to name the image id
//! the announcement names, to list exactly the files present, and every
//! file and disk to re-hash to its manifest entry. Only then does the tree
//! move into the store, with the same atomic link swap a local build uses.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::build::{lock, publish_tree};
use crate::error::ImageError;
use crate::manifest::{Image, MANIFEST_FILE, Manifest};

/// Lays out `image` for publishing under `into/<id>/`: the manifest and
/// the files and disks it names, hard-linked (copied across filesystems),
/// and nothing else (a build's `inputs` file stays home). Returns the
/// directory to add to the file network. An earlier tree there is replaced.
pub fn publish_layout(image: &Image, into: &Path) -> Result<PathBuf, ImageError> {
    let dir = into.join(&image.manifest.id);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(ImageError::io(&dir))?;
    }
    fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
    for name in names(&image.manifest) {
        let from = image.dir.join(&name);
        let to = dir.join(&name);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(ImageError::io(&from))?;
        }
    }
    Ok(dir)
}

/// Installs the image tree `tree` (fetched from the file network, on the
/// same filesystem as `images_dir`) as image `id`, provided its manifest
/// hash is `hash` (hex) and every file checks out; see the module docs.
/// The tree is moved, not copied; on any error it is left where it was,
/// for the caller to remove, and the images directory is untouched.
pub fn install(images_dir: &Path, tree: &Path, id: &str, hash: &str) -> Result<Image, ImageError> {
    let path = tree.join(MANIFEST_FILE);
    let manifest = Manifest::read(&path)?;
    let wrong = |reason: String| ImageError::NotTheImage {
        path: path.clone(),
        reason,
    };
    if manifest.id != id {
        return Err(wrong(format!(
            "it describes image `{}`, not `{id}`",
            manifest.id
        )));
    }
    if manifest.hash != hash {
        return Err(wrong(format!(
            "its hash is {}, not the {hash} the task names",
            manifest.hash
        )));
    }
    let expected: BTreeSet<String> = names(&manifest).collect();
    let mut present = BTreeSet::new();
    for entry in fs::read_dir(tree).map_err(ImageError::io(tree))? {
        let entry = entry.map_err(ImageError::io(tree))?;
        let kind = entry.file_type().map_err(ImageError::io(entry.path()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kind.is_file() || !expected.contains(&name) {
            return Err(wrong(format!("`{name}` is not one of the image's files")));
        }
        present.insert(name);
    }
    if let Some(missing) = expected.difference(&present).next() {
        return Err(wrong(format!("`{missing}` is missing")));
    }
    let fetched = Image {
        manifest,
        dir: tree.to_owned(),
    };
    fetched.verify().map_err(|e| match e {
        ImageError::Corrupt {
            path: file,
            expected,
            actual,
        } => wrong(format!(
            "`{}` has SHA-256 {actual}, but the manifest says {expected}",
            file.file_name().unwrap_or_default().to_string_lossy()
        )),
        other => other,
    })?;

    fs::create_dir_all(images_dir).map_err(ImageError::io(images_dir))?;
    let _lock = lock(images_dir)?;
    publish_tree(images_dir, id, hash, tree)?;
    info!(id, hash, "installed an image fetched from the file network");
    crate::manifest::load(images_dir, id)
}

/// The plain names an image's tree holds: the manifest and every file and
/// disk it lists (all plain names, as `Manifest::read` checks).
fn names(m: &Manifest) -> impl Iterator<Item = String> + '_ {
    std::iter::once(MANIFEST_FILE.to_owned())
        .chain(m.files.iter().map(|f| f.name.clone()))
        .chain(m.disks.iter().map(|d| d.file.clone()))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::build::publish_tree;
    use crate::manifest::{FileRole, ImageFile, MANIFEST_FORMAT};

    const KERNEL: &[u8] = b"a kernel";
    const INITRAMFS: &[u8] = b"an initramfs";

    fn file(role: FileRole, name: &str, data: &[u8]) -> ImageFile {
        ImageFile {
            role,
            name: name.into(),
            sha256: hex::encode(Sha256::digest(data)),
            size: data.len() as u64,
        }
    }

    fn manifest(kernel: &[u8]) -> Manifest {
        Manifest {
            id: "zennet-tiny".into(),
            format: MANIFEST_FORMAT,
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            boot_args: vec!["console=ttyS0".into()],
            files: vec![
                file(FileRole::Kernel, "vmlinux", kernel),
                file(FileRole::Initramfs, "initramfs.cpio.gz", INITRAMFS),
            ],
            disks: Vec::new(),
            packages: Vec::new(),
            min_memory_mib: 128,
            hash: String::new(),
        }
        .seal()
    }

    /// A tree as a fetch would leave it: the manifest and these files.
    fn tree(at: &Path, m: &Manifest, files: &[(&str, &[u8])]) -> PathBuf {
        fs::create_dir_all(at).unwrap();
        fs::write(at.join(MANIFEST_FILE), serde_json::to_vec(m).unwrap()).unwrap();
        for (name, data) in files {
            fs::write(at.join(name), data).unwrap();
        }
        at.to_owned()
    }

    fn honest(at: &Path) -> (Manifest, PathBuf) {
        let m = manifest(KERNEL);
        let t = tree(
            at,
            &m,
            &[("vmlinux", KERNEL), ("initramfs.cpio.gz", INITRAMFS)],
        );
        (m, t)
    }

    #[test]
    fn a_published_layout_installs_elsewhere_and_leaves_the_build_inputs_home() {
        let built = tempfile::tempdir().unwrap();
        let (m, staging) = honest(&built.path().join("staging"));
        fs::write(staging.join("inputs"), "build inputs").unwrap();
        publish_tree(built.path(), &m.id, &m.hash, &staging).unwrap();
        let image = crate::manifest::load(built.path(), &m.id).unwrap();

        let out = tempfile::tempdir().unwrap();
        let layout = publish_layout(&image, out.path()).unwrap();
        assert_eq!(layout, out.path().join("zennet-tiny"));
        let mut names: Vec<String> = fs::read_dir(&layout)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["initramfs.cpio.gz", "manifest.json", "vmlinux"]);

        let other = tempfile::tempdir().unwrap();
        let fetched = other.path().join(".fetch-1/zennet-tiny");
        fs::create_dir_all(&fetched).unwrap();
        for e in fs::read_dir(&layout).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), fetched.join(e.file_name())).unwrap();
        }
        let installed = install(other.path(), &fetched, &m.id, &m.hash).unwrap();
        assert_eq!(installed.manifest, m);
        installed.verify().unwrap();
        assert!(!fetched.exists(), "the tree moved into the store");
        assert_eq!(fs::read(installed.kernel()).unwrap(), KERNEL);
    }

    #[test]
    fn a_tampered_file_is_refused_and_nothing_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(KERNEL);
        // Same length, other bytes: only the hash can tell.
        let t = tree(
            &dir.path().join(".fetch"),
            &m,
            &[("vmlinux", b"A kernel"), ("initramfs.cpio.gz", INITRAMFS)],
        );
        let err = install(dir.path(), &t, &m.id, &m.hash).unwrap_err();
        assert!(matches!(err, ImageError::NotTheImage { .. }), "{err}");
        assert!(err.to_string().contains("`vmlinux` has SHA-256"), "{err}");
        assert!(crate::manifest::list(dir.path()).unwrap().is_empty());
        assert!(t.join("vmlinux").exists(), "left for the caller to remove");
    }

    #[test]
    fn a_manifest_that_is_not_the_announced_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (m, t) = honest(&dir.path().join(".fetch"));
        let refused = |id: &str, hash: &str| match install(dir.path(), &t, id, hash) {
            Err(ImageError::NotTheImage { reason, .. }) => reason,
            other => panic!("expected NotTheImage, got {other:?}"),
        };
        // Another hash: e.g. a self-consistent manifest for other files.
        assert!(refused(&m.id, &"ab".repeat(32)).contains("not the"));
        assert!(refused("zennet-spark", &m.hash).contains("`zennet-tiny`, not `zennet-spark`"));

        // The attacker rewrites the kernel and re-seals the manifest: it
        // hashes right, but not to what the task names.
        let evil = manifest(b"evil kernel");
        let t2 = tree(
            &dir.path().join(".fetch2"),
            &evil,
            &[
                ("vmlinux", b"evil kernel"),
                ("initramfs.cpio.gz", INITRAMFS),
            ],
        );
        assert!(matches!(
            install(dir.path(), &t2, &m.id, &m.hash),
            Err(ImageError::NotTheImage { .. })
        ));
        assert!(crate::manifest::list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn extra_or_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (m, t) = honest(&dir.path().join(".fetch"));
        fs::write(t.join("payload.sh"), "rm -rf /").unwrap();
        let err = install(dir.path(), &t, &m.id, &m.hash).unwrap_err();
        assert!(err.to_string().contains("`payload.sh` is not one"), "{err}");
        fs::remove_file(t.join("payload.sh")).unwrap();
        fs::create_dir(t.join("sub")).unwrap();
        assert!(install(dir.path(), &t, &m.id, &m.hash).is_err());
        fs::remove_dir(t.join("sub")).unwrap();
        fs::remove_file(t.join("initramfs.cpio.gz")).unwrap();
        let err = install(dir.path(), &t, &m.id, &m.hash).unwrap_err();
        assert!(
            err.to_string().contains("`initramfs.cpio.gz` is missing"),
            "{err}"
        );
        assert!(crate::manifest::list(dir.path()).unwrap().is_empty());
    }
}
