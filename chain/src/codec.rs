//! Canonical binary encoding (borsh: deterministic, length-prefixed, no
//! alternative encodings of the same value). JSON only appears at the API edge.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::error::ChainError;

pub fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("encoding to a Vec cannot fail")
}

/// Decodes `bytes` as a `T`, refusing inputs above `max_len` before looking at
/// them and refusing trailing bytes after the value.
pub fn decode<T: BorshDeserialize>(
    bytes: &[u8],
    max_len: usize,
    what: &str,
) -> Result<T, ChainError> {
    if bytes.len() > max_len {
        return Err(ChainError::Malformed(format!(
            "{what} is {} bytes; the limit is {max_len}",
            bytes.len()
        )));
    }
    borsh::from_slice(bytes)
        .map_err(|e| ChainError::Malformed(format!("{what} does not decode: {e}")))
}

/// Amounts travel in JSON as decimal strings of the base unit (u128 does not
/// fit a JSON number).
pub mod amount_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        match Either::deserialize(d)? {
            Either::S(s) => parse_amount(&s).map_err(serde::de::Error::custom),
            Either::N(n) => Ok(n as u128),
        }
    }

    /// Parses a base-unit amount: decimal digits only, no sign, no fraction.
    pub fn parse_amount(s: &str) -> Result<u128, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "amount {s:?} is not a whole number of base units (digits only)"
            ));
        }
        s.parse::<u128>()
            .map_err(|_| format!("amount {s:?} is too large"))
    }
}

/// Byte strings in JSON as 0x-prefixed hex.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{}", hex::encode(v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s.strip_prefix("0x").unwrap_or(&s)).map_err(serde::de::Error::custom)
    }
}
