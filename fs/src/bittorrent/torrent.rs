//! `.torrent` files and magnet links for files held here.
//!
//! A `.torrent` is the metainfo's info dict, byte for byte, inside an
//! outer dict with `announce` (this node's tracker) and `url-list` (its
//! HTTP file URL as a BEP 19 web seed). Both sit outside the info dict, so
//! the info-hash, the file's id, never changes with them. `serde_bencode`
//! re-encodes the info dict; that our metainfo is canonical bencode is
//! checked when it is built or received, and the written bytes are
//! checked again here.

use serde::Serialize;

use crate::metainfo::{InfoDict, Metainfo};

/// Where a torrent points clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Tracker announce URL.
    pub announce: Option<String>,
    /// BEP 19 web seeds (`url-list`).
    pub web_seeds: Vec<String>,
}

#[derive(Serialize)]
struct Torrent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<&'a str>,
    #[serde(rename = "created by")]
    created_by: &'a str,
    info: &'a InfoDict,
    #[serde(rename = "url-list", skip_serializing_if = "<[String]>::is_empty")]
    url_list: &'a [String],
}

/// The bencoded `.torrent` of `meta`.
pub fn torrent_file(meta: &Metainfo, sources: &Sources) -> Vec<u8> {
    let created_by = concat!("zennet ", env!("CARGO_PKG_VERSION"));
    let bytes = serde_bencode::to_bytes(&Torrent {
        announce: sources.announce.as_deref(),
        created_by,
        info: &meta.info,
        url_list: &sources.web_seeds,
    })
    .expect("strings, integers and bytes encode");
    debug_assert!(
        bytes
            .windows(meta.bytes.len())
            .any(|w| w == meta.bytes.as_slice()),
        "the info dict is written as hashed"
    );
    bytes
}

/// A magnet link with the tracker (`tr`) and web seeds (`ws`).
pub fn magnet(meta: &Metainfo, sources: &Sources) -> String {
    let mut m = meta.magnet();
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    if let Some(a) = &sources.announce {
        m.push_str(&format!("&tr={}", enc(a)));
    }
    for w in &sources.web_seeds {
        m.push_str(&format!("&ws={}", enc(w)));
    }
    m
}

#[cfg(test)]
mod tests {
    use sha1::{Digest, Sha1};

    use super::*;
    use crate::metainfo::{FileEntry, PIECE_LEN};

    /// The bytes after the outer dict's `info` key, as long as `len`.
    fn info_slice(torrent: &[u8], len: usize) -> &[u8] {
        let at = torrent
            .windows(6)
            .position(|w| w == b"4:info")
            .expect("an info key")
            + 6;
        &torrent[at..at + len]
    }

    #[test]
    fn the_torrent_keeps_the_info_hash_and_adds_tracker_and_web_seed() {
        let files = vec![
            FileEntry {
                length: PIECE_LEN + 5,
                path: vec!["a".into(), "b.bin".into()],
            },
            FileEntry {
                length: 3,
                path: vec!["c".into()],
            },
        ];
        let meta = Metainfo::build("dir".into(), None, Some(files), vec![1; 40]).unwrap();
        let sources = Sources {
            announce: Some("http://127.0.0.1:8000/announce".into()),
            web_seeds: vec![format!("http://127.0.0.1:8000/file/{}/", meta.id)],
        };
        let t = torrent_file(&meta, &sources);
        assert!(t.starts_with(b"d8:announce30:http://127.0.0.1:8000/announce"));
        let info = info_slice(&t, meta.bytes.len());
        assert_eq!(info, meta.bytes.as_slice());
        // A client's bencode walk ends the info dict where ours ends.
        let outer: serde_bencode::value::Value = serde_bencode::from_bytes(&t).unwrap();
        let serde_bencode::value::Value::Dict(outer) = outer else {
            panic!("a dict")
        };
        assert_eq!(
            serde_bencode::to_bytes(&outer[b"info".as_slice()]).unwrap(),
            meta.bytes
        );
        assert_eq!(<[u8; 20]>::from(Sha1::digest(info)), meta.id.0);
        let url = &sources.web_seeds[0];
        let tail = format!("8:url-listl{}:{url}ee", url.len());
        assert!(
            t.ends_with(tail.as_bytes()),
            "{}",
            String::from_utf8_lossy(&t)
        );
        // Without sources: just the info dict.
        let bare = torrent_file(&meta, &Sources::default());
        assert!(!bare.windows(8).any(|w| w == b"announce"));
        let m = magnet(&meta, &sources);
        assert!(m.starts_with(&format!("magnet:?xt=urn:btih:{}", meta.id)));
        assert!(m.contains("&tr=http%3A%2F%2F127%2E0%2E0%2E1%3A8000%2Fannounce"));
        assert!(m.contains("&ws=http%3A%2F%2F"));
    }
}
