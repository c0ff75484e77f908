//! Distributed jobs on rented VMs (TCG here; KVM where it works):
//! * the Spark primes application (`cli/assets/jobs/Primes.java`, below
//!   300,000) across two providers' `zennet-spark` VMs — `zennet devnet
//!   --job spark`, the master and driver on this host — vs the same
//!   application in Spark's `local[2]` on this host, the same jars and JRE;
//! * from the announcement being mined to every VM's worker registered
//!   with the master (the devnet's own figure);
//! * Dask the same way (`--job dask`, the count below 50,000) vs the same
//!   script against a local cluster of two processes;
//! * (suite `lan`) the private network: 32 MiB from one VM to the other (busybox `wget`
//!   from busybox `httpd`, over the publisher's switch) vs the same bytes
//!   from the publisher into a VM through its SSH tunnel (`vm exec`, into
//!   `cat`), and into a VM through `zennet vm forward` (to busybox `nc`);
//!   each less a command's fixed cost, measured alone.
//!
//! A JVM under TCG runs 5-12 times slower than native, so the ratio here
//! is mostly the TCG factor plus the cost of the network; under KVM it
//! is the network's alone. The devnet keeps its images in the shared
//! image cache (`ZENNET_IMAGE_CACHE`, here the tests').

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zennet_tests::market::{Market, vms_of, wait_addressed, wait_running};
use zennet_tests::wait_until;

use crate::{row, single};

const SPARK_BELOW: u64 = 300_000;
const DASK_BELOW: u64 = 50_000;

pub fn run(quick: bool) {
    println!("== distributed jobs on rented VMs (2 providers) ==");
    let zennet = std::env::current_exe().unwrap().with_file_name("zennet");
    assert!(
        zennet.exists(),
        "{} is missing; run `cargo build --release -p zennet-cli` first",
        zennet.display()
    );

    let cache = zennet_testkit::image_cache();
    let work = tempfile::tempdir().unwrap();

    // Spark: the anchor first, on the same jars the devnet's master uses.
    let jars = zennet_images::spark_host_jars(&cache, &mut |_| {}).expect("Spark's jars");
    let jar = zennet_tests::compile_spark_app(work.path(), &jars);
    let local = spark_local(&jars, &jar);
    let spark = devnet(&zennet, &cache, "spark", SPARK_BELOW);
    report(
        "Spark primes < 300k, 2 VMs (TCG)",
        spark,
        "local[2] on this host",
        local,
    );
    if quick {
        return;
    }
    let dask = devnet(&zennet, &cache, "dask", DASK_BELOW);
    let local = dask_local(work.path());
    report(
        "Dask primes < 50k, 2 VMs (TCG)",
        dask,
        "local cluster, 2 processes",
        local,
    );
}

/// A devnet job's rows: its time beside the local anchor's (seconds), and
/// the time to every worker registered.
fn report(what: &str, (ms, registered): (f64, f64), anchor: &str, local: f64) {
    row(what, ms / 1000.0, anchor, local, "s");
    single(
        "  announcement → every worker registered",
        registered / 1000.0,
        "s",
    );
}

/// Runs `zennet devnet --job JOB`; the job's time and the time from the
/// announcement to its workers registered, in ms.
fn devnet(zennet: &Path, cache: &Path, job: &str, below: u64) -> (f64, f64) {
    let out = Command::new(zennet)
        .args(["devnet", "--providers", "2", "--json", "--job", job])
        .args(["--primes-below", &below.to_string()])
        .env("ZENNET_IMAGE_CACHE", cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "devnet --job {job}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["job"]["answer"], s["job"]["expected"], "{s}");
    (
        s["job"]["ms"].as_f64().unwrap(),
        s["job"]["workers_registered_ms"].as_f64().unwrap(),
    )
}

/// The application in `local[2]`, JVM start included (as the devnet's
/// figure includes the driver's); seconds.
fn spark_local(jars: &Path, jar: &Path) -> f64 {
    let started = Instant::now();
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .env("SPARK_SCALA_VERSION", "2.13")
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .args(["-Xmx1g", "org.apache.spark.deploy.SparkSubmit"])
        .args(["--master", "local[2]", "--class", "Primes"])
        .arg(jar)
        .args([&SPARK_BELOW.to_string(), "0"])
        .output()
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ZENNET-PRIMES count=25997 "),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The Dask script against a local cluster of two worker processes.
fn dask_local(dir: &Path) -> f64 {
    let script = dir.join("local.py");
    std::fs::write(
        &script,
        format!(
            "import runpy, sys\n\
             from distributed import LocalCluster\n\
             if __name__ == '__main__':\n\
             \x20   c = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)\n\
             \x20   import os; os.environ['DASK_SCHEDULER_ADDRESS'] = c.scheduler_address\n\
             \x20   import dask; dask.config.refresh()\n\
             \x20   sys.argv = ['primes.py', '{DASK_BELOW}', '2']\n\
             \x20   runpy.run_path({:?}, run_name='__main__')\n",
            dir.join("primes.py").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("primes.py"),
        include_str!("../../cli/assets/jobs/primes.py"),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .output()
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ZENNET-PRIMES count=5133 "),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// Bytes each network figure moves.
const NET_BYTES: u64 = 32 << 20;

/// The `lan` suite: the private network VM to VM, vs the tunnel and `vm
/// forward` into a VM, in a market of two providers' `zennet-tiny` VMs.
pub fn network() {
    println!("== the private network and the tunnel, between rented VMs (TCG) ==");
    let zennet = std::env::current_exe().unwrap().with_file_name("zennet");
    assert!(
        zennet.exists(),
        "{} is missing; run `cargo build --release -p zennet-cli` first",
        zennet.display()
    );
    // SAFETY: set before this suite starts any thread that reads it.
    unsafe { std::env::set_var("ZENNET_BIN", &zennet) };
    let m = Market::start(1, 2, &[]);
    let publisher = &m.publishers[0];
    let task = m.announce(0, 2, 2, "");
    let vms = wait_running(publisher, &task, 2);
    wait_addressed(publisher, &task, 2);
    let id = |i: usize| vms[i]["id"].as_str().unwrap().to_string();
    let (a, b) = (id(0), id(1));
    let b_addr = vms_of(publisher, &task)
        .iter()
        .find(|v| v["id"] == b.as_str())
        .and_then(|v| v["lan_address"].as_str().map(String::from))
        .unwrap();
    let count = NET_BYTES >> 16;
    publisher.ok(&[
        "vm",
        "exec",
        &b,
        "--",
        &format!(
            "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob bs=65536 count={count} \
             2>/dev/null && httpd -p 8000 -h /tmp/www"
        ),
    ]);
    // A command's fixed cost (ssh through the tunnel, the guest's shell).
    let fixed = timed(|| {
        publisher.ok(&["vm", "exec", &a, "--", "true"]);
    });
    let lan = timed(|| {
        publisher.ok(&[
            "vm",
            "exec",
            &a,
            "--",
            &format!("wget -q -O /dev/null http://{b_addr}:8000/blob"),
        ]);
    }) - fixed;
    let tunnel = timed(|| {
        let mut exec = Command::new(zennet_tests::zennet_bin())
            .arg("--home")
            .arg(&publisher.dir)
            .args(["vm", "exec", &a, "--", "cat > /dev/null"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = exec.stdin.take().unwrap();
        std::io::copy(&mut std::io::repeat(0).take(NET_BYTES), &mut stdin).unwrap();
        drop(stdin);
        assert!(exec.wait().unwrap().success());
    }) - fixed;
    let mb = NET_BYTES as f64 / 1e6;
    row(
        "private network VM → VM (32 MiB, TCG)",
        mb / lan,
        "tunnel into a VM (vm exec)",
        mb / tunnel,
        "MB/s",
    );

    // Into a VM through `vm forward`: busybox nc listens in the VM.
    let here = zennet_testkit::free_port();
    let mut forward = Command::new(zennet_tests::zennet_bin())
        .arg("--home")
        .arg(&publisher.dir)
        .args(["vm", "forward", &a, &format!("{here}:5002")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // ssh listens here at once (a connection before the VM's listener is
    // up is closed: nothing to probe for in the VM).
    wait_until(Duration::from_secs(30), "the forward to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", here)).is_ok()
    });
    let mut listener = Command::new(zennet_tests::zennet_bin())
        .arg("--home")
        .arg(&publisher.dir)
        .args(["vm", "exec", &a, "--", "nc -l -p 5002 > /dev/null"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let forwarded = timed(|| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", here)).unwrap();
        std::io::copy(&mut std::io::repeat(0).take(NET_BYTES), &mut conn).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = conn.read(&mut [0u8; 1]);
    });
    let _ = listener.kill();
    let _ = listener.wait();
    let _ = forward.kill();
    let _ = forward.wait();
    row(
        "into a VM through vm forward (32 MiB)",
        mb / forwarded,
        "tunnel into a VM (vm exec)",
        mb / tunnel,
        "MB/s",
    );
    for vm in [&a, &b] {
        let _ = publisher.run(&["vm", "stop", vm]);
    }
}

/// Seconds `f` takes.
fn timed(f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    started.elapsed().as_secs_f64()
}
