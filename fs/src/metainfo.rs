//! The metainfo: a BitTorrent v1 info dictionary exactly as BEP 3 defines
//! it (`name`, `piece length`, `pieces`, and `length` or `files`) and
//! nothing else, bencoded canonically (sorted keys) by `serde_bencode`.
//!
//! A file's id is the info-hash, SHA-1 of the bencoded info dict, so any
//! BitTorrent tool gives the same file the same id. SHA-256 of the same
//! bytes is kept beside it for lookups that must not rely on SHA-1.
//!
//! Metainfo that arrives from the network is checked in this order:
//! size cap, SHA-1 of the raw bytes against the id asked for, decoding,
//! re-encoding to the same bytes (which refuses keys beyond BEP 3 and
//! non-canonical encodings), then the layout rules (piece count, safe
//! relative paths). Only then is anything stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::error::MetainfoError;

/// Every part is 256 KiB except a file's last one (BitTorrent's usual size).
pub const PIECE_LEN: u64 = 256 * 1024;
/// Largest info dict accepted from a peer: 20 bytes of `pieces` per part
/// make 8 MiB enough for files of about 100 GiB.
pub const MAX_INFO_BYTES: usize = 8 << 20;

/// The info-hash: SHA-1 of the bencoded info dict.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 20]);

impl FileId {
    /// Accepts 40 hex digits (optionally 0x-prefixed) or a magnet link
    /// `magnet:?xt=urn:btih:HEX…`.
    pub fn parse(s: &str) -> Result<FileId, MetainfoError> {
        let s = s.trim();
        let hex_part = if let Some(query) = s.strip_prefix("magnet:?") {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("xt=urn:btih:"))
                .ok_or_else(|| MetainfoError::BadId(format!("{s:?} has no xt=urn:btih: field")))?
        } else {
            s.strip_prefix("0x").unwrap_or(s)
        };
        let bytes = hex::decode(hex_part)
            .ok()
            .and_then(|b| <[u8; 20]>::try_from(b).ok())
            .ok_or_else(|| {
                MetainfoError::BadId(format!(
                    "{s:?} is not a file id (40 hex digits or a magnet link)"
                ))
            })?;
        Ok(FileId(bytes))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.hex())
    }
}

impl FromStr for FileId {
    type Err = MetainfoError;
    fn from_str(s: &str) -> Result<FileId, MetainfoError> {
        FileId::parse(s)
    }
}

impl Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FileId, D::Error> {
        let s = String::deserialize(d)?;
        FileId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The BEP 3 info dictionary. Field names are BEP 3's; `serde_bencode`
/// sorts keys, so encoding is canonical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoDict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub name: String,
    #[serde(rename = "piece length")]
    pub piece_length: u64,
    #[serde(with = "serde_bytes")]
    pub pieces: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub length: u64,
    pub path: Vec<String>,
}

/// A checked info dict with its exact bytes and both hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    pub info: InfoDict,
    /// The bencoded info dict, exactly as hashed.
    pub bytes: Vec<u8>,
    pub id: FileId,
    pub sha256: [u8; 32],
}

/// One file of the content: where it sits in the concatenated stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Path below the content's root (empty for a single-file torrent).
    pub path: Vec<String>,
    pub offset: u64,
    pub length: u64,
}

impl Metainfo {
    /// Builds the metainfo for content already cut into parts (`pieces`
    /// holds each part's SHA-1). `files` is `None` for a single file.
    pub fn build(
        name: String,
        length: Option<u64>,
        files: Option<Vec<FileEntry>>,
        pieces: Vec<u8>,
    ) -> Result<Metainfo, MetainfoError> {
        let info = InfoDict {
            files,
            length,
            name,
            piece_length: PIECE_LEN,
            pieces,
        };
        let bytes = serde_bencode::to_bytes(&info)
            .map_err(|e| MetainfoError::Invalid(format!("cannot encode: {e}")))?;
        let m = Metainfo::from_parts(info, bytes);
        m.check_layout()?;
        Ok(m)
    }

    /// Checks info-dict bytes that a peer sent for `expected`.
    pub fn from_network(bytes: &[u8], expected: &FileId) -> Result<Metainfo, MetainfoError> {
        if bytes.len() > MAX_INFO_BYTES {
            return Err(MetainfoError::TooLarge {
                len: bytes.len(),
                max: MAX_INFO_BYTES,
            });
        }
        let got = FileId(Sha1::digest(bytes).into());
        if got != *expected {
            return Err(MetainfoError::HashMismatch {
                expected: *expected,
                got,
            });
        }
        Metainfo::decode(bytes)
    }

    /// Decodes info-dict bytes (from the store, or after the id check).
    pub fn decode(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let info: InfoDict = serde_bencode::from_bytes(bytes)
            .map_err(|e| MetainfoError::Invalid(format!("not a BEP 3 info dictionary: {e}")))?;
        let canonical = serde_bencode::to_bytes(&info)
            .map_err(|e| MetainfoError::Invalid(format!("cannot encode: {e}")))?;
        if canonical != bytes {
            return Err(MetainfoError::Invalid(
                "keys beyond BEP 3's, or not canonically bencoded".into(),
            ));
        }
        let m = Metainfo::from_parts(info, bytes.to_vec());
        m.check_layout()?;
        Ok(m)
    }

    fn from_parts(info: InfoDict, bytes: Vec<u8>) -> Metainfo {
        Metainfo {
            id: FileId(Sha1::digest(&bytes).into()),
            sha256: Sha256::digest(&bytes).into(),
            info,
            bytes,
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Total bytes of content.
    pub fn length(&self) -> u64 {
        match (&self.info.length, &self.info.files) {
            (Some(l), _) => *l,
            (None, Some(files)) => files.iter().map(|f| f.length).sum(),
            (None, None) => 0,
        }
    }

    pub fn piece_count(&self) -> u32 {
        (self.info.pieces.len() / 20) as u32
    }

    /// SHA-1 of part `index`.
    pub fn piece_hash(&self, index: u32) -> [u8; 20] {
        let i = index as usize * 20;
        self.info.pieces[i..i + 20].try_into().expect("20 bytes")
    }

    /// Byte length of part `index` (the last one may be short).
    pub fn piece_len(&self, index: u32) -> u64 {
        let start = index as u64 * self.info.piece_length;
        (self.length() - start).min(self.info.piece_length)
    }

    pub fn is_dir(&self) -> bool {
        self.info.files.is_some()
    }

    /// Every file with its place in the concatenated stream.
    pub fn spans(&self) -> Vec<Span> {
        match &self.info.files {
            None => vec![Span {
                path: vec![],
                offset: 0,
                length: self.length(),
            }],
            Some(files) => {
                let mut offset = 0;
                files
                    .iter()
                    .map(|f| {
                        let s = Span {
                            path: f.path.clone(),
                            offset,
                            length: f.length,
                        };
                        offset += f.length;
                        s
                    })
                    .collect()
            }
        }
    }

    /// A magnet link with the display name and exact length.
    pub fn magnet(&self) -> String {
        format!(
            "magnet:?xt=urn:btih:{}&dn={}&xl={}",
            self.id,
            percent_encode(self.name()),
            self.length()
        )
    }

    /// What a downloaded copy may be trusted with: one of `length` or
    /// `files`, the piece count matching the length, names that stay below
    /// the output directory.
    fn check_layout(&self) -> Result<(), MetainfoError> {
        let bad = |m: String| Err(MetainfoError::Invalid(m));
        let i = &self.info;
        if i.piece_length != PIECE_LEN {
            return bad(format!(
                "piece length {} (Zennet parts are {PIECE_LEN} bytes)",
                i.piece_length
            ));
        }
        if !i.pieces.len().is_multiple_of(20) {
            return bad(format!(
                "pieces is {} bytes, not a multiple of 20",
                i.pieces.len()
            ));
        }
        match (&i.length, &i.files) {
            (Some(_), Some(_)) => return bad("both length and files".into()),
            (None, None) => return bad("neither length nor files".into()),
            (None, Some(files)) => {
                if files.is_empty() {
                    return bad("files is empty".into());
                }
                for f in files {
                    if f.path.is_empty() {
                        return bad("a file with an empty path".into());
                    }
                    for c in &f.path {
                        check_component(c)?;
                    }
                }
                let mut paths: Vec<&Vec<String>> = files.iter().map(|f| &f.path).collect();
                paths.sort();
                if paths.windows(2).any(|w| w[0] == w[1]) {
                    return bad("the same path twice".into());
                }
            }
            (Some(_), None) => {}
        }
        check_component(&i.name)?;
        let length = self.length();
        let expected = length.div_ceil(PIECE_LEN);
        if expected != (i.pieces.len() / 20) as u64 {
            return bad(format!(
                "{} parts listed for {length} bytes (needs {expected})",
                i.pieces.len() / 20
            ));
        }
        Ok(())
    }
}

/// A path component must name an entry inside its directory.
fn check_component(c: &str) -> Result<(), MetainfoError> {
    if c.is_empty()
        || c == "."
        || c == ".."
        || c.contains('/')
        || c.contains('\\')
        || c.contains('\0')
    {
        return Err(MetainfoError::UnsafePath(c.to_string()));
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(len: u64) -> Metainfo {
        let n = len.div_ceil(PIECE_LEN) as usize;
        Metainfo::build("a.bin".into(), Some(len), None, vec![7; 20 * n]).unwrap()
    }

    #[test]
    fn encoding_is_bep3_canonical_and_the_id_is_sha1_of_it() {
        let m = single(PIECE_LEN + 1);
        // Keys sorted, nothing beyond BEP 3.
        let expected = [
            b"d6:lengthi262145e4:name5:a.bin12:piece lengthi262144e6:pieces40:".to_vec(),
            vec![7; 40],
            b"e".to_vec(),
        ]
        .concat();
        assert_eq!(m.bytes, expected);
        assert_eq!(m.id.0, <[u8; 20]>::from(Sha1::digest(&expected)));
        assert_eq!(m.piece_count(), 2);
        assert_eq!(m.piece_len(1), 1);
        assert_eq!(Metainfo::decode(&m.bytes).unwrap(), m);
    }

    #[test]
    fn metainfo_from_a_peer_must_match_the_id_and_bep3() {
        let m = single(10);
        assert!(Metainfo::from_network(&m.bytes, &m.id).is_ok());
        let other = single(11);
        assert!(matches!(
            Metainfo::from_network(&other.bytes, &m.id),
            Err(MetainfoError::HashMismatch { .. })
        ));
        // An extra key (here a private flag) changes nothing BEP 3 knows but is refused.
        let extra = String::from_utf8_lossy(&m.bytes).replace("4:name", "1:xi1e4:name");
        let extra_id = FileId(Sha1::digest(extra.as_bytes()).into());
        let err = Metainfo::from_network(extra.as_bytes(), &extra_id).unwrap_err();
        assert!(err.to_string().contains("beyond BEP 3"), "{err}");
        let big = vec![b'x'; MAX_INFO_BYTES + 1];
        assert!(matches!(
            Metainfo::from_network(&big, &m.id),
            Err(MetainfoError::TooLarge { .. })
        ));
    }

    #[test]
    fn paths_that_escape_the_output_are_refused() {
        for bad in [vec!["..", "etc"], vec!["a/b"], vec![""], vec!["."]] {
            let files = vec![FileEntry {
                length: 1,
                path: bad.iter().map(|s| s.to_string()).collect(),
            }];
            let err = Metainfo::build("d".into(), None, Some(files), vec![0; 20]).unwrap_err();
            assert!(
                matches!(err, MetainfoError::UnsafePath(_)),
                "{bad:?}: {err}"
            );
        }
        assert!(Metainfo::build("..".into(), Some(0), None, vec![]).is_err());
    }

    #[test]
    fn piece_count_must_match_length() {
        let err = Metainfo::build("a".into(), Some(PIECE_LEN + 1), None, vec![0; 20]).unwrap_err();
        assert!(err.to_string().contains("needs 2"), "{err}");
        assert!(Metainfo::build("z".into(), Some(0), None, vec![]).is_ok());
    }

    #[test]
    fn ids_parse_from_hex_and_magnets() {
        let m = single(5);
        assert_eq!(FileId::parse(&m.id.hex()).unwrap(), m.id);
        assert_eq!(FileId::parse(&m.magnet()).unwrap(), m.id);
        assert!(m.magnet().contains("dn=a.bin&xl=5"));
        assert!(FileId::parse("abc").is_err());
        assert!(FileId::parse("magnet:?dn=x").is_err());
    }
}
