//! Mined identities (RFC "Identities"): a (role, public key, nonce) whose
//! keccak256 meets the role's difficulty. Mining one costs work, so a
//! publisher or node cannot cheaply throw its reputation away.

use std::sync::atomic::{AtomicBool, Ordering};

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::codec::encode;
use crate::crypto::{Hash, PublicKey, keccak256_concat};
use crate::genesis::PowParams;
use crate::pow;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[serde(rename_all = "lowercase")]
#[borsh(use_discriminant = true)]
pub enum Role {
    Publisher = 0,
    Node = 1,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Node => "node",
        }
    }

    pub fn difficulty(self, params: &PowParams) -> u64 {
        match self {
            Role::Publisher => params.publisher_identity_difficulty,
            Role::Node => params.node_identity_difficulty,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "publisher" => Ok(Role::Publisher),
            "node" => Ok(Role::Node),
            _ => Err(format!("role {s:?} is neither 'publisher' nor 'node'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Identity {
    pub role: Role,
    pub public_key: PublicKey,
    pub nonce: u64,
}

impl Identity {
    pub fn pow_hash(&self) -> Hash {
        keccak256_concat(&[b"zennet:identity", &encode(self)])
    }

    pub fn meets(&self, params: &PowParams) -> bool {
        pow::meets(&self.pow_hash(), self.role.difficulty(params))
    }
}

/// Mines an identity for `public_key`, trying nonces from `start` until one
/// meets the role's difficulty or `stop` is raised. `progress` is called with
/// the number of nonces tried, every 4096 tries.
pub fn mine(
    role: Role,
    public_key: PublicKey,
    params: &PowParams,
    start: u64,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Option<Identity> {
    let difficulty = role.difficulty(params);
    let mut candidate = Identity {
        role,
        public_key,
        nonce: start,
    };
    let mut tried = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let found = pow::search(candidate.nonce, 4096, difficulty, |n| {
            candidate.nonce = n;
            candidate.pow_hash()
        });
        tried += 4096;
        if let Some(nonce) = found {
            candidate.nonce = nonce;
            return Some(candidate);
        }
        candidate.nonce = candidate.nonce.wrapping_add(1);
        progress(tried);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn mined_identity_meets_and_tampered_one_does_not() {
        let params = PowParams {
            publisher_identity_difficulty: 500,
            node_identity_difficulty: 50,
            min_announcement_difficulty: 1,
        };
        let key = SecretKey::generate();
        let stop = AtomicBool::new(false);
        let id = mine(Role::Publisher, key.public_key(), &params, 0, &stop, |_| {}).unwrap();
        assert!(id.meets(&params));
        // Most other nonces fail at difficulty 500: find one, proving the check is real.
        let mut bad = id.clone();
        bad.nonce += 1;
        while bad.meets(&params) {
            bad.nonce += 1;
        }
        assert!(!bad.meets(&params));
    }
}
