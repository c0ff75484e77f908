//! End to end: build `zennet-tiny` from Debian packages, boot it under QEMU
//! (TCG), log in with the stock OpenSSH client, and check that `/data`
//! survives a power cycle.
//!
//! Needs the host packages in images/HOST-PACKAGES and apt's package lists
//! (`apt-get update`). The image is cached in `$ZENNET_IMAGE_CACHE`, or
//! /var/tmp/zennet-images-test, so later runs skip the build. Run with
//! `CARGO_TARGET_DIR=/work/target-images cargo test -p zennet-images --test e2e_boot -- --nocapture`
//! to see the timings.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Spec, Trust, Vm, cache_dir, drive, init_logs, keygen, require_tools, ssh};
use zennet_images::{
    DATA_DISK_SERIAL, FW_CFG_AUTHORIZED_KEYS, Image, READY_MARKER, default_recipe,
};

/// Hard limit from QEMU launch to the ready marker; a healthy boot under TCG
/// takes about 2.5 s on 2 cores, so this only catches a hung guest.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Keeps the tests of this file from running at once: they share the image
/// cache, and a build beside a TCG guest would skew its boot time.
static SERIAL: Mutex<()> = Mutex::new(());

fn timed_build(dir: &Path) -> (Image, Duration) {
    let started = Instant::now();
    let image = zennet_images::build(&default_recipe(), dir).expect("image build");
    (image, started.elapsed())
}

#[test]
fn build_is_cached_and_reproducible() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    let dir = cache_dir();
    let (image, first) = timed_build(&dir);
    eprintln!(
        "build into {}: {first:.2?} (cold only on a first run)",
        dir.display()
    );
    image.verify().expect("built files match the manifest");

    let inputs = image.dir.join("inputs");
    let before = fs::metadata(&inputs).unwrap().modified().unwrap();
    let (again, cached) = timed_build(&dir);
    eprintln!("cached build: {cached:.2?}");
    assert_eq!(again.manifest, image.manifest);
    assert_eq!(
        fs::metadata(&inputs).unwrap().modified().unwrap(),
        before,
        "a build with unchanged inputs must not rewrite the image"
    );

    // Build again from scratch in another directory, reusing only the
    // downloaded .deb files (the network is not what is under test), and
    // expect the very same bytes.
    let fresh = tempfile::tempdir().unwrap();
    let debs = fresh.path().join(".cache/debs");
    fs::create_dir_all(&debs).unwrap();
    for deb in fs::read_dir(dir.join(".cache/debs")).unwrap() {
        let deb = deb.unwrap();
        fs::hard_link(deb.path(), debs.join(deb.file_name()))
            .or_else(|_| fs::copy(deb.path(), debs.join(deb.file_name())).map(drop))
            .unwrap();
    }
    let (rebuilt, warm) = timed_build(fresh.path());
    eprintln!("rebuild from cached .debs: {warm:.2?}");
    assert_eq!(rebuilt.manifest.hash, image.manifest.hash);
    assert_eq!(rebuilt.manifest, image.manifest);

    // The cache may hold other images too (the heavy tests build theirs).
    assert!(zennet_images::list(&dir).unwrap().contains(&image));
    assert_eq!(zennet_images::load(&dir, "zennet-tiny").unwrap(), image);
}

#[test]
fn boots_to_ssh_and_keeps_data_across_reboots() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    require_tools(&["qemu-system-x86_64", "ssh", "ssh-keygen"]);
    let (image, build_time) = timed_build(&cache_dir());
    eprintln!(
        "image {} ({}) ready in {build_time:.2?}",
        image.manifest.id, image.manifest.hash
    );

    let work = tempfile::tempdir().unwrap();
    let (key, public_key) = keygen(work.path());
    let public_key_path = key.with_extension("pub");

    // A blank persistent volume, as a provider would hand out, and a scratch
    // disk in front of it so the volume is the second virtio disk.
    let data = work.path().join("data.img");
    fs::File::create(&data).unwrap().set_len(256 << 20).unwrap();
    let scratch = work.path().join("scratch.img");
    fs::File::create(&scratch)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    // Boot 1: key on the kernel command line, volume found as /dev/vdb.
    let args = image.kernel_args(&[&public_key]).unwrap();
    let mut vm = Vm::launch(
        &image,
        work.path(),
        "boot1",
        &args,
        &tiny_spec(&[drive(&scratch, "scratch", None), drive(&data, "data", None)]),
    );
    let boot1 = vm.wait_ready(READY_TIMEOUT);
    eprintln!("boot 1 (blank volume, formatted at boot): launch to {READY_MARKER} in {boot1:.2?}");
    let host_key = vm.host_key();

    let hello = ssh(&key, vm.port, &Trust::Any, "echo hello");
    assert_eq!(hello, "hello\n");

    // From here on the guest's host key is pinned to what it printed on the
    // console, as a provider would do.
    let pinned = Trust::Pinned {
        known_hosts: work.path().join("known_hosts"),
        host_key: host_key.clone(),
    };
    let nonce = format!(
        "persisted-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let out = ssh(
        &key,
        vm.port,
        &pinned,
        &format!(
            "grep -q ' /data ext4 ' /proc/mounts && echo {nonce} > /data/marker && sync && cat /data/marker"
        ),
    );
    assert_eq!(out.trim(), nonce, "writing /data");
    vm.power_off(&key, &pinned);

    // Boot 2: the same volume alone, marked by its serial, and the key only
    // through fw_cfg.
    let args = image.kernel_args(&[]).unwrap();
    let extra = [
        drive(&data, "data", Some(DATA_DISK_SERIAL)),
        vec![
            "-fw_cfg".into(),
            format!(
                "name={FW_CFG_AUTHORIZED_KEYS},file={}",
                public_key_path.display()
            ),
        ],
    ];
    let mut vm = Vm::launch(&image, work.path(), "boot2", &args, &tiny_spec(&extra));
    let boot2 = vm.wait_ready(READY_TIMEOUT);
    eprintln!("boot 2 (existing volume): launch to {READY_MARKER} in {boot2:.2?}");
    assert_eq!(vm.host_key(), host_key, "the host key lives on /data");
    let out = ssh(&key, vm.port, &pinned, "cat /data/marker");
    assert_eq!(out.trim(), nonce, "/data/marker after the power cycle");
    vm.power_off(&key, &pinned);
}

/// zennet-tiny's test guest: 256 MiB, one CPU.
fn tiny_spec(extra: &[Vec<String>]) -> Spec<'_> {
    Spec {
        memory_mib: 256,
        cpus: 1,
        extra,
        pass_fds: &[],
    }
}
