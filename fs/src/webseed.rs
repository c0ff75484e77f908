//! A BEP 19 web seed as a source of parts: each part is fetched with
//! `Range` requests on the file URLs the seed's base URL names, several
//! parts at once, each as a task of its own (so they progress while the
//! session verifies the one before). The body of an answer is read only
//! up to the bytes asked for.
//!
//! BEP 19's URL rules: a URL ending in `/` gets the torrent's name (and,
//! for a directory, each file's path) appended; otherwise it is the file
//! itself (single file) or the directory (`/name/path` appended).

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio::task::JoinSet;

use crate::download::{Event, PartSource};
use crate::metainfo::{Metainfo, PIECE_LEN};
use crate::schedule::Dropped;

/// Parts asked of one web seed at once.
const WINDOW: usize = 4;
/// One part's requests, whole.
const PART_TIMEOUT: Duration = Duration::from_secs(30);

/// What a path segment keeps unescaped (RFC 3986's unreserved set).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

pub(crate) struct WebSeed {
    client: reqwest::Client,
    base: String,
    meta: Arc<Metainfo>,
    inflight: JoinSet<(u32, Result<Vec<u8>, String>)>,
}

impl WebSeed {
    pub(crate) fn new(base: String, meta: Arc<Metainfo>) -> WebSeed {
        WebSeed {
            client: reqwest::Client::builder()
                .timeout(PART_TIMEOUT)
                .build()
                .expect("a plain HTTP client builds"),
            base,
            meta,
            inflight: JoinSet::new(),
        }
    }
}

impl PartSource for WebSeed {
    fn room(&self) -> usize {
        WINDOW
    }

    async fn ask(&mut self, index: u32) -> Result<(), Dropped> {
        let ranges = ranges(&self.base, &self.meta, index);
        let client = self.client.clone();
        let len = self.meta.piece_len(index) as usize;
        self.inflight.spawn(async move {
            let mut part = Vec::with_capacity(len);
            for r in ranges {
                if let Err(why) = fetch_range(&client, &r, &mut part).await {
                    return (index, Err(why));
                }
            }
            (index, Ok(part))
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Dropped> {
        Ok(())
    }

    async fn recv(&mut self) -> Result<Event, Dropped> {
        match self.inflight.join_next().await {
            None => std::future::pending().await,
            Some(Ok((index, Ok(part)))) => Ok(Event::Part(index, part)),
            Some(Ok((index, Err(why)))) => Err(Dropped::Gone(format!("part {index}: {why}"))),
            Some(Err(e)) => Err(Dropped::Gone(format!("a request failed: {e}"))),
        }
    }
}

/// One HTTP range: `len` bytes of the file at `url` from `from`, the file
/// being `file_len` long.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    url: String,
    from: u64,
    len: u64,
    file_len: u64,
}

/// The ranges that make part `index`, file by file.
fn ranges(base: &str, meta: &Metainfo, index: u32) -> Vec<Range> {
    let start = index as u64 * PIECE_LEN;
    let end = start + meta.piece_len(index);
    meta.spans()
        .into_iter()
        .filter(|s| s.length > 0 && s.offset < end && s.offset + s.length > start)
        .map(|s| {
            let from = start.max(s.offset);
            let to = end.min(s.offset + s.length);
            Range {
                url: file_url(base, meta, &s.path),
                from: from - s.offset,
                len: to - from,
                file_len: s.length,
            }
        })
        .collect()
}

/// BEP 19: the URL of one file of the torrent.
fn file_url(base: &str, meta: &Metainfo, path: &[String]) -> String {
    let mut url = base.to_string();
    if !meta.is_dir() && !base.ends_with('/') {
        return url;
    }
    if !url.ends_with('/') {
        url.push('/');
    }
    url.push_str(&utf8_percent_encode(meta.name(), SEGMENT).to_string());
    for c in path {
        url.push('/');
        url.push_str(&utf8_percent_encode(c, SEGMENT).to_string());
    }
    url
}

/// Appends the range's bytes to `out`, reading no more than asked.
async fn fetch_range(client: &reqwest::Client, r: &Range, out: &mut Vec<u8>) -> Result<(), String> {
    let last = r.from + r.len - 1;
    let mut resp = client
        .get(&r.url)
        .header(reqwest::header::RANGE, format!("bytes={}-{last}", r.from))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let whole = r.from == 0 && r.len == r.file_len;
    if !(status == reqwest::StatusCode::PARTIAL_CONTENT
        || (status == reqwest::StatusCode::OK && whole))
    {
        return Err(format!("{} answered {status}", r.url));
    }
    let want = out.len() + r.len as usize;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > want {
            return Err(format!(
                "{} sent more than the {} bytes asked",
                r.url, r.len
            ));
        }
        out.extend_from_slice(&chunk);
    }
    if out.len() != want {
        return Err(format!(
            "{} sent {} of {} bytes",
            r.url,
            out.len() + r.len as usize - want,
            r.len
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    #[test]
    fn urls_and_ranges_follow_bep19() {
        let one =
            Metainfo::build("a b.bin".into(), Some(PIECE_LEN + 10), None, vec![0; 40]).unwrap();
        assert_eq!(file_url("http://h/f/", &one, &[]), "http://h/f/a%20b.bin");
        assert_eq!(file_url("http://h/x.bin", &one, &[]), "http://h/x.bin");
        let r = ranges("http://h/f/", &one, 1);
        assert_eq!(
            r,
            vec![Range {
                url: "http://h/f/a%20b.bin".into(),
                from: PIECE_LEN,
                len: 10,
                file_len: PIECE_LEN + 10,
            }]
        );
        let files = vec![
            FileEntry {
                length: 100,
                path: vec!["d".into(), "x".into()],
            },
            FileEntry {
                length: 0,
                path: vec!["empty".into()],
            },
            FileEntry {
                length: PIECE_LEN,
                path: vec!["y".into()],
            },
        ];
        let dir = Metainfo::build("top".into(), None, Some(files), vec![0; 40]).unwrap();
        let r = ranges("http://h/f", &dir, 0);
        assert_eq!(r.len(), 2, "a part across two files, the empty one skipped");
        assert_eq!(r[0].url, "http://h/f/top/d/x");
        assert_eq!((r[0].from, r[0].len), (0, 100));
        assert_eq!(r[1].url, "http://h/f/top/y");
        assert_eq!((r[1].from, r[1].len), (0, PIECE_LEN - 100));
        let r = ranges("http://h/f/", &dir, 1);
        assert_eq!((r[0].from, r[0].len), (PIECE_LEN - 100, 100));
    }
}
