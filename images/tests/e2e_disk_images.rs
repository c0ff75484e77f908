//! End to end, heavy: build `zennet-spark` and `zennet-dask`, boot each
//! under QEMU (TCG) with its root disk passed as a read-only descriptor, as
//! the VM runtime will, and run the engine inside the guest:
//!
//! * Spark: `java -version`, a standalone master and worker that register
//!   with each other, and a SQL job with a shuffle whose executor the worker
//!   launches from the image's JRE and jars.
//! * Dask: a scheduler and a worker, and a map/reduce from a client whose
//!   result is checked against the same sum computed here.
//!
//! Both also play a guest that tries to write the shared image disk: the
//! block device refuses, and the disk hashes as its manifest says after the
//! guest is gone.
//!
//! They are `#[ignore]`d and run by hand (`cargo test -p zennet-images
//! --test e2e_disk_images -- --ignored`): `tests/tests/spark.rs`, which
//! `scripts/test.sh` runs once per pass, does the same through the VM
//! runtime across a market's VMs. The first run downloads about 0.5 GB
//! (the pyspark sdist and the packages) into the image cache
//! (`$ZENNET_IMAGE_CACHE`, default /var/tmp/zennet-images-test).

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{
    Spec, Trust, Vm, cache_dir, init_logs, keygen, require_tools, run_ssh, ssh, ssh_command,
    ssh_within,
};
use zennet_images::{DiskRole, Image, Progress};

/// Boots are slower than zennet-tiny's (the overlay, a bigger guest), but
/// still seconds; this only catches a hung guest.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Under TCG a JVM runs 5-12 times slower than native: a worker takes
/// about a minute to register on two idle cores, many more on a busy host.
const SPARK_TIMEOUT: Duration = Duration::from_secs(1200);

/// For every JVM of the test, the executor's included (the worker passes
/// its environment on): C1 only and the serial collector, which cut the
/// JIT's and GC's work under TCG, where start-up dominates; and everything
/// on loopback, so no name lookup leaves the guest.
const SPARK_ENV: &str = "export SPARK_LOCAL_IP=127.0.0.1 \
    JAVA_TOOL_OPTIONS='-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss1m';";
const DASK_TIMEOUT: Duration = Duration::from_secs(300);

/// Two TCG guests on two host cores would only slow each other down.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
#[ignore = "heavy: boots zennet-spark under TCG and runs Spark in it (minutes)"]
fn spark_master_and_worker_register_and_run_a_job_in_the_guest() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let (image, work, key, mut vm) = boot(zennet_images::SPARK_IMAGE_ID, 3072);
    let t = |what: &str| eprintln!("{what}: {:.1?} since the test started", started.elapsed());
    let trust = Trust::Any;
    let port = vm.port;

    let version = ssh(&key, port, &trust, "java -version 2>&1");
    assert!(version.contains("openjdk version \"17."), "{version}");
    let java = ssh(&key, port, &trust, "readlink -f /usr/bin/java");
    assert_eq!(java.trim(), "/usr/lib/jvm/java-17-openjdk-amd64/bin/java");
    let jars = ssh(&key, port, &trust, "ls /opt/spark/jars | wc -l");
    assert_eq!(jars.trim(), "175", "the jars core, SQL and the worker need");
    t("java runs");

    guest_cannot_write_the_image_disk(&key, port);

    // A master and a worker, each in its own session so they outlive ssh.
    ssh(
        &key,
        port,
        &trust,
        &format!(
            "{SPARK_ENV} cd /tmp && setsid spark-class org.apache.spark.deploy.master.Master \
             --host 127.0.0.1 --port 7077 --webui-port 8080 </dev/null >/tmp/master.log 2>&1 & \
             setsid spark-class org.apache.spark.deploy.worker.Worker \
             --host 127.0.0.1 --cores 1 --memory 1g --webui-port 8081 spark://127.0.0.1:7077 \
             </dev/null >/tmp/worker.log 2>&1 &"
        ),
    );
    let registered = wait_for(
        &key,
        port,
        "grep -q 'Successfully registered with master spark://127.0.0.1:7077' /tmp/worker.log \
         && grep -q 'Registering worker 127.0.0.1' /tmp/master.log",
        SPARK_TIMEOUT,
        "cat /tmp/master.log /tmp/worker.log",
    );
    eprintln!("worker registered with the master {registered:.1?} after their launch");
    t("worker registered");

    // A driver in the guest, compiled from source by the JRE's own javac
    // (single-file source launch): a SQL aggregation whose shuffle runs in
    // an executor the worker starts.
    let launched = Instant::now();
    let result = run_program(
        &key,
        port,
        ("/tmp/Job.java", JOB),
        &format!("{SPARK_ENV} spark-class -Xmx512m /tmp/Job.java spark://127.0.0.1:7077"),
        "/tmp/job.log",
        SPARK_TIMEOUT,
    );
    // 100,000 ids grouped by id % 7: seven groups, of 14,286 or 14,285.
    assert_eq!(result, "groups=7 largest=14286");
    let executor = ssh(
        &key,
        port,
        &trust,
        "grep -c 'Asked to launch executor' /tmp/worker.log; grep -c 'Executor added' /tmp/job.log",
    );
    assert!(
        executor
            .lines()
            .all(|n| n.trim().parse::<u32>().unwrap_or(0) >= 1),
        "no executor on the worker: {executor}"
    );
    eprintln!(
        "job with a shuffle, executor on the worker: {:.1?}",
        launched.elapsed()
    );
    t("job done");

    vm.power_off(&key, &trust);
    image
        .verify()
        .expect("the image, root disk included, is unchanged after the guest ran");
    drop(work);
}

const JOB: &str = r#"import java.util.List;

import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

public class Job {
    public static void main(String[] args) {
        SparkSession spark = SparkSession.builder()
            .appName("zennet-image-e2e")
            .master(args[0])
            .config("spark.executor.memory", "512m")
            .config("spark.cores.max", "1")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.network.timeout", "600s")
            .config("spark.executor.heartbeatInterval", "60s")
            .getOrCreate();
        List<Row> groups = spark.range(0, 100000)
            .selectExpr("id % 7 AS k")
            .groupBy("k").count()
            .orderBy(org.apache.spark.sql.functions.col("count").desc())
            .collectAsList();
        System.out.println("ZENNET-RESULT groups=" + groups.size()
            + " largest=" + groups.get(0).getLong(1));
        spark.stop();
    }
}"#;

#[test]
#[ignore = "heavy: boots zennet-dask under TCG and runs Dask in it (a few minutes)"]
fn dask_scheduler_and_worker_compute_in_the_guest() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (image, work, key, mut vm) = boot(zennet_images::DASK_IMAGE_ID, 1024);
    let trust = Trust::Any;
    let port = vm.port;

    let version = ssh(&key, port, &trust, "python3 --version");
    assert!(version.starts_with("Python 3.11"), "{version}");
    guest_cannot_write_the_image_disk(&key, port);

    ssh(
        &key,
        port,
        &trust,
        "cd /tmp && setsid dask-scheduler --host 127.0.0.1 --port 8786 --no-dashboard \
         </dev/null >/tmp/scheduler.log 2>&1 & \
         cd /tmp && setsid dask-worker tcp://127.0.0.1:8786 --nthreads 2 --no-nanny \
         --no-dashboard --memory-limit 0 </dev/null >/tmp/worker.log 2>&1 &",
    );
    let launched = Instant::now();
    let result = run_program(
        &key,
        port,
        ("/tmp/client.py", CLIENT),
        "python3 /tmp/client.py",
        "/tmp/client.log /tmp/scheduler.log /tmp/worker.log",
        DASK_TIMEOUT,
    );
    let expected: u64 = (0..1000u64).map(|x| x * x).sum();
    assert_eq!(result, format!("sum={expected} workers=1"));
    eprintln!(
        "dask map/reduce on the guest's worker: {:.1?}",
        launched.elapsed()
    );

    vm.power_off(&key, &trust);
    image
        .verify()
        .expect("the image is unchanged after the guest ran");
    drop(work);
}

/// Squares 0..1000 on the worker and sums them there, as a client would.
const CLIENT: &str = r#"from distributed import Client

client = Client("tcp://127.0.0.1:8786", timeout=240)
client.wait_for_workers(1, timeout=240)
squares = client.map(lambda x: x * x, range(1000))
total = client.submit(sum, squares).result()
workers = len(client.scheduler_info()["workers"])
print(f"ZENNET-RESULT sum={total} workers={workers}", flush=True)
client.close()"#;

/// Builds image `id` (cached), checks it against its manifest, and boots it
/// with `memory_mib` and two CPUs, its root disk opened read-only here and
/// handed to QEMU as a descriptor (`file=/proc/self/fd/N,readonly=on`).
fn boot(id: &str, memory_mib: u32) -> (Image, tempfile::TempDir, std::path::PathBuf, Vm) {
    init_logs();
    require_tools(&["qemu-system-x86_64", "ssh", "ssh-keygen", "mke2fs"]);
    let recipe = zennet_images::recipe(id).unwrap();
    let started = Instant::now();
    let image = zennet_images::build_with_progress(&recipe, &cache_dir(), &mut |p| {
        if let Progress::Step(step) = p {
            eprintln!("build {id}: {step}");
        }
    })
    .expect("image build");
    eprintln!(
        "image {id} ({}) ready in {:.1?}",
        image.manifest.hash,
        started.elapsed()
    );
    let verified = Instant::now();
    image.verify().expect("built files match the manifest");
    eprintln!(
        "verified against its manifest in {:.1?}",
        verified.elapsed()
    );
    assert!(memory_mib >= image.manifest.min_memory_mib);

    let work = tempfile::tempdir().unwrap();
    let (key, public_key) = keygen(work.path());
    let disk = &image.manifest.disks[0];
    assert_eq!(disk.role, DiskRole::Root);
    assert!(disk.read_only);
    let file = File::open(image.disk_path(disk)).unwrap();
    let fd = file.as_raw_fd();
    let extra = [vec![
        "-drive".into(),
        format!("if=none,id=root,file=/proc/self/fd/{fd},format=raw,readonly=on"),
        "-device".into(),
        format!("virtio-blk-pci,drive=root,serial={}", disk.serial()),
    ]];
    let args = image.kernel_args(&[&public_key]).unwrap();
    let spec = Spec {
        memory_mib,
        cpus: 2,
        extra: &extra,
        pass_fds: &[fd],
    };
    let mut vm = Vm::launch(&image, work.path(), id, &args, &spec);
    let ready = vm.wait_ready(READY_TIMEOUT);
    drop(file);
    eprintln!("{id}: launch to ready in {ready:.2?}");
    let console = vm.console_text();
    assert!(
        console.contains("on the root disks' overlay"),
        "init did not switch to the root disk; console:\n{}",
        vm.console_tail()
    );
    let mounts = ssh(&key, vm.port, &Trust::Any, "cat /proc/mounts");
    assert!(
        mounts.lines().any(|l| l.starts_with("overlay / overlay ")),
        "{mounts}"
    );
    (image, work, key, vm)
}

/// The guest is root: it still cannot write the shared disk, nor make its
/// mount writable; writes to its files land in the RAM layer.
fn guest_cannot_write_the_image_disk(key: &std::path::Path, port: u16) {
    let device = ssh(
        key,
        port,
        &Trust::Any,
        "grep ' /run/zennet/disks/zennet-root ' /proc/mounts | cut -d' ' -f1",
    );
    let device = device.trim();
    assert!(device.starts_with("/dev/vd"), "root disk device {device:?}");
    for attack in [
        format!("dd if=/dev/zero of={device} bs=4096 count=1 seek=100 conv=notrunc,fsync"),
        format!("echo corrupt > {device}"),
        "mount -o remount,rw /run/zennet/disks/zennet-root".to_owned(),
    ] {
        let (ok, _, _) = run_ssh(
            &mut ssh_command(key, port, &Trust::Any, &attack),
            common::SSH_TIMEOUT,
        );
        assert!(!ok, "the guest managed `{attack}`");
    }
    let layered = ssh(
        key,
        port,
        &Trust::Any,
        "echo changed > /usr/lib/os-release-zennet && cat /usr/lib/os-release-zennet \
         && ls /run/zennet/overlay/upper/usr/lib/os-release-zennet",
    );
    assert!(layered.starts_with("changed"), "{layered}");
}

/// Writes `file` (path, contents) in the guest, runs `command` in /tmp with
/// its stderr in the first of `logs`, and returns what it printed after
/// `ZENNET-RESULT `; on failure, panics with the tails of `logs`.
fn run_program(
    key: &std::path::Path,
    port: u16,
    file: (&str, &str),
    command: &str,
    logs: &str,
    timeout: Duration,
) -> String {
    let (path, contents) = file;
    let stderr = logs.split_whitespace().next().unwrap();
    let output = ssh_within(
        key,
        port,
        &Trust::Any,
        &format!(
            "cat >{path} <<'EOF'\n{contents}\nEOF\n\
             cd /tmp && {command} 2>{stderr} || {{ tail -n 60 {logs}; exit 1; }}"
        ),
        timeout,
    );
    output
        .lines()
        .find_map(|l| l.strip_prefix("ZENNET-RESULT "))
        .unwrap_or_else(|| panic!("no result line in {output:?}"))
        .trim()
        .to_owned()
}

/// Polls `check` in the guest every two seconds until it succeeds, and
/// returns how long that took; on timeout panics with `diagnose`'s output.
fn wait_for(
    key: &std::path::Path,
    port: u16,
    check: &str,
    timeout: Duration,
    diagnose: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let (ok, _, _) = run_ssh(
            &mut ssh_command(key, port, &Trust::Any, check),
            common::SSH_TIMEOUT,
        );
        if ok {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let (_, out, err) = run_ssh(
                &mut ssh_command(key, port, &Trust::Any, diagnose),
                common::SSH_TIMEOUT,
            );
            panic!("`{check}` still fails after {timeout:?}:\n{out}{err}");
        }
        sleep(Duration::from_secs(2));
    }
}
