//! The node's Prometheus metrics: a [`Snapshot`] (and the provider's live
//! [`ProviderStats`]) in the Prometheus text format, which Prometheus
//! scrapes and `promtool check metrics` reads.
//!
//! A registry is built per scrape from the snapshot: every value already
//! lives in a store (the chain, `vms.db`, `contracts.db`, `pay.db`, the
//! file network's accounts), so copying it into long-lived metric objects
//! would keep two truths. Only what exists nowhere else (voucher latency,
//! reconnects) is a live metric, owned by the provider.
//!
//! The crate is TiKV's `prometheus`: it writes the classic text format
//! (0.0.4) that every Prometheus and `promtool` parse. The Prometheus
//! project's `prometheus-client` writes OpenMetrics only, whose counter
//! and info families `promtool check metrics` (2.42, Debian's) rejects.
//!
//! Names follow Prometheus conventions: `zennet_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters. Amounts are in the
//! chain's base unit (floating point: exact to 2^53, plenty to watch).
//! Contracts and VMs carry identifying labels only (`task`, `vm`, …),
//! never their phase, so a series does not break when a VM pauses.

use prometheus::{Counter, CounterVec, Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};
use zennet_provider::{Phase, ProviderStats};
use zennet_vm::VmState;

use super::Snapshot;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The snapshot (and the provider's live stats) as Prometheus text.
pub fn render(s: &Snapshot, stats: Option<&ProviderStats>) -> Result<String> {
    let out = Out(Registry::new_custom(Some("zennet".into()), None)?);
    out.gauge_vec(
        "build_info",
        "The zennet version this node runs (always 1)",
        &["version"],
    )?
    .with_label_values(&[env!("CARGO_PKG_VERSION")])
    .set(1.0);
    chain(&out, s)?;
    vms(&out, s)?;
    contracts(&out, s)?;
    if let Some(st) = stats {
        out.0.register(Box::new(st.voucher_latency.clone()))?;
        out.0.register(Box::new(st.tunnel_reconnects.clone()))?;
        out.0.register(Box::new(st.vouchers.clone()))?;
    }
    publisher(&out, s)?;
    fs(&out, s)?;
    let mut buf = Vec::new();
    TextEncoder::new().encode(&out.0.gather(), &mut buf)?;
    Ok(String::from_utf8(buf).expect("the text encoder writes UTF-8"))
}

type Result<T> = std::result::Result<T, prometheus::Error>;

/// The scrape's registry, with one constructor per kind of metric.
struct Out(Registry);

impl Out {
    fn gauge(&self, name: &str, help: &str, v: f64) -> Result<()> {
        let g = Gauge::new(name, help)?;
        g.set(v);
        self.0.register(Box::new(g))
    }

    fn counter(&self, name: &str, help: &str, v: f64) -> Result<()> {
        let c = Counter::new(name, help)?;
        c.inc_by(v);
        self.0.register(Box::new(c))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
        let g = GaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<CounterVec> {
        let c = CounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn chain(out: &Out, s: &Snapshot) -> Result<()> {
    let c = &s.chain;
    out.gauge(
        "chain_height",
        "Height of this node's chain tip",
        c.height as f64,
    )?;
    out.gauge(
        "chain_tip_timestamp_seconds",
        "Timestamp of the tip block (Unix time)",
        c.tip_timestamp_ms as f64 / 1000.0,
    )?;
    out.gauge(
        "chain_mempool_transactions",
        "Transactions waiting in the mempool",
        c.mempool as f64,
    )?;
    if let Some(p) = c.peers {
        out.gauge("chain_peers", "Connected peers", p as f64)?;
    }
    out.gauge("chain_mining", "1 when this node mines", flag(c.mining))?;
    out.gauge(
        "chain_syncing",
        "1 while this node catches up with a peer that is ahead",
        flag(c.sync.running.is_some() || c.sync.behind),
    )?;
    if let Some(h) = c.sync.best_peer_height {
        out.gauge(
            "chain_best_peer_height",
            "The highest chain a peer claimed at the last comparison",
            h as f64,
        )?;
    }
    if let Some(d) = s.disk {
        out.gauge(
            "home_disk_size_bytes",
            "Size of the filesystem the node's home is on",
            d.size_bytes as f64,
        )?;
        out.gauge(
            "home_disk_free_bytes",
            "Space left to this node on its home's filesystem",
            d.free_bytes as f64,
        )?;
    }
    Ok(())
}

fn vms(out: &Out, s: &Snapshot) -> Result<()> {
    if s.vms.is_empty() {
        return Ok(());
    }
    let l = &["vm", "image"];
    let cpu = out.counter_vec(
        "vm_cpu_seconds_total",
        "CPU time the VM used (its cgroup)",
        l,
    )?;
    let mem = out.gauge_vec("vm_memory_bytes", "Memory the VM holds now", l)?;
    let limit = out.gauge_vec("vm_memory_limit_bytes", "Memory the VM was given", l)?;
    let cores = out.gauge_vec("vm_cores", "Cores the VM was given", l)?;
    let traffic = out.counter_vec(
        "vm_traffic_bytes_total",
        "Bytes the VM's tunnel forward carried",
        l,
    )?;
    let sent = out.counter_vec(
        "vm_internet_sent_bytes_total",
        "Bytes the guest sent to the internet (internet mode only)",
        l,
    )?;
    let received = out.counter_vec(
        "vm_internet_received_bytes_total",
        "Bytes the guest received from the internet (internet mode only)",
        l,
    )?;
    let read = out.counter_vec("vm_disk_read_bytes_total", "Guest disk reads", l)?;
    let write = out.counter_vec("vm_disk_write_bytes_total", "Guest disk writes", l)?;
    let running = out.gauge_vec("vm_running", "1 while the VM runs (not paused)", l)?;
    let paused = out.gauge_vec("vm_paused", "1 while the VM is paused (unpaid)", l)?;
    for vm in s.vms.iter().filter(|v| v.state != VmState::Stopped) {
        let l = [vm.id.as_str(), vm.image.as_str()];
        let u = &vm.usage;
        cpu.with_label_values(&l).inc_by(u.cpu_ns as f64 / 1e9);
        mem.with_label_values(&l).set(u.memory_bytes as f64);
        limit
            .with_label_values(&l)
            .set((vm.mem_mib * 1024 * 1024) as f64);
        cores.with_label_values(&l).set(f64::from(vm.cores));
        traffic.with_label_values(&l).inc_by(u.traffic_bytes as f64);
        sent.with_label_values(&l)
            .inc_by(u.net_from_guest_bytes as f64);
        received
            .with_label_values(&l)
            .inc_by(u.net_to_guest_bytes as f64);
        read.with_label_values(&l).inc_by(u.disk_read_bytes as f64);
        write
            .with_label_values(&l)
            .inc_by(u.disk_write_bytes as f64);
        running
            .with_label_values(&l)
            .set(flag(vm.state == VmState::Running));
        paused
            .with_label_values(&l)
            .set(flag(vm.state == VmState::Paused));
    }
    Ok(())
}

fn contracts(out: &Out, s: &Snapshot) -> Result<()> {
    if !s.contracts.is_empty() {
        let l = &["task", "publisher", "vm"];
        let accrued = out.counter_vec(
            "contract_accrued_total",
            "What the contract's VM has earned by its usage, in base units",
            l,
        )?;
        let paid = out.counter_vec(
            "contract_paid_total",
            "What the publisher's vouchers cover, in base units",
            l,
        )?;
        let claimed = out.counter_vec(
            "contract_claimed_total",
            "What the chain has paid out of the contract's channel, in base units",
            l,
        )?;
        let unpaid = out.gauge_vec(
            "contract_unpaid",
            "Accrued but not covered by a voucher, in base units",
            l,
        )?;
        let unclaimed = out.gauge_vec(
            "contract_unclaimed",
            "Vouchered but not yet claimed on chain, in base units",
            l,
        )?;
        let expiry = out.gauge_vec(
            "contract_channel_expiry_blocks",
            "Blocks until the contract's channel expires",
            l,
        )?;
        let pause_in = out.gauge_vec(
            "contract_pause_in_seconds",
            "Seconds until the VM is paused unless a voucher comes (absent: paid up or paused)",
            l,
        )?;
        let paused = out.gauge_vec(
            "contract_paused",
            "1 while the contract's VM is paused for late payment",
            l,
        )?;
        for c in &s.contracts {
            let v = &c.view;
            let (task, publisher) = (v.task.to_string(), v.publisher.to_string());
            let l = [
                task.as_str(),
                publisher.as_str(),
                v.vm.as_deref().unwrap_or(""),
            ];
            accrued.with_label_values(&l).inc_by(v.accrued as f64);
            paid.with_label_values(&l).inc_by(v.paid as f64);
            unpaid.with_label_values(&l).set(c.unpaid() as f64);
            if let Some(cl) = c.claimed {
                claimed.with_label_values(&l).inc_by(cl as f64);
                unclaimed.with_label_values(&l).set(c.unclaimed() as f64);
            }
            if let Some(b) = c.expires_in_blocks {
                expiry.with_label_values(&l).set(b as f64);
            }
            if let Some(at) = v.pause_at_ms {
                let left = at.saturating_sub(crate::node::now_ms()) as f64 / 1000.0;
                pause_in.with_label_values(&l).set(left);
            }
            paused
                .with_label_values(&l)
                .set(flag(v.phase == Phase::Paused));
        }
    }
    if !s.contracts.is_empty() || s.earned > 0 {
        out.counter(
            "provider_earned_total",
            "Vouchers accepted over every contract, ended ones too, in base units",
            s.earned as f64,
        )?;
    }
    Ok(())
}

fn publisher(out: &Out, s: &Snapshot) -> Result<()> {
    if s.publisher_vms.is_empty() {
        return Ok(());
    }
    let l = &["vm", "task", "node"];
    let paid = out.counter_vec(
        "publisher_vm_paid_total",
        "What this publisher's vouchers to the VM's node cover, in base units",
        l,
    )?;
    let reported = out.counter_vec(
        "publisher_vm_reported_total",
        "What the VM's node last reported as earned, in base units",
        l,
    )?;
    let connected = out.gauge_vec(
        "publisher_vm_connected",
        "1 while the VM's node is connected through the tunnel",
        l,
    )?;
    for vm in &s.publisher_vms {
        let (id, task, node) = (vm.id.to_string(), vm.task.to_string(), vm.node.to_string());
        let l = [id.as_str(), task.as_str(), node.as_str()];
        paid.with_label_values(&l).inc_by(vm.paid as f64);
        reported.with_label_values(&l).inc_by(vm.reported as f64);
        connected.with_label_values(&l).set(flag(vm.connected));
    }
    Ok(())
}

fn fs(out: &Out, s: &Snapshot) -> Result<()> {
    let Some(st) = &s.fs else { return Ok(()) };
    let bytes = |role: &str| -> u64 {
        st.accounts
            .iter()
            .filter(|a| a.role == role)
            .map(|a| a.bytes)
            .sum()
    };
    out.counter(
        "fs_served_bytes_total",
        "Verified part bytes this node served to downloaders",
        bytes("earned") as f64,
    )?;
    out.counter(
        "fs_fetched_bytes_total",
        "Verified part bytes this node fetched from seeders",
        bytes("spent") as f64,
    )?;
    out.counter(
        "fs_earned_total",
        "Paid to this node for parts served, in base units",
        st.earned as f64,
    )?;
    out.counter(
        "fs_spent_total",
        "Paid by this node for parts fetched, in base units",
        st.spent as f64,
    )?;
    out.gauge(
        "fs_store_used_bytes",
        "Part store in use",
        st.used_bytes as f64,
    )?;
    out.gauge(
        "fs_store_max_bytes",
        "Part store quota ([fs] max_gib)",
        st.max_bytes as f64,
    )?;
    let served = out.counter_vec(
        "fs_file_served_bytes_total",
        "Verified part bytes of this file served to downloaders",
        &["file", "name"],
    )?;
    let earned = out.counter_vec(
        "fs_file_earned_total",
        "Vouchers taken in sessions for this file, in base units",
        &["file", "name"],
    )?;
    for f in s.files.iter().filter(|f| f.served_parts > 0) {
        let l = [f.id.to_string(), f.name.clone()];
        let l = [l[0].as_str(), l[1].as_str()];
        served.with_label_values(&l).inc_by(f.served_bytes as f64);
        earned.with_label_values(&l).inc_by(f.earned as f64);
    }
    out.gauge("fs_files", "Files in the store", st.files as f64)?;
    out.gauge(
        "fs_seeding_files",
        "Files this node seeds",
        st.seeding as f64,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::observe::{ContractFacts, DiskFacts};

    /// A VM as the runtime lists it.
    pub(crate) fn vm(id: &str, state: &str) -> zennet_vm::VmInfo {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "image": "zennet-tiny", "pid": 1, "ssh_port": 2222,
            "cores": 2, "cpu_quota": 2.0, "mem_mib": 512, "scratch_gib": 1, "volume": null,
            "network": "isolated", "netns": null, "uid": 2100000000u32,
            "usage": {"cpu_ns": 1_500_000_000u64, "memory_byte_seconds": 0.0,
                      "memory_bytes": 1_048_576u64, "io_read_bytes": 0, "io_write_bytes": 0,
                      "disk_read_bytes": 7, "disk_write_bytes": 9, "seconds": 3.0,
                      "traffic_bytes": 4096}
        }))
        .unwrap()
    }

    /// An active contract with `accrued` and `paid`.
    pub(crate) fn contract(task: u8, phase: &str, accrued: u128, paid: u128) -> ContractFacts {
        let h = format!("0x{}", hex::encode([task; 32]));
        let view = serde_json::from_value(serde_json::json!({
            "task": h, "publisher": format!("0x{}", hex::encode([9u8; 20])),
            "endpoint": "127.0.0.1:7522", "phase": phase, "acceptance_tx": h,
            "image_id": "x", "cores": 1, "memory_mib": 512, "storage_gib": 0,
            "storage_paid": false, "channel": h, "vm": format!("vm-{task}"), "boot_ms": 0,
            "started_ms": 0, "accrued": accrued.to_string(), "paid": paid.to_string(),
            "usage": {"wall_ms": 0, "cpu_ms": 0, "memory_mib_secs": 0, "storage_gib_secs": 0,
                      "traffic_bytes": 0},
            "voucher": null, "claim_txs": [], "close_tx": null, "end_reason": null
        }))
        .unwrap();
        ContractFacts {
            view,
            claimed: Some(paid / 2),
            expires_in_blocks: Some(500),
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].trim())
    }

    #[test]
    fn every_series_carries_the_snapshot_values() {
        let mut s = Snapshot::default();
        s.chain.height = 42;
        s.chain.peers = Some(3);
        s.vms = vec![
            vm("vm-1", "running"),
            vm("vm-2", "paused"),
            vm("vm-3", "stopped"),
        ];
        s.contracts = vec![contract(1, "running", 1000, 600)];
        s.earned = 5000;
        s.disk = Some(DiskFacts {
            size_bytes: 100,
            free_bytes: 5,
        });
        s.chain.sync.behind = true;
        s.chain.sync.best_peer_height = Some(50);
        s.fs = Some(
            serde_json::from_value(serde_json::json!({
                "http": null, "http_mode": "free", "used_bytes": 0, "max_bytes": 1,
                "files": 2, "seeding": 1, "transfers": [], "accounts": [],
                "earned": "0", "spent": "0"
            }))
            .unwrap(),
        );
        let file = |id: u8, parts: u64| {
            serde_json::from_value(serde_json::json!({
                "id": hex::encode([id; 20]), "name": format!("f{id}"), "length": 1, "parts": 1,
                "have_parts": 1, "complete": true, "seeding": true, "encrypted": false,
                "price_per_mib": "1", "sha256": "", "magnet": "", "files": [],
                "served_parts": parts, "served_bytes": parts * 262_144,
                "served_value": "7", "earned": "6"
            }))
            .unwrap()
        };
        s.files = vec![file(1, 2), file(2, 0)];
        let stats = ProviderStats::default();
        stats.voucher_latency.observe(0.2);
        stats.tunnel_reconnects.inc();
        let text = render(&s, Some(&stats)).unwrap();
        let task = format!("0x{}", hex::encode([1u8; 32]));
        let pubk = format!("0x{}", hex::encode([9u8; 20]));
        let c = format!(r#"{{publisher="{pubk}",task="{task}",vm="vm-1"}}"#);
        for (series, value) in [
            ("zennet_chain_height".to_string(), "42"),
            ("zennet_chain_peers".into(), "3"),
            ("zennet_home_disk_free_bytes".into(), "5"),
            (
                r#"zennet_vm_cpu_seconds_total{image="zennet-tiny",vm="vm-1"}"#.into(),
                "1.5",
            ),
            (
                r#"zennet_vm_paused{image="zennet-tiny",vm="vm-2"}"#.into(),
                "1",
            ),
            (
                r#"zennet_vm_paused{image="zennet-tiny",vm="vm-1"}"#.into(),
                "0",
            ),
            (
                r#"zennet_vm_traffic_bytes_total{image="zennet-tiny",vm="vm-1"}"#.into(),
                "4096",
            ),
            (format!("zennet_contract_accrued_total{c}"), "1000"),
            (format!("zennet_contract_paid_total{c}"), "600"),
            (format!("zennet_contract_claimed_total{c}"), "300"),
            (format!("zennet_contract_unpaid{c}"), "400"),
            (format!("zennet_contract_unclaimed{c}"), "300"),
            (format!("zennet_contract_channel_expiry_blocks{c}"), "500"),
            ("zennet_provider_earned_total".into(), "5000"),
            ("zennet_provider_tunnel_reconnects_total".into(), "1"),
            (
                r#"zennet_provider_voucher_latency_seconds_bucket{le="0.25"}"#.into(),
                "1",
            ),
            ("zennet_provider_voucher_latency_seconds_count".into(), "1"),
            ("zennet_chain_syncing".into(), "1"),
            ("zennet_chain_best_peer_height".into(), "50"),
            (
                format!(
                    r#"zennet_fs_file_served_bytes_total{{file="{}",name="f1"}}"#,
                    hex::encode([1u8; 20])
                ),
                "524288",
            ),
            (
                format!(
                    r#"zennet_fs_file_earned_total{{file="{}",name="f1"}}"#,
                    hex::encode([1u8; 20])
                ),
                "6",
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
        }
        // A stopped VM is gone from the metrics, and so is a file that
        // served nothing.
        assert!(!text.contains("vm-3"), "{text}");
        assert!(!text.contains(&hex::encode([2u8; 20])), "{text}");
    }

    #[test]
    fn a_node_that_runs_nothing_shows_only_its_chain() {
        let text = render(&Snapshot::default(), None).unwrap();
        assert!(text.contains("zennet_chain_height 0"), "{text}");
        assert!(
            !text.contains("zennet_vm_") && !text.contains("zennet_contract_"),
            "{text}"
        );
        assert!(
            !text.contains("zennet_chain_peers"),
            "no network, no peer count: {text}"
        );
    }
}
