//! The provider's machine side as an operator uses it: build the image,
//! run a node with --provide, start VMs, log in with the stock OpenSSH
//! client, keep a persistent volume across stop/start, and survive
//! `kill -9` of the node (VMs keep running and are re-attached; a dead VM
//! with a persistent volume is relaunched).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use zennet_tests::{TestHome, wait_until};

fn ssh_key(dir: &Path) -> std::path::PathBuf {
    zennet_testkit::ssh_keygen(dir).0
}

fn ssh(key: &Path, port: u64, command: &str) -> Option<String> {
    let out = zennet_testkit::guest_ssh(key, port as u16, command);
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// Runs `command` in the VM once its sshd answers.
fn ssh_when_ready(key: &Path, port: u64, command: &str) -> String {
    let mut out = None;
    wait_until(Duration::from_secs(120), "the guest's sshd", || {
        out = ssh(key, port, command);
        out.is_some()
    });
    out.unwrap()
}

fn vm(home: &TestHome, id: &str) -> Value {
    home.json(&["agent", "vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
        .expect("VM listed")
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn operator_runs_vms_with_persistent_volumes_and_survives_kill_9() {
    let mut home = TestHome::new();
    home.ok(&["init"]);
    let image = home.json(&["image", "build"]);
    assert_eq!(image["id"], "zennet-tiny");
    let listed = home.json(&["image", "list"]);
    assert_eq!(listed[0]["hash"], image["hash"]);
    let key = ssh_key(&home.dir);
    let public = key.with_extension("pub");
    let public = public.to_str().unwrap();

    home.start_node(&["--provide", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    // Bad input is refused with a reason.
    assert!(
        home.fails(&[
            "agent",
            "vm",
            "start",
            "--cores",
            "0",
            "--authorized-key",
            public
        ])
        .contains("cores")
    );
    assert!(
        home.fails(&[
            "agent",
            "vm",
            "start",
            "--authorized-key",
            key.to_str().unwrap()
        ])
        .contains("private key")
    );
    assert!(
        home.fails(&[
            "agent",
            "vm",
            "start",
            "--image",
            "nope",
            "--authorized-key",
            public
        ])
        .contains("nope")
    );

    // A VM with a persistent volume: log in, write to the volume.
    let a = home.json(&[
        "agent",
        "vm",
        "start",
        "--cores",
        "1",
        "--mem-mib",
        "256",
        "--volume",
        "data",
        "--disk-gib",
        "1",
        "--authorized-key",
        public,
    ]);
    let (a_id, a_port) = (
        a["id"].as_str().unwrap().to_string(),
        a["ssh_port"].as_u64().unwrap(),
    );
    assert_eq!(ssh_when_ready(&key, a_port, "uname -n").trim(), "zennet");
    ssh(&key, a_port, "echo kept > /data/note && sync").expect("write to the volume");
    // The volume is in use: a second VM cannot take it.
    assert!(
        home.fails(&[
            "agent",
            "vm",
            "start",
            "--volume",
            "data",
            "--authorized-key",
            public
        ])
        .contains("attached")
    );

    // Metering: CPU and memory accumulate in the agent's database.
    wait_until(Duration::from_secs(20), "usage to be metered", || {
        let u = &vm(&home, &a_id)["usage"];
        u["cpu_ns"].as_u64().unwrap() > 0 && u["memory_bytes"].as_u64().unwrap() > 0
    });
    // The live load (the dashboard's "CPU now") follows a busy guest.
    ssh(
        &key,
        a_port,
        "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/busy",
    )
    .expect("start a busy loop");
    wait_until(Duration::from_secs(20), "a busy guest's live load", || {
        vm(&home, &a_id)["cpu_cores_now"].as_f64().unwrap() > 0.25
    });
    ssh(&key, a_port, "kill $(cat /tmp/busy)").expect("stop the busy loop");

    // A second VM without a volume.
    let b = home.json(&[
        "agent",
        "vm",
        "start",
        "--cores",
        "1",
        "--mem-mib",
        "128",
        "--authorized-key",
        public,
    ]);
    let b_id = b["id"].as_str().unwrap().to_string();
    ssh_when_ready(&key, b["ssh_port"].as_u64().unwrap(), "true");
    let a_pid = vm(&home, &a_id)["pid"].as_u64().unwrap();
    let b_pid = vm(&home, &b_id)["pid"].as_u64().unwrap();

    // kill -9 the node: the VMs keep running.
    home.kill_node();
    assert!(
        pid_alive(a_pid) && pid_alive(b_pid),
        "VMs outlive the agent"
    );
    // While the node is down, VM A dies too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "VM A to die", || !pid_alive(a_pid));

    home.start_node(&["--provide", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    // B is re-attached as it was; A (persistent) is relaunched with its volume.
    let b_after = vm(&home, &b_id);
    assert_eq!(b_after["pid"].as_u64(), Some(b_pid));
    assert_eq!(b_after["state"], "running");
    let a_after = vm(&home, &a_id);
    assert_eq!(a_after["state"], "running");
    assert_ne!(a_after["pid"].as_u64(), Some(a_pid));
    assert_eq!(
        ssh_when_ready(&key, a_port, "cat /data/note").trim(),
        "kept"
    );
    assert!(home.node_log().contains("re-attached running VM"));

    // Stop and start again: the volume's content survives.
    let stopped = home.json(&["agent", "vm", "stop", &a_id]);
    assert_eq!(stopped["state"], "stopped");
    assert!(!pid_alive(a_after["pid"].as_u64().unwrap()));
    let again = home.json(&[
        "agent",
        "vm",
        "start",
        "--volume",
        "data",
        "--authorized-key",
        public,
    ]);
    assert_eq!(
        ssh_when_ready(&key, again["ssh_port"].as_u64().unwrap(), "cat /data/note").trim(),
        "kept"
    );

    for id in [again["id"].as_str().unwrap(), b_id.as_str()] {
        home.ok(&["agent", "vm", "stop", id]);
    }
    home.stop_node();
}
