//! Chaos on the money path, with real processes: while a job runs in two
//! rented VMs, the two providers and the publisher are `kill -9`ed at
//! seeded random moments (12 kills, each process 4 times) and restarted.
//! Afterwards the job's answer is right, every channel is closed, each
//! provider holds and claimed on chain exactly the last voucher its
//! publisher signed, no VM ran unpaid past the node's threshold while its
//! node was up, and every balance reconciles with the claims and fees on
//! chain.
//!
//! `ZENNET_CHAOS_SEED=N` replays a run (the seed is printed first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zennet_tests::market::{
    Market, api_get, channel_closed, claimed_on_chain, contract, start_in_market, vms_of,
    wait_running,
};
use zennet_tests::{TestHome, amount, wait_until};

/// Payout interval of the task (seconds).
const INTERVAL: u64 = 2;
/// How long a running VM may go without a new voucher while its node is
/// up: the node pauses 1.5 intervals after an uncovered report (its
/// default), a report is at most one interval old, and the rest is the
/// pause itself and this test's sampling on two busy cores.
const UNPAID_LIMIT: Duration = Duration::from_secs(3 + INTERVAL + 4);
/// The job: primes below this, split so both halves cost about the same.
const PRIMES_BELOW: u64 = 300_000;
const SPLIT: u64 = 190_000;

#[test]
fn kill_9_of_providers_and_publisher_loses_no_money() {
    let seed = std::env::var("ZENNET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed: {seed} (replay with ZENNET_CHAOS_SEED={seed})");
    let mut rng = SplitMix(seed);

    // The grace period outlasts any outage here: the contracts should
    // survive the chaos, not be ended by it.
    let mut m = Market::start(1, 2, &[("provider", "grace_secs", "60")]);
    // The SSH endpoint is on chain: a restarted publisher must listen there again.
    m.pin_ssh_endpoint(0);
    let (start_height, before) = balances_at_one_height(&m);

    let task = m.announce(0, 2, INTERVAL as i32, "");
    let vms = wait_running(&m.publishers[0], &task, 2);
    for (vm, (lo, hi)) in vms.iter().zip([(0, SPLIT), (SPLIT, PRIMES_BELOW)]) {
        let job = format!(
            "awk -v lo={lo} -v hi={hi} 'BEGIN {{ c = 0; for (n = lo; n < hi; n++) {{ if (n < 2) continue; p = 1; for (d = 2; d * d <= n; d++) if (n % d == 0) {{ p = 0; break }}; c += p }}; print c }}' > /tmp/answer.part && mv /tmp/answer.part /tmp/answer"
        );
        let background = format!(
            "setsid sh -c '{}' </dev/null >/dev/null 2>&1 &",
            job.replace('\'', r"'\''")
        );
        m.publishers[0].ok(&["vm", "exec", vm["id"].as_str().unwrap(), "--", &background]);
    }

    // The kills: each process four times, in a seeded order, at seeded moments.
    let mut victims: Vec<usize> = (0..12).map(|i| i % 3).collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut watch = Watch::new(&m);
    let chaos = Instant::now();
    for victim in victims {
        watch.sample_for(&m, &task, Duration::from_millis(1000 + rng.below(4000)));
        let name = if victim == 2 {
            "the publisher".to_string()
        } else {
            format!("provider {victim}")
        };
        eprintln!(
            "chaos: {:.1}s kill -9 {name}",
            chaos.elapsed().as_secs_f64()
        );
        let boot = m.miner.p2p_addr();
        let (home, role) = if victim == 2 {
            (&mut m.publishers[0], "--publish")
        } else {
            watch.node_down(victim);
            (&mut m.providers[victim], "--provide")
        };
        home.kill_node();
        let down = Duration::from_millis(rng.below(2000));
        std::thread::sleep(down);
        start_in_market(home, role, &boot);
        if victim != 2 {
            watch.node_up(victim);
        }
    }
    eprintln!("chaos: over after {:.1}s", chaos.elapsed().as_secs_f64());

    // Both VMs come back behind their tunnels and are paid again.
    let paid_then: Vec<u128> = vms_of(&m.publishers[0], &task)
        .iter()
        .map(|v| amount(&v["paid"]))
        .collect();
    wait_until(
        Duration::from_secs(180),
        "both VMs connected, running and paid again",
        || {
            watch.sample(&m, &task);
            let vms = vms_of(&m.publishers[0], &task);
            vms.len() == 2
                && vms.iter().zip(&paid_then).all(|(v, then)| {
                    v["connected"] == true && v["phase"] == "running" && amount(&v["paid"]) > *then
                })
        },
    );

    // The job finished with the right answer.
    let mut answer = 0;
    for vm in &vms {
        let id = vm["id"].as_str().unwrap();
        let mut part = None;
        wait_until(Duration::from_secs(400), "the job's answer", || {
            watch.sample(&m, &task);
            let out = m.publishers[0].run(&["vm", "exec", id, "--", "cat /tmp/answer"]);
            part = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .ok();
            part.is_some()
        });
        answer += part.unwrap();
    }
    eprintln!(
        "chaos: the job answered {answer} by {:.1}s",
        chaos.elapsed().as_secs_f64()
    );
    assert_eq!(answer, count_primes_below(PRIMES_BELOW), "seed {seed}");

    // The end: every contract closes on chain.
    m.publishers[0].ok(&["task", "cancel", &task]);
    for p in &m.providers {
        wait_until(
            Duration::from_secs(120),
            "each contract ended and its channel closed",
            || {
                contract(p, &task).is_some_and(|c| {
                    c["phase"] == "ended"
                        && c["channel"]
                            .as_str()
                            .is_some_and(|ch| channel_closed(&m.miner, ch))
                })
            },
        );
    }

    // Each provider holds, and claimed, exactly the last voucher signed to it.
    let signed: HashMap<String, u128> = vms_of(&m.publishers[0], &task)
        .iter()
        .map(|v| (v["node"].as_str().unwrap().to_string(), amount(&v["paid"])))
        .collect();
    for p in &m.providers {
        let c = contract(p, &task).unwrap();
        let last = signed[&p.address()];
        assert!(last > 0, "seed {seed}: provider was never paid: {c}");
        assert_eq!(amount(&c["paid"]), last, "seed {seed}: {c}");
        assert_eq!(claimed_on_chain(p, &c), last, "seed {seed}: {c}");
    }
    assert!(
        watch.violations.is_empty(),
        "seed {seed}: VMs ran unpaid: {:?}",
        watch.violations
    );

    // Balances reconcile: what providers gained is what they claimed less
    // their fees; the publisher lost exactly the claims plus its fees (so
    // no deposit is left locked in a forgotten channel).
    let (end_height, after) = balances_at_one_height(&m);
    let (fees, claimed) = scan(&m.miner, start_height + 1, end_height);
    let mut total = 0;
    for p in &m.providers {
        let a = p.address();
        let got = claimed.get(&a).copied().unwrap_or(0);
        assert_eq!(got, signed[&a], "seed {seed}: claims of {a}");
        assert_eq!(
            after[&a] + fees.get(&a).copied().unwrap_or(0),
            before[&a] + got,
            "seed {seed}: provider {a} does not reconcile"
        );
        total += got;
    }
    let p = m.publishers[0].address();
    assert_eq!(
        after[&p] + total + fees.get(&p).copied().unwrap_or(0),
        before[&p],
        "seed {seed}: the publisher does not reconcile"
    );
}

/// Watches the providers' contracts between kills: a running VM whose
/// node is up must see a new voucher (or owe nothing) within
/// [`UNPAID_LIMIT`]. A node restart starts its own clock again, as the
/// node does.
struct Watch {
    up: Vec<bool>,
    last_progress: Vec<Instant>,
    last_paid: Vec<u128>,
    violations: Vec<String>,
}

impl Watch {
    fn new(m: &Market) -> Watch {
        let n = m.providers.len();
        Watch {
            up: vec![true; n],
            last_progress: vec![Instant::now(); n],
            last_paid: vec![0; n],
            violations: Vec::new(),
        }
    }

    fn node_down(&mut self, i: usize) {
        self.up[i] = false;
    }

    fn node_up(&mut self, i: usize) {
        self.up[i] = true;
        self.last_progress[i] = Instant::now();
    }

    fn sample_for(&mut self, m: &Market, task: &str, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.sample(m, task);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn sample(&mut self, m: &Market, task: &str) {
        for (i, p) in m.providers.iter().enumerate() {
            if !self.up[i] {
                continue;
            }
            let Some(cs) = api_get(p, "/v1/agent/contracts") else {
                continue;
            };
            let Some(c) = cs.as_array().unwrap().iter().find(|c| c["task"] == task) else {
                continue;
            };
            let (paid, accrued) = (amount(&c["paid"]), amount(&c["accrued"]));
            let now = Instant::now();
            if paid > self.last_paid[i] || accrued <= paid || c["phase"] != "running" {
                self.last_paid[i] = self.last_paid[i].max(paid);
                self.last_progress[i] = now;
            } else if now.duration_since(self.last_progress[i]) > UNPAID_LIMIT {
                self.violations.push(format!(
                    "provider {i}: running for {:?} owed {} with no new voucher",
                    now.duration_since(self.last_progress[i]),
                    accrued - paid
                ));
                self.last_progress[i] = now;
            }
        }
    }
}

/// (height, balances of the publishers and providers) as the miner sees
/// them at that one height.
fn balances_at_one_height(m: &Market) -> (u64, HashMap<String, u128>) {
    loop {
        let h = m.miner.height();
        let mut out = HashMap::new();
        for home in m.publishers.iter().chain(&m.providers) {
            let a = home.address();
            let v = api_get(&m.miner, &format!("/v1/accounts/{a}")).unwrap();
            out.insert(a, amount(&v["balance"]));
        }
        if m.miner.height() == h {
            return (h, out);
        }
    }
}

/// Fees paid by each sender over blocks `from..=to`, and what each
/// payee's claims and closes took out of channels (the largest
/// cumulative per channel).
fn scan(miner: &TestHome, from: u64, to: u64) -> (HashMap<String, u128>, HashMap<String, u128>) {
    let mut fees: HashMap<String, u128> = HashMap::new();
    let mut best: HashMap<String, (String, u128)> = HashMap::new();
    for h in from..=to {
        let b = api_get(miner, &format!("/v1/blocks/{h}")).unwrap();
        for t in b["txs"].as_array().unwrap() {
            let (Some(sender), false) = (t["sender"].as_str(), t["tx"].is_null()) else {
                continue;
            };
            let tx: zennet_chain::Transaction = serde_json::from_value(t["tx"].clone()).unwrap();
            let size = zennet_chain::codec::encode(&tx).len() + zennet_chain::Signature::LEN;
            *fees.entry(sender.to_string()).or_default() += tx.fee_per_byte as u128 * size as u128;
            let voucher = match &tx.body {
                zennet_chain::TxBody::ChannelClaim { voucher } => Some(voucher),
                zennet_chain::TxBody::ChannelClose { voucher, .. } => voucher.as_ref(),
                _ => None,
            };
            if let Some(v) = voucher {
                let e = best
                    .entry(v.voucher.channel.to_string())
                    .or_insert((sender.to_string(), 0));
                e.1 = e.1.max(v.voucher.cumulative);
            }
        }
    }
    let mut claimed: HashMap<String, u128> = HashMap::new();
    for (payee, amount) in best.into_values() {
        *claimed.entry(payee).or_default() += amount;
    }
    (fees, claimed)
}

fn count_primes_below(n: u64) -> u64 {
    let n = n as usize;
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            for j in (i * i..n).step_by(i) {
                composite[j] = true;
            }
        }
    }
    count
}

/// SplitMix64: a seeded sequence, enough to replay a run.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}
