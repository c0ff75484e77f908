//! Host figures: the provider bench (`zennet bench`'s CPU and memory
//! measurements) beside sysbench on the same machine in the same run.

use std::process::Command;

use zennet_hwbench::{BenchOptions, run as hwbench};

use crate::row;

pub fn run(quick: bool) {
    println!("== host bench vs sysbench ==");
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let opts = BenchOptions {
        quick,
        scratch_dir: scratch.path().to_path_buf(),
        vm: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let profile = runtime
        .block_on(hwbench(&opts, &mut |_| {}))
        .expect("bench runs");
    let threads = profile.cpu.threads.to_string();
    let seconds = if quick { "2" } else { "5" };
    let one = sysbench(
        &[
            "cpu",
            "--cpu-max-prime=10000",
            "--threads=1",
            &format!("--time={seconds}"),
            "run",
        ],
        "events per second:",
    );
    let all = sysbench(
        &[
            "cpu",
            "--cpu-max-prime=10000",
            &format!("--threads={threads}"),
            &format!("--time={seconds}"),
            "run",
        ],
        "events per second:",
    );
    row(
        "CPU primes ≤10000, 1 thread",
        profile.cpu.single_thread_events_per_sec,
        "sysbench cpu",
        one,
        "ev/s",
    );
    row(
        &format!("CPU primes ≤10000, {threads} threads"),
        profile.cpu.all_threads_events_per_sec,
        "sysbench cpu",
        all,
        "ev/s",
    );
    // sysbench memory walks one block per thread; a 1 GiB block is far past
    // cache, like the provider bench's buffers.
    let block = "--memory-block-size=1G";
    let total = "--memory-total-size=32G";
    let read = sysbench(
        &[
            "memory",
            block,
            total,
            "--memory-oper=read",
            "--threads=1",
            "run",
        ],
        "MiB transferred",
    );
    let write = sysbench(
        &[
            "memory",
            block,
            total,
            "--memory-oper=write",
            "--threads=1",
            "run",
        ],
        "MiB transferred",
    );
    row(
        "memory read (1 thread)",
        profile.memory.read_gb_per_sec,
        "sysbench memory read",
        read,
        "GB/s",
    );
    row(
        "memory write (1 thread)",
        profile.memory.write_gb_per_sec,
        "sysbench memory write",
        write,
        "GB/s",
    );
}

/// Runs sysbench and extracts the figure on the line containing `key`:
/// events/s for cpu, GB/s for memory ("(12345.67 MiB/sec)").
fn sysbench(args: &[&str], key: &str) -> f64 {
    let out = Command::new("sysbench")
        .args(args)
        .output()
        .expect("sysbench is installed (scripts/bench.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("sysbench printed no {key:?}: {text}"));
    if key.starts_with("MiB") {
        let inside = line
            .split('(')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap();
        inside.parse::<f64>().unwrap() * 1.048576 / 1000.0
    } else {
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }
}
