//! Encryption of a file's parts with AES-256-GCM, before they are hashed,
//! so seeders hold and serve only ciphertext.
//!
//! The plaintext stream is a small header (magic, the original name, the
//! content length) followed by the file. It is cut into segments of
//! 256 KiB − 16 bytes; each is sealed under the file key with the nonce
//! `salt[0..4] ‖ part index (u64, big-endian)`, so every ciphertext part
//! but the last is exactly 256 KiB (a BitTorrent-aligned part) and each
//! part decrypts on its own (WebCrypto can do the same in a browser).
//!
//! The file key is either given by the user (64 hex digits) or derived
//! from the user's chain key: HKDF-SHA256(chain key, salt) with a random
//! 16-byte salt per file. The salt travels as the metainfo's name
//! (`HEX.zenc`), which keeps the metainfo pure BEP 3 and lets the owner
//! decrypt on any node holding the same chain key, without any wrapped
//! key to carry around. Sharing a file key reveals nothing of the chain
//! key. The original name is inside the ciphertext, not in the metainfo.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zennet_chain::SecretKey;

use crate::error::CryptError;
use crate::metainfo::{FileId, PIECE_LEN};

/// Plaintext bytes per part: a sealed segment is exactly one part.
pub const SEGMENT: usize = PIECE_LEN as usize - TAG;
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"ZENC";
const VERSION: u8 = 1;

/// A per-file AES-256 key.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey(pub [u8; 32]);

impl FileKey {
    pub fn parse(s: &str) -> Result<FileKey, CryptError> {
        let s = s.trim();
        hex::decode(s.strip_prefix("0x").unwrap_or(s))
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(FileKey)
            .ok_or_else(|| CryptError::BadKey(s.chars().take(80).collect()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key of the file with `salt`, derived from a chain key.
    pub fn derive(secret: &SecretKey, salt: &[u8; 16]) -> FileKey {
        let hk = Hkdf::<Sha256>::new(Some(b"zennet-fs-file-key/1"), &secret.to_bytes());
        let mut okm = [0u8; 32];
        hk.expand(salt, &mut okm)
            .expect("32 bytes is a valid HKDF length");
        FileKey(okm)
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

pub fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source works");
    salt
}

/// The metainfo name of an encrypted file.
pub fn encrypted_name(salt: &[u8; 16]) -> String {
    format!("{}.zenc", hex::encode(salt))
}

/// The salt of an encrypted file, from its metainfo name.
pub fn salt_of(name: &str) -> Option<[u8; 16]> {
    let hex_part = name.strip_suffix(".zenc")?;
    hex::decode(hex_part).ok()?.try_into().ok()
}

/// The plaintext header put before the content.
pub fn header(name: &str, content_len: u64) -> Vec<u8> {
    let name = name.as_bytes();
    let name = &name[..name.len().min(u16::MAX as usize)];
    let mut h = Vec::with_capacity(15 + name.len());
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(&(name.len() as u16).to_be_bytes());
    h.extend_from_slice(name);
    h.extend_from_slice(&content_len.to_be_bytes());
    h
}

/// Parses the header at the start of decrypted part 0: (name, content
/// length, header length).
pub fn parse_header(plain: &[u8], file: FileId) -> Result<(String, u64, usize), CryptError> {
    let bad = || CryptError::BadHeader(file);
    if plain.len() < 7 || &plain[..4] != MAGIC || plain[4] != VERSION {
        return Err(bad());
    }
    let n = u16::from_be_bytes([plain[5], plain[6]]) as usize;
    let end = 7 + n + 8;
    if plain.len() < end {
        return Err(bad());
    }
    let name = std::str::from_utf8(&plain[7..7 + n])
        .map_err(|_| bad())?
        .to_string();
    let len = u64::from_be_bytes(plain[7 + n..end].try_into().expect("8 bytes"));
    Ok((name, len, end))
}

/// Encrypted length of a plaintext stream of `plain_len` bytes.
pub fn sealed_len(plain_len: u64) -> u64 {
    plain_len + plain_len.div_ceil(SEGMENT as u64) * TAG as u64
}

pub struct Sealer {
    cipher: Aes256Gcm,
    prefix: [u8; 4],
}

impl Sealer {
    pub fn new(key: &FileKey, salt: &[u8; 16]) -> Sealer {
        Sealer {
            cipher: Aes256Gcm::new(&key.0.into()),
            prefix: salt[..4].try_into().expect("4 bytes"),
        }
    }

    fn nonce(&self, index: u32) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.prefix);
        n[4..].copy_from_slice(&(index as u64).to_be_bytes());
        n.into()
    }

    /// Seals one plaintext segment (≤ [`SEGMENT`] bytes) into part `index`.
    pub fn seal(&self, index: u32, segment: &mut Vec<u8>) {
        debug_assert!(segment.len() <= SEGMENT);
        self.cipher
            .encrypt_in_place(&self.nonce(index), b"", segment)
            .expect("a segment is far below AES-GCM's limit");
    }

    /// Opens part `index` in place; `false` if its tag does not verify.
    pub fn open(&self, index: u32, part: &mut Vec<u8>) -> bool {
        self.cipher
            .decrypt_in_place(&self.nonce(index), b"", part)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_256_kib_and_open_only_with_their_key_and_index() {
        let key = FileKey([1; 32]);
        let salt = [2; 16];
        let s = Sealer::new(&key, &salt);
        let plain = vec![9u8; SEGMENT];
        let mut part = plain.clone();
        s.seal(3, &mut part);
        assert_eq!(part.len() as u64, PIECE_LEN);
        let mut copy = part.clone();
        assert!(!s.open(4, &mut copy), "a part moved to another index fails");
        let wrong = Sealer::new(&FileKey([3; 32]), &salt);
        let mut copy = part.clone();
        assert!(!wrong.open(3, &mut copy));
        assert!(s.open(3, &mut part));
        assert_eq!(part, plain);
        assert_eq!(sealed_len(SEGMENT as u64 + 1), PIECE_LEN + 17);
        assert_eq!(sealed_len(0), 0);
    }

    #[test]
    fn derived_keys_depend_on_chain_key_and_salt() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_eq!(FileKey::derive(&a, &[1; 16]), FileKey::derive(&a, &[1; 16]));
        assert_ne!(FileKey::derive(&a, &[1; 16]), FileKey::derive(&a, &[2; 16]));
        assert_ne!(FileKey::derive(&a, &[1; 16]), FileKey::derive(&b, &[1; 16]));
        let k = FileKey::derive(&a, &[1; 16]);
        assert_eq!(FileKey::parse(&k.hex()).unwrap(), k);
        assert!(FileKey::parse("beef").is_err());
    }

    #[test]
    fn header_and_name_round_trip() {
        let id = FileId([0; 20]);
        let h = header("report.pdf", 12345);
        let mut plain = h.clone();
        plain.extend_from_slice(b"content");
        assert_eq!(
            parse_header(&plain, id).unwrap(),
            ("report.pdf".to_string(), 12345, h.len())
        );
        assert!(parse_header(b"ZENC", id).is_err());
        let salt = random_salt();
        assert_eq!(salt_of(&encrypted_name(&salt)), Some(salt));
        assert_eq!(salt_of("movie.mkv"), None);
    }
}
