//! Keys, addresses, hashes and recoverable signatures.
//!
//! Accounts are Ethereum-style: a secp256k1 key whose address is the last 20
//! bytes of keccak256 of the uncompressed public key (without the 0x04 tag).
//! Every signature is over a domain-separated hash that includes the chain id
//! and the genesis hash, so a transaction or voucher signed for one chain is
//! worthless on another — even on another dev chain with the same id.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

use crate::error::ChainError;

/// keccak256 of `data`.
pub fn keccak256(data: &[u8]) -> Hash {
    Hash(Keccak256::digest(data).into())
}

/// keccak256 over the concatenation of `parts`, without allocating.
pub fn keccak256_concat(parts: &[&[u8]]) -> Hash {
    let mut h = Keccak256::new();
    for p in parts {
        h.update(p);
    }
    Hash(h.finalize().into())
}

/// The hash every signature in Zennet is made over: a domain tag (what is being
/// signed), the chain id, the chain's genesis hash, then the canonical payload
/// bytes. The chain id alone is not enough: every dev chain has the same one,
/// and a signature must not be replayable from one dev chain onto another.
pub fn signing_hash(domain: &str, chain_id: u64, genesis: &Hash, payload: &[u8]) -> Hash {
    keccak256_concat(&[
        b"zennet:",
        domain.as_bytes(),
        &[0],
        &chain_id.to_be_bytes(),
        &genesis.0,
        payload,
    ])
}

macro_rules! hex_bytes {
    ($(#[$m:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;
            pub const ZERO: Self = Self([0u8; $len]);

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn from_slice(bytes: &[u8]) -> Result<Self, ChainError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| {
                    ChainError::Malformed(format!(
                        "{} must be {} bytes, got {}",
                        $what,
                        $len,
                        bytes.len()
                    ))
                })?;
                Ok(Self(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{}", hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ChainError;
            fn from_str(s: &str) -> Result<Self, ChainError> {
                let digits = s.strip_prefix("0x").unwrap_or(s);
                let bytes = hex::decode(digits).map_err(|_| {
                    ChainError::Malformed(format!(
                        "{} {:?} is not hex (expected 0x followed by {} hex digits)",
                        $what,
                        s,
                        $len * 2
                    ))
                })?;
                Self::from_slice(&bytes)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(
    /// A keccak256 digest: block hashes, transaction hashes, task and channel ids.
    Hash,
    32,
    "hash"
);
hex_bytes!(
    /// An account address: the last 20 bytes of keccak256(uncompressed public key).
    Address,
    20,
    "address"
);
hex_bytes!(
    /// A file's id in the file network: its BitTorrent v1 info-hash
    /// (SHA-1 of the bencoded info dictionary).
    FileHash,
    20,
    "file id"
);
hex_bytes!(
    /// A compressed SEC1 secp256k1 public key.
    PublicKey,
    33,
    "public key"
);
hex_bytes!(
    /// A recoverable ECDSA signature: r (32) ‖ s (32, low-S) ‖ recovery id (1).
    Signature,
    65,
    "signature"
);

impl PublicKey {
    pub fn address(&self) -> Result<Address, ChainError> {
        let key = VerifyingKey::from_sec1_bytes(&self.0)
            .map_err(|_| ChainError::Malformed("public key is not a secp256k1 point".into()))?;
        Ok(address_of(&key))
    }
}

/// A secp256k1 signing key. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return SecretKey(key);
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ChainError> {
        SigningKey::from_slice(bytes)
            .map(SecretKey)
            .map_err(|_| ChainError::Malformed("secret key is not a valid secp256k1 scalar".into()))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    pub fn public_key(&self) -> PublicKey {
        let point = self.0.verifying_key().to_sec1_point(true);
        PublicKey::from_slice(point.as_bytes()).expect("compressed point is 33 bytes")
    }

    pub fn address(&self) -> Address {
        address_of(self.0.verifying_key())
    }

    /// Signs a 32-byte prehash (always a [`signing_hash`]).
    pub fn sign(&self, prehash: &Hash) -> Signature {
        let (sig, recid) = self.0.sign_prehash_recoverable(&prehash.0);
        // k256 signs with low-S already; normalising keeps that invariant explicit
        // and flips the recovery parity when it has to.
        let normalized = sig.normalize_s();
        let recid = if normalized != sig {
            RecoveryId::from_byte(recid.to_byte() ^ 1).expect("recovery id in range")
        } else {
            recid
        };
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&normalized.to_bytes());
        out[64] = recid.to_byte();
        Signature(out)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.address())
    }
}

/// Recovers the signer's public key; rejects high-S signatures so that a
/// signature has exactly one valid encoding.
pub fn recover_public_key(prehash: &Hash, sig: &Signature) -> Result<PublicKey, ChainError> {
    let key = recover_verifying_key(prehash, sig)?;
    let point = key.to_sec1_point(true);
    PublicKey::from_slice(point.as_bytes())
}

/// Recovers the signer's address; see [`recover_public_key`].
pub fn recover_address(prehash: &Hash, sig: &Signature) -> Result<Address, ChainError> {
    Ok(address_of(&recover_verifying_key(prehash, sig)?))
}

fn recover_verifying_key(prehash: &Hash, sig: &Signature) -> Result<VerifyingKey, ChainError> {
    let bad = |why: &str| ChainError::BadSignature(why.to_string());
    let ecdsa = EcdsaSignature::from_slice(&sig.0[..64]).map_err(|_| bad("r or s out of range"))?;
    if ecdsa.normalize_s() != ecdsa {
        return Err(bad("high-S signature (not canonical)"));
    }
    let recid = RecoveryId::from_byte(sig.0[64]).ok_or_else(|| bad("recovery id above 3"))?;
    VerifyingKey::recover_from_prehash(&prehash.0, &ecdsa, recid)
        .map_err(|_| bad("no public key recovers from this signature"))
}

fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_sec1_point(false);
    let digest = keccak256(&point.as_bytes()[1..]);
    Address::from_slice(&digest.0[12..]).expect("20 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_recover_gives_the_signer() {
        let key = SecretKey::generate();
        let msg = signing_hash("test", 98765, &Hash::ZERO, b"payload");
        let sig = key.sign(&msg);
        assert_eq!(recover_address(&msg, &sig).unwrap(), key.address());
        assert_eq!(recover_public_key(&msg, &sig).unwrap(), key.public_key());
        assert_eq!(key.public_key().address().unwrap(), key.address());
    }

    #[test]
    fn signature_over_other_chain_recovers_someone_else() {
        let key = SecretKey::generate();
        let sig = key.sign(&signing_hash("test", 1, &Hash::ZERO, b"x"));
        let other = recover_address(&signing_hash("test", 2, &Hash::ZERO, b"x"), &sig);
        assert_ne!(other.ok(), Some(key.address()));
        let other_genesis = recover_address(&signing_hash("test", 1, &Hash([1; 32]), b"x"), &sig);
        assert_ne!(other_genesis.ok(), Some(key.address()));
    }

    #[test]
    fn known_ethereum_address() {
        // Private key 1 has the well-known address 0x7e5f...bdf.
        let mut bytes = [0u8; 32];
        bytes[31] = 1;
        let key = SecretKey::from_bytes(&bytes).unwrap();
        assert_eq!(
            key.address().to_string(),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
    }

    #[test]
    fn rejects_high_s_and_bad_recovery_id() {
        let key = SecretKey::generate();
        let msg = signing_hash("t", 1, &Hash::ZERO, b"m");
        let mut sig = key.sign(&msg);
        sig.0[64] = 7;
        assert!(matches!(
            recover_address(&msg, &sig),
            Err(ChainError::BadSignature(_))
        ));
        let good = key.sign(&msg);
        let ecdsa = EcdsaSignature::from_slice(&good.0[..64]).unwrap();
        let high_s = -*ecdsa.s();
        let high = EcdsaSignature::from_scalars(ecdsa.r().to_bytes(), high_s.to_bytes()).unwrap();
        let mut sig = good;
        sig.0[..64].copy_from_slice(&high.to_bytes());
        assert!(recover_address(&msg, &sig).is_err());
    }

    #[test]
    fn parses_hex_with_and_without_prefix_and_rejects_junk() {
        let a: Address = "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
            .parse()
            .unwrap();
        let b: Address = "7e5f4552091a69125d5dfcb7b8c2659029395bdf".parse().unwrap();
        assert_eq!(a, b);
        assert!("0x1234".parse::<Address>().is_err());
        assert!("zz".parse::<Address>().is_err());
    }
}
