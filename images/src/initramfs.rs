//! Assembling the initramfs: the guest files of this crate, the recipe's
//! files taken from the unpacked packages (with every shared library their
//! ELF headers ask for), the kernel modules in load order, and the list of
//! the image's disks for init.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use goblin::elf::Elf;

use crate::cpio::{Archive, Entry};
use crate::error::ImageError;
use crate::guest;
use crate::manifest::disk_serial;
use crate::modules::ModuleSet;
use crate::recipe::DiskRecipe;

/// Where Debian's amd64 packages put shared libraries, in the order the
/// guest's dynamic loader searches them.
pub(crate) const LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Symlinks are followed at most this many times, as the kernel does.
const MAX_SYMLINK_HOPS: usize = 40;

/// Builds the archive. `packages_root` holds the unpacked recipe packages,
/// `modules_dir` the kernel package's `lib/modules/<release>`.
pub(crate) fn assemble(
    packages_root: &Path,
    files: &[String],
    modules_dir: &Path,
    modules: &ModuleSet,
    disks: &[DiskRecipe],
) -> Result<Archive, ImageError> {
    let mut archive = Archive::new();
    skeleton(&mut archive);
    for file in guest::FILES {
        archive.file(file.path, file.mode, file.contents.as_bytes().to_vec());
    }
    for file in files {
        add_with_libraries(packages_root, file, &mut archive)?;
    }
    add_modules(modules_dir, modules, &mut archive)?;
    if !disks.is_empty() {
        archive.file(
            guest::IMAGE_DISKS_FILE,
            0o644,
            disks_list(disks).into_bytes(),
        );
    }
    Ok(archive)
}

/// `/etc/zennet/disks`: `SERIAL ROLE` per disk, in recipe (and manifest)
/// order.
fn disks_list(disks: &[DiskRecipe]) -> String {
    disks
        .iter()
        .map(|d| format!("{} {}\n", disk_serial(&d.name), d.role.as_str()))
        .collect()
}

/// Gzips the archive with a fixed header (no name, mtime 0) so the same
/// archive always compresses to the same bytes.
pub(crate) fn gzip(archive: &Archive) -> Result<Vec<u8>, std::io::Error> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    archive.write_to(&mut encoder)?;
    let mut out = encoder.finish()?;
    out.flush()?;
    Ok(out)
}

fn skeleton(archive: &mut Archive) {
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "data", "var/log",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.dir("tmp", 0o1777);
    archive.dir("root", 0o700);
    archive.symlink("var/run", "../run");
    archive.symlink("bin/sh", "busybox");
    archive.symlink("sbin/init", "../bin/busybox");
    // The kernel opens /dev/console for init before anything mounts devtmpfs.
    archive.char_dev("dev/console", 0o600, 5, 1);
}

/// Copies `path` and, if it is a dynamically linked ELF file, its program
/// interpreter and shared libraries, transitively.
fn add_with_libraries(root: &Path, path: &str, archive: &mut Archive) -> Result<(), ImageError> {
    let mut pending = vec![path.to_owned()];
    let mut done = BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !done.insert(path.clone()) {
            continue;
        }
        let real = copy_path(root, &path, archive)?;
        let Some(Entry::File { data, .. }) = archive.get(&real) else {
            unreachable!("copy_path ends on a regular file");
        };
        let needs = elf_needs(data).map_err(|reason| ImageError::BadElf {
            path: root.join(real.trim_start_matches('/')),
            reason,
        })?;
        for library in needs.libraries {
            pending.push(find_library(root, &library, &path)?);
        }
        pending.extend(needs.interpreter);
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ElfNeeds {
    pub(crate) interpreter: Option<String>,
    pub(crate) libraries: Vec<String>,
}

/// The program interpreter and DT_NEEDED entries of an ELF file; nothing for
/// other files (scripts, data) and static executables.
pub(crate) fn elf_needs(bytes: &[u8]) -> Result<ElfNeeds, String> {
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(ElfNeeds::default());
    }
    let elf = Elf::parse(bytes).map_err(|e| e.to_string())?;
    Ok(ElfNeeds {
        interpreter: elf.interpreter.map(str::to_owned),
        libraries: elf.libraries.iter().map(|l| (*l).to_owned()).collect(),
    })
}

fn find_library(root: &Path, library: &str, needed_by: &str) -> Result<String, ImageError> {
    LIBRARY_DIRS
        .iter()
        .map(|dir| format!("{dir}/{library}"))
        .find(|path| host_path(root, path).symlink_metadata().is_ok())
        .ok_or_else(|| ImageError::MissingLibrary {
            library: library.to_owned(),
            needed_by: needed_by.to_owned(),
        })
}

/// Copies `path` from the unpacked tree as it is: symlinks stay symlinks (so
/// the layout matches a Debian system) and are followed until a regular file,
/// which is copied too. Returns that file's path.
fn copy_path(root: &Path, path: &str, archive: &mut Archive) -> Result<String, ImageError> {
    let mut path = path.to_owned();
    for _ in 0..MAX_SYMLINK_HOPS {
        let host = host_path(root, &path);
        let meta = match host.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::FileNotInPackages { path });
            }
            Err(e) => return Err(ImageError::io(&host)(e)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host).map_err(ImageError::io(&host))?;
            let target = target.to_string_lossy();
            archive.symlink(&path, &target);
            path = resolve_link(&path, &target);
        } else if meta.is_file() {
            let data = fs::read(&host).map_err(ImageError::io(&host))?;
            archive.file(&path, meta.permissions().mode() & 0o7777, data);
            return Ok(path);
        } else {
            return Err(ImageError::FileNotInPackages { path });
        }
    }
    Err(ImageError::FileNotInPackages { path })
}

fn host_path(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Where the symlink at `link` points, as an absolute path in the image.
pub(crate) fn resolve_link(link: &str, target: &str) -> String {
    let joined = if target.starts_with('/') {
        target.to_owned()
    } else {
        let parent = link.rsplit_once('/').map_or("", |(parent, _)| parent);
        format!("{parent}/{target}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn add_modules(
    modules_dir: &Path,
    set: &ModuleSet,
    archive: &mut Archive,
) -> Result<(), ImageError> {
    let base = format!("lib/modules/{}", set.release);
    let mut order = String::new();
    for module in &set.modules {
        let host = modules_dir.join(&module.rel_path);
        let data = fs::read(&host).map_err(ImageError::io(&host))?;
        archive.file(&format!("{base}/{}", module.rel_path), 0o644, data);
        order.push_str(&module.rel_path);
        order.push('\n');
    }
    archive.file(
        &format!("{base}/modules.dep"),
        0o644,
        set.modules_dep().into_bytes(),
    );
    let builtin = modules_dir.join("modules.builtin");
    let builtin = fs::read(&builtin).map_err(ImageError::io(&builtin))?;
    archive.file(&format!("{base}/modules.builtin"), 0o644, builtin);
    archive.file(guest::MODULE_ORDER_FILE, 0o644, order.into_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::kernel::tests::tiny_elf;

    #[test]
    fn init_learns_the_disks_in_manifest_order() {
        let mut disks = crate::catalog::spark_recipe().disks;
        let mut second = disks[0].clone();
        second.name = "extra".into();
        disks.push(second);
        assert_eq!(disks_list(&disks), "zennet-root root\nzennet-extra root\n");
    }

    #[test]
    fn symlink_targets_resolve_lexically() {
        assert_eq!(
            resolve_link(
                "/usr/lib/dropbear/dropbearconvert",
                "../../bin/dropbearconvert"
            ),
            "/usr/bin/dropbearconvert"
        );
        assert_eq!(
            resolve_link(
                "/lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            ),
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            resolve_link("/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13"),
            "/lib/x86_64-linux-gnu/libz.so.1.2.13"
        );
    }

    #[test]
    fn non_elf_and_static_files_need_nothing() {
        assert_eq!(elf_needs(b"#!/bin/sh\n").unwrap(), ElfNeeds::default());
        assert_eq!(elf_needs(&tiny_elf(None)).unwrap(), ElfNeeds::default());
    }

    #[test]
    fn symlink_chains_are_kept_and_the_file_copied() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(root.path().join("lib64")).unwrap();
        fs::write(lib.join("libz.so.1.2.13"), b"zlib").unwrap();
        symlink("libz.so.1.2.13", lib.join("libz.so.1")).unwrap();
        symlink(
            "/lib/x86_64-linux-gnu/libz.so.1",
            root.path().join("lib64/libz"),
        )
        .unwrap();

        let mut archive = Archive::new();
        let real = copy_path(root.path(), "/lib64/libz", &mut archive).unwrap();
        assert_eq!(real, "/lib/x86_64-linux-gnu/libz.so.1.2.13");
        assert_eq!(
            archive.get("lib64/libz"),
            Some(&Entry::Symlink {
                target: "/lib/x86_64-linux-gnu/libz.so.1".into()
            })
        );
        assert!(matches!(
            archive.get("lib/x86_64-linux-gnu/libz.so.1"),
            Some(Entry::Symlink { .. })
        ));
        assert!(matches!(
            archive.get(&real),
            Some(Entry::File { data, .. }) if data == b"zlib"
        ));
    }

    #[test]
    fn missing_files_and_libraries_are_named() {
        let root = tempfile::tempdir().unwrap();
        let err = copy_path(root.path(), "/usr/sbin/dropbear", &mut Archive::new()).unwrap_err();
        assert!(err.to_string().contains("/usr/sbin/dropbear"), "{err}");

        let err = find_library(root.path(), "libtomcrypt.so.1", "/usr/sbin/dropbear").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("libtomcrypt.so.1"), "{message}");
        assert!(message.contains("dpkg -S"), "{message}");
    }
}
