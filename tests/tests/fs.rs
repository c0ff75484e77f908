//! The file network end to end: real `zennet` processes on loopback, one
//! chain and one set of nodes shared by every scenario (a miner, three
//! seeders with an upload cap, one downloader):
//!
//! - 64 MiB from three seeders: each serves, the SHA-256 matches;
//! - a seeder whose stored parts are corrupt is dropped and the download
//!   completes from the others;
//! - `kill -9` of the downloader mid-transfer, then a rerun resumes
//!   without refetching verified parts;
//! - a directory tree, a 0-byte file and a file of 256 KiB + 1 byte;
//! - HTTP: curl of the whole file and of a range, 404 and 416;
//! - encryption: seeders hold only ciphertext, the right key restores the
//!   file, a wrong key fails with one line and writes nothing;
//! - paid from three seeders, then `fs settle`: each seeder claims on
//!   chain exactly what the downloader vouched to it;
//! - a seeder's price above `--max-price` is refused and nothing is written.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;
use zennet_tests::{TestHome, amount, homes_on_one_chain, market, set_config, wait_until};

use zennet_tests::files::{
    LOOPBACK, PART, add_everywhere, await_seeders, hex, part_files, random_file, sha256, str_of,
};

#[test]
fn file_network_on_loopback() {
    let start = Instant::now();
    let mut homes = homes_on_one_chain(5);
    let mut d = homes.pop().unwrap();
    let mut seeders: Vec<TestHome> = homes.drain(1..).collect();
    let mut miner = homes.pop().unwrap();
    let work = d.dir.parent().unwrap().join("work");
    std::fs::create_dir_all(&work).unwrap();

    miner.start_node(&[&LOOPBACK[..], &["--mine"]].concat());
    let boot = miner.p2p_addr();
    let join = [&LOOPBACK[..], &["--bootstrap", &boot]].concat();
    for s in &mut seeders {
        // A cap per seeder keeps transfers long enough to interrupt.
        set_config(s, "fs", "upload_limit_mib_s", "8.0");
        s.start_node(&join);
    }
    d.start_node(&join);

    // 64 MiB from three seeders.
    let big = random_file(&work.join("big.bin"), 64 << 20);
    let big_id = add_everywhere(&seeders, &work.join("big.bin"), &[]);
    await_seeders(&d, &big_id, 3);
    let out = work.join("big.out");
    let got = d.json(&[
        "fs",
        "get",
        &big_id,
        "--protocol",
        "zennet",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&big));
    assert_eq!(got["fetched_parts"], 256);
    for s in got["seeders"].as_array().unwrap() {
        println!(
            "seeder {} served {} parts",
            str_of(s, "peer"),
            s["parts"].as_u64().unwrap()
        );
        assert!(s["parts"].as_u64().unwrap() > 0, "every seeder served: {s}");
    }
    println!("64 MiB in {} ms", got["elapsed_ms"]);
    // Each seeder books what it served to the file it served.
    for s in &seeders {
        let peer = s.json(&["node", "info"])["peer_id"].clone();
        let counted = got["seeders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["peer"] == peer)
            .map_or(0, |v| v["parts"].as_u64().unwrap());
        let listed = s.json(&["fs", "ls"]);
        let f = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == big_id.as_str())
            .expect("the file is listed");
        assert!(f["served_parts"].as_u64().unwrap() >= counted, "{f}");
    }
    // The seeder's dashboard (headless Chromium) shows the same per file.
    let browser = market::Browser::default();
    let login = seeders[0].json(&["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    browser.dom(&login);
    let page = browser.dom(&format!("{}/ui/files", seeders[0].api()));
    let listed = seeders[0].json(&["fs", "ls"]);
    let f = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == big_id.as_str())
        .unwrap();
    for (class, key) in [
        ("num served-parts", "served_parts"),
        ("num served-bytes", "served_bytes"),
    ] {
        assert_eq!(
            market::cell(&page, "data-file", &big_id, class),
            Some(f[key].to_string()),
            "{page}"
        );
    }

    // Seeder 0's copy of a second file is corrupt on disk.
    let second = random_file(&work.join("second.bin"), 16 << 20);
    let second_id = add_everywhere(&seeders, &work.join("second.bin"), &[]);
    let hashes: Vec<String> = second
        .chunks(PART)
        .map(|c| hex(&sha1::Sha1::digest(c)))
        .collect();
    for p in part_files(&seeders[0]) {
        if hashes.contains(&p.file_name().unwrap().to_string_lossy().to_string()) {
            let mut b = std::fs::read(&p).unwrap();
            b[7] ^= 0x55;
            std::fs::write(&p, b).unwrap();
        }
    }
    await_seeders(&d, &second_id, 3);
    let out = work.join("second.out");
    let got = d.json(&[
        "fs",
        "get",
        &second_id,
        "--protocol",
        "zennet",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), second);
    let bad_peer = seeders[0].json(&["node", "info"])["peer_id"].clone();
    for s in got["seeders"].as_array().unwrap() {
        if s["peer"] == bad_peer {
            assert!(str_of(s, "state").contains("corrupt"), "{s}");
            assert_eq!(s["parts"], 0, "no corrupt part counted: {s}");
        } else {
            assert!(s["parts"].as_u64().unwrap() > 0, "{s}");
        }
    }

    // kill -9 of the downloader mid-transfer, then a rerun.
    let third = random_file(&work.join("third.bin"), 48 << 20);
    let third_id = add_everywhere(&seeders, &work.join("third.bin"), &[]);
    await_seeders(&d, &third_id, 3);
    let out = work.join("third.out");
    let mut cli = Command::new(zennet_tests::zennet_bin())
        .arg("--home")
        .arg(&d.dir)
        .args([
            "fs",
            "get",
            &third_id,
            "--protocol",
            "zennet",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut held_at_kill = 0;
    wait_until(Duration::from_secs(60), "a quarter of the parts", || {
        let st = d.json(&["fs", "status"]);
        held_at_kill = st["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == third_id.as_str())
            .map_or(0, |t| t["have_parts"].as_u64().unwrap());
        held_at_kill >= 48
    });
    d.kill_node();
    let _ = cli.wait();
    assert!(
        held_at_kill < 192,
        "killed mid-transfer ({held_at_kill} of 192)"
    );
    assert!(!out.exists());
    d.start_node(&join);
    await_seeders(&d, &third_id, 3);
    let got = d.json(&[
        "fs",
        "get",
        &third_id,
        "--protocol",
        "zennet",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), third);
    let resumed = got["resumed_parts"].as_u64().unwrap();
    assert!(
        resumed >= held_at_kill,
        "{resumed} resumed, {held_at_kill} held at the kill"
    );
    assert_eq!(
        resumed + got["fetched_parts"].as_u64().unwrap(),
        192,
        "no part fetched twice"
    );

    // A directory tree, a 0-byte file and 256 KiB + 1 byte, from one seeder.
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    random_file(&tree.join("a.txt"), 1000);
    random_file(&tree.join("sub/b.bin"), 300 * 1024);
    random_file(&tree.join("sub/deeper/empty"), 0);
    random_file(&tree.join("sub/deeper/c.bin"), PART + 1);
    random_file(&work.join("zero.bin"), 0);
    random_file(&work.join("odd.bin"), PART + 1);
    for (src, name) in [
        (tree.clone(), "tree.out"),
        (work.join("zero.bin"), "zero.out"),
        (work.join("odd.bin"), "odd.out"),
    ] {
        let id = str_of(
            &seeders[1].json(&["fs", "add", src.to_str().unwrap()]),
            "id",
        );
        await_seeders(&d, &id, 1);
        let out = work.join(name);
        d.json(&["fs", "get", &id, "-o", out.to_str().unwrap()]);
        if src.is_dir() {
            for rel in ["a.txt", "sub/b.bin", "sub/deeper/empty", "sub/deeper/c.bin"] {
                assert_eq!(
                    std::fs::read(src.join(rel)).unwrap(),
                    std::fs::read(out.join(rel)).unwrap(),
                    "{rel}"
                );
            }
        } else {
            assert_eq!(
                std::fs::read(&src).unwrap(),
                std::fs::read(&out).unwrap(),
                "{name}"
            );
        }
    }

    // HTTP from a seeder: curl, Range, 404, 416.
    let http = str_of(&seeders[0].json(&["fs", "status"]), "http");
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "curl {args:?}");
        let mut body = o.stdout;
        let code_at = body.iter().rposition(|b| *b == b'\n').unwrap();
        let code = String::from_utf8(body.split_off(code_at)).unwrap();
        (body, code.trim().parse::<u16>().unwrap())
    };
    let (body, code) = curl(&[&format!("http://{http}/file/{big_id}")]);
    assert_eq!((code, sha256(&body)), (200, sha256(&big)));
    let (body, code) = curl(&[
        "-r",
        "1000000-1999999",
        &format!("http://{http}/file/{big_id}"),
    ]);
    assert_eq!(code, 206);
    assert_eq!(body, &big[1_000_000..2_000_000]);
    let (body, code) = curl(&[&format!("http://{http}/file/{big_id}/chunk/3")]);
    assert_eq!((code, body.as_slice()), (200, &big[3 * PART..4 * PART]));
    let (body, code) = curl(&[&format!("http://{http}/file/{}", "ab".repeat(20))]);
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("no file"));
    let (body, code) = curl(&[&format!("http://{http}/file/{big_id}/chunk/256")]);
    assert_eq!(code, 416);
    assert!(String::from_utf8_lossy(&body).contains("past the end"));
    let (_, code) = curl(&["-r", "99999999-", &format!("http://{http}/file/{big_id}")]);
    assert_eq!(code, 416);

    // Encryption: the owner adds with a key derived from its chain key.
    let marker = b"ZENNET-KNOWN-PLAINTEXT-0123456789|";
    let secret: Vec<u8> = marker.iter().copied().cycle().take(3 << 20).collect();
    std::fs::write(work.join("secret.txt"), &secret).unwrap();
    let added = seeders[2].json(&[
        "fs",
        "add",
        "--encrypt",
        work.join("secret.txt").to_str().unwrap(),
    ]);
    let (enc_id, key) = (str_of(&added, "id"), str_of(&added, "key"));
    assert_eq!(key.len(), 64);
    // A second seeder replicates it: it too holds only ciphertext.
    await_seeders(&seeders[1], &enc_id, 1);
    seeders[1].json(&[
        "fs",
        "get",
        &enc_id,
        "--key",
        &key,
        "-o",
        work.join("replica.txt").to_str().unwrap(),
    ]);
    for s in [&seeders[2], &seeders[1]] {
        for p in part_files(s) {
            let b = std::fs::read(&p).unwrap();
            assert!(
                !b.windows(16).any(|w| w == &marker[..16]),
                "plaintext in {}",
                p.display()
            );
        }
    }
    await_seeders(&d, &enc_id, 1);
    let wrong = work.join("wrong.txt");
    let err = d.fails(&[
        "fs",
        "get",
        &enc_id,
        "--key",
        &"00".repeat(32),
        "-o",
        wrong.to_str().unwrap(),
    ]);
    assert!(err.contains("wrong key"), "{err}");
    assert!(!wrong.exists(), "nothing written with a wrong key");
    let right = work.join("right.txt");
    d.json(&[
        "fs",
        "get",
        &enc_id,
        "--key",
        &key,
        "-o",
        right.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&right).unwrap(), secret);
    // The owner needs no key string: it is derived from its chain key.
    let own = work.join("own.txt");
    seeders[2].json(&["fs", "get", &enc_id, "-o", own.to_str().unwrap()]);
    assert_eq!(std::fs::read(&own).unwrap(), secret);

    // Paid: three seeders at a price; the downloader settles and each
    // seeder claims on chain exactly what the downloader vouched to it.
    miner.ok(&["wallet", "send", &d.address(), "1000000000000", "--wait"]);
    for s in &seeders {
        // Claims cost the seeder a fee.
        miner.ok(&["wallet", "send", &s.address(), "1000000000", "--wait"]);
    }
    let balance = |h: &TestHome| amount(&h.json(&["wallet", "balance"])["balance"]);
    let d_before = balance(&d);
    let paid_file = random_file(&work.join("paid.bin"), 8 << 20);
    let paid_id = add_everywhere(&seeders, &work.join("paid.bin"), &["--price", "1000"]);
    await_seeders(&d, &paid_id, 3);
    let spent_before = amount(&d.json(&["fs", "status"])["spent"]);
    let out = work.join("paid.out");
    let got = d.json(&[
        "fs",
        "get",
        &paid_id,
        "--max-price",
        "1000",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), paid_file);
    let spent = amount(&d.json(&["fs", "status"])["spent"]) - spent_before;
    assert!(spent >= 8 * 1000, "every part paid for: {spent}");
    let seeders_before: Vec<u128> = seeders.iter().map(balance).collect();
    let settled = d.json(&["fs", "settle"]);
    let settled = settled.as_array().unwrap();
    assert_eq!(settled.len(), 3, "one channel per seeder: {settled:?}");
    let vouched: u128 = settled.iter().map(|w| amount(&w["paid"])).sum();
    assert!(vouched >= spent, "the channels carry what was spent");
    for w in settled {
        // What the transfer counted as paid to this seeder is what its
        // channel's vouchers carry (the channel paid for nothing else).
        let view = got["seeders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["address"] == w["seeder"])
            .expect("the seeder in the transfer");
        assert_eq!(amount(&view["paid"]), amount(&w["paid"]), "{view}");
        let channel = str_of(w, "channel");
        let i = seeders
            .iter()
            .position(|s| s.address() == str_of(w, "seeder"))
            .expect("a channel to one of the seeders");
        let claimed = || {
            market::api_get(&seeders[i], &format!("/v1/channels/{channel}"))
                .map(|c| amount(&c["claimed"]))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while claimed() != Some(amount(&w["paid"])) {
            if Instant::now() > deadline {
                panic!(
                    "seeder {i} claimed {:?} of {} on {channel}; its log ends:\n{}",
                    claimed(),
                    w["paid"],
                    seeders[i].node_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = balance(&seeders[i]);
        assert!(
            after > seeders_before[i] && after - seeders_before[i] <= amount(&w["paid"]),
            "the claim paid the seeder, less its fee ({} -> {after})",
            seeders_before[i]
        );
    }
    // After the challenge period the same command reclaims the rest; the
    // downloader is out exactly what it vouched, plus its fees.
    let mut reclaimed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for w in d.json(&["fs", "settle"]).as_array().unwrap() {
            reclaimed.insert(str_of(w, "channel"));
        }
        let open: Vec<_> = settled
            .iter()
            .map(|w| str_of(w, "channel"))
            .filter_map(|id| {
                let on_chain = market::api_get(&d, &format!("/v1/channels/{id}"));
                (!reclaimed.contains(&id) || on_chain.is_some()).then_some((id, on_chain))
            })
            .collect();
        if open.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "not reclaimed at height {}: {open:?}; the downloader's log ends:\n{}",
                d.json(&["chain", "info"])["height"],
                d.node_log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lost = d_before - balance(&d);
    assert!(
        lost >= vouched && lost - vouched < 1_000_000,
        "the downloader paid {vouched} in vouchers and {} in fees",
        lost.saturating_sub(vouched)
    );

    // A price above --max-price: refused, nothing written.
    random_file(&work.join("priced.bin"), 1 << 20);
    let priced = str_of(
        &seeders[0].json(&[
            "fs",
            "add",
            work.join("priced.bin").to_str().unwrap(),
            "--price",
            "5",
        ]),
        "id",
    );
    await_seeders(&d, &priced, 1);
    let out = work.join("priced.out");
    let err = d.fails(&[
        "fs",
        "get",
        &priced,
        "--max-price",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("above --max-price 1"), "{err}");
    assert!(!out.exists());
    assert!(
        !d.json(&["fs", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == priced.as_str()),
        "no metainfo stored"
    );
    println!("file network e2e: {:.1} s", start.elapsed().as_secs_f64());
}
