//! A fresh machine has only the Rust toolchain, gcc, python3 and
//! qemu-utils: every other program the workspace runs must be installed
//! by the project's scripts. This test finds every program the code
//! spawns — each `Command::new("…")` literal, the host tools of the guest
//! network (`run("ip", …)`), program paths in constants and the
//! hypervisor named in `QemuConfig`'s default — and fails when one is not
//! known here or its Debian package is not installed by `scripts/setup.sh`
//! (through `images/HOST-PACKAGES`) — or, for anchors only the
//! benchmarks run, by `scripts/bench.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Program → the Debian package that installs it. A program missing here
/// fails the test: add it, and its package to `images/HOST-PACKAGES`.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("dpkg", "dpkg"),
    ("systemctl", "systemd"),
    ("systemd-analyze", "systemd"),
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nft", "nftables"),
    ("mke2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("ls", "coreutils"),
    ("true", "coreutils"),
    ("sysbench", "sysbench"),
    ("sshd", "openssh-server"),
    ("ssh-audit", "pypi:ssh-audit"),
    ("curl", "curl"),
    ("promtool", "prometheus"),
    ("chromium", "chromium"),
    ("sha1sum", "coreutils"),
    ("aria2c", "aria2"),
    ("transmission-cli", "transmission-cli"),
    ("nginx", "nginx"),
    ("java", "openjdk-17-jre-headless"),
    ("javac", "openjdk-17-jdk-headless"),
    ("jar", "openjdk-17-jdk-headless"),
    ("python3", "python3"),
    ("dask-scheduler", "python3-distributed"),
    ("pkill", "procps"),
];

/// Packages every Debian system has (priority required/essential).
const ESSENTIAL: &[&str] = &["coreutils", "dpkg", "apt"];

/// Programs of the benchmarks' anchors, installed by `scripts/bench.sh`.
const BENCH_ONLY: &[&str] = &["sysbench", "sshd", "nginx"];

/// Run only where the operator installed a hypervisor that needs its own
/// kernel (Xen's `xl`): no script can install that on a running machine.
const OPERATOR_INSTALLED: &[&str] = &["xl"];

/// This workspace's own binary, where the .deb of `scripts/package.sh`
/// installs it (the unit's ExecStart, the packaging test).
const OURS: &[&str] = &["zennet"];

/// Run from the image's own packages (the guest's busybox, which the
/// benchmark also runs on the host), fetched by the image build.
const FROM_IMAGE: &[&str] = &["busybox"];

#[test]
fn every_spawned_program_is_installed_by_the_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut sources = Vec::new();
    collect_rs(root, &mut sources);
    assert!(sources.len() > 50, "found only {} sources", sources.len());

    let mut programs = BTreeSet::new();
    for file in &sources {
        let text = std::fs::read_to_string(file).unwrap();
        for (open, close) in [
            ("Command::new(\"", "\""),
            ("run(\"", "\""),
            ("binary: \"", "\""),
            ("&str = \"/usr/sbin/", "\""),
            ("&str = \"/usr/bin/", "\""),
            ("&str = \"/opt/zennet-tools/bin/", "\""),
        ] {
            for p in literals(&text, open, close) {
                let name = p.rsplit('/').next().unwrap().to_string();
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    programs.insert((name, file.strip_prefix(root).unwrap().display().to_string()));
                }
            }
        }
    }
    let names: BTreeSet<&str> = programs.iter().map(|(n, _)| n.as_str()).collect();
    for must in ["qemu-system-x86_64", "qemu-img", "ip", "nft", "ssh"] {
        assert!(names.contains(must), "the scan missed {must}: {names:?}");
    }

    let host_packages = std::fs::read_to_string(root.join("images/HOST-PACKAGES")).unwrap();
    let host: BTreeSet<&str> = host_packages
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let bench_sh = std::fs::read_to_string(root.join("scripts/bench.sh")).unwrap();
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    let mut missing = Vec::new();
    for (program, file) in &programs {
        if OPERATOR_INSTALLED.contains(&program.as_str())
            || FROM_IMAGE.contains(&program.as_str())
            || OURS.contains(&program.as_str())
        {
            continue;
        }
        let Some((_, package)) = PACKAGES.iter().find(|(p, _)| p == program) else {
            missing.push(format!(
                "{program} (run in {file}) has no package in this test's table"
            ));
            continue;
        };
        let installed = package
            .strip_prefix("pypi:")
            .is_some_and(|p| setup.contains(&format!("pip\" install -q {p}")))
            || host.contains(package)
            || ESSENTIAL.contains(package)
            || (BENCH_ONLY.contains(&program.as_str()) && bench_sh.contains(package));
        if !installed {
            missing.push(format!(
                "{program} (run in {file}) needs package {package} in images/HOST-PACKAGES"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// setup.sh really installs what HOST-PACKAGES lists.
#[test]
fn setup_installs_the_host_packages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    assert!(
        setup.contains("images/HOST-PACKAGES"),
        "setup.sh no longer reads images/HOST-PACKAGES"
    );
}

fn literals<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        rest = &rest[i + open.len()..];
        if let Some(j) = rest.find(close) {
            out.push(&rest[..j]);
            rest = &rest[j..];
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rs(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}
