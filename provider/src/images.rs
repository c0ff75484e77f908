//! Images a task names by file id (`ImageChoice::file`): a node that has
//! not built the image fetches it once over the file network, checks it,
//! and from then on it counts as built, for this task and every later one.
//!
//! The provider only decides *when* to fetch; *how* is an [`ImageSource`]
//! the node plugs in (the file network, which this crate does not depend
//! on), so the decisions here are testable without it. A task is never
//! accepted before its image is here: an acceptance on chain is a promise
//! to boot the VM soon, and a fetch can take minutes or fail. A fetch that
//! failed (a tampered or mislabelled image, too big, no seeder) is not
//! tried again for the same file and manifest hash: the same bytes would
//! fail the same way.
//!
//! One image per id: the VM runtime boots images by id, and the images
//! directory keeps one per id. So an image is not fetched when an image
//! of the same id but another manifest hash is here: installing it would
//! swap the image under contracts that run the one here. The operator
//! decides (rebuild, or remove the old one); the task is passed over with
//! the usual "none of the task's images is here" reason.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use zennet_chain::task::ImageChoice;
use zennet_chain::{FileHash, Hash};

use crate::market::{Offer, Rejection};

/// Why a fetch failed, as the source reports it (it crosses a seam the
/// provider does not look behind: it only shows and logs the message).
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

/// Where images named by file id come from.
pub trait ImageSource: Send + Sync + 'static {
    /// Fetches the file `choice.file`, refusing it past `max_bytes`, and
    /// installs it where the VM runtime loads images, but only if it is
    /// image `choice.id` with manifest hash `choice.hash` and every file
    /// re-hashes to its manifest entry. Resolves once it can be booted.
    fn fetch(
        &self,
        choice: ImageChoice,
        max_bytes: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), FetchError>> + Send>>;
}

/// Where a fetch of one (file, manifest hash) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchState {
    Running,
    Failed(String),
}

/// The images this node can boot and the fetches under way or failed.
pub(crate) struct Images {
    built: Mutex<Vec<(String, Hash)>>,
    fetches: Mutex<HashMap<(FileHash, Hash), FetchState>>,
    source: OnceLock<Arc<dyn ImageSource>>,
}

impl Images {
    pub(crate) fn new(built: Vec<(String, Hash)>) -> Images {
        Images {
            built: Mutex::new(built),
            fetches: Mutex::new(HashMap::new()),
            source: OnceLock::new(),
        }
    }

    /// (id, manifest hash) of every image that can be booted now.
    pub(crate) fn built(&self) -> Vec<(String, Hash)> {
        lock(&self.built).clone()
    }

    pub(crate) fn set_source(&self, source: Arc<dyn ImageSource>) -> bool {
        self.source.set(source).is_ok()
    }

    pub(crate) fn source(&self) -> Option<Arc<dyn ImageSource>> {
        self.source.get().cloned()
    }

    /// A task's verdict given the images here: `evaluate` is the market
    /// policy over a list of (id, manifest hash) taken as present. With
    /// none of the task's images here but one it names by file id
    /// fetchable (`can_fetch`: the policy allows it and a source is
    /// plugged in), the task is evaluated as if that image were here, and
    /// an acceptable task comes back as [`Rejection::ImageToFetch`] (or
    /// fetching, or failed): so a task the policy would refuse anyway
    /// never triggers a download, and none is accepted before its image
    /// is here.
    pub(crate) fn evaluate(
        &self,
        choices: &[ImageChoice],
        can_fetch: bool,
        evaluate: impl Fn(&[(String, Hash)]) -> Result<Offer, Rejection>,
    ) -> Result<Offer, Rejection> {
        let no_image = match evaluate(&self.built()) {
            Err(r @ Rejection::NoImage(_)) => r,
            other => return other,
        };
        if !can_fetch {
            return Err(no_image);
        }
        let fetchable: Vec<(String, Hash)> = self
            .fetchable(choices)
            .into_iter()
            .map(|c| (c.id.clone(), c.hash))
            .collect();
        if fetchable.is_empty() {
            return Err(match self.failure(choices) {
                Some((id, reason)) => Rejection::ImageFetchFailed { id, reason },
                None => no_image,
            });
        }
        let offer = evaluate(&fetchable)?;
        let id = offer.image_id.clone();
        let state = choices
            .iter()
            .find(|c| c.hash == offer.image && c.file.is_some())
            .and_then(|c| self.state(c));
        Err(match state {
            Some(FetchState::Running) => Rejection::FetchingImage { id },
            Some(FetchState::Failed(reason)) => Rejection::ImageFetchFailed { id, reason },
            None => Rejection::ImageToFetch { id },
        })
    }

    /// The choices of a task that could be fetched: named by file id, not
    /// failed before, and not another image of an id that is here.
    fn fetchable<'a>(&self, choices: &'a [ImageChoice]) -> Vec<&'a ImageChoice> {
        let fetches = lock(&self.fetches);
        let built = lock(&self.built);
        choices
            .iter()
            .filter(|c| {
                c.file.is_some_and(|f| {
                    !matches!(fetches.get(&(f, c.hash)), Some(FetchState::Failed(_)))
                })
            })
            .filter(|c| !built.iter().any(|(id, h)| *id == c.id && *h != c.hash))
            .collect()
    }

    pub(crate) fn state(&self, choice: &ImageChoice) -> Option<FetchState> {
        let file = choice.file?;
        lock(&self.fetches).get(&(file, choice.hash)).cloned()
    }

    /// The first failure among `choices`.
    fn failure(&self, choices: &[ImageChoice]) -> Option<(String, String)> {
        let fetches = lock(&self.fetches);
        choices
            .iter()
            .find_map(|c| match fetches.get(&(c.file?, c.hash)) {
                Some(FetchState::Failed(why)) => Some((c.id.clone(), why.clone())),
                _ => None,
            })
    }

    /// Marks `choice` as being fetched; false if it already is (or failed).
    pub(crate) fn begin(&self, choice: &ImageChoice) -> bool {
        let Some(file) = choice.file else {
            return false;
        };
        let mut fetches = lock(&self.fetches);
        if fetches.contains_key(&(file, choice.hash)) {
            return false;
        }
        fetches.insert((file, choice.hash), FetchState::Running);
        true
    }

    /// Records how a fetch ended.
    pub(crate) fn finish(&self, choice: &ImageChoice, result: Result<(), String>) {
        let Some(file) = choice.file else { return };
        let mut fetches = lock(&self.fetches);
        match result {
            Ok(()) => {
                fetches.remove(&(file, choice.hash));
                let mut built = lock(&self.built);
                built.retain(|(id, _)| *id != choice.id);
                built.push((choice.id.clone(), choice.hash));
            }
            Err(why) => {
                fetches.insert((file, choice.hash), FetchState::Failed(why));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use zennet_chain::Address;

    use super::*;
    use crate::market::Resources;

    /// A stand-in for the market policy: the task is acceptable when one
    /// of `choices` is among the images given, unless the price is low.
    fn policy(
        choices: &[ImageChoice],
        price_ok: bool,
    ) -> impl Fn(&[(String, Hash)]) -> Result<Offer, Rejection> + '_ {
        move |images| {
            let c = choices
                .iter()
                .find(|c| images.iter().any(|(_, h)| *h == c.hash))
                .ok_or_else(|| {
                    Rejection::NoImage(choices.iter().map(|c| c.id.clone()).collect())
                })?;
            if !price_ok {
                return Err(Rejection::PriceTooLow {
                    what: "compute",
                    offered: 1,
                    min: 2,
                });
            }
            Ok(Offer {
                task: Hash([0; 32]),
                publisher: Address([0; 20]),
                image_id: c.id.clone(),
                image: c.hash,
                cores: 1,
                needs: Resources::default(),
                income_per_sec: 1.0,
            })
        }
    }

    #[test]
    fn an_image_here_is_used_and_one_to_fetch_is_fetched_first() {
        let images = Images::new(vec![("zennet-tiny".into(), Hash([1; 32]))]);
        let here = [choice("zennet-tiny", 1, Some(7))];
        assert!(images.evaluate(&here, true, policy(&here, true)).is_ok());

        let away = [choice("zennet-spark", 2, Some(8))];
        let r = images.evaluate(&away, true, policy(&away, true));
        assert_eq!(
            r.unwrap_err(),
            Rejection::ImageToFetch {
                id: "zennet-spark".into()
            }
        );
        assert!(images.begin(&away[0]));
        let r = images.evaluate(&away, true, policy(&away, true));
        assert_eq!(
            r.unwrap_err(),
            Rejection::FetchingImage {
                id: "zennet-spark".into()
            }
        );
        images.finish(&away[0], Ok(()));
        assert!(images.evaluate(&away, true, policy(&away, true)).is_ok());
    }

    #[test]
    fn an_image_never_replaces_another_of_the_same_id() {
        let images = Images::new(vec![("zennet-tiny".into(), Hash([1; 32]))]);
        let other = [choice("zennet-tiny", 2, Some(7))];
        let r = images.evaluate(&other, true, policy(&other, true));
        assert!(matches!(r, Err(Rejection::NoImage(_))), "{r:?}");
        assert_eq!(images.built(), [("zennet-tiny".to_string(), Hash([1; 32]))]);
    }

    #[test]
    fn a_task_the_policy_refuses_never_triggers_a_fetch() {
        let images = Images::new(Vec::new());
        let away = [choice("zennet-spark", 2, Some(8))];
        let r = images.evaluate(&away, true, policy(&away, false));
        assert!(matches!(r, Err(Rejection::PriceTooLow { .. })), "{r:?}");
        // Fetching off (policy or no source), or no file id: no image.
        let r = images.evaluate(&away, false, policy(&away, true));
        assert!(matches!(r, Err(Rejection::NoImage(_))), "{r:?}");
        let local_only = [choice("zennet-spark", 2, None)];
        let r = images.evaluate(&local_only, true, policy(&local_only, true));
        assert!(matches!(r, Err(Rejection::NoImage(_))), "{r:?}");
    }

    #[test]
    fn a_failed_image_is_reported_and_the_next_choice_is_tried() {
        let images = Images::new(Vec::new());
        let bad = choice("evil", 3, Some(8));
        let good = choice("zennet-tiny", 4, Some(9));
        images.begin(&bad);
        images.finish(&bad, Err("vmlinux has SHA-256 x".into()));
        let r = images.evaluate(
            std::slice::from_ref(&bad),
            true,
            policy(std::slice::from_ref(&bad), true),
        );
        assert_eq!(
            r.unwrap_err(),
            Rejection::ImageFetchFailed {
                id: "evil".into(),
                reason: "vmlinux has SHA-256 x".into()
            }
        );
        let both = [bad, good];
        let r = images.evaluate(&both, true, policy(&both, true));
        assert_eq!(
            r.unwrap_err(),
            Rejection::ImageToFetch {
                id: "zennet-tiny".into()
            }
        );
    }

    fn choice(id: &str, hash: u8, file: Option<u8>) -> ImageChoice {
        ImageChoice {
            id: id.into(),
            hash: Hash([hash; 32]),
            file: file.map(|f| FileHash([f; 20])),
        }
    }

    #[test]
    fn a_fetch_runs_once_and_a_fetched_image_counts_as_built() {
        let images = Images::new(vec![("zennet-tiny".into(), Hash([1; 32]))]);
        let c = choice("custom", 2, Some(7));
        assert!(images.begin(&c));
        assert!(!images.begin(&c), "a second round does not start it again");
        assert_eq!(images.state(&c), Some(FetchState::Running));
        images.finish(&c, Ok(()));
        assert_eq!(
            images.built(),
            [
                ("zennet-tiny".to_string(), Hash([1; 32])),
                ("custom".to_string(), Hash([2; 32]))
            ]
        );
        assert_eq!(images.state(&c), None);
    }

    #[test]
    fn a_failed_fetch_is_never_retried_and_is_reported() {
        let images = Images::new(Vec::new());
        let bad = choice("evil", 3, Some(8));
        let good = choice("zennet-tiny", 4, Some(9));
        let local_only = choice("zennet-dask", 5, None);
        let all = [bad.clone(), good.clone(), local_only];
        assert_eq!(images.fetchable(&all).len(), 2);
        assert!(images.begin(&bad));
        images.finish(&bad, Err("manifest hash differs".into()));
        assert!(!images.begin(&bad));
        assert_eq!(images.fetchable(&all), [&good]);
        assert_eq!(
            images.failure(&all),
            Some(("evil".to_string(), "manifest hash differs".to_string()))
        );
        assert!(images.built().is_empty());
    }
}
