//! The market end to end, with real processes, real VMs (TCG here), the
//! real SSH tunnel and payments settled on chain: the devnet command, a
//! publisher that stops paying, `kill -9` of a provider mid-task, prepay,
//! two publishers on one node, cancel, a stranger's SSH key and a
//! publisher whose host key does not match its announcement.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use zennet_tests::market::{
    Browser, Market, Webhook, api_get, cell, channel_closed, claimed_on_chain, contract, metric,
    metrics, start_in_market, vms_of, wait_running,
};
use zennet_tests::{TestHome, amount, wait_until};

#[test]
fn devnet_runs_a_paid_job_and_balances_reconcile() {
    let home = TestHome::new();
    let out = home.run(&["devnet", "--providers", "2", "--json"]);
    if !out.status.success() {
        // The devnet's root goes with this test's temporary home: show the
        // end of every node's log before it does.
        for entry in std::fs::read_dir(&home.dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("== {} (last 60 lines)", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["job"]["answer"], s["job"]["expected"]);
    assert_eq!(s["job"]["expected"], 3245);
    assert_eq!(s["job"]["kind"], "primes");
    assert_eq!(s["balances_reconcile"], true);
    // Each VM pinged the other over the task's private network.
    let lan = s["private_network"].as_array().unwrap();
    assert_eq!(lan.len(), 2, "{s}");
    assert_ne!(lan[0], lan[1]);
    let providers = s["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 2);
    let mut paid_total = 0;
    for p in providers {
        let paid = amount(&p["paid"]);
        assert!(paid > 0, "provider was not paid: {p}");
        assert_eq!(amount(&p["claimed_on_chain"]), paid);
        assert!(p["vm_boot_ms"].as_u64().unwrap() > 0);
        assert!(p["usage"]["cpu_ms"].as_u64().unwrap() > 0);
        let a = &p["account"];
        assert_eq!(
            amount(&a["after"]) + amount(&a["fees"]),
            amount(&a["before"]) + paid
        );
        paid_total += paid;
    }
    let p = &s["publisher"];
    assert_eq!(
        amount(&p["after"]) + paid_total + amount(&p["fees"]),
        amount(&p["before"])
    );
}

/// Postpay contract: an SSH key named by no acceptance is refused; the
/// provider survives `kill -9` (tunnel back, billing resumes, no voucher
/// lost); a publisher that stops paying gets its VM paused within two
/// payout intervals and terminated after the grace period, and the node
/// is paid on chain for everything vouched. Monitoring sees it: both
/// nodes' `/metrics` parse with promtool and give the JSON API's numbers,
/// and the provider's alert webhook gets "VM paused", then its resolve.
#[test]
fn unpaid_vm_is_paused_then_terminated_and_kill_9_loses_no_voucher() {
    let hook = Webhook::start();
    let webhook = format!("{:?}", hook.url);
    let mut m = Market::start(
        1,
        1,
        &[
            // Long enough for the monitoring and browser checks while
            // the VM is paused.
            ("provider", "grace_secs", "30"),
            ("alerts", "webhook", &webhook),
        ],
    );
    let task = m.announce(0, 1, 2, "");
    let vms = wait_running(&m.publishers[0], &task, 1);
    let vm_id = vms[0]["id"].as_str().unwrap().to_string();
    let publisher = &m.publishers[0];
    let uname = publisher.ok(&["vm", "exec", &vm_id, "--", "uname -r"]);
    assert!(uname.contains("cloud-amd64"), "{uname}");

    // A key that no acceptance names does not get through the SSH server.
    let stranger = m.publishers[0].dir.join("stranger");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .status()
            .unwrap()
            .success()
    );
    let endpoint = api_get(publisher, "/v1/publisher").unwrap()["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let port = endpoint.rsplit(':').next().unwrap();
    let out = ssh_with(&stranger, port, "zennet");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // kill -9 of the provider mid-task.
    wait_until(Duration::from_secs(30), "a first voucher", || {
        contract(&m.providers[0], &task).is_some_and(|c| amount(&c["paid"]) > 0)
    });
    m.providers[0].kill_node();
    let paid_before = amount(&vms_of(publisher, &task)[0]["paid"]);
    let boot = m.miner.p2p_addr();
    start_in_market(&mut m.providers[0], "--provide", &boot);
    wait_until(
        Duration::from_secs(90),
        "the tunnel back and billing resumed",
        || {
            let v = &vms_of(publisher, &task)[0];
            v["connected"] == true && amount(&v["paid"]) > paid_before
        },
    );
    assert!(
        publisher
            .ok(&["vm", "exec", &vm_id, "--", "echo back"])
            .contains("back")
    );
    // The node holds what the publisher last sent.
    wait_until(
        Duration::from_secs(10),
        "the node to hold the last voucher",
        || {
            let c = contract(&m.providers[0], &task).unwrap();
            let v = &vms_of(publisher, &task)[0];
            amount(&c["paid"]) == amount(&v["paid"])
        },
    );

    // While paid, the contract shows when it would pause without a voucher.
    wait_until(Duration::from_secs(10), "a pause deadline", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        contract(&m.providers[0], &task)
            .is_some_and(|c| c["pause_at_ms"].as_u64().is_some_and(|at| at + 1000 >= now))
    });
    // The publisher stops paying: paused within two payout intervals…
    publisher.ok(&["task", "pay", &task, "--compute", "off"]);
    let stopped = std::time::Instant::now();
    wait_until(Duration::from_secs(15), "the VM to be paused", || {
        contract(&m.providers[0], &task).is_some_and(|c| c["phase"] == "paused")
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(2 * 2 + 3),
        "paused after {:?}",
        stopped.elapsed()
    );
    let c = contract(&m.providers[0], &task).unwrap();
    let vm = c["vm"].as_str().unwrap().to_string();
    let info = m.providers[0].json(&["agent", "vm", "list"]);
    let local = info
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == vm)
        .unwrap();
    assert_eq!(local["state"], "paused");
    monitoring_sees_the_paused_vm(&m, &task, &vm, &vm_id, &hook);
    the_dashboard_shows_the_paused_vm(&m, &task, &vm, &vm_id);
    // …and terminated after the grace period, paid on chain for everything vouched.
    wait_until(
        Duration::from_secs(90),
        "termination and the channel closed",
        || {
            contract(&m.providers[0], &task).is_some_and(|c| {
                c["phase"] == "ended"
                    && !c["close_tx"].is_null()
                    && channel_closed(&m.miner, c["channel"].as_str().unwrap())
            })
        },
    );
    let c = contract(&m.providers[0], &task).unwrap();
    assert!(c["end_reason"].as_str().unwrap().contains("unpaid"), "{c}");
    let vouched = amount(&vms_of(publisher, &task)[0]["paid"]);
    assert_eq!(amount(&c["paid"]), vouched);
    assert_eq!(claimed_on_chain(&m.providers[0], &c), vouched);
    let local = m.providers[0].json(&["agent", "vm", "list"]);
    assert_eq!(
        local
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == vm)
            .unwrap()["state"],
        "stopped"
    );
    wait_until(Duration::from_secs(20), "the alert to resolve", || {
        hook.received()
            .iter()
            .any(|n| n["alert"] == "VmPaused" && n["status"] == "resolved")
    });
    // An ended contract and a stopped VM leave the metrics.
    let text = metrics(&m.providers[0]);
    assert_eq!(metric(&text, "zennet_vm_paused", &[("vm", &vm)]), None);
    assert_eq!(
        metric(&text, "zennet_contract_paid_total", &[("task", &task)]),
        None
    );
    assert_eq!(
        metric(&text, "zennet_provider_earned_total", &[]),
        Some(vouched as f64)
    );
}

/// While the publisher is not paying (so the amounts stand still): the
/// provider's and publisher's metrics parse and match their JSON API, and
/// the webhook has the "VM paused" alert with the VM's id.
fn monitoring_sees_the_paused_vm(m: &Market, task: &str, vm: &str, vm_id: &str, hook: &Webhook) {
    let provider = &m.providers[0];
    // The scrape saw a height between these two (blocks go on meanwhile).
    let before = provider.height() as f64;
    let text = metrics(provider);
    let after = provider.height() as f64;
    let c = contract(provider, task).unwrap();
    check_metrics(&text);
    let l = [("task", task)];
    assert_eq!(metric(&text, "zennet_vm_paused", &[("vm", vm)]), Some(1.0));
    assert_eq!(metric(&text, "zennet_vm_running", &[("vm", vm)]), Some(0.0));
    assert_eq!(metric(&text, "zennet_contract_paused", &l), Some(1.0));
    assert_eq!(metric(&text, "zennet_contract_pause_in_seconds", &l), None);
    let paid = amount(&c["paid"]) as f64;
    assert_eq!(metric(&text, "zennet_contract_paid_total", &l), Some(paid));
    // Accrual may go on (a paused VM still holds its memory) between reads.
    let accrued = metric(&text, "zennet_contract_accrued_total", &l).unwrap();
    assert!(accrued <= amount(&c["accrued"]) as f64 && accrued >= paid);
    assert_eq!(
        metric(&text, "zennet_contract_unpaid", &l),
        Some(accrued - paid)
    );
    let channel = c["channel"].as_str().unwrap();
    let on_chain = api_get(provider, &format!("/v1/channels/{channel}")).unwrap();
    assert_eq!(
        metric(&text, "zennet_contract_claimed_total", &l),
        Some(amount(&on_chain["claimed"]) as f64)
    );
    let expiry = on_chain["expiry_height"].as_u64().unwrap() as f64;
    let left = metric(&text, "zennet_contract_channel_expiry_blocks", &l).unwrap();
    assert!(
        (expiry - after..=expiry - before).contains(&left),
        "{left} blocks left; expiry {expiry}, height {before}..{after}"
    );
    let vouchers = metric(&text, "zennet_provider_vouchers_total", &[]).unwrap();
    assert!(vouchers >= 1.0, "{text}");
    assert!(metric(&text, "zennet_provider_voucher_latency_seconds_count", &[]).unwrap() >= 1.0);

    // Price suggestions from the one task on chain, which this node took.
    let p = provider.json(&["agent", "prices"]);
    assert_eq!(p["basis"], "accepted", "{p}");
    assert_eq!(p["acceptances_seen"], 1);
    assert_eq!(p["min_per_compute_unit_second"], "1000");
    assert_eq!(p["min_per_memory_gib_hour"], "3600000");
    assert_eq!(p["min_base_per_second"], "10");
    // Its only instance is taken: nothing open to earn from.
    assert_eq!(
        (p["would_take"].as_u64(), p["income_per_day"].as_str()),
        (Some(0), Some("0"))
    );

    let publisher = &m.publishers[0];
    let text = metrics(publisher);
    check_metrics(&text);
    let v = &vms_of(publisher, task)[0];
    assert_eq!(
        metric(&text, "zennet_publisher_vm_paid_total", &[("vm", vm_id)]),
        Some(amount(&v["paid"]) as f64)
    );
    assert_eq!(
        metric(&text, "zennet_publisher_vm_connected", &[("vm", vm_id)]),
        Some(1.0)
    );

    wait_until(Duration::from_secs(20), "the VM-paused webhook", || {
        hook.received()
            .iter()
            .any(|n| n["alert"] == "VmPaused" && n["status"] == "firing" && n["labels"]["vm"] == vm)
    });
}

/// A real browser on both nodes' dashboards, while the amounts stand
/// still: refused without a login; with the link `zennet dashboard`
/// prints, the provider page shows the contract's paid and claimed
/// amounts and the paused VM as the JSON API does, and the publisher page
/// the task's spend and its VM. A screenshot of every page goes to
/// `target/tmp/dashboard/`.
fn the_dashboard_shows_the_paused_vm(m: &Market, task: &str, vm: &str, vm_id: &str) {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let provider = &m.providers[0];
    let api = provider.api();
    let stranger = Browser::default();
    let refused = stranger.dom(&format!("{api}/ui/provider"));
    assert!(
        refused.contains("Not logged in") && !refused.contains(task),
        "{refused}"
    );

    let browser = Browser::default();
    let login = provider.json(&["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page = browser.dom(&login);
    let c = contract(provider, task).unwrap();
    assert_eq!(
        cell(&page, "data-task", task, "num paid"),
        Some(amount(&c["paid"]).to_string()),
        "{page}"
    );
    let channel = c["channel"].as_str().unwrap();
    let on_chain = api_get(provider, &format!("/v1/channels/{channel}")).unwrap();
    assert_eq!(
        cell(&page, "data-task", task, "num claimed"),
        Some(amount(&on_chain["claimed"]).to_string())
    );
    assert_eq!(
        cell(&page, "data-task", task, "paused").as_deref(),
        Some("paused")
    );
    assert_eq!(
        cell(&page, "data-vm", vm, "paused").as_deref(),
        Some("paused")
    );
    // A paused VM burns nothing: its live CPU reads zero.
    assert_eq!(
        cell(&page, "data-vm", vm, "num cpu-now").as_deref(),
        Some("0%")
    );
    assert!(page.contains(r#"<svg id="earnings""#), "{page}");
    assert!(page.contains(r#"<table id="prices">"#), "{page}");
    assert!(page.contains(r#"<svg id="earnings-history""#), "{page}");
    // A login link works once: in another browser it is refused.
    let again = stranger.dom(&login);
    assert!(again.contains("Not logged in"), "{again}");
    for p in ["provider", "chain", "files"] {
        browser.screenshot(&format!("{api}/ui/{p}"), &shots.join(format!("{p}.png")));
    }

    let publisher = &m.publishers[0];
    let browser = Browser::default();
    let login = publisher.json(&["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page = browser.dom(&login);
    let spent: u128 = vms_of(publisher, task)
        .iter()
        .map(|v| amount(&v["paid"]))
        .sum();
    assert_eq!(
        cell(&page, "data-task", task, "num spent"),
        Some(spent.to_string()),
        "{page}"
    );
    assert_eq!(
        cell(&page, "data-vm", vm_id, "num paid"),
        Some(spent.to_string())
    );
    assert!(page.contains(&format!("zennet vm ssh {vm_id}")), "{page}");
    browser.screenshot(
        &format!("{}/ui/publisher", publisher.api()),
        &shots.join("publisher.png"),
    );
}

/// `promtool check metrics` accepts the text.
fn check_metrics(text: &str) {
    zennet_tests::promtool(&["check", "metrics"], text);
}

/// Prepay, two publishers' tasks side by side on one node (separate
/// cgroups and channels), cancel stopping only its own VM, and a
/// publisher whose host key no longer matches its announcement.
#[test]
fn prepay_two_publishers_side_by_side_cancel_and_wrong_host_key() {
    // Accepting by hand here, so the test decides what the node takes.
    let mut m = Market::start(2, 2, &[("market", "auto_accept", "false")]);
    // Two VMs of the prepaid task, on two nodes: its private network.
    let prepaid = m.announce(0, 2, -4, "web_port = 8080");
    let postpaid = m.announce(1, 1, 2, "persistent_storage_gib = 1");
    let verdicts = m.providers[0].json(&["agent", "tasks"]);
    assert!(
        verdicts
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task"] == prepaid && t["verdict"] == "acceptable"),
        "{verdicts}"
    );
    m.providers[0].ok(&["agent", "accept", &prepaid]);
    m.providers[1].ok(&["agent", "accept", &prepaid]);
    m.providers[0].ok(&["agent", "accept", &postpaid]);
    let a = wait_running(&m.publishers[0], &prepaid, 2);
    let b = wait_running(&m.publishers[1], &postpaid, 1);
    let provider = &m.providers[0];
    private_network_joins_a_tasks_vms_only(&m, &a, &b);
    vm_forward_carries_ports_both_ways(&m.publishers[0], a[0]["id"].as_str().unwrap());
    web_apps_are_served_by_app_id(&m.publishers[0], &a);

    // Prepay: the node was paid ahead before the VM ran, and is ahead once
    // the publisher has answered the report sent when the tunnel came up
    // (a boot slower than the prepaid seconds — TCG under a loaded CI —
    // is billed before the publisher can be asked).
    let mut c = Value::Null;
    wait_until(
        Duration::from_secs(60),
        "the prepaid contract to be ahead",
        || {
            c = contract(provider, &prepaid).unwrap();
            c["phase"] == "running" && amount(&c["paid"]) >= amount(&c["accrued"])
        },
    );
    assert!(amount(&c["voucher"]["voucher"]["cumulative"]) > 0);

    // Two contracts, two channels, two VMs in two cgroups.
    let d = contract(provider, &postpaid).unwrap();
    assert_ne!(c["channel"], d["channel"]);
    let vms = provider.json(&["agent", "vm", "list"]);
    let pids: Vec<(String, u64)> = [&c, &d]
        .iter()
        .map(|k| {
            let v = vms
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["id"] == k["vm"])
                .unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    for (id, pid) in &pids {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cg.contains(&format!("zennet/{id}")), "{cg}");
    }
    for (publisher, vm) in [(&m.publishers[0], &a[0]), (&m.publishers[1], &b[0])] {
        let id = vm["id"].as_str().unwrap();
        assert!(
            publisher
                .ok(&["vm", "exec", id, "--", "echo hi"])
                .contains("hi")
        );
    }

    // Cancel the prepaid task: its VM stops and its channel closes; the other runs on.
    m.publishers[0].ok(&["task", "cancel", &prepaid]);
    wait_until(
        Duration::from_secs(60),
        "the cancelled contract to close",
        || {
            contract(provider, &prepaid).is_some_and(|c| {
                c["phase"] == "ended" && channel_closed(&m.miner, c["channel"].as_str().unwrap())
            })
        },
    );
    let c = contract(provider, &prepaid).unwrap();
    assert_eq!(claimed_on_chain(provider, &c), amount(&c["paid"]));
    assert_eq!(contract(provider, &postpaid).unwrap()["phase"], "running");
    let id = b[0]["id"].as_str().unwrap();
    assert!(
        m.publishers[1]
            .ok(&["vm", "exec", id, "--", "echo still"])
            .contains("still")
    );

    // The publisher stops paying for storage: the node stops billing it and
    // does not keep the volume when the contract ends.
    let volume = provider
        .dir
        .join("agent/volumes")
        .join(format!("task-{}.img", &postpaid[2..14]));
    assert!(volume.exists(), "the task's volume is attached");
    m.publishers[1].ok(&["task", "pay", &postpaid, "--storage", "off"]);
    wait_until(
        Duration::from_secs(20),
        "the node to stop billing storage",
        || contract(provider, &postpaid).is_some_and(|c| c["storage_paid"] == false),
    );
    m.publishers[1].ok(&["task", "cancel", &postpaid]);
    wait_until(
        Duration::from_secs(60),
        "the storage-less contract to close",
        || {
            contract(provider, &postpaid).is_some_and(|c| {
                c["phase"] == "ended" && channel_closed(&m.miner, c["channel"].as_str().unwrap())
            })
        },
    );
    assert!(!volume.exists(), "an unpaid volume is not kept");

    // A publisher whose SSH host key changed since it announced: the node
    // refuses to talk to it and gives the task up without starting a VM.
    m.pin_ssh_endpoint(0);
    let task = m.announce(0, 1, 2, "");
    m.publishers[0].stop_node();
    std::fs::remove_file(m.publishers[0].dir.join("publisher/host_key")).unwrap();
    let boot = m.miner.p2p_addr();
    start_in_market(&mut m.publishers[0], "--publish", &boot);
    let provider = &m.providers[0];
    provider.ok(&["agent", "accept", &task]);
    wait_until(
        Duration::from_secs(90),
        "the node to give up on the task",
        || contract(provider, &task).is_some_and(|c| c["phase"] == "failed"),
    );
    let c = contract(provider, &task).unwrap();
    assert!(
        c["end_reason"].as_str().unwrap().contains("host key"),
        "{c}"
    );
    assert!(c["vm"].is_null(), "no VM was started for an impostor");
}

/// The prepaid task's two VMs (on two nodes) reach each other on the
/// private addresses their publisher gave them, with traffic metered; the
/// other publisher's VM, beside one of them on the same node and at the
/// same address on its own network, reaches neither.
fn private_network_joins_a_tasks_vms_only(m: &Market, a: &[Value], b: &[Value]) {
    let lan = |v: &Value| v["lan_address"].as_str().unwrap().to_string();
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    let (a0, a1, b0) = (&a[0], &a[1], &b[0]);
    let (pa, pb) = (&m.publishers[0], &m.publishers[1]);
    assert_ne!(lan(a0), lan(a1));
    // The other task's network is its own: its one VM has the first place.
    assert_eq!(lan(b0), "10.88.0.2");
    for (publisher, vm) in [(pa, a0), (pa, a1), (pb, b0)] {
        let (vm_id, address) = (id(vm), lan(vm));
        wait_until(Duration::from_secs(60), "the VM's private address", || {
            publisher
                .run(&["vm", "exec", &vm_id, "--", "ip -4 addr"])
                .stdout
                .windows(address.len() + 1)
                .any(|w| w == format!("{address}/").as_bytes())
        });
    }
    let ping = |publisher: &TestHome, from: &Value, to: &str| {
        publisher
            .run(&[
                "vm",
                "exec",
                &id(from),
                "--",
                &format!("ping -c 2 -W 5 {to}"),
            ])
            .status
            .success()
    };
    let traffic = |vm: &Value| {
        vms_of(pa, vm["task"].as_str().unwrap())
            .iter()
            .find(|v| v["id"] == vm["id"])
            .map(|v| v["usage"]["traffic_bytes"].as_u64().unwrap())
            .unwrap()
    };
    let before = traffic(a1);
    assert!(
        ping(pa, a0, &lan(a1)),
        "a task's VM cannot reach its sibling"
    );
    assert!(ping(pa, a1, &lan(a0)));
    // About 1.4 MB across the private network (700 echoes of 1 KB each
    // way), counted in the VMs' traffic like the tunnel's.
    let flood = format!("ping -q -A -c 700 -s 1000 -W 5 {}", lan(a1));
    assert!(
        pa.run(&["vm", "exec", &id(a0), "--", &flood])
            .status
            .success()
    );
    wait_until(
        Duration::from_secs(30),
        "the private traffic to be metered",
        || traffic(a1) >= before + 1_000_000,
    );
    // Another task's VM, at 10.88.0.2 on its own network: the task's VM
    // at 10.88.0.3 is not there (nor, by the first check, the other at .2).
    let sibling = [a0, a1].into_iter().find(|v| lan(v) != lan(b0)).unwrap();
    assert!(
        !ping(pb, b0, &lan(sibling)),
        "a stranger's VM reached the task's VM"
    );
    // Nothing answers at .1 (kept for the publisher).
    assert!(!ping(pa, a0, "10.88.0.1"));
}

/// `zennet vm forward`: a port here reaches the VM's sshd, and a port in
/// the VM reaches a server here; a malformed forward is refused before any
/// ssh runs.
fn vm_forward_carries_ports_both_ways(publisher: &TestHome, vm: &str) {
    use std::io::Read;
    let err = publisher.fails(&["vm", "forward", vm, "80"]);
    assert!(err.contains("LOCAL:VM"), "{err}");
    let err = publisher.fails(&["vm", "forward", vm, "--reverse", "0:22"]);
    assert!(err.contains("1-65535"), "{err}");

    let here = zennet_testkit::free_port();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let served = server.local_addr().unwrap().port();
    let mut forward = Command::new(zennet_tests::zennet_bin())
        .arg("--home")
        .arg(&publisher.dir)
        .args(["vm", "forward", vm, &format!("{here}:22")])
        .args(["--reverse", &format!("7100:{served}")])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    wait_until(
        Duration::from_secs(30),
        "the forward to the VM's sshd",
        || {
            std::net::TcpStream::connect(("127.0.0.1", here)).is_ok_and(|mut c| {
                let mut buf = [0u8; 64];
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let n = c.read(&mut buf).unwrap_or(0);
                banner = String::from_utf8_lossy(&buf[..n]).into_owned();
                banner.starts_with("SSH-2.0-dropbear")
            })
        },
    );
    // The reverse way: the VM's 127.0.0.1:7100 is our server. It hangs up
    // after a line (busybox nc waits for that, not for its own input's end).
    let line = std::thread::spawn(move || {
        let (conn, _) = server.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut line);
        line
    });
    wait_until(
        Duration::from_secs(30),
        "the VM's port 7100 to reach us",
        || {
            publisher
                .run(&[
                    "vm",
                    "exec",
                    vm,
                    "--",
                    "echo from-the-vm | nc 127.0.0.1 7100",
                ])
                .status
                .success()
        },
    );
    assert_eq!(line.join().unwrap().trim(), "from-the-vm");
    forward.kill().unwrap();
    forward.wait().unwrap();
}

/// The prepaid task names `web_port = 8080`: its app id's URL reaches
/// both VMs' pages in turn; an unknown id is a 404, and a VM whose server
/// is gone is a 502 that says so.
fn web_apps_are_served_by_app_id(publisher: &TestHome, vms: &[Value]) {
    let ids: Vec<&str> = vms.iter().map(|v| v["id"].as_str().unwrap()).collect();
    for id in &ids {
        let serve = format!(
            "mkdir -p /www && echo page-{} > /www/index.html && httpd -p 8080 -h /www </dev/null >/dev/null 2>&1",
            &id[2..10]
        );
        publisher.ok(&["vm", "exec", id, "--", &serve]);
    }
    let list = publisher.json(&["app", "list"]);
    let app = &list["apps"][0];
    assert_eq!(app["web_port"], 8080, "{list}");
    let url = app["url"].as_str().unwrap().to_string();
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-s", "-m", "60", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.trim().to_string())
    };
    let pages: std::collections::BTreeSet<String> = (0..4)
        .map(|_| {
            let (code, body) = curl(&url);
            assert_eq!(code, "200", "{url}: {body}");
            body
        })
        .collect();
    let expected: std::collections::BTreeSet<String> = ids
        .iter()
        .map(|id| format!("page-{}", &id[2..10]))
        .collect();
    assert_eq!(pages, expected, "round-robin over both VMs");

    let port = list["listen"].as_str().unwrap().rsplit_once(':').unwrap().1;
    let (code, body) = curl(&format!("http://000000000000.zennet.localhost:{port}/"));
    assert_eq!(code, "404", "{body}");
    assert!(body.contains("no app 000000000000"), "{body}");

    publisher.ok(&["vm", "exec", ids[1], "--", "killall httpd"]);
    let answers: Vec<(String, String)> = (0..4).map(|_| curl(&url)).collect();
    assert!(
        answers
            .iter()
            .any(|(c, b)| c == "502" && b.contains("did not answer on port 8080")),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(c, _)| c == "200"), "{answers:?}");
}

fn ssh_with(key: &Path, port: &str, user: &str) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-N", "-i"])
        .arg(key)
        .args(["-p", port, &format!("{user}@127.0.0.1")])
        .output()
        .unwrap()
}
