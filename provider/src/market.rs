//! Market policy: which announced tasks this node takes.
//!
//! [`evaluate`] checks one task against the operator's [`MarketPolicy`] and
//! the machine and, when acceptable, turns it into an [`Offer`]; [`choose`]
//! then picks among several offers with a greedy multi-dimensional knapsack
//! approximation (profit per bottleneck resource), spreading over publishers
//! as the RFC asks to reduce variance.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::task::{CoreChoice, VmRequirements};
use zennet_chain::{Address, Amount, Hash, TaskRecord, pow};

/// The operator's policy, the `[market]` table of config.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketPolicy {
    /// Accept matching tasks automatically (false: only `zennet agent accept ID`).
    pub auto_accept: bool,
    /// Lowest acceptable price per compute unit-second, in base units.
    #[serde(with = "amount_str")]
    pub min_per_compute_unit_second: Amount,
    /// Lowest acceptable price per GiB-hour of memory.
    #[serde(with = "amount_str")]
    pub min_per_memory_gib_hour: Amount,
    /// Lowest acceptable price per GiB-hour of persistent storage.
    #[serde(with = "amount_str")]
    pub min_per_storage_gib_hour: Amount,
    /// Lowest acceptable flat price per second.
    #[serde(with = "amount_str")]
    pub min_base_per_second: Amount,
    /// Cores kept for the host, never rented out.
    pub reserved_cores: u32,
    /// Memory kept for the host (the agent, QEMU overhead, the OS).
    pub reserved_memory_mib: u64,
    /// Disk kept for the host.
    pub reserved_disk_gib: u64,
    /// Image ids the operator runs; empty = any image this node has built
    /// or may fetch.
    pub allowed_images: Vec<String>,
    /// Fetch an image a task names by file id (published with `zennet
    /// image publish`) when it is not built here, check it against the
    /// announced manifest hash, and keep it for later tasks. Never one
    /// whose id is here under another manifest hash (see
    /// [`crate::images`]).
    pub fetch_images: bool,
    /// The largest image (MiB, all its files) this node fetches.
    pub max_image_mib: u64,
    /// Extra proof of work the announcement must carry (difficulty; 0 = the network minimum is enough).
    pub min_task_pow: u64,
    /// The hardest acceptance proof of work this node will search for
    /// (an announcement may ask for any difficulty, up to 2^64 - 1).
    pub max_acceptance_difficulty: u64,
    /// Publishers whose tasks may be taken; empty = everyone not denied.
    pub publishers_allow: Vec<Address>,
    /// Publishers whose tasks are never taken.
    pub publishers_deny: Vec<Address>,
    /// Tasks this node runs at once, at most.
    pub max_concurrent_tasks: u32,
}

impl Default for MarketPolicy {
    fn default() -> Self {
        Self {
            auto_accept: true,
            min_per_compute_unit_second: 0,
            min_per_memory_gib_hour: 0,
            min_per_storage_gib_hour: 0,
            min_base_per_second: 0,
            reserved_cores: 0,
            reserved_memory_mib: 512,
            reserved_disk_gib: 1,
            allowed_images: Vec::new(),
            fetch_images: true,
            max_image_mib: 4096,
            min_task_pow: 0,
            max_acceptance_difficulty: 1_000_000,
            publishers_allow: Vec::new(),
            publishers_deny: Vec::new(),
            max_concurrent_tasks: 4,
        }
    }
}

/// What this machine has (from the capacity profile), before reservations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Benchmarked compute units per core.
    pub compute_per_core: u32,
    /// Measured disk throughput, if benchmarked.
    pub disk_mbps: Option<u32>,
    /// Measured memory throughput, if benchmarked.
    pub memory_mbps: Option<u32>,
}

/// Resources free for new tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Resources {
    /// Whether `other` fits inside `self` in every dimension.
    pub fn fits(&self, other: &Resources) -> bool {
        other.cores <= self.cores
            && other.memory_mib <= self.memory_mib
            && other.disk_gib <= self.disk_gib
    }

    /// `self` less `other`, never below zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cores: self.cores.saturating_sub(other.cores),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores, {} MiB memory, {} GiB disk",
            self.cores, self.memory_mib, self.disk_gib
        )
    }
}

impl MarketPolicy {
    /// Machine minus reservations minus what running tasks hold.
    pub fn free(&self, machine: &Machine, in_use: &Resources) -> Resources {
        let reserved = Resources {
            cores: self.reserved_cores,
            memory_mib: self.reserved_memory_mib,
            disk_gib: self.reserved_disk_gib,
        };
        Resources {
            cores: machine.cores,
            memory_mib: machine.memory_mib,
            disk_gib: machine.disk_gib,
        }
        .minus(&reserved)
        .minus(in_use)
    }
}

/// One acceptable way to take a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub task: Hash,
    pub publisher: Address,
    pub image_id: String,
    pub image: Hash,
    pub cores: u16,
    /// Cores, memory (cores × memory per core) and disk (minimum + persistent).
    pub needs: Resources,
    /// Expected income in base units per second at full use (f64 is fine: it only ranks offers).
    pub income_per_sec: f64,
}

/// Why a task was passed over — one line for logs and `zennet agent tasks`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the publisher cancelled the task")]
    Cancelled,
    #[error("the acceptance window closed at height {until}")]
    AcceptanceClosed { until: u64 },
    #[error("all {max_instances} instances are taken")]
    Full { max_instances: u32 },
    #[error("this node already accepted the task")]
    AlreadyAccepted,
    #[error("publisher {0} is on the deny list")]
    PublisherDenied(Address),
    #[error("publisher {0} is not on the allow list")]
    PublisherNotAllowed(Address),
    #[error("the announcement's proof of work is below the policy's difficulty {needed}")]
    WeakPow { needed: u64 },
    #[error(
        "the task wants acceptances with proof of work of difficulty {needed}; the policy searches at most {max}"
    )]
    AcceptancePowTooHard { needed: u64, max: u64 },
    #[error("none of the task's images ({}) is built here and allowed", .0.join(", "))]
    NoImage(Vec<String>),
    #[error("image `{id}` is not here yet; it can be fetched over the file network")]
    ImageToFetch { id: String },
    #[error("fetching image `{id}` over the file network; the task is taken once it is here")]
    FetchingImage { id: String },
    #[error("image `{id}` could not be fetched: {reason}")]
    ImageFetchFailed { id: String, reason: String },
    #[error("the task needs at least {needed} compute units per core; this machine has {have}")]
    TooSlow { needed: u32, have: u32 },
    #[error("the task wants at least {wanted}; free: {free}")]
    NoCapacity { wanted: String, free: String },
    #[error("{what} price {offered} is below the policy minimum {min}")]
    PriceTooLow {
        what: &'static str,
        offered: Amount,
        min: Amount,
    },
    #[error("the task needs {needed} MB/s disk; this machine has {have}")]
    DiskTooSlow { needed: u32, have: u32 },
    #[error("the task needs {needed} MB/s memory; this machine has {have}")]
    MemoryTooSlow { needed: u32, have: u32 },
    #[error("the task wants a {what} of {wanted} GiB; a VM here gets at most {max} GiB")]
    DiskTooLarge {
        what: &'static str,
        wanted: u32,
        max: u32,
    },
}

/// The scratch disk a task's VM gets: the announcement's minimum disk,
/// and never less than the VM runtime's default (which is what a task
/// that names no minimum gets). Counted against capacity at this size.
pub fn scratch_gib(vm: &VmRequirements) -> u32 {
    vm.min_disk_gib.max(zennet_vm::runtime::DEFAULT_SCRATCH_GIB)
}

/// Checks one task against the policy and the machine. `images` are the (id, manifest hash) pairs built on this node.
pub fn evaluate(
    task: &TaskRecord,
    height: u64,
    me: &Address,
    policy: &MarketPolicy,
    machine: &Machine,
    free: &Resources,
    images: &[(String, Hash)],
) -> Result<Offer, Rejection> {
    let ann = &task.announcement;
    let vm = &ann.vm;
    if task.cancelled_at.is_some() {
        return Err(Rejection::Cancelled);
    }
    if height > task.accept_until() {
        return Err(Rejection::AcceptanceClosed {
            until: task.accept_until(),
        });
    }
    if task.acceptances.len() >= ann.max_instances as usize {
        return Err(Rejection::Full {
            max_instances: ann.max_instances,
        });
    }
    if task.acceptances.iter().any(|a| a.node == *me) {
        return Err(Rejection::AlreadyAccepted);
    }
    if policy.publishers_deny.contains(&task.publisher) {
        return Err(Rejection::PublisherDenied(task.publisher));
    }
    if !policy.publishers_allow.is_empty() && !policy.publishers_allow.contains(&task.publisher) {
        return Err(Rejection::PublisherNotAllowed(task.publisher));
    }
    if policy.min_task_pow > 0 && !pow::meets(&ann.pow_hash(&task.publisher), policy.min_task_pow) {
        return Err(Rejection::WeakPow {
            needed: policy.min_task_pow,
        });
    }
    if ann.acceptance_difficulty > policy.max_acceptance_difficulty {
        return Err(Rejection::AcceptancePowTooHard {
            needed: ann.acceptance_difficulty,
            max: policy.max_acceptance_difficulty,
        });
    }

    let allowed = |id: &str| {
        policy.allowed_images.is_empty() || policy.allowed_images.iter().any(|a| a == id)
    };
    let image = vm
        .images
        .iter()
        .find(|c| allowed(&c.id) && images.iter().any(|(_, h)| *h == c.hash))
        .ok_or_else(|| Rejection::NoImage(vm.images.iter().map(|c| c.id.clone()).collect()))?;

    // What the VM runtime would refuse at launch is refused here, before
    // an acceptance on chain promises it.
    let limits = [
        (
            "scratch disk",
            scratch_gib(vm),
            zennet_vm::runtime::MAX_SCRATCH_GIB,
        ),
        (
            "persistent volume",
            vm.persistent_storage_gib,
            zennet_vm::runtime::MAX_VOLUME_GIB,
        ),
    ];
    if let Some((what, wanted, max)) = limits.into_iter().find(|(_, w, max)| w > max) {
        return Err(Rejection::DiskTooLarge { what, wanted, max });
    }
    let disk_gib = u64::from(scratch_gib(vm)) + u64::from(vm.persistent_storage_gib);
    let needs = |c: &CoreChoice| Resources {
        cores: u32::from(c.cores),
        memory_mib: u64::from(c.cores) * u64::from(vm.memory_mib_per_core),
        disk_gib,
    };
    let fast: Vec<&CoreChoice> = vm
        .cores
        .iter()
        .filter(|c| c.min_compute_per_core <= machine.compute_per_core)
        .collect();
    if fast.is_empty() {
        return Err(Rejection::TooSlow {
            needed: vm
                .cores
                .iter()
                .map(|c| c.min_compute_per_core)
                .min()
                .unwrap_or(0),
            have: machine.compute_per_core,
        });
    }
    let choice = fast
        .iter()
        .filter(|c| free.fits(&needs(c)))
        .max_by_key(|c| c.cores)
        .ok_or_else(|| Rejection::NoCapacity {
            wanted: fast
                .iter()
                .map(|c| needs(c))
                .min_by_key(|n| n.cores)
                .unwrap_or_default()
                .to_string(),
            free: free.to_string(),
        })?;
    let needs = needs(choice);

    if let Some(have) = machine.disk_mbps.filter(|&have| have < vm.min_disk_mbps) {
        return Err(Rejection::DiskTooSlow {
            needed: vm.min_disk_mbps,
            have,
        });
    }
    if let Some(have) = machine
        .memory_mbps
        .filter(|&have| have < vm.min_memory_mbps)
    {
        return Err(Rejection::MemoryTooSlow {
            needed: vm.min_memory_mbps,
            have,
        });
    }

    let rates = &ann.rates;
    let mut prices = vec![
        (
            "compute unit-second",
            rates.per_compute_unit_second,
            policy.min_per_compute_unit_second,
        ),
        (
            "memory GiB-hour",
            rates.per_memory_gib_hour,
            policy.min_per_memory_gib_hour,
        ),
    ];
    if vm.persistent_storage_gib > 0 {
        prices.push((
            "storage GiB-hour",
            rates.per_storage_gib_hour,
            policy.min_per_storage_gib_hour,
        ));
    }
    prices.push((
        "base per-second",
        rates.base_per_second,
        policy.min_base_per_second,
    ));
    if let Some(&(what, offered, min)) = prices.iter().find(|(_, offered, min)| offered < min) {
        return Err(Rejection::PriceTooLow { what, offered, min });
    }

    let compute_units = f64::from(choice.cores) * f64::from(machine.compute_per_core);
    let memory_gib = needs.memory_mib as f64 / 1024.0;
    let storage_gib = f64::from(vm.persistent_storage_gib);
    let income_per_sec = compute_units * rates.per_compute_unit_second as f64
        + memory_gib * rates.per_memory_gib_hour as f64 / 3600.0
        + storage_gib * rates.per_storage_gib_hour as f64 / 3600.0
        + rates.base_per_second as f64;

    Ok(Offer {
        task: task.id,
        publisher: task.publisher,
        image_id: image.id.clone(),
        image: image.hash,
        cores: choice.cores,
        needs,
        income_per_sec,
    })
}

/// Picks which offers to accept now: a greedy multi-dimensional knapsack approximation.
///
/// Each step takes the offer with the highest income per unit of its bottleneck resource
/// (income / max over dimensions of need_d / free_d, over the capacity still free), with its
/// income divided by (1 + k) where k = tasks already held or chosen from that publisher (spread
/// over publishers to reduce variance, as the RFC asks). Offers that no longer fit are skipped.
/// Stops at `max_new`. Deterministic: ties broken by task id. A task is taken at most once.
pub fn choose(
    offers: &[Offer],
    free: &Resources,
    held_per_publisher: &HashMap<Address, u32>,
    max_new: usize,
) -> Vec<Offer> {
    let mut remaining = *free;
    let mut held = held_per_publisher.clone();
    let mut chosen: Vec<Offer> = Vec::new();
    while chosen.len() < max_new {
        let best = offers
            .iter()
            .filter(|o| remaining.fits(&o.needs) && !chosen.iter().any(|c| c.task == o.task))
            .map(|o| {
                let k = held.get(&o.publisher).copied().unwrap_or(0);
                let income = o.income_per_sec / (1.0 + f64::from(k));
                (income / bottleneck(&o.needs, &remaining), o)
            })
            .max_by(|(a, x), (b, y)| a.total_cmp(b).then_with(|| y.task.cmp(&x.task)));
        let Some((_, offer)) = best else { break };
        remaining = remaining.minus(&offer.needs);
        *held.entry(offer.publisher).or_insert(0) += 1;
        chosen.push(offer.clone());
    }
    chosen
}

/// The largest share of any still-free dimension that `needs` would take
/// (kept above zero so an offer needing nothing ranks first, not as NaN).
fn bottleneck(needs: &Resources, free: &Resources) -> f64 {
    let share = |need: f64, have: f64| if need == 0.0 { 0.0 } else { need / have };
    share(f64::from(needs.cores), f64::from(free.cores))
        .max(share(needs.memory_mib as f64, free.memory_mib as f64))
        .max(share(needs.disk_gib as f64, free.disk_gib as f64))
        .max(f64::MIN_POSITIVE)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zennet_chain::task::{Acceptance, ImageChoice, Rates, TaskAnnouncement, VmRequirements};

    pub(crate) const IMG: Hash = Hash([7; 32]);
    const ME: Address = Address([5; 20]);
    const PUBLISHER: Address = Address([2; 20]);

    pub(crate) fn task() -> TaskRecord {
        let image = |id: &str, hash| ImageChoice {
            id: id.into(),
            hash,
            file: None,
        };
        let cores = |cores| CoreChoice {
            cores,
            min_compute_per_core: 100,
        };
        let vm = VmRequirements {
            images: vec![
                image("zennet-big", Hash([9; 32])),
                image("zennet-tiny", IMG),
            ],
            min_bandwidth_mbps: 0,
            min_disk_gib: 4,
            min_disk_mbps: 100,
            persistent_storage_gib: 2,
            cores: vec![cores(1), cores(4), cores(8)],
            max_compute_per_core: 1000,
            memory_mib_per_core: 1024,
            min_memory_mbps: 1000,
        };
        let rates = Rates {
            per_compute_unit_second: 2,
            per_memory_gib_hour: 3600,
            per_storage_gib_hour: 7200,
            per_traffic_gb: 0,
            base_per_second: 5,
        };
        let announcement = TaskAnnouncement {
            vm,
            min_instances: 1,
            max_instances: 2,
            endpoint: "pub.example:22".into(),
            host_key_fingerprint: Hash([3; 32]),
            lease_min_secs: 60,
            lease_max_secs: 3600,
            payout_interval_secs: 30,
            rates,
            acceptance_window: 10,
            acceptance_difficulty: 1,
            prune_height: 1000,
            info: String::new(),
            pow_nonce: 0,
        };
        TaskRecord {
            id: Hash([1; 32]),
            publisher: PUBLISHER,
            announcement,
            announced_at: 100,
            cancelled_at: None,
            acceptances: vec![],
        }
    }

    pub(crate) fn machine() -> Machine {
        Machine {
            cores: 6,
            memory_mib: 8192,
            disk_gib: 100,
            compute_per_core: 150,
            disk_mbps: Some(500),
            memory_mbps: Some(5000),
        }
    }

    pub(crate) fn acceptance(node: u8) -> Acceptance {
        Acceptance {
            node: Address([node; 20]),
            tx: Hash([node; 32]),
            height: 101,
            image: IMG,
            cores: 1,
            ssh_key_fingerprint: Hash([0; 32]),
            compute_score: 150,
        }
    }

    /// Evaluates the acceptable fixture at height 105 after `tweak`.
    fn eval(
        tweak: impl FnOnce(&mut TaskRecord, &mut MarketPolicy, &mut Machine),
    ) -> Result<Offer, Rejection> {
        let (mut t, mut p, mut m) = (task(), MarketPolicy::default(), machine());
        tweak(&mut t, &mut p, &mut m);
        let free = p.free(&m, &Resources::default());
        evaluate(&t, 105, &ME, &p, &m, &free, &[("zennet-tiny".into(), IMG)])
    }

    fn rejects(tweak: impl FnOnce(&mut TaskRecord, &mut MarketPolicy, &mut Machine)) -> Rejection {
        eval(tweak).expect_err("should be rejected")
    }

    #[test]
    fn acceptable_task_becomes_an_offer() {
        let offer = eval(|_, _, _| ()).unwrap();
        assert_eq!((offer.image_id.as_str(), offer.image), ("zennet-tiny", IMG));
        // 8 cores do not fit in 6; 4 is the most that fits.
        assert_eq!(offer.cores, 4);
        assert_eq!(
            offer.needs,
            Resources {
                cores: 4,
                memory_mib: 4096,
                disk_gib: 6
            }
        );
        // 4*150*2 + 4 GiB*3600/3600 + 2 GiB*7200/3600 + 5
        assert!((offer.income_per_sec - 1213.0).abs() < 1e-9);
        // A reserved core leaves room for one core only.
        assert_eq!(eval(|_, p, _| p.reserved_cores = 3).unwrap().cores, 1);
        // A task naming no minimum disk still gets (and is counted at) the
        // runtime's default scratch disk, beside its 2 GiB volume.
        let no_minimum = eval(|t, _, _| t.announcement.vm.min_disk_gib = 0).unwrap();
        assert_eq!(
            no_minimum.needs.disk_gib,
            u64::from(zennet_vm::runtime::DEFAULT_SCRATCH_GIB) + 2
        );
    }

    #[test]
    fn free_subtracts_reservations_and_use() {
        let p = MarketPolicy {
            reserved_cores: 1,
            ..MarketPolicy::default()
        };
        let used = Resources {
            cores: 2,
            memory_mib: 1024,
            disk_gib: 200,
        };
        let free = Resources {
            cores: 3,
            memory_mib: 8192 - 512 - 1024,
            disk_gib: 0,
        };
        assert_eq!(p.free(&machine(), &used), free);
    }

    #[test]
    fn each_rule_rejects() {
        use Rejection::*;
        assert_eq!(rejects(|t, _, _| t.cancelled_at = Some(104)), Cancelled);
        assert_eq!(
            rejects(|t, _, _| t.announced_at = 94),
            AcceptanceClosed { until: 104 }
        );
        let full = |t: &mut TaskRecord, _: &mut _, _: &mut _| {
            t.acceptances = vec![acceptance(10), acceptance(11)]
        };
        assert_eq!(rejects(full), Full { max_instances: 2 });
        assert_eq!(
            rejects(|t, _, _| t.acceptances = vec![acceptance(5)]),
            AlreadyAccepted
        );
        assert_eq!(
            rejects(|_, p, _| p.publishers_deny = vec![PUBLISHER]),
            PublisherDenied(PUBLISHER)
        );
        let allow = |_: &mut _, p: &mut MarketPolicy, _: &mut _| {
            p.publishers_allow = vec![Address([4; 20])]
        };
        assert_eq!(rejects(allow), PublisherNotAllowed(PUBLISHER));
        assert_eq!(
            rejects(|_, p, _| p.min_task_pow = u64::MAX),
            WeakPow { needed: u64::MAX }
        );
        // A hostile announcement asking acceptances for 2^64 - 1 work is
        // passed over before any search starts.
        assert_eq!(
            rejects(|t, _, _| t.announcement.acceptance_difficulty = u64::MAX),
            AcceptancePowTooHard {
                needed: u64::MAX,
                max: 1_000_000
            }
        );
        let only_big = |_: &mut _, p: &mut MarketPolicy, _: &mut _| {
            p.allowed_images = vec!["zennet-big".into()]
        };
        assert_eq!(
            rejects(only_big),
            NoImage(vec!["zennet-big".into(), "zennet-tiny".into()])
        );
        let slow = rejects(|_, _, m| m.compute_per_core = 99);
        assert_eq!(
            slow,
            TooSlow {
                needed: 100,
                have: 99
            }
        );
        let small = rejects(|_, _, m| m.memory_mib = 1024);
        let free = "6 cores, 512 MiB memory, 99 GiB disk".to_string();
        let wanted = "1 cores, 1024 MiB memory, 6 GiB disk".to_string();
        assert_eq!(small, NoCapacity { wanted, free });
        let disk = rejects(|_, _, m| m.disk_mbps = Some(99));
        assert_eq!(
            disk,
            DiskTooSlow {
                needed: 100,
                have: 99
            }
        );
        let memory = rejects(|_, _, m| m.memory_mbps = Some(999));
        assert_eq!(
            memory,
            MemoryTooSlow {
                needed: 1000,
                have: 999
            }
        );
        // A disk the VM runtime would refuse at launch is refused before
        // an acceptance promises it, however large the machine.
        let huge = |t: &mut TaskRecord, m: &mut Machine| {
            t.announcement.vm.min_disk_gib = 1025;
            m.disk_gib = 1 << 20;
        };
        assert_eq!(
            rejects(|t, _, m| huge(t, m)),
            DiskTooLarge {
                what: "scratch disk",
                wanted: 1025,
                max: 1024
            }
        );
        let volume = rejects(|t, _, m| {
            t.announcement.vm.persistent_storage_gib = 5000;
            m.disk_gib = 1 << 20;
        });
        assert!(matches!(
            volume,
            DiskTooLarge {
                what: "persistent volume",
                wanted: 5000,
                ..
            }
        ));
        let price = |what, offered, min| PriceTooLow { what, offered, min };
        let compute = rejects(|_, p, _| p.min_per_compute_unit_second = 3);
        assert_eq!(compute, price("compute unit-second", 2, 3));
        let memory = rejects(|_, p, _| p.min_per_memory_gib_hour = 3601);
        assert_eq!(memory, price("memory GiB-hour", 3600, 3601));
        let storage = rejects(|_, p, _| p.min_per_storage_gib_hour = 7201);
        assert_eq!(storage, price("storage GiB-hour", 7200, 7201));
        let base = rejects(|_, p, _| p.min_base_per_second = 6);
        assert_eq!(base, price("base per-second", 5, 6));
    }

    #[test]
    fn boundaries_and_unknowns_are_accepted() {
        assert!(eval(|t, _, _| t.announced_at = 95).is_ok()); // accept_until == height
        assert!(eval(|t, _, _| t.acceptances = vec![acceptance(10)]).is_ok());
        assert!(eval(|_, p, _| p.publishers_allow = vec![PUBLISHER]).is_ok());
        assert!(eval(|_, p, _| p.min_task_pow = 1).is_ok());
        assert!(eval(|_, p, _| p.allowed_images = vec!["zennet-tiny".into()]).is_ok());
        let unknown_speeds = |t: &mut TaskRecord, _: &mut _, m: &mut Machine| {
            (
                t.announcement.vm.min_disk_mbps,
                t.announcement.vm.min_memory_mbps,
            ) = (u32::MAX, u32::MAX);
            (m.disk_mbps, m.memory_mbps) = (None, None);
        };
        assert!(eval(unknown_speeds).is_ok());
        // Without persistent storage its price does not matter.
        let no_storage = |t: &mut TaskRecord, p: &mut MarketPolicy, _: &mut _| {
            t.announcement.vm.persistent_storage_gib = 0;
            p.min_per_storage_gib_hour = u128::MAX;
        };
        assert!(eval(no_storage).is_ok());
    }

    #[test]
    fn rejection_messages_name_the_thing() {
        let r = Rejection::PriceTooLow {
            what: "memory GiB-hour",
            offered: 1,
            min: 2,
        };
        assert_eq!(
            r.to_string(),
            "memory GiB-hour price 1 is below the policy minimum 2"
        );
        let r = Rejection::NoImage(vec!["a".into(), "b".into()]);
        assert!(r.to_string().contains("(a, b)"));
        assert!(
            Rejection::PublisherDenied(PUBLISHER)
                .to_string()
                .contains(&PUBLISHER.to_string())
        );
    }

    #[test]
    fn policy_parses_with_defaults_and_rejects_unknown_keys() {
        // The agent crate has no TOML parser; the serde attributes are format-independent.
        let p: MarketPolicy = serde_json::from_str(r#"{"reserved_cores": 2}"#).unwrap();
        assert_eq!(
            p,
            MarketPolicy {
                reserved_cores: 2,
                ..MarketPolicy::default()
            }
        );
        assert!(p.auto_accept && p.allowed_images.is_empty());
        assert_eq!(
            (
                p.reserved_memory_mib,
                p.reserved_disk_gib,
                p.max_concurrent_tasks
            ),
            (512, 1, 4)
        );
        assert!(serde_json::from_str::<MarketPolicy>(r#"{"reserved_cpus": 2}"#).is_err());
        let back: MarketPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn amounts_and_addresses_parse_from_strings() {
        let json = r#"{"min_per_memory_gib_hour": "340282366920938463463374607431768211455",
            "min_base_per_second": 7,
            "publishers_deny": ["0x0202020202020202020202020202020202020202"]}"#;
        let p: MarketPolicy = serde_json::from_str(json).unwrap();
        assert_eq!(p.min_per_memory_gib_hour, u128::MAX);
        assert_eq!(p.min_base_per_second, 7);
        assert_eq!(p.publishers_deny, vec![PUBLISHER]);
        for bad in [r#""-1""#, r#""1.5""#, r#""""#] {
            let json = format!(r#"{{"min_base_per_second": {bad}}}"#);
            assert!(
                serde_json::from_str::<MarketPolicy>(&json).is_err(),
                "{bad}"
            );
        }
    }

    fn offer(id: u8, publisher: u8, cores: u32, memory_mib: u64, income: f64) -> Offer {
        Offer {
            task: Hash([id; 32]),
            publisher: Address([publisher; 20]),
            image_id: "zennet-tiny".into(),
            image: IMG,
            cores: cores as u16,
            needs: Resources {
                cores,
                memory_mib,
                disk_gib: 1,
            },
            income_per_sec: income,
        }
    }

    const FREE: Resources = Resources {
        cores: 4,
        memory_mib: 8192,
        disk_gib: 100,
    };

    fn chosen(offers: &[Offer], held: &HashMap<Address, u32>, max_new: usize) -> Vec<u8> {
        choose(offers, &FREE, held, max_new)
            .iter()
            .map(|o| o.task.0[0])
            .collect()
    }

    #[test]
    fn choose_fills_by_bottleneck_ratio() {
        // The memory-heavy offer pays most alone but takes all the memory;
        // the two core-light offers together pay more.
        let offers = [
            offer(1, 1, 1, 8192, 10.0),
            offer(2, 2, 2, 2048, 6.0),
            offer(3, 3, 2, 2048, 6.0),
        ];
        assert_eq!(chosen(&offers, &HashMap::new(), 10), vec![2, 3]);
    }

    #[test]
    fn choose_respects_capacity_and_max_new() {
        let offers: Vec<Offer> = (1..=3).map(|i| offer(i, i, 2, 1024, 5.0)).collect();
        assert_eq!(chosen(&offers, &HashMap::new(), 10), vec![1, 2]);
        assert_eq!(chosen(&offers, &HashMap::new(), 1), vec![1]);
        assert!(chosen(&offers, &HashMap::new(), 0).is_empty());
        assert!(chosen(&[offer(9, 9, 5, 1024, 100.0)], &HashMap::new(), 10).is_empty());
        // The same task offered twice is taken once.
        let twice = [offer(1, 1, 1, 1024, 5.0), offer(1, 1, 1, 1024, 5.0)];
        assert_eq!(chosen(&twice, &HashMap::new(), 10), vec![1]);
    }

    #[test]
    fn choose_spreads_over_publishers() {
        let offers = [
            offer(1, 1, 1, 1024, 11.0),
            offer(2, 1, 1, 1024, 10.0),
            offer(3, 2, 1, 1024, 9.0),
        ];
        assert_eq!(chosen(&offers, &HashMap::new(), 2), vec![1, 3]);
        // A publisher whose task already runs here counts too.
        let held = HashMap::from([(Address([1; 20]), 1)]);
        assert_eq!(chosen(&offers, &held, 1), vec![3]);
    }

    #[test]
    fn choose_is_deterministic() {
        let mut offers = vec![
            offer(4, 4, 1, 1024, 5.0),
            offer(2, 2, 1, 1024, 5.0),
            offer(3, 3, 1, 1024, 5.0),
        ];
        let first = choose(&offers, &FREE, &HashMap::new(), 2);
        assert_eq!(
            first.iter().map(|o| o.task.0[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        offers.reverse();
        assert_eq!(choose(&offers, &FREE, &HashMap::new(), 2), first);
    }
}
