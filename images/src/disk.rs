//! Image disks: the tree a [`DiskRecipe`] describes, checked, then written
//! as a read-only ext4 file with the same bytes on every host that has the
//! same inputs and e2fsprogs version.
//!
//! The tree is the disk's packages unpacked whole (`dpkg-deb -x`), the kept
//! members of its downloads, and the recipe's links and files. Before it is
//! written, every ELF file in it must find each shared library it needs
//! (through its RUNPATH, `$ORIGIN` included, or the default directories)
//! on the disk or in the initramfs, or be the soname of another library on
//! the disk (which a loader may have opened first, as the JVM's launcher
//! does with `libjvm.so`); the recipe names the files exempt.
//!
//! The ext4 is made by `mke2fs -d` without root, with a private
//! `mke2fs.conf` (the host's does not leak in), no journal (nothing writes
//! to it), a UUID and directory hash seed derived from the inputs, and the
//! clock pinned (`E2FSPROGS_FAKE_TIME`). mke2fs 1.47.0 still copies each
//! file's owner and times (ctime, which no one can set, included) from the
//! build host, so a `debugfs` pass then sets every inode to root ownership
//! and one fixed time. Entries are added in sorted order (`LC_ALL=C`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use goblin::elf::Elf;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::cpio::Archive;
use crate::error::ImageError;
use crate::host::run;
use crate::initramfs::{LIBRARY_DIRS, elf_needs, resolve_link};
use crate::recipe::{DiskRecipe, Download};

/// Every inode on a disk gets this time (2000-01-01T00:00:00Z).
const DISK_EPOCH: u64 = 946_684_800;

/// `mke2fs.conf` for image disks: ext4 without a journal or reserved
/// resize blocks, 4 KiB blocks, 256-byte inodes.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tzennet = {
\t\tinode_ratio = 16384
\t}
";

/// Fills `tree` with what `disk` holds: its packages' .deb files (`debs`),
/// the kept members of its downloads (`archives`, in recipe order), then
/// its links and files.
pub(crate) fn make_tree(
    disk: &DiskRecipe,
    debs: &[PathBuf],
    archives: &[PathBuf],
    tree: &Path,
) -> Result<(), ImageError> {
    for deb in debs {
        crate::apt::unpack(deb, tree)?;
    }
    for (download, archive) in disk.downloads.iter().zip(archives) {
        let kept = extract(&disk.name, download, archive, tree)?;
        info!(disk = %disk.name, archive = %download.file, kept, "archive members extracted");
    }
    for link in &disk.links {
        let path = prepare_path(&disk.name, tree, &link.path)?;
        symlink(&link.target, &path).map_err(ImageError::io(&path))?;
    }
    for file in &disk.files {
        let path = prepare_path(&disk.name, tree, &file.path)?;
        fs::write(&path, &file.contents).map_err(ImageError::io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .map_err(ImageError::io(&path))?;
    }
    Ok(())
}

/// Copies the regular files under `download.from` in the gzipped tar
/// `archive` to `download.to` in `tree`, except the excluded ones. Returns
/// how many were kept. Only directories and regular files are accepted, and
/// only at paths inside their directory: an archive with a symlink could
/// otherwise make a later member land outside the tree.
pub(crate) fn extract(
    disk: &str,
    download: &Download,
    archive: &Path,
    tree: &Path,
) -> Result<usize, ImageError> {
    let bad = |reason: String| ImageError::BadArchive {
        path: archive.to_owned(),
        reason,
    };
    let file = File::open(archive).map_err(ImageError::io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut used = vec![false; download.exclude.len()];
    let mut kept = 0;
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let member = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some(relative) = member.strip_prefix(&download.from) else {
            continue;
        };
        let mut excluded = false;
        for (pattern, used) in download.exclude.iter().zip(used.iter_mut()) {
            if glob_match(pattern, relative) {
                *used = true;
                excluded = true;
            }
        }
        let kind = entry.header().entry_type();
        if excluded || relative.is_empty() || kind.is_dir() {
            continue;
        }
        let inside = Path::new(relative)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(ImageError::UnsafeArchiveMember {
                path: archive.to_owned(),
                member,
            });
        }
        if !kind.is_file() {
            return Err(ImageError::UnsupportedDiskEntry {
                disk: disk.to_owned(),
                path: member,
                reason: format!("it is a {kind:?} archive member, not a regular file"),
            });
        }
        let target = format!("{}/{relative}", download.to.trim_end_matches('/'));
        let path = prepare_path(disk, tree, &target)?;
        let mode = entry.header().mode().map_err(|e| bad(e.to_string()))?;
        let mut out = File::create_new(&path).map_err(ImageError::io(&path))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("{member}: {e}")))?;
        // Executable or not, never writable by others nor setuid.
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(ImageError::io(&path))?;
        kept += 1;
    }
    if let Some((pattern, _)) = download.exclude.iter().zip(&used).find(|(_, used)| !**used) {
        return Err(ImageError::ExcludeMatchesNothing {
            pattern: pattern.clone(),
            from: download.from.clone(),
            path: archive.to_owned(),
        });
    }
    Ok(kept)
}

/// Makes the parent directories of `path` (absolute, inside the disk) in
/// `tree` and clears the way for a new entry there, refusing to follow a
/// symlink on the way: a package's symlink (say `/opt` -> `/var/opt`) must
/// never turn a write into one outside the tree.
fn prepare_path(disk: &str, tree: &Path, path: &str) -> Result<PathBuf, ImageError> {
    let unsupported = |reason: &str| ImageError::UnsupportedDiskEntry {
        disk: disk.to_owned(),
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let relative = Path::new(path.trim_start_matches('/'));
    let mut at = tree.to_owned();
    let parts: Vec<_> = relative.components().collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(unsupported("it is the disk's root"));
    };
    for part in parents.iter().chain(std::iter::once(last)) {
        if !matches!(part, Component::Normal(_)) {
            return Err(unsupported("the path leaves the disk"));
        }
    }
    for part in parents {
        at.push(part);
        match at.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(unsupported(&format!(
                    "{} on the way is a symlink",
                    at.strip_prefix(tree).unwrap_or(&at).display()
                )));
            }
            Ok(_) => return Err(unsupported("a parent on the way is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(ImageError::io(&at))?;
            }
            Err(e) => return Err(ImageError::io(&at)(e)),
        }
    }
    at.push(last);
    match at.symlink_metadata() {
        Ok(meta) if meta.is_dir() => Err(unsupported("a directory is already there")),
        Ok(_) => {
            fs::remove_file(&at).map_err(ImageError::io(&at))?;
            Ok(at)
        }
        Err(_) => Ok(at),
    }
}

/// Whether `text` matches `pattern`, in which `*` stands for any run of
/// characters (`/` included) and everything else for itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Checks that every ELF file in `tree` finds its shared libraries on the
/// disk or in `initramfs`, except the files in `unchecked`.
pub(crate) fn check_libraries(
    tree: &Path,
    initramfs: &Archive,
    unchecked: &[String],
) -> Result<(), ImageError> {
    let mut elves = Vec::new();
    walk(tree, &mut |path, meta| {
        if meta.is_file() && is_elf(path)? {
            elves.push(path.to_owned());
        }
        Ok(())
    })?;
    let mut parsed = Vec::new();
    let mut sonames = BTreeSet::new();
    for path in &elves {
        let bytes = fs::read(path).map_err(ImageError::io(path))?;
        let elf = Elf::parse(&bytes).map_err(|e| ImageError::BadElf {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(soname) = elf.soname {
            sonames.insert(soname.to_owned());
        }
        let needs = elf_needs(&bytes).map_err(|reason| ImageError::BadElf {
            path: path.clone(),
            reason,
        })?;
        let runpaths: Vec<String> = elf
            .runpaths
            .iter()
            .chain(elf.rpaths.iter())
            .flat_map(|list| list.split(':'))
            .map(str::to_owned)
            .collect();
        parsed.push((path.clone(), needs.libraries, runpaths));
    }
    let exists = |image_path: &str| {
        !image_path.split('/').any(|part| part == "..")
            && (tree
                .join(image_path.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok()
                || initramfs.get(image_path).is_some())
    };
    if let Some(stale) = unchecked
        .iter()
        .find(|path| !tree.join(path.trim_start_matches('/')).is_file())
    {
        return Err(ImageError::FileNotInPackages {
            path: stale.clone(),
        });
    }
    let mut exempt = 0;
    let mut missing = Vec::new();
    for (path, libraries, runpaths) in parsed {
        let image_path = format!("/{}", path.strip_prefix(tree).unwrap_or(&path).display());
        let origin = image_path.rsplit_once('/').map_or("/", |(dir, _)| dir);
        for library in libraries {
            let found = runpaths
                .iter()
                .map(|dir| {
                    let dir = dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
                    resolve_link(&format!("{dir}/"), &library)
                })
                .chain(LIBRARY_DIRS.iter().map(|dir| format!("{dir}/{library}")))
                .any(|candidate| exists(&candidate))
                || sonames.contains(&library);
            if found {
                continue;
            }
            if unchecked.contains(&image_path) {
                exempt += 1;
                debug!(file = %image_path, %library, "library missing from an unchecked file");
                continue;
            }
            warn!(file = %image_path, %library, "shared library missing from the disk");
            missing.push((library, image_path.clone()));
        }
    }
    if let Some((library, needed_by)) = missing.into_iter().next() {
        return Err(ImageError::MissingLibrary { library, needed_by });
    }
    if exempt > 0 {
        // Expected: the recipe leaves those features' libraries out.
        info!(
            libraries = exempt,
            "libraries missing from files the recipe marks unchecked"
        );
    }
    info!(
        elf_files = elves.len(),
        "every ELF file on the disk finds its libraries"
    );
    Ok(())
}

fn is_elf(path: &Path) -> Result<bool, ImageError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(ImageError::io(path))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"\x7fELF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ImageError::io(path)(e)),
    }
}

/// Calls `visit` on every entry under `dir` (not following symlinks), in
/// sorted order, parents before children.
fn walk(
    dir: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(ImageError::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(ImageError::io(dir))?;
    entries.sort();
    for path in entries {
        let meta = path.symlink_metadata().map_err(ImageError::io(&path))?;
        visit(&path, &meta)?;
        if meta.is_dir() {
            walk(&path, visit)?;
        }
    }
    Ok(())
}

/// `mke2fs -V`'s first line, which names the e2fsprogs release the disks'
/// bytes depend on.
pub(crate) fn mke2fs_version() -> Result<String, ImageError> {
    let output = run(Command::new("mke2fs").arg("-V"))?;
    Ok(String::from_utf8_lossy(&output.stderr)
        .lines()
        .next()
        .unwrap_or("mke2fs (unknown version)")
        .trim()
        .to_owned())
}

/// Writes `tree` as the ext4 file `image`, labelled `label`, with its UUID
/// and hash seed taken from `seed` (derived from the build's inputs).
pub(crate) fn write_ext4(
    disk: &str,
    tree: &Path,
    image: &Path,
    label: &str,
    seed: &str,
    work: &Path,
) -> Result<(), ImageError> {
    let mut paths = vec!["/".to_owned()];
    let mut bytes = 0u64;
    walk(tree, &mut |path, meta| {
        let relative = path.strip_prefix(tree).unwrap_or(path);
        let Some(text) = relative.to_str() else {
            return Err(ImageError::UnsupportedDiskEntry {
                disk: disk.to_owned(),
                path: relative.to_string_lossy().into_owned(),
                reason: "its name is not UTF-8".into(),
            });
        };
        if text.contains(['\n', '\r']) {
            return Err(ImageError::UnsupportedDiskEntry {
                disk: disk.to_owned(),
                path: text.to_owned(),
                reason: "its name has a line break".into(),
            });
        }
        let kind = meta.file_type();
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            return Err(ImageError::UnsupportedDiskEntry {
                disk: disk.to_owned(),
                path: text.to_owned(),
                reason: "it is neither a directory, a regular file nor a symlink".into(),
            });
        }
        // Whole blocks per file, a block per directory and per long symlink.
        bytes += meta.len().div_ceil(4096) * 4096 + 4096 * u64::from(!kind.is_file());
        paths.push(format!("/{text}"));
        Ok(())
    })?;
    let inodes = paths.len() as u64 + 64;
    // Data, inode tables, and 3% plus 16 MiB for extents, bitmaps and
    // group descriptors; rounded to whole MiB.
    let size_kib = (bytes + inodes * 256 + bytes / 33 + (16 << 20)).div_ceil(1 << 20) * 1024;

    let conf = work.join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(ImageError::io(&conf))?;
    let uuid = uuid_from(seed, "uuid");
    let hash_seed = uuid_from(seed, "hash_seed");
    let epoch = DISK_EPOCH.to_string();
    let e2fs_env = |command: &mut Command| {
        command
            .env("MKE2FS_CONFIG", &conf)
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .env("LC_ALL", "C")
            .env_remove("MKE2FS_SYNC")
            .env_remove("MKE2FS_FIRST_META_BG");
    };
    let mut mke2fs = Command::new("mke2fs");
    e2fs_env(&mut mke2fs);
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-T", "zennet", "-m", "0"])
        .args(["-N", &inodes.to_string(), "-L", label, "-U", &uuid])
        .arg("-E")
        .arg(format!(
            "root_owner=0:0,no_copy_xattrs,hash_seed={hash_seed},lazy_itable_init=0,nodiscard"
        ))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{size_kib}k"));
    run(&mut mke2fs)?;

    // Root owns everything, and every time is the same.
    let mut commands = String::new();
    for path in &paths {
        let quoted = format!("\"{}\"", path.replace('"', "\"\""));
        for (field, value) in [
            ("uid", "0"),
            ("gid", "0"),
            ("atime", &*format!("@{epoch}")),
            ("mtime", &*format!("@{epoch}")),
            ("ctime", &*format!("@{epoch}")),
            ("crtime", &*format!("@{epoch}")),
        ] {
            let _ = writeln!(commands, "sif {quoted} {field} {value}");
        }
    }
    let script = work.join("debugfs.cmds");
    fs::write(&script, commands).map_err(ImageError::io(&script))?;
    let mut debugfs = Command::new("debugfs");
    e2fs_env(&mut debugfs);
    debugfs.arg("-w").arg("-f").arg(&script).arg(image);
    let output = run(&mut debugfs)?;
    // debugfs goes on after a failed command and exits 0; only its stderr
    // tells, after its version banner.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !complaints.is_empty() {
        return Err(ImageError::ToolFailed {
            command: format!("debugfs -w -f {} {}", script.display(), image.display()),
            status: "complaints on stderr".into(),
            stderr: complaints.join("\n"),
        });
    }
    info!(
        inodes = paths.len(),
        size_mib = size_kib / 1024,
        "ext4 written"
    );
    Ok(())
}

/// A UUID string made from `seed` and a purpose, so the filesystem UUID and
/// the hash seed differ but both follow the inputs.
fn uuid_from(seed: &str, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{purpose}:{seed}"));
    let h = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::manifest::{DiskRole, sha256_file};
    use crate::recipe::{DiskFile, DiskLink};

    fn recipe() -> DiskRecipe {
        DiskRecipe {
            name: "root".into(),
            role: DiskRole::Root,
            packages: Vec::new(),
            left_out: Vec::new(),
            downloads: Vec::new(),
            links: vec![DiskLink {
                path: "/usr/bin/java".into(),
                target: "/usr/lib/jvm/bin/java".into(),
            }],
            files: vec![DiskFile {
                path: "/usr/bin/spark-class".into(),
                mode: 0o755,
                contents: "#!/bin/sh\n".into(),
            }],
            unchecked: Vec::new(),
        }
    }

    /// A gzipped tar of `(path, contents)` regular files and `(path, target)`
    /// symlinks.
    fn tarball(dir: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("sdist.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(gz);
        for (name, target) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o664);
            header.set_entry_type(tar::EntryType::Regular);
            // Set by hand: `append_data` refuses `..`, which is the point.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder
            .into_inner()
            .unwrap()
            .finish()
            .unwrap()
            .flush()
            .unwrap();
        path
    }

    fn jars_download(exclude: &[&str]) -> Download {
        Download {
            file: "sdist.tar.gz".into(),
            url: "https://example.org/sdist.tar.gz".into(),
            sha256: "00".repeat(32),
            size: 0,
            from: "pyspark/deps/jars/".into(),
            to: "/opt/spark/jars".into(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn globs_match_like_shell_stars_across_slashes() {
        assert!(glob_match("spark-hive_*", "spark-hive_2.13-4.3.0.jar"));
        assert!(!glob_match(
            "spark-hive_*",
            "spark-hive-thriftserver_2.13-4.3.0.jar"
        ));
        assert!(glob_match("*-osx-*", "netty-tcnative-2.0-osx-x86_64.jar"));
        assert!(glob_match(
            "connect-repl/*",
            "connect-repl/ammonite_2.13.jar"
        ));
        assert!(glob_match("*-linux-aarch_64.jar", "x-linux-aarch_64.jar"));
        assert!(!glob_match("*-linux-aarch_64.jar", "x-linux-x86_64.jar"));
        assert!(glob_match("json-1.8.jar", "json-1.8.jar"));
        assert!(!glob_match("json-1.8.jar", "json-1.8.jar.bak"));
        assert!(glob_match("a*b*c", "abc") && !glob_match("a*b*c", "acb"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn the_tree_holds_kept_members_links_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tarball(
            dir.path(),
            &[
                ("pyspark/deps/jars/spark-core_2.13-4.3.0.jar", b"core"),
                ("pyspark/deps/jars/spark-hive_2.13-4.3.0.jar", b"hive"),
                ("pyspark/deps/jars/connect-repl/ammonite.jar", b"repl"),
                ("pyspark/setup.py", b"print()"),
            ],
            &[],
        );
        let mut disk = recipe();
        disk.downloads
            .push(jars_download(&["spark-hive_*", "connect-repl/*"]));
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        make_tree(&disk, &[], &[archive], &tree).unwrap();
        let jars = tree.join("opt/spark/jars");
        let names: Vec<_> = fs::read_dir(&jars)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["spark-core_2.13-4.3.0.jar"]);
        let meta = fs::metadata(jars.join("spark-core_2.13-4.3.0.jar")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(
            fs::read_link(tree.join("usr/bin/java")).unwrap(),
            Path::new("/usr/lib/jvm/bin/java")
        );
        let launcher = tree.join("usr/bin/spark-class");
        assert_eq!(fs::read_to_string(&launcher).unwrap(), "#!/bin/sh\n");
        assert_eq!(
            fs::metadata(&launcher).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn stale_exclusions_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tarball(dir.path(), &[("pyspark/deps/jars/a.jar", b"a")], &[]);
        let mut disk = recipe();
        disk.downloads.push(jars_download(&["spark-mllib_*"]));
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let err = make_tree(&disk, &[], &[archive], &tree).unwrap_err();
        assert!(
            matches!(&err, ImageError::ExcludeMatchesNothing { pattern, .. } if pattern == "spark-mllib_*"),
            "{err}"
        );
    }

    #[test]
    fn hostile_archives_cannot_write_outside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let cases: Vec<(&str, PathBuf)> = vec![
            (
                "dot-dot member",
                tarball(
                    dir.path(),
                    &[("pyspark/deps/jars/../../../../outside/evil", b"x")],
                    &[],
                ),
            ),
            (
                "symlink, then a member through it",
                tarball(
                    dir.path(),
                    &[("pyspark/deps/jars/escape/evil", b"x")],
                    &[("pyspark/deps/jars/escape", outside.to_str().unwrap())],
                ),
            ),
        ];
        for (case, archive) in cases {
            let tree = dir.path().join("tree");
            let _ = fs::remove_dir_all(&tree);
            fs::create_dir(&tree).unwrap();
            let mut disk = recipe();
            disk.downloads.push(jars_download(&[]));
            let err = make_tree(&disk, &[], &[archive], &tree).unwrap_err();
            assert!(
                matches!(
                    err,
                    ImageError::UnsafeArchiveMember { .. }
                        | ImageError::UnsupportedDiskEntry { .. }
                ),
                "{case}: {err}"
            );
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{case}");
        }

        // A symlink already in the tree (a package's /opt -> elsewhere) is
        // not followed either.
        let tree = dir.path().join("tree");
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir(&tree).unwrap();
        symlink(&outside, tree.join("opt")).unwrap();
        let archive = tarball(dir.path(), &[("pyspark/deps/jars/a.jar", b"a")], &[]);
        let mut disk = recipe();
        disk.downloads.push(jars_download(&[]));
        let err = make_tree(&disk, &[], &[archive], &tree).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsupportedDiskEntry { .. }),
            "{err}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn missing_libraries_fail_unless_the_file_is_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let bin = tree.join("usr/bin");
        fs::create_dir_all(&bin).unwrap();
        // This test binary is an ELF that needs libc and friends, which
        // neither the tree nor the (empty) initramfs has.
        let me = std::env::current_exe().unwrap();
        fs::copy(&me, bin.join("tool")).unwrap();
        let err = check_libraries(&tree, &Archive::new(), &[]).unwrap_err();
        assert!(
            matches!(&err, ImageError::MissingLibrary { needed_by, .. } if needed_by == "/usr/bin/tool"),
            "{err}"
        );
        check_libraries(&tree, &Archive::new(), &["/usr/bin/tool".to_owned()]).unwrap();

        // With the libraries in the initramfs's directories it passes.
        let bytes = fs::read(&me).unwrap();
        let needs = elf_needs(&bytes).unwrap();
        let mut initramfs = Archive::new();
        for library in needs.libraries {
            initramfs.file(
                &format!("lib/x86_64-linux-gnu/{library}"),
                0o644,
                Vec::new(),
            );
        }
        check_libraries(&tree, &initramfs, &[]).unwrap();
    }

    fn sample_tree(root: &Path, mtime: SystemTime) {
        let lib = root.join("usr/lib/jvm/lib");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("modules"), vec![3u8; 100_000]).unwrap();
        fs::write(root.join("usr/lib/jvm/release"), "JAVA_VERSION=17\n").unwrap();
        fs::write(root.join("usr/lib/jvm/with space \"quoted\""), "x").unwrap();
        symlink("/usr/lib/jvm/lib/modules", root.join("usr/lib/jvm/link")).unwrap();
        for entry in ["usr/lib/jvm/lib/modules", "usr/lib/jvm/release"] {
            File::options()
                .write(true)
                .open(root.join(entry))
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }

    #[test]
    fn the_same_tree_gives_the_same_ext4_bytes_whenever_it_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut hashes = Vec::new();
        for (i, mtime) in [SystemTime::UNIX_EPOCH, SystemTime::now()]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                // ext4 keeps whole seconds: make every ctime differ.
                std::thread::sleep(Duration::from_millis(1100));
            }
            let tree = dir.path().join(format!("tree{i}"));
            sample_tree(&tree, mtime);
            let work = dir.path().join(format!("work{i}"));
            fs::create_dir(&work).unwrap();
            let image = work.join("root.ext4");
            write_ext4(
                "root",
                &tree,
                &image,
                "zennet-root",
                &"ab".repeat(32),
                &work,
            )
            .unwrap();
            hashes.push(sha256_file(&image).unwrap());
        }
        assert_eq!(hashes[0], hashes[1]);

        // Other inputs, other UUID: another image.
        let tree = dir.path().join("tree0");
        let image = dir.path().join("other.ext4");
        write_ext4(
            "root",
            &tree,
            &image,
            "zennet-root",
            &"cd".repeat(32),
            dir.path(),
        )
        .unwrap();
        assert_ne!(sha256_file(&image).unwrap(), hashes[0]);
        assert!(mke2fs_version().unwrap().starts_with("mke2fs 1."));
    }
}
