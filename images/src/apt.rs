//! Getting Debian packages without installing them: apt says which version
//! it would install and its SHA-256 (`apt-cache show`), fetches the file
//! (`apt-get download`, which needs no root), and `dpkg-deb -x` unpacks it
//! into a private directory. Nothing on the host changes but the cache.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use tracing::{debug, info};

use crate::error::ImageError;
use crate::host::run;
use crate::manifest::sha256_file;

/// A package version as apt's index describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DebPackage {
    pub(crate) name: String,
    pub(crate) version: String,
    /// SHA-256 of the .deb file, from the signed index.
    pub(crate) sha256: String,
    /// Bytes of the .deb file.
    #[serde(skip)]
    pub(crate) size: u64,
    /// `Pre-Depends` and `Depends`, comma-joined as apt prints them.
    #[serde(skip)]
    pub(crate) depends: String,
}

impl DebPackage {
    /// The concrete kernel a metapackage such as `linux-image-cloud-amd64`
    /// stands for, or `None` when this package is not such a metapackage.
    pub(crate) fn kernel_dependency(&self) -> Option<String> {
        self.depends
            .split([',', '|'])
            .filter_map(|dep| dep.split_whitespace().next())
            .map(|name| name.split(':').next().unwrap_or(name))
            .find(|name| name.starts_with("linux-image-"))
            .map(str::to_owned)
    }

    /// Each dependency as its alternatives' package names (version and
    /// architecture qualifiers dropped): `a (>= 1) | b:any` gives `[a, b]`.
    pub(crate) fn dependency_groups(&self) -> Vec<Vec<String>> {
        self.depends
            .split(',')
            .map(|group| {
                group
                    .split('|')
                    .filter_map(|alt| alt.split_whitespace().next())
                    .map(|name| name.split(':').next().unwrap_or(name).to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|alts| !alts.is_empty())
            .collect()
    }

    /// The name this version is kept under in the download cache.
    fn cache_name(&self) -> String {
        // apt-get download escapes the epoch colon the same way.
        format!("{}_{}.deb", self.name, self.version.replace(':', "%3a"))
    }
}

/// Resolves package names to the versions apt would install now.
pub(crate) fn resolve(names: &[String]) -> Result<Vec<DebPackage>, ImageError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = Command::new("apt-cache");
    command
        .args(["show", "--no-all-versions", "--"])
        .args(names);
    let output = run(&mut command)?;
    let stanzas = parse_control(&String::from_utf8_lossy(&output.stdout));
    let mut found = BTreeMap::new();
    for stanza in stanzas {
        let arch = stanza.get("Architecture").map(String::as_str);
        if !matches!(arch, Some("amd64" | "all")) {
            continue;
        }
        let field = |key: &str| stanza.get(key).cloned().unwrap_or_default();
        let depends = [field("Pre-Depends"), field("Depends")]
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let package = DebPackage {
            name: field("Package"),
            version: field("Version"),
            sha256: field("SHA256"),
            size: field("Size").parse().unwrap_or(0),
            depends,
        };
        found.entry(package.name.clone()).or_insert(package);
    }
    names
        .iter()
        .map(|name| {
            found
                .get(name)
                .filter(|p| !p.version.is_empty() && p.sha256.len() == 64)
                .cloned()
                .ok_or_else(|| ImageError::PackageUnknown {
                    package: name.clone(),
                })
        })
        .collect()
}

/// `roots` and everything they depend on, transitively, at the versions apt
/// would install now, in a stable order (roots first, then by discovery).
/// A dependency with alternatives is met by any alternative already chosen
/// or in `left_out`; otherwise its first alternative is taken. Nothing in
/// `left_out` is followed.
pub(crate) fn resolve_closure(
    roots: &[String],
    left_out: &[String],
) -> Result<Vec<DebPackage>, ImageError> {
    let mut chosen: Vec<DebPackage> = Vec::new();
    let mut wanted: Vec<String> = roots.to_vec();
    // One apt run per level of the dependency tree, not per package.
    while !wanted.is_empty() {
        let batch = std::mem::take(&mut wanted);
        for package in resolve(&batch)? {
            if chosen.iter().any(|p| p.name == package.name) {
                continue;
            }
            chosen.push(package);
        }
        for package in &chosen {
            for alternatives in package.dependency_groups() {
                let met = alternatives.iter().any(|alt| {
                    left_out.contains(alt)
                        || wanted.contains(alt)
                        || chosen.iter().any(|p| &p.name == alt)
                });
                if !met {
                    wanted.push(alternatives[0].clone());
                }
            }
        }
    }
    Ok(chosen)
}

/// Splits Debian control text into stanzas of `Field: value` pairs
/// (continuation lines are folded into their field).
pub(crate) fn parse_control(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut stanzas = Vec::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            last_key = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(value) = last_key.as_ref().and_then(|k| current.get_mut(k)) {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.insert(key.to_owned(), value.trim().to_owned());
            last_key = Some(key.to_owned());
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

/// Returns the cached .deb of each package, in order, first downloading
/// the ones the cache lacks (or holds with the wrong hash) in one apt run.
/// A package may be listed more than once.
pub(crate) fn fetch(packages: &[DebPackage], cache_dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    fs::create_dir_all(cache_dir).map_err(ImageError::io(cache_dir))?;
    let mut missing: Vec<&DebPackage> = Vec::new();
    for package in packages {
        // A package on both the initramfs and a disk (libc6) is one file.
        if missing
            .iter()
            .any(|m| m.cache_name() == package.cache_name())
        {
            continue;
        }
        let cached = cache_dir.join(package.cache_name());
        if cached.exists() && sha256_file(&cached)? == package.sha256 {
            debug!(package = %package.name, "using the cached .deb");
        } else {
            missing.push(package);
        }
    }
    if !missing.is_empty() {
        download(&missing, cache_dir)?;
    }
    Ok(packages
        .iter()
        .map(|p| cache_dir.join(p.cache_name()))
        .collect())
}

fn download(packages: &[&DebPackage], cache_dir: &Path) -> Result<(), ImageError> {
    // A fresh directory, so every .deb in it is from this run and an
    // interrupted download never sits in the cache.
    let scratch = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(ImageError::io(cache_dir))?;
    let specs: Vec<String> = packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    info!(packages = ?specs, "downloading");
    let output = run(Command::new("apt-get")
        .args(["download", "-q", "--"])
        .args(&specs)
        .current_dir(scratch.path()))?;
    // As root, apt warns that its unprivileged sandbox user cannot write the
    // private directory and downloads as root instead; that is harmless.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        debug!("apt-get download: {}", stderr.trim());
    }

    // Match files to packages by content, which also checks every download
    // against the hash in apt's signed index.
    let mut by_hash = BTreeMap::new();
    for entry in fs::read_dir(scratch.path()).map_err(ImageError::io(scratch.path()))? {
        let path = entry.map_err(ImageError::io(scratch.path()))?.path();
        by_hash.insert(sha256_file(&path)?, path);
    }
    for package in packages {
        let Some(downloaded) = by_hash.remove(&package.sha256) else {
            let prefix = format!("{}_", package.name);
            let path = by_hash
                .values()
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .cloned()
                .unwrap_or_else(|| scratch.path().join(package.cache_name()));
            let actual = if path.exists() {
                sha256_file(&path)?
            } else {
                "nothing (apt-get download left no file for it)".to_owned()
            };
            return Err(ImageError::DebHashMismatch {
                path,
                expected: package.sha256.clone(),
                actual,
            });
        };
        let target = cache_dir.join(package.cache_name());
        fs::rename(&downloaded, &target).map_err(ImageError::io(&target))?;
    }
    Ok(())
}

/// Unpacks a .deb's files (not its scripts) under `root`.
pub(crate) fn unpack(deb: &Path, root: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(root).map_err(ImageError::io(root))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Architecture: amd64
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on cloud platforms.
SHA256: 00be21c0c17f08ddf26e82d3b53fe7a41efa4a288938da6bb69e89c4b25c281d

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
";

    #[test]
    fn control_stanzas_are_parsed() {
        let stanzas = parse_control(SHOW);
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0]["Version"], "6.1.192-2");
        assert!(stanzas[0]["Description"].ends_with("on cloud platforms."));
        assert_eq!(stanzas[1]["Package"], "busybox-static");
    }

    #[test]
    fn metapackage_names_its_kernel() {
        let stanza = &parse_control(SHOW)[0];
        let meta = DebPackage {
            name: stanza["Package"].clone(),
            version: stanza["Version"].clone(),
            sha256: stanza["SHA256"].clone(),
            size: 0,
            depends: stanza["Depends"].clone(),
        };
        assert_eq!(
            meta.kernel_dependency().as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let concrete = DebPackage {
            depends: "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool".into(),
            ..meta
        };
        assert_eq!(concrete.kernel_dependency(), None);
    }

    #[test]
    fn epoch_is_escaped_like_apt_does() {
        let package = DebPackage {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            sha256: String::new(),
            size: 0,
            depends: String::new(),
        };
        assert_eq!(package.cache_name(), "busybox-static_1%3a1.35.0-4.deb");
    }

    #[test]
    fn dependency_groups_drop_versions_and_qualifiers() {
        let package = DebPackage {
            name: "python3-minimal".into(),
            version: "3.11.2-1+b1".into(),
            sha256: String::new(),
            size: 0,
            depends: "python3.11-minimal (>= 3.11.2-1~), dpkg (>= 1.13.20), \
                      debconf (>= 0.5) | debconf-2.0, python3:any"
                .into(),
        };
        assert_eq!(
            package.dependency_groups(),
            vec![
                vec!["python3.11-minimal".to_owned()],
                vec!["dpkg".to_owned()],
                vec!["debconf".to_owned(), "debconf-2.0".to_owned()],
                vec!["python3".to_owned()],
            ]
        );
    }
}
