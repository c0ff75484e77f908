//! Ethash seals through the `ethash` crate, in light mode: only the per-epoch
//! cache is kept (in memory, and on disk so a restart does not rebuild it),
//! dataset items are computed from it on demand.
//!
//! Verification first runs a cheap pre-check — the final Ethash hash is
//! keccak256(keccak512(seal hash ‖ nonce) ‖ mix digest), so a header whose
//! claimed mix digest cannot meet its difficulty is rejected after two hashes
//! — and only then the full light computation that recomputes the mix.
//!
//! A light hash computes 128 dataset items from the cache; when an epoch's
//! whole dataset is small (test chains: at most [`FULL_DATASET_MAX`]) it is
//! built once and hashes read it instead (`hashimoto_full`, the same result
//! a thousand times faster), which is what lets a test build a 20,000-block
//! chain in seconds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ethereum_types::{H64, H256};
use sha3::{Digest, Keccak512};

use crate::block::Header;
use crate::crypto::{Hash, keccak256, keccak256_concat};
use crate::error::BlockError;
use crate::genesis::EthashParams;
use crate::pow;

/// Memory for caches (and for small datasets): a mainnet-sized 16 MiB cache
/// keeps a few epochs, a test chain's tiny ones keep many, so headers of
/// several epochs checked in parallel do not evict each other's.
const MEMORY_BUDGET: usize = 64 << 20;
/// Headers whose seal was recently verified: sync checks a header chain
/// first and imports the blocks right after, and should not pay twice.
const VERIFIED_MEMORY: usize = 1 << 16;
/// Datasets up to this size are built whole and kept with their cache.
pub const FULL_DATASET_MAX: usize = 1 << 20;

pub struct Ethash {
    params: EthashParams,
    dir: Option<PathBuf>,
    caches: Mutex<BTreeMap<u64, Arc<Vec<u8>>>>,
    datasets: Mutex<BTreeMap<u64, Arc<Vec<u8>>>>,
    verified: Mutex<std::collections::HashSet<Hash>>,
}

impl Ethash {
    /// `dir`, when given, holds one cache file per epoch.
    pub fn new(params: EthashParams, dir: Option<PathBuf>) -> Ethash {
        Ethash {
            params,
            dir,
            caches: Mutex::new(BTreeMap::new()),
            datasets: Mutex::new(BTreeMap::new()),
            verified: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn epoch(&self, height: u64) -> u64 {
        height / self.params.epoch_length
    }

    pub fn cache_size(&self, epoch: u64) -> usize {
        let bytes = self.params.cache_bytes + self.params.cache_growth_bytes * epoch;
        (bytes as usize) / ethash::HASH_BYTES * ethash::HASH_BYTES
    }

    pub fn dataset_size(&self, epoch: u64) -> usize {
        let bytes = self.params.dataset_bytes + self.params.dataset_growth_bytes * epoch;
        (bytes as usize) / ethash::MIX_BYTES * ethash::MIX_BYTES
    }

    /// The light cache of `epoch`: from memory, from disk, or built (and
    /// saved). Built under the lock, so threads verifying headers of the
    /// same new epoch build it once.
    pub fn cache(&self, epoch: u64) -> Arc<Vec<u8>> {
        let mut caches = self.caches.lock().expect("cache lock");
        if let Some(c) = caches.get(&epoch) {
            return c.clone();
        }
        let size = self.cache_size(epoch);
        let cache = self
            .load(epoch, size)
            .unwrap_or_else(|| self.build_and_save(epoch, size));
        let cache = Arc::new(cache);
        caches.insert(epoch, cache.clone());
        evict(&mut caches, epoch);
        cache
    }

    /// Computes (mix digest, final hash) for a seal hash and nonce at `height`.
    pub fn compute(&self, seal_hash: &Hash, nonce: u64, height: u64) -> (Hash, Hash) {
        let epoch = self.epoch(height);
        let cache = self.cache(epoch);
        self.compute_with(&cache, epoch, seal_hash, nonce)
    }

    /// Checks the header's seal: pre-check, then the light computation.
    pub fn verify(&self, header: &Header) -> Result<(), BlockError> {
        // The full header hash covers the seal, so a hit means this exact
        // header already passed.
        let id = header.hash();
        if self.verified.lock().expect("verified lock").contains(&id) {
            return Ok(());
        }
        self.verify_seal(header)?;
        self.remember(id);
        Ok(())
    }

    fn remember(&self, id: Hash) {
        let mut verified = self.verified.lock().expect("verified lock");
        if verified.len() >= VERIFIED_MEMORY {
            verified.clear();
        }
        verified.insert(id);
    }

    /// The seal check itself, without the memory of verified headers.
    pub fn verify_seal(&self, header: &Header) -> Result<(), BlockError> {
        let seal_hash = header.seal_hash();
        let quick = quick_result(&seal_hash, header.nonce, &header.mix_digest);
        if !pow::meets(&quick, header.difficulty) {
            return Err(BlockError::BadSeal(format!(
                "does not meet difficulty {}",
                header.difficulty
            )));
        }
        let (mix, result) = self.compute(&seal_hash, header.nonce, header.height);
        if mix != header.mix_digest {
            return Err(BlockError::BadSeal("mix digest does not match".into()));
        }
        debug_assert_eq!(result, quick);
        Ok(())
    }

    /// Tries up to `tries` nonces from `start`. Returns the sealing nonce and
    /// mix digest if one meets the header's difficulty; stops early when
    /// `stop` is raised.
    pub fn search(
        &self,
        header: &Header,
        start: u64,
        tries: u64,
        stop: &AtomicBool,
    ) -> Option<(u64, Hash)> {
        let seal_hash = header.seal_hash();
        let epoch = self.epoch(header.height);
        let cache = self.cache(epoch);
        let target = pow::target(header.difficulty);
        for i in 0..tries {
            if i % 64 == 0 && stop.load(Ordering::Relaxed) {
                return None;
            }
            let nonce = start.wrapping_add(i);
            let (mix, result) = self.compute_with(&cache, epoch, &seal_hash, nonce);
            if primitive_types::U256::from_big_endian(&result.0) <= target {
                // A seal found here is valid by construction: importing the
                // block right after need not compute it again.
                let mut sealed = header.clone();
                sealed.nonce = nonce;
                sealed.mix_digest = mix;
                self.remember(sealed.hash());
                return Some((nonce, mix));
            }
        }
        None
    }

    fn compute_with(&self, cache: &[u8], epoch: u64, seal_hash: &Hash, nonce: u64) -> (Hash, Hash) {
        let size = self.dataset_size(epoch);
        let (header, nonce) = (H256::from(seal_hash.0), H64::from(nonce.to_be_bytes()));
        let (mix, result) = match self.dataset(epoch, size, cache) {
            Some(dataset) => ethash::hashimoto_full(header, nonce, size, &dataset),
            None => ethash::hashimoto_light(header, nonce, size, cache),
        };
        (Hash(mix.0), Hash(result.0))
    }

    /// The whole dataset of a small epoch, built once from its cache.
    fn dataset(&self, epoch: u64, size: usize, cache: &[u8]) -> Option<Arc<Vec<u8>>> {
        if size > FULL_DATASET_MAX {
            return None;
        }
        let mut datasets = self.datasets.lock().expect("dataset lock");
        if let Some(d) = datasets.get(&epoch) {
            return Some(d.clone());
        }
        let mut d = vec![0u8; size];
        ethash::make_dataset(&mut d, cache);
        let d = Arc::new(d);
        datasets.insert(epoch, d.clone());
        evict(&mut datasets, epoch);
        Some(d)
    }

    fn path(&self, epoch: u64, size: usize) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("epoch-{epoch}-{size}.cache")))
    }

    /// A cache file is the cache followed by its keccak256, so a torn or
    /// corrupted file is detected and rebuilt rather than trusted.
    fn load(&self, epoch: u64, size: usize) -> Option<Vec<u8>> {
        let path = self.path(epoch, size)?;
        let mut bytes = std::fs::read(&path).ok()?;
        if bytes.len() != size + 32 {
            return None;
        }
        let sum = bytes.split_off(size);
        (keccak256(&bytes).0[..] == sum[..]).then_some(bytes)
    }

    fn build_and_save(&self, epoch: u64, size: usize) -> Vec<u8> {
        let started = std::time::Instant::now();
        let mut cache = vec![0u8; size];
        ethash::make_cache(&mut cache, ethash::get_seedhash(epoch as usize));
        tracing::info!(
            epoch,
            size,
            ms = started.elapsed().as_millis() as u64,
            "built ethash cache"
        );
        if let Some(path) = self.path(epoch, size)
            && let Err(e) = save_atomically(&path, &cache)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not save ethash cache");
        }
        cache
    }
}

/// Keeps the entries within [`MEMORY_BUDGET`], evicting the epoch furthest
/// from the one just used (never that one).
fn evict(map: &mut BTreeMap<u64, Arc<Vec<u8>>>, used: u64) {
    while map.len() > 1 && map.values().map(|v| v.len()).sum::<usize>() > MEMORY_BUDGET {
        let lo = *map.keys().next().expect("non-empty");
        let hi = *map.keys().last().expect("non-empty");
        let evict = if used.saturating_sub(lo) >= hi.saturating_sub(used) {
            lo
        } else {
            hi
        };
        map.remove(&evict);
    }
}

/// Seals `block` in place, searching nonces from `start` in batches until one
/// meets its difficulty. Returns false (block unchanged) if `stop` is raised.
pub fn seal(
    ethash: &Ethash,
    block: &mut crate::block::Block,
    start: u64,
    stop: &AtomicBool,
) -> bool {
    const BATCH: u64 = 512;
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        if let Some((nonce, mix)) = ethash.search(&block.header, next, BATCH, stop) {
            block.header.nonce = nonce;
            block.header.mix_digest = mix;
            return true;
        }
        next = next.wrapping_add(BATCH);
    }
    false
}

/// The final Ethash hash from a claimed mix digest, without the dataset.
pub fn quick_result(seal_hash: &Hash, nonce: u64, mix: &Hash) -> Hash {
    let mut nonce_le = nonce.to_be_bytes();
    nonce_le.reverse();
    let mut h = Keccak512::new();
    h.update(seal_hash.0);
    h.update(nonce_le);
    let seed = h.finalize();
    keccak256_concat(&[&seed, &mix.0])
}

fn save_atomically(path: &Path, cache: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Unique per process and thread: never two writers on one temporary file.
    let tmp = path.with_extension(format!(
        "{}-{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(cache)?;
    f.write_all(&keccak256(cache).0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Address;

    fn params() -> EthashParams {
        EthashParams {
            epoch_length: 100,
            cache_bytes: 64 * 1024,
            cache_growth_bytes: 64,
            dataset_bytes: 1 << 20,
            dataset_growth_bytes: 128,
        }
    }

    fn header(difficulty: u64) -> Header {
        Header {
            parent: Hash([3; 32]),
            height: 7,
            timestamp_ms: 1,
            tx_root: Hash::ZERO,
            state_root: Hash::ZERO,
            difficulty,
            miner: Address::ZERO,
            extra: vec![],
            mix_digest: Hash::ZERO,
            nonce: 0,
        }
    }

    #[test]
    fn mined_seal_verifies_and_tampering_fails() {
        let e = Ethash::new(params(), None);
        let mut h = header(50);
        let (nonce, mix) = e.search(&h, 0, 100_000, &AtomicBool::new(false)).unwrap();
        h.nonce = nonce;
        h.mix_digest = mix;
        e.verify(&h).unwrap();

        let mut wrong_mix = h.clone();
        wrong_mix.mix_digest = Hash([9; 32]);
        assert!(e.verify(&wrong_mix).is_err());

        let mut harder = h.clone();
        harder.difficulty = u64::MAX;
        assert!(e.verify(&harder).is_err());

        // Changing the sealed content invalidates the seal.
        let mut moved = h.clone();
        moved.timestamp_ms += 1;
        let mut ok = 0;
        for n in 0..20 {
            moved.nonce = nonce;
            moved.timestamp_ms = 2 + n;
            if e.verify(&moved).is_ok() {
                ok += 1;
            }
        }
        assert!(ok < 20);
    }

    #[test]
    fn full_and_light_datasets_give_the_same_seal() {
        let small = Ethash::new(params(), None);
        let mut big_params = params();
        big_params.dataset_bytes = (FULL_DATASET_MAX + 128) as u64;
        let big = Ethash::new(big_params.clone(), None);
        let light_of_small = {
            let cache = small.cache(0);
            let h = header(1).seal_hash();
            ethash::hashimoto_light(
                H256::from(h.0),
                H64::from(5u64.to_be_bytes()),
                small.dataset_size(0),
                &cache,
            )
        };
        let (mix, result) = small.compute(&header(1).seal_hash(), 5, 7);
        assert_eq!((mix.0, result.0), (light_of_small.0.0, light_of_small.1.0));
        assert!(
            big.dataset(0, big.dataset_size(0), &big.cache(0)).is_none(),
            "big datasets stay light"
        );
    }

    #[test]
    fn cache_is_saved_and_a_corrupt_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let e = Ethash::new(params(), Some(dir.path().to_path_buf()));
        let built = e.cache(1);
        let path = e.path(1, e.cache_size(1)).unwrap();
        assert!(path.exists());
        let fresh = Ethash::new(params(), Some(dir.path().to_path_buf()));
        assert_eq!(*fresh.cache(1), *built);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let again = Ethash::new(params(), Some(dir.path().to_path_buf()));
        assert_eq!(*again.cache(1), *built);
        assert_ne!(*again.cache(0), *built, "each epoch has its own seed");
    }
}
