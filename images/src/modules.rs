//! Picking the kernel modules the guest needs and the order to load them in.
//!
//! Debian's kernel package ships no `modules.dep`: `depmod` writes it when
//! the package is installed, and nothing is installed here. The same facts
//! are in each module's `.modinfo` section (`depends=`, written by modpost
//! from symbol use, which is what depmod reads too), so the build reads
//! those, loads dependencies before dependents, and writes a `modules.dep`
//! for the included modules into the image. Modules the kernel has built in
//! (`modules.builtin`) need no file and are skipped.
//!
//! Soft dependencies (`softdep=`, such as ext4's on the crc32c algorithm)
//! name aliases rather than modules; a recipe that needs one lists the
//! providing module itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::error::ImageError;

/// One module to put in the image, with its path relative to
/// `/lib/modules/<release>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) rel_path: String,
    pub(crate) depends: Vec<String>,
}

/// The modules to include, dependencies first.
#[derive(Debug)]
pub(crate) struct ModuleSet {
    pub(crate) release: String,
    pub(crate) modules: Vec<Module>,
}

impl ModuleSet {
    /// Resolves `wanted` against the unpacked tree `dir`
    /// (`.../lib/modules/<release>`).
    pub(crate) fn resolve(
        dir: &Path,
        release: &str,
        wanted: &[String],
    ) -> Result<Self, ImageError> {
        let builtin = read_builtin(&dir.join("modules.builtin"))?;
        let mut files = BTreeMap::new();
        index_ko_files(dir, dir, &mut files)?;

        let mut catalog = BTreeMap::new();
        let mut pending: Vec<String> = wanted.iter().map(|m| canonical(m)).collect();
        while let Some(name) = pending.pop() {
            if catalog.contains_key(&name) || builtin.contains(&name) {
                continue;
            }
            let rel_path: &String = files.get(&name).ok_or_else(|| ImageError::MissingModule {
                module: name.clone(),
                release: release.to_owned(),
            })?;
            let path = dir.join(rel_path);
            let bytes = fs::read(&path).map_err(ImageError::io(&path))?;
            let depends = modinfo_depends(&bytes).map_err(|reason| ImageError::BadElf {
                path: path.clone(),
                reason,
            })?;
            pending.extend(depends.iter().cloned());
            let module = Module {
                name: name.clone(),
                rel_path: rel_path.clone(),
                depends,
            };
            catalog.insert(name, module);
        }

        let roots: Vec<String> = wanted.iter().map(|m| canonical(m)).collect();
        let order = load_order(&roots, &catalog)?;
        let modules = order
            .into_iter()
            .filter_map(|name| catalog.remove(&name))
            .collect();
        Ok(Self {
            release: release.to_owned(),
            modules,
        })
    }

    /// A `modules.dep` for these modules, in depmod's format: each module,
    /// then all it needs, the one to load first listed last.
    pub(crate) fn modules_dep(&self) -> String {
        let by_name: BTreeMap<&str, &Module> =
            self.modules.iter().map(|m| (m.name.as_str(), m)).collect();
        let mut text = String::new();
        for module in &self.modules {
            let mut needed = Vec::new();
            // self.modules is already in load order, so filtering it keeps
            // that order for each module's own closure.
            let closure = closure_of(&module.name, &by_name);
            for other in &self.modules {
                if other.name != module.name && closure.contains(other.name.as_str()) {
                    needed.push(other.rel_path.as_str());
                }
            }
            needed.reverse();
            text.push_str(&module.rel_path);
            text.push(':');
            for dep in needed {
                text.push(' ');
                text.push_str(dep);
            }
            text.push('\n');
        }
        text
    }
}

fn closure_of<'a>(name: &'a str, by_name: &BTreeMap<&str, &'a Module>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![name];
    while let Some(current) = stack.pop() {
        if seen.insert(current)
            && let Some(module) = by_name.get(current)
        {
            stack.extend(module.depends.iter().map(String::as_str));
        }
    }
    seen
}

/// Module names use `_` and `-` interchangeably; the kernel reports `_`.
pub(crate) fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Depth-first order over `catalog` from `roots`: every module after all it
/// depends on, roots in the order given. Names absent from the catalog are
/// built in and need no loading.
pub(crate) fn load_order(
    roots: &[String],
    catalog: &BTreeMap<String, Module>,
) -> Result<Vec<String>, ImageError> {
    fn visit(
        name: &str,
        catalog: &BTreeMap<String, Module>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        let Some(module) = catalog.get(name) else {
            return Ok(());
        };
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            return Err(ImageError::ModuleCycle {
                module: name.to_owned(),
            });
        }
        for dep in &module.depends {
            visit(dep, catalog, visiting, order)?;
        }
        visiting.remove(name);
        order.push(name.to_owned());
        Ok(())
    }

    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for root in roots {
        visit(root, catalog, &mut visiting, &mut order)?;
    }
    Ok(order)
}

/// The `depends=` list of a module's `.modinfo` section.
pub(crate) fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    let elf = Elf::parse(ko).map_err(|e| e.to_string())?;
    let section = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo"))
        .ok_or("no .modinfo section")?;
    let range = section
        .file_range()
        .ok_or(".modinfo section has no contents")?;
    let info = ko.get(range).ok_or(".modinfo section runs past the file")?;
    Ok(parse_modinfo_depends(info))
}

pub(crate) fn parse_modinfo_depends(info: &[u8]) -> Vec<String> {
    info.split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|deps| deps.split(|&b| b == b','))
        .filter(|dep| !dep.is_empty())
        .map(|dep| canonical(&String::from_utf8_lossy(dep)))
        .collect()
}

fn read_builtin(path: &Path) -> Result<BTreeSet<String>, ImageError> {
    let text = fs::read_to_string(path).map_err(ImageError::io(path))?;
    Ok(text.lines().filter_map(module_name).collect())
}

/// `kernel/drivers/virtio/virtio-rng.ko` -> `virtio_rng`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split_once(".ko").map(|(stem, _)| stem)?;
    Some(canonical(stem))
}

fn index_ko_files(
    base: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, String>,
) -> Result<(), ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io(dir))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io(dir))?;
        let path: PathBuf = entry.path();
        let kind = entry.file_type().map_err(ImageError::io(&path))?;
        if kind.is_dir() {
            index_ko_files(base, &path, files)?;
            continue;
        }
        let rel = path
            .strip_prefix(base)
            .expect("walk stays under its base")
            .to_string_lossy()
            .into_owned();
        // Compressed modules (.ko.xz and the like) would need the guest's
        // insmod to decompress them; Debian 12 ships plain .ko files.
        if rel.ends_with(".ko")
            && let Some(name) = module_name(&rel)
        {
            files.insert(name, rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, depends: &[&str]) -> (String, Module) {
        (
            name.to_owned(),
            Module {
                name: name.to_owned(),
                rel_path: format!("kernel/{name}.ko"),
                depends: depends.iter().map(|d| (*d).to_owned()).collect(),
            },
        )
    }

    fn virtio_catalog() -> BTreeMap<String, Module> {
        BTreeMap::from([
            module("virtio_net", &["net_failover", "virtio", "virtio_ring"]),
            module("net_failover", &["failover"]),
            module("failover", &[]),
            module(
                "virtio_pci",
                &["virtio_pci_modern_dev", "virtio", "virtio_ring"],
            ),
            module("virtio_pci_modern_dev", &[]),
            module("virtio", &[]),
            module("virtio_ring", &[]),
        ])
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let roots = vec!["virtio_pci".to_owned(), "virtio_net".to_owned()];
        let order = load_order(&roots, &virtio_catalog()).unwrap();
        assert_eq!(
            order,
            [
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn builtin_dependencies_are_skipped() {
        // `crc16` is absent from the catalog: built into the kernel.
        let catalog = BTreeMap::from([module("ext4", &["crc16", "jbd2"]), module("jbd2", &[])]);
        let order = load_order(&["ext4".to_owned()], &catalog).unwrap();
        assert_eq!(order, ["jbd2", "ext4"]);
    }

    #[test]
    fn cycles_are_reported() {
        let catalog = BTreeMap::from([module("a", &["b"]), module("b", &["a"])]);
        let err = load_order(&["a".to_owned()], &catalog).unwrap_err();
        assert!(matches!(err, ImageError::ModuleCycle { .. }));
    }

    #[test]
    fn modules_dep_lists_the_closure_first_needed_last() {
        let catalog = virtio_catalog();
        let order = load_order(&["virtio_net".to_owned()], &catalog).unwrap();
        let set = ModuleSet {
            release: "6.1.0-test".into(),
            modules: order.iter().map(|n| catalog[n].clone()).collect(),
        };
        let dep = set.modules_dep();
        assert!(dep.contains(
            "kernel/virtio_net.ko: kernel/virtio_ring.ko kernel/virtio.ko \
             kernel/net_failover.ko kernel/failover.ko\n"
        ));
        assert!(dep.contains("kernel/failover.ko:\n"));
    }

    #[test]
    fn modinfo_depends_field_is_parsed() {
        let info = b"license=GPL\0depends=net_failover,virtio-ring\0name=virtio_net\0\0";
        assert_eq!(parse_modinfo_depends(info), ["net_failover", "virtio_ring"]);
        assert!(parse_modinfo_depends(b"depends=\0name=failover\0").is_empty());
    }

    #[test]
    fn module_names_come_from_paths() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name("kernel/fs/ext4/ext4.ko.xz").as_deref(),
            Some("ext4")
        );
    }
}
