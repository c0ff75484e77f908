//! Running zennet as a service: the shipped systemd unit passes
//! `systemd-analyze verify` and its ExecStart is a command line the binary
//! takes; `zennet node install-service` writes it, refuses to replace a
//! different unit without --force; `scripts/package.sh` makes a .deb that
//! apt installs and removes again. The .deb test needs root (apt-get) and
//! a machine where no other zennet sits in /usr/bin.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zennet_tests::zennet_bin;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn shipped_unit() -> String {
    std::fs::read_to_string(workspace().join("deploy/zennet.service")).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    out
}

/// `systemd-analyze verify` on `unit` (named zennet.service), with its
/// ExecStart binary pointed at the one under test (verify checks that it
/// exists); any output that names the unit fails.
fn verify(unit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zennet.service");
    let bin = zennet_bin().to_str().unwrap();
    let unit = unit.replace("ExecStart=/usr/bin/zennet ", &format!("ExecStart={bin} "));
    assert!(unit.contains(&format!("ExecStart={bin} ")), "no ExecStart");
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (package systemd, from images/HOST-PACKAGES)");
    let said = text(&out);
    assert!(out.status.success(), "verify failed:\n{said}");
    let about_unit: Vec<&str> = said.lines().filter(|l| l.contains("zennet")).collect();
    assert!(
        about_unit.is_empty(),
        "verify warns:\n{}",
        about_unit.join("\n")
    );
}

/// The arguments of the unit's ExecStart, after the binary.
fn exec_args(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = line.split_whitespace().map(String::from);
    assert_eq!(words.next().as_deref(), Some("/usr/bin/zennet"));
    words.collect()
}

#[test]
fn the_shipped_unit_verifies_and_its_command_line_parses() {
    let unit = shipped_unit();
    verify(&unit);
    let args = exec_args(&unit);
    assert_eq!(
        args,
        ["--home", "/var/lib/zennet", "node", "run", "--provide"]
    );
    // clap accepts every flag of it (--help stops before anything runs).
    run(Command::new(zennet_bin()).args(&args).arg("--help"));
}

#[test]
fn install_service_writes_the_unit_and_replaces_it_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let unit_dir = dir.path().join("units");
    let path = unit_dir.join("zennet.service");
    let install = |args: &[&str]| {
        Command::new(zennet_bin())
            .args(["node", "install-service", "--unit-dir"])
            .arg(&unit_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };

    // Enabling needs an initialised home: refused before anything is written.
    let out = install(&["--home", dir.path().join("none").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("init --genesis"), "{}", text(&out));
    assert!(!path.exists());

    // As shipped by default.
    let out = install(&["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), shipped_unit());

    // Other flags: refused, the file left as it was.
    let home = "/var/lib/zennet-miner";
    let out = install(&["--home", home, "--no-enable", "--publish", "--mine"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), shipped_unit());

    // With --force: rewritten, and a unit systemd takes.
    let out = install(&[
        "--home",
        home,
        "--no-enable",
        "--publish",
        "--mine",
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let unit = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        exec_args(&unit),
        ["--home", home, "node", "run", "--publish", "--mine"]
    );
    assert!(unit.contains("\nStateDirectory=zennet-miner\n"), "{unit}");
    verify(&unit);

    // The same again: nothing to replace, so no --force needed.
    let out = install(&["--home", home, "--no-enable", "--publish", "--mine"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
}

/// Puts the machine back (the package purged) however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-qq", "zennet"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

#[test]
fn the_deb_carries_binary_unit_and_depends_and_apt_installs_and_removes_it() {
    assert!(
        is_root(),
        "this test installs a package with apt-get: run it as root"
    );
    // Never clobber a zennet the machine already has.
    assert!(
        !Path::new("/usr/bin/zennet").exists(),
        "/usr/bin/zennet exists already; this test would replace and remove it"
    );
    let status = Command::new("dpkg")
        .args(["-s", "zennet"])
        .output()
        .unwrap();
    assert!(
        !text(&status).contains("Status: install ok installed"),
        "package zennet is installed already; this test would remove it"
    );

    // The debug binary the other tests use, packaged fast (gzip -1: xz
    // would take a minute on 60 MB); the script itself is unchanged.
    let out = run(Command::new(workspace().join("scripts/package.sh"))
        .env("ZENNET_BIN", zennet_bin())
        .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
        .env("DPKG_DEB_COMPRESSOR_LEVEL", "1"));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let version = env!("CARGO_PKG_VERSION");
    let arch = run(Command::new("dpkg").arg("--print-architecture")).stdout;
    let arch = String::from_utf8(arch).unwrap();
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("zennet_{version}_{}.deb", arch.trim())
    );
    assert!(deb.parent().unwrap().ends_with("debian"), "{deb:?}");

    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    assert!(info.contains(" Package: zennet\n"), "{info}");
    assert!(info.contains(&format!(" Version: {version}\n")), "{info}");
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {info}"));
    for p in [
        "qemu-system-x86",
        "qemu-utils",
        "openssh-client",
        "e2fsprogs",
        "iproute2",
        "nftables",
    ] {
        assert!(depends.split(", ").any(|d| d == p), "{p} not in {depends}");
    }
    let contents = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    for f in [
        "./usr/bin/zennet",
        "./lib/systemd/system/zennet.service",
        "./usr/share/doc/zennet/copyright",
    ] {
        assert!(contents.contains(f), "{f} not in\n{contents}");
    }
    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    assert_eq!(
        std::fs::read_to_string(unpacked.path().join("lib/systemd/system/zennet.service")).unwrap(),
        shipped_unit()
    );

    let _purge = Purge;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let version_out = run(Command::new("/usr/bin/zennet").arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&version_out.stdout).trim(),
        format!("zennet {version}")
    );
    run(Command::new("apt-get")
        .args(["purge", "-y", "-qq", "zennet"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(!Path::new("/usr/bin/zennet").exists());
    assert!(!Path::new("/lib/systemd/system/zennet.service").exists());
}

/// Whether this process runs as root (/proc/self belongs to its euid).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
