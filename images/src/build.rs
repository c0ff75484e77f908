//! The build: resolve packages, skip the work if nothing changed, otherwise
//! download, unpack, make the kernel, the initramfs and the image's disks,
//! and publish the image atomically.
//!
//! On disk, under the images directory:
//!
//! ```text
//! <id>                 -> .store/<id>-<hash prefix>   (symlink, swapped atomically)
//! .store/<id>-<hash prefix>/
//!     vmlinux  initramfs.cpio.gz  [<disk>.ext4 ...]  manifest.json  inputs
//! .cache/debs/         downloaded .deb files, kept for rebuilds
//! .cache/downloads/    pinned archives (the pyspark sdist), kept for rebuilds
//! .cache/spark-host-<sha256 prefix>/jars/   Spark's jars for this host's
//!                      master and driver ([`spark_host_jars`])
//! .lock                held while a build runs
//! ```
//!
//! `inputs` holds a hash of everything the build reads (the recipe, the
//! guest files, the exact package versions, the e2fsprogs version for
//! images with disks, and the build format); a second build with the same
//! inputs only checks the files and returns.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::apt::{self, DebPackage};
use crate::disk;
use crate::download;
use crate::error::ImageError;
use crate::guest;
use crate::initramfs;
use crate::kernel::{self, KernelError};
use crate::manifest::{
    DownloadRef, FileRole, Image, ImageDisk, ImageFile, MANIFEST_FILE, MANIFEST_FORMAT, Manifest,
    PackageRef, disk_serial, load, sha256_file,
};
use crate::modules::ModuleSet;
use crate::progress::{self, Progress};
use crate::recipe::Recipe;

/// Bumped whenever the build's output for the same inputs changes (a new
/// cpio layout, another compressor), so old caches are not taken as current.
const BUILD_FORMAT: u32 = 2;

const KERNEL_FILE: &str = "vmlinux";
const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
const INPUTS_FILE: &str = "inputs";
const STORE_DIR: &str = ".store";
const DEB_CACHE_DIR: &str = ".cache/debs";
const DOWNLOAD_CACHE_DIR: &str = ".cache/downloads";
const LOCK_FILE: &str = ".lock";

/// Builds the image `recipe` describes under `images_dir`, or returns the
/// existing one if it was built from the same inputs and is intact.
pub fn build(recipe: &Recipe, images_dir: &Path) -> Result<Image, ImageError> {
    build_with_progress(recipe, images_dir, &mut progress::ignore)
}

/// [`build`], reporting each step and the bytes of each download to
/// `progress` as it goes.
pub fn build_with_progress(
    recipe: &Recipe,
    images_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Image, ImageError> {
    recipe.validate()?;
    fs::create_dir_all(images_dir).map_err(ImageError::io(images_dir))?;
    let _lock = lock(images_dir)?;
    remove_leftovers(images_dir)?;

    let started = Instant::now();
    progress(Progress::Step("resolving packages".into()));
    let packages = resolve_packages(recipe)?;
    let disk_packages = recipe
        .disks
        .iter()
        .map(|d| apt::resolve_closure(&d.packages, &d.left_out))
        .collect::<Result<Vec<_>, _>>()?;
    // The disks' bytes depend on e2fsprogs, so its version is an input.
    let e2fsprogs = if recipe.disks.is_empty() {
        None
    } else {
        Some(disk::mke2fs_version()?)
    };
    let inputs = inputs_hash(recipe, &packages, &disk_packages, e2fsprogs.as_deref());
    if let Some(image) = up_to_date(images_dir, &recipe.id, &inputs)? {
        info!(id = %recipe.id, hash = %image.manifest.hash, "image is up to date");
        return Ok(image);
    }

    // One apt run for every package of the image.
    let all: Vec<DebPackage> = packages
        .iter()
        .chain(disk_packages.iter().flatten())
        .cloned()
        .collect();
    let bytes: u64 = all.iter().map(|p| p.size).sum();
    progress(Progress::Step(format!(
        "fetching {} Debian packages ({} MB)",
        all.len(),
        bytes / 1_000_000
    )));
    let cache = images_dir.join(DEB_CACHE_DIR);
    let mut debs = apt::fetch(&all, &cache)?;
    let disk_debs: Vec<Vec<PathBuf>> = disk_packages
        .iter()
        .rev()
        .map(|p| debs.split_off(debs.len() - p.len()))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let download_cache = images_dir.join(DOWNLOAD_CACHE_DIR);
    let mut archives = Vec::new();
    for disk in &recipe.disks {
        let mut paths = Vec::new();
        for download in &disk.downloads {
            progress(Progress::Step(format!("fetching {}", download.file)));
            paths.push(download::fetch(download, &download_cache, progress)?);
        }
        archives.push(paths);
    }
    info!(elapsed = ?started.elapsed(), "packages ready");

    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(images_dir)
        .map_err(ImageError::io(images_dir))?;
    let sources = Sources {
        packages: &packages,
        debs: &debs,
        disk_packages: &disk_packages,
        disk_debs: &disk_debs,
        archives: &archives,
        e2fsprogs: e2fsprogs.as_deref(),
    };
    let (staging, hash) = make_image(recipe, &sources, work.path(), &inputs, progress)?;
    publish_tree(images_dir, &recipe.id, &hash, &staging)?;
    info!(id = %recipe.id, hash = %hash, elapsed = ?started.elapsed(), "image built");
    load(images_dir, &recipe.id)
}

/// What `make_image` builds from, all fetched and checked.
struct Sources<'a> {
    /// The kernel first, then the initramfs's packages.
    packages: &'a [DebPackage],
    debs: &'a [PathBuf],
    /// Per disk, in recipe order.
    disk_packages: &'a [Vec<DebPackage>],
    disk_debs: &'a [Vec<PathBuf>],
    archives: &'a [Vec<PathBuf>],
    e2fsprogs: Option<&'a str>,
}

/// Spark's jars for this host (the master and driver `zennet job spark`
/// runs here): the members of `zennet-spark`'s root disk from the same
/// pinned sdist, so the host and the guests run one Spark. Extracted once
/// under the images directory's cache (the sdist is the build's cached
/// download); returns the directory of jars.
pub fn spark_host_jars(
    images_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImageError> {
    let recipe = crate::catalog::spark_recipe();
    let download = recipe
        .disks
        .iter()
        .flat_map(|d| &d.downloads)
        .next()
        .expect("zennet-spark's root disk has the pyspark download");
    let dir = images_dir
        .join(".cache")
        .join(format!("spark-host-{}", &download.sha256[..16]));
    let jars = dir.join("jars");
    if jars.is_dir() {
        return Ok(jars);
    }
    fs::create_dir_all(images_dir).map_err(ImageError::io(images_dir))?;
    let _lock = lock(images_dir)?;
    remove_leftovers(images_dir)?;
    if jars.is_dir() {
        return Ok(jars);
    }
    let archive = download::fetch(download, &images_dir.join(DOWNLOAD_CACHE_DIR), progress)?;
    progress(Progress::Step(
        "unpacking Spark's jars for this host".into(),
    ));
    let tree = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(images_dir)
        .map_err(ImageError::io(images_dir))?;
    let kept = disk::extract("spark-host", download, &archive, tree.path())?;
    fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
    let from = tree.path().join(download.to.trim_start_matches('/'));
    // One rename: the directory is there whole or not at all.
    fs::rename(&from, &jars).map_err(ImageError::io(&jars))?;
    info!(jars = %jars.display(), kept, "Spark's jars unpacked for this host");
    Ok(jars)
}

/// Serializes builds in one images directory; released when dropped.
pub(crate) fn lock(images_dir: &Path) -> Result<File, ImageError> {
    let path = images_dir.join(LOCK_FILE);
    let file = File::create(&path).map_err(ImageError::io(&path))?;
    file.lock().map_err(ImageError::io(&path))?;
    Ok(file)
}

/// Removes what an interrupted build left (its temp tree, half-downloaded
/// files), which no one can be using while we hold the lock.
fn remove_leftovers(images_dir: &Path) -> Result<(), ImageError> {
    let places = [
        (images_dir.to_owned(), ".build-"),
        (images_dir.join(DEB_CACHE_DIR), ".download-"),
        (images_dir.join(DOWNLOAD_CACHE_DIR), ".part-"),
    ];
    for (dir, prefix) in places {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io(&dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(ImageError::io(&dir))?.path();
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            {
                continue;
            }
            warn!(path = %path.display(), "removing what an interrupted build left");
            if path.is_dir() {
                fs::remove_dir_all(&path).map_err(ImageError::io(&path))?;
            } else {
                fs::remove_file(&path).map_err(ImageError::io(&path))?;
            }
        }
    }
    Ok(())
}

/// The kernel (resolved from a metapackage if need be) first, then the
/// recipe's packages, each at the version apt would install now.
fn resolve_packages(recipe: &Recipe) -> Result<Vec<DebPackage>, ImageError> {
    // Each apt run costs about half a second, so ask for everything at once.
    let names: Vec<String> = std::iter::once(recipe.kernel_package.clone())
        .chain(recipe.packages.iter().cloned())
        .collect();
    let mut packages = apt::resolve(&names)?;
    if let Some(concrete) = packages[0].kernel_dependency() {
        info!(metapackage = %packages[0].name, kernel = %concrete, "kernel resolved");
        packages[0] = apt::resolve(&[concrete])?.remove(0);
    }
    Ok(packages)
}

fn inputs_hash(
    recipe: &Recipe,
    packages: &[DebPackage],
    disk_packages: &[Vec<DebPackage>],
    e2fsprogs: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct Inputs<'a> {
        build_format: u32,
        recipe: &'a Recipe,
        packages: &'a [DebPackage],
        disk_packages: &'a [Vec<DebPackage>],
        e2fsprogs: Option<&'a str>,
        guest_files: Vec<(&'a str, u32, String)>,
    }
    let inputs = Inputs {
        build_format: BUILD_FORMAT,
        recipe,
        packages,
        disk_packages,
        e2fsprogs,
        guest_files: guest::FILES
            .iter()
            .map(|f| (f.path, f.mode, hex::encode(Sha256::digest(f.contents))))
            .collect(),
    };
    let json = serde_json::to_vec(&inputs).expect("inputs always serialize");
    hex::encode(Sha256::digest(json))
}

/// The current image if it was built from `inputs` and its files are intact.
fn up_to_date(images_dir: &Path, id: &str, inputs: &str) -> Result<Option<Image>, ImageError> {
    let recorded = match fs::read_to_string(images_dir.join(id).join(INPUTS_FILE)) {
        Ok(recorded) => recorded,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(images_dir.join(id))(e)),
    };
    if recorded.trim() != inputs {
        info!(id, "inputs changed; rebuilding");
        return Ok(None);
    }
    let image = match load(images_dir, id).and_then(|image| image.verify().map(|()| image)) {
        Ok(image) => image,
        Err(e) => {
            warn!(id, error = %e, "cached image is damaged; rebuilding");
            return Ok(None);
        }
    };
    Ok(Some(image))
}

/// Unpacks the packages under `work` and writes the image files, disks,
/// manifest and inputs record into a staging directory there. Returns that
/// directory and the manifest hash.
fn make_image(
    recipe: &Recipe,
    sources: &Sources,
    work: &Path,
    inputs: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<(PathBuf, String), ImageError> {
    let started = Instant::now();
    let (packages, debs) = (sources.packages, sources.debs);
    progress(Progress::Step("assembling the kernel and initramfs".into()));
    let kernel_root = work.join("kernel");
    apt::unpack(&debs[0], &kernel_root)?;
    let packages_root = work.join("packages");
    for deb in &debs[1..] {
        apt::unpack(deb, &packages_root)?;
    }
    info!(elapsed = ?started.elapsed(), "packages unpacked");

    let (release, vmlinuz) = find_kernel(&kernel_root, &packages[0].name)?;
    let vmlinux = extract(&vmlinuz)?;
    info!(
        release = %release,
        compression = ?vmlinux.compression,
        pvh_entry = format_args!("{:#x}", vmlinux.pvh_entry),
        size = vmlinux.elf.len(),
        "vmlinux extracted"
    );

    let modules_dir = kernel_root.join("lib/modules").join(&release);
    let modules = ModuleSet::resolve(&modules_dir, &release, &recipe.modules)?;
    let archive = initramfs::assemble(
        &packages_root,
        &recipe.files,
        &modules_dir,
        &modules,
        &recipe.disks,
    )?;
    let initramfs = initramfs::gzip(&archive).map_err(ImageError::io(work))?;
    info!(
        modules = modules.modules.len(),
        size = initramfs.len(),
        elapsed = ?started.elapsed(),
        "initramfs assembled"
    );

    let staging = work.join("image");
    fs::create_dir(&staging).map_err(ImageError::io(&staging))?;
    let files = vec![
        write_file(&staging, KERNEL_FILE, FileRole::Kernel, &vmlinux.elf)?,
        write_file(&staging, INITRAMFS_FILE, FileRole::Initramfs, &initramfs)?,
    ];
    let mut disks = Vec::new();
    for (i, disk) in recipe.disks.iter().enumerate() {
        progress(Progress::Step(format!("unpacking disk {}", disk.name)));
        let tree = work.join(format!("disk-{}", disk.name));
        fs::create_dir(&tree).map_err(ImageError::io(&tree))?;
        disk::make_tree(disk, &sources.disk_debs[i], &sources.archives[i], &tree)?;
        disk::check_libraries(&tree, &archive, &disk.unchecked)?;
        progress(Progress::Step(format!("writing disk {} (ext4)", disk.name)));
        let file = format!("{}.ext4", disk.name);
        let path = staging.join(&file);
        let serial = disk_serial(&disk.name);
        let seed = format!("{inputs}:{}", disk.name);
        disk::write_ext4(&disk.name, &tree, &path, &serial, &seed, work)?;
        // The tree is as big as the disk: gone before the next one.
        fs::remove_dir_all(&tree).map_err(ImageError::io(&tree))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(ImageError::io(&path))?;
        let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
        disks.push(ImageDisk {
            name: disk.name.clone(),
            role: disk.role,
            file,
            sha256: sha256_file(&path)?,
            size,
            read_only: true,
            packages: sources.disk_packages[i].iter().map(package_ref).collect(),
            downloads: disk
                .downloads
                .iter()
                .map(|d| DownloadRef {
                    url: d.url.clone(),
                    sha256: d.sha256.clone(),
                })
                .collect(),
            built_with: sources.e2fsprogs.unwrap_or_default().to_owned(),
        });
        info!(disk = %disk.name, size, elapsed = ?started.elapsed(), "disk written");
    }
    let manifest = Manifest {
        id: recipe.id.clone(),
        format: MANIFEST_FORMAT,
        kernel_release: release,
        boot_args: recipe.boot_args.clone(),
        files,
        disks,
        packages: packages.iter().map(package_ref).collect(),
        min_memory_mib: recipe.min_memory_mib,
        hash: String::new(),
    }
    .seal();
    let json = serde_json::to_string_pretty(&manifest).expect("a manifest always serializes");
    write(&staging.join(MANIFEST_FILE), json.as_bytes())?;
    write(&staging.join(INPUTS_FILE), inputs.as_bytes())?;
    Ok((staging, manifest.hash))
}

fn package_ref(package: &DebPackage) -> PackageRef {
    PackageRef {
        name: package.name.clone(),
        version: package.version.clone(),
        sha256: package.sha256.clone(),
    }
}

/// The kernel release and its `vmlinuz`, from the unpacked kernel package.
fn find_kernel(kernel_root: &Path, package: &str) -> Result<(String, PathBuf), ImageError> {
    let boot = kernel_root.join("boot");
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(&boot) {
        for entry in entries {
            let name = entry.map_err(ImageError::io(&boot))?.file_name();
            if let Some(release) = name.to_string_lossy().strip_prefix("vmlinuz-") {
                found.push(release.to_owned());
            }
        }
    }
    match <[String; 1]>::try_from(found) {
        Ok([release]) => {
            let vmlinuz = boot.join(format!("vmlinuz-{release}"));
            Ok((release, vmlinuz))
        }
        Err(_) => Err(ImageError::NoKernel {
            package: package.to_owned(),
        }),
    }
}

fn extract(vmlinuz: &Path) -> Result<kernel::Vmlinux, ImageError> {
    let bytes = fs::read(vmlinuz).map_err(ImageError::io(vmlinuz))?;
    let path = vmlinuz.to_owned();
    kernel::extract_vmlinux(&bytes).map_err(|e| match e {
        KernelError::NotBzImage(reason) => ImageError::NotBzImage { path, reason },
        KernelError::Unsupported(format) => ImageError::UnsupportedCompression {
            path,
            format: format.to_owned(),
        },
        KernelError::Decompress(reason) => ImageError::Decompress { path, reason },
        KernelError::BadElf(reason) => ImageError::BadElf { path, reason },
        KernelError::NoPvhNote => ImageError::NoPvhNote { path },
    })
}

fn write_file(
    dir: &Path,
    name: &str,
    role: FileRole,
    data: &[u8],
) -> Result<ImageFile, ImageError> {
    let path = dir.join(name);
    write(&path, data)?;
    Ok(ImageFile {
        role,
        name: name.to_owned(),
        sha256: hex::encode(Sha256::digest(data)),
        size: data.len() as u64,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    fs::write(path, data).map_err(ImageError::io(path))?;
    // Durable before the symlink swap makes it visible.
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io(path))
}

/// Moves the staged image (built here, or fetched and checked by
/// [`crate::share::install`]) into the store and points `<id>` at it with an
/// atomic symlink swap, so readers see the old image or the new one, never
/// a mix. Older store entries of the same id go afterwards.
pub(crate) fn publish_tree(
    images_dir: &Path,
    id: &str,
    hash: &str,
    staging: &Path,
) -> Result<(), ImageError> {
    let store = images_dir.join(STORE_DIR);
    fs::create_dir_all(&store).map_err(ImageError::io(&store))?;
    let entry = format!("{id}-{}", &hash[..16]);
    let target = store.join(&entry);
    if target.exists() {
        // Same content, built again (say the inputs file was lost).
        fs::remove_dir_all(&target).map_err(ImageError::io(&target))?;
    }
    fs::rename(staging, &target).map_err(ImageError::io(&target))?;

    let link = images_dir.join(id);
    let temp_link = images_dir.join(format!(".{id}.link"));
    let _ = fs::remove_file(&temp_link);
    std::os::unix::fs::symlink(Path::new(STORE_DIR).join(&entry), &temp_link)
        .map_err(ImageError::io(&temp_link))?;
    fs::rename(&temp_link, &link).map_err(ImageError::io(&link))?;

    for old in fs::read_dir(&store).map_err(ImageError::io(&store))? {
        let old = old.map_err(ImageError::io(&store))?;
        let name = old.file_name().to_string_lossy().into_owned();
        let is_older_build = name
            .strip_prefix(&format!("{id}-"))
            .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
            && name != entry;
        if is_older_build {
            info!(dir = %old.path().display(), "removing the previous build");
            fs::remove_dir_all(old.path()).map_err(ImageError::io(old.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::default_recipe;

    #[test]
    fn inputs_hash_follows_package_versions_and_recipe() {
        let package = DebPackage {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            sha256: "aa".repeat(32),
            size: 0,
            depends: String::new(),
        };
        let hash = |recipe: &Recipe, packages: &[DebPackage], disk: &[DebPackage], e2fs| {
            inputs_hash(recipe, packages, &[disk.to_vec()], e2fs)
        };
        let recipe = default_recipe();
        let one = std::slice::from_ref(&package);
        let base = hash(&recipe, one, &[], None);
        assert_eq!(base, hash(&recipe, one, &[], None));

        let newer = DebPackage {
            version: "1:1.35.0-5".into(),
            ..package.clone()
        };
        assert_ne!(base, hash(&recipe, std::slice::from_ref(&newer), &[], None));
        assert_ne!(base, hash(&recipe, one, std::slice::from_ref(&newer), None));
        assert_ne!(base, hash(&recipe, one, &[], Some("mke2fs 1.47.2")));

        let mut other = recipe.clone();
        other.modules.push("virtio_scsi".into());
        assert_ne!(base, hash(&other, one, &[], None));

        let mut spark = crate::catalog::spark_recipe();
        let before = hash(&spark, one, &[], None);
        spark.disks[0].downloads[0].exclude.pop();
        assert_ne!(
            before,
            hash(&spark, one, &[], None),
            "the jar selection is an input"
        );
    }

    #[test]
    fn a_killed_build_leaves_nothing_behind_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let debs = dir.path().join(DEB_CACHE_DIR);
        let downloads = dir.path().join(DOWNLOAD_CACHE_DIR);
        fs::create_dir_all(dir.path().join(".build-x/disk-root")).unwrap();
        fs::create_dir_all(debs.join(".download-y")).unwrap();
        fs::create_dir_all(&downloads).unwrap();
        fs::write(downloads.join(".part-z"), b"half an sdist").unwrap();
        fs::write(downloads.join("pyspark-4.3.0.tar.gz"), b"kept").unwrap();
        fs::write(debs.join("libc6_2.36.deb"), b"kept").unwrap();
        remove_leftovers(dir.path()).unwrap();
        let left = |d: &Path| {
            let mut names: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(left(dir.path()), [".cache"]);
        assert_eq!(left(&debs), ["libc6_2.36.deb"]);
        assert_eq!(left(&downloads), ["pyspark-4.3.0.tar.gz"]);
    }

    #[test]
    fn publish_swaps_the_link_and_drops_older_builds() {
        let dir = tempfile::tempdir().unwrap();
        for (hash, content) in [("1".repeat(64), "old"), ("2".repeat(64), "new")] {
            let staging = dir.path().join("staging");
            fs::create_dir(&staging).unwrap();
            fs::write(staging.join("vmlinux"), content).unwrap();
            publish_tree(dir.path(), "zennet-tiny", &hash, &staging).unwrap();
        }
        let current = fs::read_to_string(dir.path().join("zennet-tiny/vmlinux")).unwrap();
        assert_eq!(current, "new");
        let store: Vec<_> = fs::read_dir(dir.path().join(STORE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(store, [format!("zennet-tiny-{}", "2".repeat(16))]);
    }
}
