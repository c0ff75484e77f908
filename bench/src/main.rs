//! `zennet-bench`: measures Zennet's figures side by side with an anchor
//! measured in the same run on the same machine, and prints the ratio.
//!
//! Run with `scripts/bench.sh [chain|net|host|vm|jobs|lan|market|fs|bt|ops|pos] [--quick]`.

mod bt;
mod chain;
mod fs;
mod host;
mod jobs;
mod market;
mod net;
mod ops;
mod pos;
mod vm;

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let suites: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let all = suites.is_empty();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures nothing useful; use --release");
    }
    let mut known = false;
    if all || suites.contains(&"chain") {
        known = true;
        chain::run(quick);
    }
    if all || suites.contains(&"net") {
        known = true;
        net::run(quick);
    }
    if all || suites.contains(&"host") {
        known = true;
        host::run(quick);
    }
    if all || suites.contains(&"vm") {
        known = true;
        vm::run(quick);
    }
    if all || suites.contains(&"jobs") {
        known = true;
        jobs::run(quick);
    }
    if all || suites.contains(&"lan") {
        known = true;
        jobs::network();
    }
    if all || suites.contains(&"market") {
        known = true;
        market::run(quick);
    }
    if all || suites.contains(&"fs") {
        known = true;
        fs::run(quick);
    }
    if all || suites.contains(&"bt") {
        known = true;
        bt::run(quick);
    }
    if all || suites.contains(&"ops") {
        known = true;
        ops::run(quick);
    }
    if all || suites.contains(&"pos") {
        known = true;
        pos::run(quick);
    }
    if !known {
        eprintln!(
            "unknown suite {suites:?}; available: chain, net, host, vm, jobs, lan, market, fs, bt, ops, pos"
        );
        std::process::exit(2);
    }
}

/// Runs `f` repeatedly for about `budget` and returns operations per second
/// (`f` returns how many operations it did).
pub fn rate(budget: Duration, mut f: impl FnMut() -> u64) -> f64 {
    // Warm up once, outside the measurement.
    f();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < budget {
        ops += f();
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

pub fn row(what: &str, ours: f64, anchor_name: &str, anchor: f64, unit: &str) {
    println!(
        "{what:<44} {:>14} {unit:<8} | {anchor_name:<28} {:>14} {unit:<8} | ratio {:.2}",
        human(ours),
        human(anchor),
        ours / anchor
    );
}

pub fn single(what: &str, value: f64, unit: &str) {
    println!("{what:<44} {:>14} {unit}", human(value));
}

fn human(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 1.0 {
        format!("{:.2}", v)
    } else {
        format!("{:.4}", v)
    }
}
