//! `zennet job spark`: an Apache Spark standalone cluster across a task's
//! VMs, on the task's private network.
//!
//! The master and the driver run on this (the publisher's) machine, in the
//! namespace that holds this host's place on the task's network (`.1`, see
//! `zennet_publisher::lan_host`), with the JRE `scripts/setup.sh` installs
//! and the same Spark jars the `zennet-spark` image carries (unpacked once
//! from the pinned sdist by `zennet_images::spark_host_jars`). A worker
//! runs in each VM, started over ssh through the VM's tunnel, registered
//! with the master over the private network; executors, shuffle and
//! results travel there too, never through a provider's host in clear:
//! Spark's own authentication and RPC encryption are on, with a secret
//! made per run and handed over in 0600 properties files, never on a
//! command line.
//!
//! The driver's stdout is the job's output (passed through as it comes);
//! its log goes to `driver.log` in the run's directory, and the progress
//! lines (jobs, stages, warnings, errors) are shown as they come. Workers
//! are stopped and this host leaves the network however the run ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use zennet_chain::Hash;
use zennet_publisher::{LanHostView, VmView};

use crate::home::Home;

/// The master's port in the task's namespace (one namespace per task, so
/// a fixed port never collides).
const MASTER_PORT: u16 = 7077;
/// Under TCG a JVM is 5-12 times slower: timeouts generous enough for it.
const NETWORK_TIMEOUT: &str = "600s";
/// How long a master or scheduler here may take to come up.
const SERVER_TIMEOUT: Duration = Duration::from_secs(300);
/// The Spark worker's files in the guest.
const SPARK_GUEST_CONF: &str = "/tmp/zennet-spark.conf";
const SPARK_GUEST_LOG: &str = "/tmp/zennet-spark-worker.log";
/// The Dask scheduler's port in the task's namespace, and the worker's log.
const DASK_PORT: u16 = 8786;
const DASK_GUEST_LOG: &str = "/tmp/zennet-dask-worker.log";
/// The host's JRE (openjdk-17-jdk-headless) and Debian's Python with
/// python3-distributed: by path, since another `python3` (a pyenv, a
/// venv) may come first on PATH without Dask.
const HOST_JAVA: &str = "/usr/bin/java";
const HOST_PYTHON: &str = "/usr/bin/python3";
const HOST_DASK_SCHEDULER: &str = "/usr/bin/dask-scheduler";

/// The primes application `zennet devnet --job spark` runs (its source;
/// see the file's head).
pub const SPARK_PRIMES: &str = include_str!("../assets/jobs/Primes.java");
/// The primes script `zennet devnet --job dask` runs.
pub const DASK_PRIMES: &str = include_str!("../assets/jobs/primes.py");
/// The JDK's compiler and archiver (openjdk-17-jdk-headless), for
/// [`compile_spark_app`].
const HOST_JAVAC: &str = "/usr/bin/javac";
const HOST_JAR: &str = "/usr/bin/jar";

/// Compiles [`SPARK_PRIMES`] against Spark's `jars` into `dir/primes.jar`.
pub async fn compile_spark_app(dir: &Path, jars: &Path) -> Result<PathBuf> {
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes)?;
    let source = dir.join("Primes.java");
    std::fs::write(&source, SPARK_PRIMES)?;
    let jar = dir.join("primes.jar");
    let javac = Command::new(HOST_JAVAC)
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .output()
        .await
        .context("cannot run javac (scripts/setup.sh installs openjdk-17-jdk-headless)")?;
    if !javac.status.success() {
        bail!("javac: {}", String::from_utf8_lossy(&javac.stderr).trim());
    }
    let archive = Command::new(HOST_JAR)
        .arg("cf")
        .arg(&jar)
        .arg("-C")
        .arg(&classes)
        .arg(".")
        .output()
        .await
        .context("cannot run jar")?;
    if !archive.status.success() {
        bail!("jar: {}", String::from_utf8_lossy(&archive.stderr).trim());
    }
    Ok(jar)
}

/// What `zennet job spark` was asked to run.
pub struct SparkJob {
    pub task: String,
    pub class: String,
    pub jar: PathBuf,
    pub args: Vec<String>,
    /// `KEY=VALUE` Spark settings for the application.
    pub conf: Vec<String>,
    /// JVM options for the workers and their executors in the VMs.
    pub guest_java_opts: Option<String>,
    pub register_timeout: Duration,
}

/// What `zennet job dask` was asked to run.
pub struct DaskJob {
    pub task: String,
    /// A Python script; `distributed.Client()` in it connects to the
    /// task's scheduler (`DASK_SCHEDULER_ADDRESS` is set).
    pub script: PathBuf,
    pub args: Vec<String>,
    pub register_timeout: Duration,
}

/// Runs a Spark job; returns the driver's exit code.
pub async fn spark(home: &Home, job: SparkJob) -> Result<i32> {
    let jar = std::fs::canonicalize(&job.jar)
        .with_context(|| format!("the application jar {}", job.jar.display()))?;
    for c in &job.conf {
        if !c.contains('=') || c.contains('\n') {
            bail!("--conf {c:?}: give KEY=VALUE on one line");
        }
    }
    java_runs().await?;
    let run = Run::open(home, &job.task, "spark").await?;
    let result = async {
        let jars = host_jars(home).await?;
        let secret = hex::encode(random_bytes()?);
        let conf_file = run.dir.join("spark.conf");
        crate::home::write_atomic(&conf_file, properties(&secret, &job.conf).as_bytes(), 0o600)?;
        let cluster = Cluster {
            run: &run,
            jars: &jars,
            conf_file: &conf_file,
        };
        cluster.run(&job, &jar, &secret).await
    }
    .await;
    run.close(
        "pkill -f '[o]rg.apache.spark.deploy.worker.Worker'; \
         pkill -f '[o]rg.apache.spark.executor'; rm -f /tmp/zennet-spark.conf; true",
    )
    .await;
    result
}

/// Runs a Dask job: a scheduler here, a worker in each VM, the script here
/// as the client; returns the script's exit code.
pub async fn dask(home: &Home, job: DaskJob) -> Result<i32> {
    let script = std::fs::canonicalize(&job.script)
        .with_context(|| format!("the script {}", job.script.display()))?;
    let run = Run::open(home, &job.task, "dask").await?;
    let result = dask_run(&run, &job, &script).await;
    run.close("pkill -f '[d]ask-worker'; true").await;
    result
}

/// One run of a job on a task's network: its VMs, this host's place there
/// and the run's directory (logs, settings).
struct Run<'a> {
    home: &'a Home,
    client: crate::client::Client,
    task: Hash,
    vms: Vec<VmView>,
    lan: LanHostView,
    dir: PathBuf,
}

impl<'a> Run<'a> {
    /// Finds the task's VMs on its network and puts this host there.
    async fn open(home: &'a Home, task: &str, engine: &str) -> Result<Run<'a>> {
        home.require_initialized()?;
        let client = home.client()?;
        let all: Vec<VmView> = client.get("/v1/publisher/vms").await?;
        let id = parse_task(task, &all)?;
        let vms: Vec<VmView> = all
            .into_iter()
            .filter(|v| v.task == id && v.connected && !v.ended && v.lan_address.is_some())
            .collect();
        if vms.is_empty() {
            bail!(
                "task {task} has no running VM on its private network yet; wait for \
                 `zennet vm list` to show an address (lan_address) for its VMs"
            );
        }
        let dir = home.dir().join("jobs").join(format!(
            "{engine}-{}-{}",
            crate::trade::short(&id),
            unix_now()
        ));
        std::fs::create_dir_all(&dir)?;
        let lan: LanHostView = client
            .post(
                &format!("/v1/publisher/tasks/{id}/lan"),
                &serde_json::json!({}),
            )
            .await
            .context("cannot put this host on the task's private network")?;
        eprintln!(
            "{engine}: {} VM(s) of task {}; this host is {} on its network; logs in {}",
            vms.len(),
            crate::trade::short(&id),
            lan.address,
            dir.display()
        );
        Ok(Run {
            home,
            client,
            task: id,
            vms,
            lan,
            dir,
        })
    }

    /// However the run went: `stop` runs in each VM (the workers go) and
    /// this host leaves the network.
    async fn close(self, stop: &str) {
        for vm in &self.vms {
            if let Err(e) = self.ssh(vm, stop).await {
                eprintln!("the workers in VM {} did not stop: {e:#}", short_vm(vm));
            }
        }
        let left: Result<serde_json::Value> = self
            .client
            .post(
                &format!("/v1/publisher/tasks/{}/lan/leave", self.task),
                &serde_json::json!({}),
            )
            .await;
        if let Err(e) = left {
            eprintln!("this host stays on the task's network: {e:#}");
        }
    }

    /// A program in the task's namespace, its output to `log` in the run's
    /// directory.
    fn in_netns(&self, program: &str, log: &str) -> Result<Command> {
        let log = std::fs::File::create(self.dir.join(log))?;
        let mut cmd = self.in_netns_here(program);
        cmd.stdout(log.try_clone()?).stderr(log);
        Ok(cmd)
    }

    /// A program in the task's namespace, its output where ours goes.
    fn in_netns_here(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lan.netns, program])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `script` in `vm` over ssh through its tunnel.
    async fn ssh(&self, vm: &VmView, script: &str) -> Result<std::process::Output> {
        let mut cmd = crate::trade::ssh_command(self.home, &vm.id.to_string(), &[], &[]).await?;
        cmd.arg(script).stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("cannot run ssh")?;
        Ok(out)
    }

    /// Runs `script` in each VM (starting its worker); fails naming the VM.
    async fn start_workers(&self, engine: &str, script: impl Fn(Ipv4Addr) -> String) -> Result<()> {
        for vm in &self.vms {
            let address = vm.lan_address.expect("filtered on lan_address");
            let out = self.ssh(vm, &script(address)).await?;
            if !out.status.success() {
                bail!(
                    "cannot start the {engine} worker in VM {}: {}",
                    short_vm(vm),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Waits until `log` (here) shows every VM's worker registered, as
    /// `registered(text, address)` tells.
    async fn wait_for_workers(
        &self,
        engine: &str,
        log: &str,
        registered: impl Fn(&str, Ipv4Addr) -> bool,
        guest_log: &str,
        timeout: Duration,
        server: &mut Child,
    ) -> Result<()> {
        let log = self.dir.join(log);
        let started = Instant::now();
        let mut shown = 0;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let missing: Vec<&VmView> = self
                .vms
                .iter()
                .filter(|vm| !registered(&text, vm.lan_address.expect("filtered")))
                .collect();
            let done = self.vms.len() - missing.len();
            if done > shown {
                shown = done;
                eprintln!(
                    "{engine}: {done}/{} workers registered ({:.0?})",
                    self.vms.len(),
                    started.elapsed()
                );
            }
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(status) = server.try_wait()? {
                bail!(
                    "the {engine} server here exited ({status}); see {}",
                    log.display()
                );
            }
            if started.elapsed() > timeout {
                let names: Vec<String> = missing
                    .iter()
                    .map(|vm| format!("{} ({})", short_vm(vm), vm.lan_address.unwrap()))
                    .collect();
                bail!(
                    "the {engine} worker in VM(s) {} did not register within {timeout:?} \
                     (its log: `zennet vm exec ID -- cat {guest_log}`)",
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Waits until `log` in `dir` contains `marker` while `server` runs.
async fn wait_for_server(
    what: &str,
    dir: &Path,
    log: &str,
    marker: &str,
    server: &mut Child,
) -> Result<()> {
    let log = dir.join(log);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(marker) {
            eprintln!("{what} up ({:.0?})", started.elapsed());
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            bail!("the {what} exited ({status}); see {}", log.display());
        }
        if started.elapsed() > SERVER_TIMEOUT {
            bail!(
                "the {what} did not come up within {SERVER_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Dask run: scheduler, workers, then the client script.
async fn dask_run(run: &Run<'_>, job: &DaskJob, script: &Path) -> Result<i32> {
    let addr = run.lan.address;
    let mut scheduler = run
        .in_netns(HOST_DASK_SCHEDULER, "scheduler.log")?
        .args([
            "--host",
            &addr.to_string(),
            "--port",
            &DASK_PORT.to_string(),
        ])
        .arg("--no-dashboard")
        .spawn()
        .context("cannot start the Dask scheduler")?;
    wait_for_server(
        "dask: scheduler",
        &run.dir,
        "scheduler.log",
        "Scheduler at:",
        &mut scheduler,
    )
    .await?;
    let url = format!("tcp://{addr}:{DASK_PORT}");
    run.start_workers("Dask", |a| {
        format!(
            "pkill -f '[d]ask-worker'; cd /tmp && setsid dask-worker {url} --host {a} --no-nanny \
             --no-dashboard --memory-limit 0 </dev/null >{DASK_GUEST_LOG} 2>&1 &"
        )
    })
    .await?;
    run.wait_for_workers(
        "dask",
        "scheduler.log",
        |text, a| {
            text.lines()
                .any(|l| l.contains("Register worker") && l.contains(&format!("tcp://{a}:")))
        },
        DASK_GUEST_LOG,
        job.register_timeout,
        &mut scheduler,
    )
    .await?;
    let mut client = run
        .in_netns_here(HOST_PYTHON)
        .arg(script)
        .args(&job.args)
        .env("DASK_SCHEDULER_ADDRESS", &url)
        .spawn()
        .context("cannot start the Dask client script")?;
    let status = client.wait().await?;
    let _ = scheduler.kill().await;
    eprintln!("dask: the script ended ({status})");
    Ok(status.code().unwrap_or(1))
}

/// A Spark run's cluster: the run, Spark's jars here, the settings file.
struct Cluster<'a> {
    run: &'a Run<'a>,
    jars: &'a Path,
    conf_file: &'a Path,
}

impl Cluster<'_> {
    async fn run(&self, job: &SparkJob, jar: &Path, secret: &str) -> Result<i32> {
        let address = self.run.lan.address;
        let master_url = format!("spark://{address}:{MASTER_PORT}");
        let log = std::fs::File::create(self.run.dir.join("master.log"))?;
        let mut master = self
            .java()
            .stdout(log.try_clone()?)
            .stderr(log)
            .args(["-Xmx512m", "org.apache.spark.deploy.master.Master"])
            .args(["--host", &address.to_string()])
            .args(["--port", &MASTER_PORT.to_string(), "--webui-port", "8080"])
            .arg("--properties-file")
            .arg(self.conf_file)
            .spawn()
            .context("cannot start the Spark master")?;
        wait_for_server(
            "spark: master",
            &self.run.dir,
            "master.log",
            "I have been elected leader",
            &mut master,
        )
        .await?;
        // The worker's settings (the secret among them) go to a 0600 file
        // in the VM, never on a command line.
        let props = properties(secret, &[]);
        let opts = job
            .guest_java_opts
            .as_deref()
            .map(|o| format!("export JAVA_TOOL_OPTIONS={};", shell_quote(o)))
            .unwrap_or_default();
        self.run
            .start_workers("Spark", |a| {
                format!(
                    "umask 077 && cat > {SPARK_GUEST_CONF} <<'ZENNET_EOF'\n{props}ZENNET_EOF\n\
                     pkill -f '[o]rg.apache.spark.deploy.worker.Worker'; \
                     export SPARK_LOCAL_IP={a}; {opts} cd /tmp && \
                     setsid spark-class -Xmx256m org.apache.spark.deploy.worker.Worker \
                     --host {a} --webui-port 8081 --properties-file {SPARK_GUEST_CONF} {master_url} \
                     </dev/null >{SPARK_GUEST_LOG} 2>&1 &"
                )
            })
            .await?;
        self.run
            .wait_for_workers(
                "spark",
                "master.log",
                |text, a| text.contains(&format!("Registering worker {a}:")),
                SPARK_GUEST_LOG,
                job.register_timeout,
                &mut master,
            )
            .await?;
        let code = self.submit(&master_url, job, jar).await;
        let _ = master.kill().await;
        code
    }

    /// A JVM in the task's namespace, with Spark's jars.
    fn java(&self) -> Command {
        let mut cmd = self.run.in_netns_here(HOST_JAVA);
        cmd.arg("-cp")
            .arg(format!("{}/*", self.jars.display()))
            .env("SPARK_HOME", self.jars.parent().unwrap_or(self.jars))
            .env("SPARK_SCALA_VERSION", "2.13")
            .env("SPARK_LOCAL_IP", self.run.lan.address.to_string());
        cmd
    }

    /// Runs the driver here (client mode): stdout through, progress shown.
    async fn submit(&self, master_url: &str, job: &SparkJob, jar: &Path) -> Result<i32> {
        let mut cmd = self.java();
        cmd.args(["-Xmx1g", "org.apache.spark.deploy.SparkSubmit"])
            .args(["--master", master_url, "--deploy-mode", "client"])
            .args(["--class", &job.class])
            .arg("--properties-file")
            .arg(self.conf_file)
            .args([
                "--conf",
                &format!("spark.driver.host={}", self.run.lan.address),
            ])
            .arg(jar)
            .args(&job.args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut driver = cmd.spawn().context("cannot start the Spark driver")?;
        let stderr = driver.stderr.take().expect("piped");
        let log_path = self.run.dir.join("driver.log");
        let mut log = tokio::fs::File::create(&log_path).await?;
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines.next_line().await? {
            log.write_all(line.as_bytes()).await?;
            log.write_all(b"\n").await?;
            if is_progress(&line) {
                eprintln!("spark: {line}");
            }
        }
        let status = driver.wait().await?;
        eprintln!(
            "spark: the application ended ({status}); its log: {}",
            log_path.display()
        );
        Ok(status.code().unwrap_or(1))
    }
}

/// Spark settings every daemon and the driver share: authentication with
/// the run's secret, RPC encryption, timeouts for TCG, and no door that
/// skips the secret (the master's REST submission server, killing from a
/// web UI, the driver's UI); then the user's `KEY=VALUE`s (as properties,
/// `KEY VALUE`).
fn properties(secret: &str, extra: &[String]) -> String {
    let mut p = format!(
        "spark.authenticate true\n\
         spark.authenticate.secret {secret}\n\
         spark.network.crypto.enabled true\n\
         spark.network.timeout {NETWORK_TIMEOUT}\n\
         spark.executor.heartbeatInterval 60s\n\
         spark.worker.timeout 600\n\
         spark.rpc.askTimeout {NETWORK_TIMEOUT}\n\
         spark.master.rest.enabled false\n\
         spark.ui.killEnabled false\n\
         spark.ui.enabled false\n"
    );
    for kv in extra {
        let (k, v) = kv.split_once('=').expect("checked KEY=VALUE");
        p.push_str(&format!("{} {}\n", k.trim(), v.trim()));
    }
    p
}

/// Spark's lines worth showing while the job runs.
fn is_progress(line: &str) -> bool {
    line.contains(" ERROR ")
        || line.contains(" WARN ")
        || (line.contains("DAGScheduler")
            && (line.contains("Submitting")
                || line.contains("finished")
                || line.contains("failed")))
        || line.contains("Granted executor")
        || line.contains("Exception")
}

/// The task named by id or unique prefix among this publisher's VMs.
fn parse_task(id: &str, vms: &[VmView]) -> Result<Hash> {
    let want = id.trim_start_matches("0x").to_ascii_lowercase();
    let mut tasks: Vec<Hash> = vms
        .iter()
        .map(|v| v.task)
        .filter(|t| hex::encode(t.0).starts_with(&want))
        .collect();
    tasks.sort();
    tasks.dedup();
    match tasks.as_slice() {
        [t] if !want.is_empty() => Ok(*t),
        [] => bail!("no VM of task {id} (see `zennet vm list`)"),
        _ => bail!("{} tasks start with {id}; give more digits", tasks.len()),
    }
}

async fn java_runs() -> Result<()> {
    let ok = Command::new(HOST_JAVA)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "no working `java` here: Spark's master and driver run on this host \
             (scripts/setup.sh installs openjdk-17-jdk-headless)"
        );
    }
    Ok(())
}

/// Spark's jars for this host, unpacked once (downloading the pinned sdist
/// if the image build has not).
async fn host_jars(home: &Home) -> Result<PathBuf> {
    let dir = home.images_dir();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("Spark's jars for this host");
    bar.enable_steady_tick(Duration::from_millis(120));
    let shown = bar.clone();
    let jars = tokio::task::spawn_blocking(move || {
        zennet_images::spark_host_jars(&dir, &mut |p| {
            if let zennet_images::Progress::Step(step) = p {
                shown.set_message(step);
            }
        })
    })
    .await??;
    bar.finish_and_clear();
    Ok(jars)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn short_vm(vm: &VmView) -> String {
    crate::trade::short(&vm.id)
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    Ok(b)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_carry_auth_encryption_and_the_users_settings() {
        let p = properties("abc", &["spark.executor.memory=700m".into()]);
        assert!(p.contains("spark.authenticate true\n"));
        assert!(p.contains("spark.authenticate.secret abc\n"));
        assert!(p.contains("spark.network.crypto.enabled true\n"));
        assert!(p.ends_with("spark.executor.memory 700m\n"));
    }

    #[test]
    fn a_quote_in_java_options_cannot_break_out_of_the_guest_command() {
        assert_eq!(shell_quote("a'b; rm -rf /"), r"'a'\''b; rm -rf /'");
    }
}
