//! VM images over the file network, end to end: a publisher has a custom
//! image (`custom-tiny`: the default image's files under a manifest of
//! its own) and publishes it (`zennet image publish`); a provider that has
//! only the default image takes a task naming `custom-tiny` by file id: it
//! fetches the image from every seeder, drops the seeder whose stored
//! parts are corrupt, installs the image only after it matches the
//! announced manifest hash, and boots the task's VM from it.
//!
//! The cheating sides: a second seeder (the miner) whose copy is corrupt
//! on disk, and a publisher whose file is not the image it announces
//! (another kernel under the honest manifest: every part verifies against
//! its own metainfo, only the image check can tell) — that task is never
//! accepted, nothing of it is installed and the file is not kept.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use zennet_tests::files::{part_files, str_of};
use zennet_tests::market::{contract, fund, rand_suffix, start_in_market, vms_of, wait_running};
use zennet_tests::{TestHome, homes_on_one_chain, set_config, wait_until};

#[test]
fn a_provider_fetches_a_published_image_checks_it_and_boots_it() {
    let mut homes = homes_on_one_chain(3);
    let mut provider = homes.pop().unwrap();
    let mut publisher = homes.pop().unwrap();
    let mut miner = homes.pop().unwrap();
    let work = publisher.dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();

    miner.start_node(&["--mine", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let boot = miner.p2p_addr();
    // The default image is the machine's shared test build (made once);
    // the provider has it (a provider needs it to probe the accelerator),
    // and the publisher has a custom image made from it.
    let tiny = zennet_testkit::image();
    let provider_images = provider.dir.join("images");
    std::fs::create_dir_all(&provider_images).unwrap();
    std::os::unix::fs::symlink(
        zennet_testkit::image_cache().join(zennet_images::DEFAULT_IMAGE_ID),
        provider_images.join(zennet_images::DEFAULT_IMAGE_ID),
    )
    .unwrap();
    let hash = custom_image(&tiny, &publisher.dir.join("images").join(ID));
    assert_eq!(str_of(&publisher.json(&["image", "list"])[0], "hash"), hash);
    set_config(&publisher, "publisher", "ssh_listen", "\"127.0.0.1:0\"");
    start_in_market(&mut publisher, "--publish", &boot);
    fund(&miner, &publisher, "100000000000000");
    publisher.ok(&["id", "mine", "--role", "publisher", "--threads", "1"]);
    start_in_market(&mut provider, "--provide", &boot);
    fund(&miner, &provider, "1000000000");
    provider.ok(&["id", "mine", "--role", "node", "--threads", "1"]);
    assert!(!has_image(&provider, ID));

    let published = publisher.json(&["image", "publish", ID]);
    assert_eq!(str_of(&published, "hash"), hash);
    let file = str_of(&published, "file");

    // The miner seeds the same tree (same bytes, so the same file id) and
    // then its stored parts rot.
    let tree = work.join(ID);
    copy_image(&publisher.dir.join("images").join(ID), &tree);
    let again = miner.json(&["fs", "add", tree.to_str().unwrap()]);
    assert_eq!(str_of(&again, "id"), file, "the same tree has the same id");
    for p in part_files(&miner) {
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }

    // The lying publisher's file: the honest manifest over another kernel
    // of the same size (all of it other bytes, so that the honest fetch
    // later shares no kernel part with it and asks both seeders).
    let forged = work.join("forged").join(ID);
    copy_image(&tree, &forged);
    let kernel = forged.join("vmlinux");
    let len = std::fs::metadata(&kernel).unwrap().len() as usize;
    zennet_tests::files::random_file(&kernel, len);
    let forged_file = str_of(
        &publisher.json(&["fs", "add", forged.to_str().unwrap(), "--price", "0"]),
        "id",
    );
    assert_ne!(forged_file, file);

    let liar = announce(&publisher, &hash, &forged_file);
    wait_until(
        Duration::from_secs(180),
        "the forged image to be fetched and refused",
        || verdict(&provider, &liar).contains("could not be fetched"),
    );
    let why = verdict(&provider, &liar);
    assert!(why.contains("vmlinux") && why.contains("SHA-256"), "{why}");
    assert!(
        contract(&provider, &liar).is_none(),
        "a forged image's task is never taken"
    );
    assert!(!has_image(&provider, ID));

    let task = announce(&publisher, &hash, &file);
    wait_running(&publisher, &task, 1);
    let images = provider.json(&["image", "list"]);
    let fetched = images.as_array().unwrap().iter().find(|i| i["id"] == ID);
    assert_eq!(
        fetched.map(|i| str_of(i, "hash")),
        Some(hash.clone()),
        "{images}"
    );
    let row = contract(&provider, &task).unwrap();
    assert_eq!(row["image_id"], ID, "{row}");
    let log = provider.node_log();
    assert!(
        log.contains("seeder dropped"),
        "the corrupt seeder was not dropped: {}",
        provider.node_log_tail(40)
    );
    assert!(log.contains("image fetched and checked"));
    let vm = &vms_of(&publisher, &task)[0];
    let out = publisher.ok(&[
        "vm",
        "exec",
        vm["id"].as_str().unwrap(),
        "--",
        "uname",
        "-r",
    ]);
    assert!(out.contains("cloud-amd64"), "{out}");
    // (The liar's task names the same id and manifest hash: now that the
    // genuine image is here, that task may be taken, and runs the genuine
    // image; its file is never fetched again.)
    // The forged file is not kept (nor seeded); the image is, for others.
    let held: Vec<String> = provider
        .json(&["fs", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| str_of(f, "id"))
        .collect();
    assert!(
        held.contains(&file) && !held.contains(&forged_file),
        "{held:?}"
    );
    // VMs outlive their node by design: stop them, or they stay behind.
    for vm in provider.json(&["agent", "vm", "list"]).as_array().unwrap() {
        if vm["state"] == "running" || vm["state"] == "paused" {
            provider.ok(&["agent", "vm", "stop", vm["id"].as_str().unwrap()]);
        }
    }
}

/// The custom image's id.
const ID: &str = "custom-tiny";

/// Writes image `ID` at `dir`: `tiny`'s files under a manifest naming
/// `ID`, sealed. Returns its manifest hash.
fn custom_image(tiny: &zennet_images::Image, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for f in &tiny.manifest.files {
        std::fs::copy(tiny.dir.join(&f.name), dir.join(&f.name)).unwrap();
    }
    let mut m = tiny.manifest.clone();
    m.id = ID.into();
    let m = m.seal();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    m.hash
}

fn has_image(home: &TestHome, id: &str) -> bool {
    home.json(&["image", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id)
}

/// Announces a one-VM task naming image `ID` by manifest `hash` and file
/// id `file`; waits until it is mined.
fn announce(p: &TestHome, hash: &str, file: &str) -> String {
    let path = p.dir.join(format!("task-{}.toml", rand_suffix()));
    std::fs::write(
        &path,
        format!(
            r#"images = [{{ id = "{ID}", hash = "{hash}", file = "{file}" }}]
cores = [1]
memory_mib_per_core = 192
min_instances = 1
max_instances = 1
lease_max_secs = 1800
payout_interval_secs = 5
acceptance_window = 400
acceptance_difficulty = 500
[rates]
per_compute_unit_second = "1000"
base_per_second = "10"
"#
        ),
    )
    .unwrap();
    let task = str_of(
        &p.json(&["task", "announce", path.to_str().unwrap()]),
        "hash",
    );
    wait_until(
        Duration::from_secs(60),
        "the announcement to be mined",
        || p.run(&["task", "show", &task]).status.success(),
    );
    task
}

/// The provider's verdict on `task` (`agent tasks`).
fn verdict(provider: &TestHome, task: &str) -> String {
    provider
        .json(&["agent", "tasks"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task)
        .map(|t| str_of(t, "verdict"))
        .unwrap_or_default()
}

/// Copies the files of an image directory (manifest and what it names;
/// not the build's `inputs`) into `to`.
fn copy_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(from.join("manifest.json")).unwrap()).unwrap();
    let mut names = vec!["manifest.json".to_string()];
    for f in manifest["files"].as_array().unwrap() {
        names.push(str_of(f, "name"));
    }
    for name in names {
        std::fs::copy(from.join(&name), to.join(&name)).unwrap();
    }
}
