//! Price suggestions for an operator's `[market]` minimums: what the
//! chain shows other providers taking, and what this machine would earn
//! at those minimums from the tasks open now.
//!
//! The sample is the tasks announced within a window (a day of blocks)
//! that at least one node accepted, each counted once per acceptance: an
//! acceptance costs its node a proof of work and a VM, so it is the
//! market's evidence of a price someone took. Announcements nobody took
//! only count when no task was taken at all — otherwise a publisher could
//! drag every suggestion down by announcing cheap tasks it never meant to
//! fill. Each minimum is the sample's lower quartile: a node with these
//! minimums would have taken three in four of the tasks others took.
//!
//! The income is [`market::evaluate`] and [`market::choose`] — the
//! provider's own policy — run with the suggested minimums over the open
//! tasks on an empty machine: base units per day at full use of what it
//! would take now (an upper bound: VMs are rarely busy all day).

use serde::{Deserialize, Serialize};
use zennet_chain::codec::amount_str;
use zennet_chain::{Address, Amount, Hash, TaskRecord};

use crate::market::{self, Machine, MarketPolicy, Resources};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceSuggestion {
    #[serde(with = "amount_str")]
    pub min_per_compute_unit_second: Amount,
    #[serde(with = "amount_str")]
    pub min_per_memory_gib_hour: Amount,
    #[serde(with = "amount_str")]
    pub min_per_storage_gib_hour: Amount,
    #[serde(with = "amount_str")]
    pub min_base_per_second: Amount,
    /// `accepted` (tasks others took), `announced` (none was taken: every
    /// announcement) or `none` (no task in the window: the minimums are 0).
    pub basis: String,
    /// Tasks announced in the window, and acceptances among them.
    pub tasks_seen: usize,
    pub acceptances_seen: usize,
    pub window_blocks: u64,
    /// Open tasks this machine would take now at the suggested minimums.
    pub would_take: usize,
    /// What those pay per day at full use.
    #[serde(with = "amount_str")]
    pub income_per_day: Amount,
}

/// What the chain's recent tasks suggest for this machine.
pub struct Market<'a> {
    pub tasks: &'a [TaskRecord],
    pub height: u64,
    pub window_blocks: u64,
    pub me: Address,
    pub policy: &'a MarketPolicy,
    pub machine: &'a Machine,
    pub images: &'a [(String, Hash)],
}

impl Market<'_> {
    pub fn suggest(&self) -> PriceSuggestion {
        let since = self.height.saturating_sub(self.window_blocks);
        let recent: Vec<&TaskRecord> = self
            .tasks
            .iter()
            .filter(|t| t.announced_at >= since)
            .collect();
        let acceptances: usize = recent.iter().map(|t| t.acceptances.len()).sum();
        // (task, weight): accepted tasks by their acceptances, else all once.
        let (basis, sample): (&str, Vec<(&TaskRecord, usize)>) = if acceptances > 0 {
            let taken = recent
                .iter()
                .filter(|t| !t.acceptances.is_empty())
                .map(|t| (*t, t.acceptances.len()))
                .collect();
            ("accepted", taken)
        } else if !recent.is_empty() {
            ("announced", recent.iter().map(|t| (*t, 1)).collect())
        } else {
            ("none", Vec::new())
        };
        let quartile = |rate: fn(&TaskRecord) -> Amount| {
            lower_quartile(sample.iter().map(|(t, w)| (rate(t), *w)).collect())
        };
        let policy = MarketPolicy {
            min_per_compute_unit_second: quartile(|t| t.announcement.rates.per_compute_unit_second),
            min_per_memory_gib_hour: quartile(|t| t.announcement.rates.per_memory_gib_hour),
            min_per_storage_gib_hour: quartile(|t| t.announcement.rates.per_storage_gib_hour),
            min_base_per_second: quartile(|t| t.announcement.rates.base_per_second),
            ..self.policy.clone()
        };
        let free = policy.free(self.machine, &Resources::default());
        let offers: Vec<_> = self
            .tasks
            .iter()
            .filter_map(|t| {
                market::evaluate(
                    t,
                    self.height,
                    &self.me,
                    &policy,
                    self.machine,
                    &free,
                    self.images,
                )
                .ok()
            })
            .collect();
        let max_new = policy.max_concurrent_tasks as usize;
        let chosen = market::choose(&offers, &free, &Default::default(), max_new);
        let per_sec: f64 = chosen.iter().map(|o| o.income_per_sec).sum();
        PriceSuggestion {
            min_per_compute_unit_second: policy.min_per_compute_unit_second,
            min_per_memory_gib_hour: policy.min_per_memory_gib_hour,
            min_per_storage_gib_hour: policy.min_per_storage_gib_hour,
            min_base_per_second: policy.min_base_per_second,
            basis: basis.into(),
            tasks_seen: recent.len(),
            acceptances_seen: acceptances,
            window_blocks: self.window_blocks,
            would_take: chosen.len(),
            income_per_day: (per_sec * 86_400.0) as Amount,
        }
    }
}

/// The weighted lower quartile (nearest rank): the smallest value with at
/// least a quarter of the weight at or below it; 0 for no values.
fn lower_quartile(mut values: Vec<(Amount, usize)>) -> Amount {
    values.sort_unstable();
    let total: usize = values.iter().map(|(_, w)| w).sum();
    let rank = total.div_ceil(4).max(1);
    let mut seen = 0;
    for (v, w) in values {
        seen += w;
        if seen >= rank {
            return v;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::tests::{IMG, acceptance, machine, task};

    const ME: Address = Address([5; 20]);

    /// Tasks at `rate` per compute unit second, announced at 100, with
    /// `taken` acceptances, each its own id.
    fn at(id: u8, rate: Amount, taken: u8) -> TaskRecord {
        let mut t = task();
        t.id = Hash([id; 32]);
        t.announcement.rates.per_compute_unit_second = rate;
        t.announcement.max_instances = 10;
        t.acceptances = (0..taken).map(|n| acceptance(100 + n)).collect();
        t
    }

    fn suggest(tasks: &[TaskRecord]) -> PriceSuggestion {
        Market {
            tasks,
            height: 105,
            window_blocks: 1000,
            me: ME,
            policy: &MarketPolicy::default(),
            machine: &machine(),
            images: &[("zennet-tiny".into(), IMG)],
        }
        .suggest()
    }

    #[test]
    fn the_minimum_is_the_lower_quartile_of_what_others_took() {
        let tasks = [
            at(1, 100, 1),
            at(2, 200, 1),
            at(3, 300, 1),
            at(4, 400, 1),
            at(5, 500, 4),
        ];
        let s = suggest(&tasks);
        assert_eq!(s.basis, "accepted");
        assert_eq!((s.tasks_seen, s.acceptances_seen), (5, 8));
        // 8 acceptances: the 2nd cheapest is at 200.
        assert_eq!(s.min_per_compute_unit_second, 200);
        // Every open task pays at least that except the one at 100.
        assert!(s.would_take >= 1 && s.income_per_day > 0, "{s:?}");
    }

    /// The cheating publisher announces fifty cheap tasks nobody takes, to
    /// talk every provider's prices down: the suggestion does not move.
    #[test]
    fn cheap_announcements_nobody_took_do_not_pull_the_suggestion_down() {
        let honest = [at(1, 300, 2), at(2, 400, 2)];
        let before = suggest(&honest);
        let mut spammed = honest.to_vec();
        spammed.extend((10..60).map(|i| at(i, 1, 0)));
        let after = suggest(&spammed);
        assert_eq!(
            after.min_per_compute_unit_second,
            before.min_per_compute_unit_second
        );
        assert_eq!(after.min_per_compute_unit_second, 300);
        // The cheap tasks are below the suggestion: not in the income.
        assert_eq!(after.income_per_day, before.income_per_day);
    }

    #[test]
    fn with_no_acceptances_or_no_tasks_the_suggestion_says_so() {
        let s = suggest(&[at(1, 40, 0), at(2, 80, 0)]);
        assert_eq!(
            (s.basis.as_str(), s.min_per_compute_unit_second),
            ("announced", 40)
        );
        let s = suggest(&[]);
        assert_eq!(s.basis, "none");
        assert_eq!((s.min_per_compute_unit_second, s.income_per_day), (0, 0));
    }

    #[test]
    fn old_tasks_are_outside_the_window() {
        let mut old = at(1, 900, 3);
        old.announced_at = 0;
        let mut new = at(2, 100, 1);
        new.announced_at = 1500;
        let s = Market {
            tasks: &[old, new],
            height: 2000,
            window_blocks: 1000,
            me: ME,
            policy: &MarketPolicy::default(),
            machine: &machine(),
            images: &[],
        }
        .suggest();
        assert_eq!((s.tasks_seen, s.min_per_compute_unit_second), (1, 100));
    }
}
