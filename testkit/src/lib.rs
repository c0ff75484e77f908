//! Test support shared by Zennet's crates (a dev-dependency only), instead
//! of helpers copied from test to test.
//!
//! # Layout
//! * [`free_port`], [`ssh_keygen`], [`guest_ssh`]: loopback ports,
//!   OpenSSH key pairs, a command run in a guest over OpenSSH.
//! * [`image`]: the default image, built once per machine into
//!   `$ZENNET_IMAGE_CACHE` (default `/var/tmp/zennet-images-test`) and
//!   shared by every VM test.
//! * [`wait_for_marker`]: wait for a line in a log (a guest's ready marker).
//! * [`fake`]: a [`zennet_vm::Backend`] without a hypervisor, for tests of
//!   what drives VMs (the provider's contracts) in virtual time, and
//!   [`fake::install_image`], the image record such a backend "boots".
//! * [`internet`]: a namespace with a public-looking address and an HTTP
//!   server, standing for the internet a guest may reach.
//!
//! The in-memory ledger over a real chain lives in `zennet_chain::testkit`
//! (next to the chain it drives).

pub mod fake;
pub mod internet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use fake::FakeBackend;

/// Runs `command` as root in a guest whose sshd is forwarded to loopback
/// `port`, with the stock OpenSSH client and `key`. Test guests make a
/// fresh host key each boot, so it is not checked.
pub fn guest_ssh(key: &Path, port: u16, command: &str) -> std::process::Output {
    guest_ssh_command(key, &[], port, command)
        .output()
        .expect("ssh runs (install openssh-client)")
}

/// The command [`guest_ssh`] runs, with `options` (`-o` pairs) added, to
/// spawn or run as the caller needs.
pub fn guest_ssh_command(key: &Path, options: &[&str], port: u16, command: &str) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ])
    .args(["-o", "ConnectTimeout=20", "-o", "BatchMode=yes"])
    .args(options)
    .arg("-i")
    .arg(key)
    .args(["-p", &port.to_string(), "root@127.0.0.1", command]);
    ssh
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("loopback binds")
        .local_addr()
        .expect("bound")
        .port()
}

/// A fresh Ed25519 key pair made by OpenSSH's `ssh-keygen` in `dir`: the
/// private key's path and the public key line.
pub fn ssh_keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "zennet-test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key written");
    (key, public.trim().to_string())
}

/// The default image, built (or found built) in the shared test cache.
pub fn image() -> zennet_images::Image {
    zennet_images::build(&zennet_images::default_recipe(), &image_cache()).expect("image builds")
}

/// Where VM tests keep the default image between runs.
pub fn image_cache() -> PathBuf {
    std::env::var_os("ZENNET_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/zennet-images-test"))
}

/// Waits until the file at `log` contains `marker`; returns the text then.
pub fn wait_for_marker(log: &Path, marker: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(marker) {
            return Ok(text);
        }
        if started.elapsed() > timeout {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(format!(
                "{} printed no {marker} within {timeout:?}; it ends: {}",
                log.display(),
                tail.join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
