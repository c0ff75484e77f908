//! The browser app (`/app`) end to end: headless Chromium (Debian's) on
//! two real `zennet node run` processes' HTTP file servers.
//!
//! - an encrypted 8 MiB file, added on one node and fetched by the other
//!   with `fs get`: the link `fs link` prints downloads it from both
//!   nodes (the page counts parts per node), decrypts it, shows its
//!   SHA-256, and Chromium saves it to disk byte for byte; a screenshot
//!   of the page goes to `target/tmp/fs-browser/`;
//! - a wrong key shows an error and offers (and saves) nothing; a
//!   missing key is asked for;
//! - an unencrypted file whose stored parts are corrupt on the node that
//!   served the page: the SHA-1 check catches the bad part, that node is
//!   dropped and every part comes from the other;
//! - a directory held only by the other node: the page's own node is
//!   dropped (it lacks the file) and each file is offered with its hash.

use std::path::Path;

use sha1::Digest;
use zennet_tests::files::{LOOPBACK, PART, await_seeders, part_files, random_file, sha256, str_of};
use zennet_tests::market::{Browser, cell};
use zennet_tests::{TestHome, homes_on_one_chain};

/// The page has finished, one way or the other.
const SETTLED: &str = "['done', 'error'].includes(document.getElementById('state').dataset.state)";

fn http_url(home: &TestHome) -> String {
    format!("http://{}", str_of(&home.json(&["fs", "status"]), "http"))
}

/// The page's state (`done`, `error`) and its message.
fn page_state(dom: &str) -> (String, String) {
    let at = dom.find(r#"id="state""#).expect("the page has a state");
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let kind = tag
        .split("data-state=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default();
    let text = &dom[at + tag.len() + 1..];
    (
        kind.to_string(),
        text[..text.find('<').unwrap()].to_string(),
    )
}

/// The SHA-256 the page shows for the saved file `path`.
fn page_sha256(dom: &str, path: &str) -> Option<String> {
    let at = dom.find(&format!("data-file=\"{path}\""))?;
    let li = &dom[at..at + dom[at..].find("</li>")?];
    let code = &li[li.find(r#"class="sha256">"#)? + 15..];
    Some(code[..code.find('<')?].to_string())
}

fn node_parts(dom: &str, url: &str) -> u64 {
    cell(dom, "data-node", url, "parts")
        .unwrap_or_else(|| panic!("no row for {url}: {dom}"))
        .parse()
        .unwrap()
}

#[test]
fn the_browser_app_fetches_verifies_and_decrypts() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fs-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let mut homes = homes_on_one_chain(2);
    let mut b = homes.pop().unwrap();
    let mut a = homes.pop().unwrap();
    let work = a.dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();
    a.start_node(&LOOPBACK);
    let boot = a.p2p_addr();
    b.start_node(&[&LOOPBACK[..], &["--bootstrap", &boot]].concat());
    let (url_a, url_b) = (http_url(&a), http_url(&b));

    // An encrypted 8 MiB file on A; B holds it too, through fs get.
    let secret = random_file(&work.join("report.bin"), 8 << 20);
    let added = a.json(&[
        "fs",
        "add",
        "--encrypt",
        work.join("report.bin").to_str().unwrap(),
    ]);
    let (id, key) = (str_of(&added, "id"), str_of(&added, "key"));
    let parts = added["parts"].as_u64().unwrap();
    await_seeders(&b, &id, 1);
    b.json(&[
        "fs",
        "get",
        &id,
        "--key",
        &key,
        "-o",
        work.join("b-copy.bin").to_str().unwrap(),
    ]);
    let link = a.json(&["fs", "link", &id, "--node", &url_b, "--save"]);
    let url = str_of(&link, "url");
    assert_eq!(url, format!("{url_a}/app#{id}:{key}&node={url_b}&save"));
    let saved = work.join("saved");
    let browser = Browser::default().save_downloads_to(&saved);
    let dom = browser.dom_saving(
        &url,
        SETTLED,
        &saved.join("report.bin"),
        secret.len() as u64,
    );
    assert_eq!(page_state(&dom).0, "done", "{dom}");
    assert_eq!(std::fs::read(saved.join("report.bin")).unwrap(), secret);
    assert_eq!(page_sha256(&dom, "report.bin"), Some(sha256(&secret)));
    let (from_a, from_b) = (node_parts(&dom, &url_a), node_parts(&dom, &url_b));
    println!("parts from A: {from_a}, from B: {from_b} (of {parts})");
    assert!(
        from_a > 0 && from_b > 0,
        "parts came from both nodes: {dom}"
    );
    assert_eq!(from_a + from_b, parts, "each part fetched once");
    let shot = shots.join("app.png");
    browser.screenshot_when(url.trim_end_matches("&save"), SETTLED, &shot);

    // A wrong key: an error, nothing offered, nothing saved.
    let wrong_saved = work.join("wrong");
    let browser = Browser::default().save_downloads_to(&wrong_saved);
    let wrong = format!("{url_a}/app#{id}:{}&node={url_b}&save", "00".repeat(32));
    let dom = browser.dom_when(&wrong, SETTLED);
    let (kind, message) = page_state(&dom);
    assert_eq!(kind, "error", "{dom}");
    assert!(message.starts_with("Wrong key"), "{message}");
    assert!(!dom.contains("download="), "nothing offered: {dom}");
    assert_eq!(std::fs::read_dir(&wrong_saved).unwrap().count(), 0);
    // No key at all: the page asks for it.
    let dom = browser.dom_when(&format!("{url_a}/app#{id}"), SETTLED);
    let (kind, message) = page_state(&dom);
    assert_eq!(kind, "error", "{dom}");
    assert!(message.contains("needs its key"), "{message}");

    // An unencrypted file on both nodes, every stored part corrupt on A.
    let plain = random_file(&work.join("plain.bin"), 3 * PART + 1);
    let plain_path = work.join("plain.bin");
    let plain_id = str_of(&a.json(&["fs", "add", plain_path.to_str().unwrap()]), "id");
    let on_b = str_of(&b.json(&["fs", "add", plain_path.to_str().unwrap()]), "id");
    assert_eq!(plain_id, on_b);
    let hashes: Vec<String> = plain
        .chunks(PART)
        .map(|c| hex::encode(sha1::Sha1::digest(c)))
        .collect();
    let mut corrupted = 0;
    for p in part_files(&a) {
        if hashes.contains(&p.file_name().unwrap().to_string_lossy().to_string()) {
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[0] ^= 0x55;
            std::fs::write(&p, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 4);
    let saved = work.join("saved-plain");
    let browser = Browser::default().save_downloads_to(&saved);
    let url = format!("{url_a}/app#{plain_id}&node={url_b}&save");
    let dom = browser.dom_saving(&url, SETTLED, &saved.join("plain.bin"), plain.len() as u64);
    assert_eq!(page_state(&dom).0, "done", "{dom}");
    assert_eq!(std::fs::read(saved.join("plain.bin")).unwrap(), plain);
    assert_eq!(page_sha256(&dom, "plain.bin"), Some(sha256(&plain)));
    let bad_a: u64 = cell(&dom, "data-node", &url_a, "bad")
        .unwrap()
        .parse()
        .unwrap();
    let state_a = cell(&dom, "data-node", &url_a, "state").unwrap();
    assert!(bad_a >= 1, "A's bad part was caught: {dom}");
    assert!(state_a.starts_with("dropped: sent a bad part"), "{state_a}");
    assert_eq!(node_parts(&dom, &url_a), 0, "no bad part used");
    assert_eq!(node_parts(&dom, &url_b), 4, "every part from B");

    // A directory only B holds, opened on A: A is dropped for lacking it.
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let one = random_file(&tree.join("one.txt"), 1000);
    let two = random_file(&tree.join("sub/two.bin"), PART + 7);
    let tree_id = str_of(&b.json(&["fs", "add", tree.to_str().unwrap()]), "id");
    let dom = Browser::default().dom_when(&format!("{url_a}/app#{tree_id}&node={url_b}"), SETTLED);
    assert_eq!(page_state(&dom).0, "done", "{dom}");
    assert_eq!(page_sha256(&dom, "tree/one.txt"), Some(sha256(&one)));
    assert_eq!(page_sha256(&dom, "tree/sub/two.bin"), Some(sha256(&two)));
    assert_eq!(
        cell(&dom, "data-node", &url_a, "state").as_deref(),
        Some("dropped: does not hold this file")
    );
}
