//! Pinned downloads: an archive fetched over HTTPS once into the cache and
//! kept only if it has exactly the pinned size and SHA-256.
//!
//! The HTTP client is `ureq` (blocking, like the rest of the build, which
//! runs on a blocking thread), with rustls and the platform's certificate
//! store, so a host behind a TLS-intercepting proxy that trusts the proxy's
//! CA works as well as any other; the proxy itself comes from the usual
//! `HTTPS_PROXY`/`ALL_PROXY` variables. The pin is what makes the bytes
//! trustworthy, not the transport: a mirror or proxy that serves anything
//! else is caught before the file enters the cache, and never more than the
//! pinned size is read from it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::error::ImageError;
use crate::manifest::sha256_file;
use crate::progress::Progress;
use crate::recipe::Download;

/// A stalled transfer fails after this long without a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress is reported about this often, in bytes.
const REPORT_EVERY: u64 = 1 << 20;

/// The cached copy of `download` under `cache_dir`, fetched first if the
/// cache lacks it or holds something else.
pub(crate) fn fetch(
    download: &Download,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImageError> {
    fs::create_dir_all(cache_dir).map_err(ImageError::io(cache_dir))?;
    let path = cache_dir.join(&download.file);
    if path.exists() {
        let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
        if size == download.size && sha256_file(&path)? == download.sha256 {
            debug!(file = %download.file, "using the cached download");
            return Ok(path);
        }
        info!(file = %path.display(), "the cached download is not the pinned one; fetching again");
    }
    info!(url = %download.url, size = download.size, "downloading");
    // A temp file in the same directory: an interrupted download never
    // sits in the cache under the real name, and the rename is atomic.
    let mut part = tempfile::Builder::new()
        .prefix(".part-")
        .tempfile_in(cache_dir)
        .map_err(ImageError::io(cache_dir))?;
    let (size, sha256) = copy_checked(download, part.as_file_mut(), progress)?;
    if size != download.size || sha256 != download.sha256 {
        return Err(ImageError::DownloadMismatch {
            url: download.url.clone(),
            expected: format!("{} bytes with SHA-256 {}", download.size, download.sha256),
            actual: format!("{size} bytes with SHA-256 {sha256}"),
        });
    }
    part.as_file()
        .sync_all()
        .map_err(ImageError::io(part.path()))?;
    part.persist(&path)
        .map_err(|e| ImageError::io(&path)(e.error))?;
    Ok(path)
}

/// Streams the body into `out`, hashing as it goes; reads at most one
/// byte past the pinned size, which is enough to tell the file is wrong.
fn copy_checked(
    download: &Download,
    out: &mut File,
    progress: &mut dyn FnMut(Progress),
) -> Result<(u64, String), ImageError> {
    let failed = |source: io::Error| ImageError::DownloadFailed {
        url: download.url.clone(),
        source,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .build()
        .into();
    let mut response = agent
        .get(&download.url)
        .call()
        .map_err(|e| failed(e.into_io()))?;
    let total = response
        .body()
        .content_length()
        .unwrap_or(download.size)
        .min(download.size);
    let mut body = response.body_mut().as_reader().take(download.size + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    let mut reported = 0u64;
    progress(Progress::Download {
        name: download.file.clone(),
        done,
        total,
    });
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(failed)?;
        done += n as u64;
        if done - reported >= REPORT_EVERY {
            reported = done;
            progress(Progress::Download {
                name: download.file.clone(),
                done,
                total,
            });
        }
    }
    progress(Progress::Download {
        name: download.file.clone(),
        done,
        total,
    });
    Ok((done, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Serves `body` over plain HTTP to each of `requests` connections.
    fn serve(body: Vec<u8>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/jars.tar.gz")
    }

    fn pin(url: String, contents: &[u8]) -> Download {
        Download {
            file: "jars.tar.gz".into(),
            url,
            sha256: hex::encode(Sha256::digest(contents)),
            size: contents.len() as u64,
            from: "jars/".into(),
            to: "/opt/jars".into(),
            exclude: Vec::new(),
        }
    }

    #[test]
    fn a_pinned_download_is_fetched_once_and_reported() {
        let contents = vec![7u8; 3 << 20];
        let download = pin(serve(contents.clone(), 1), &contents);
        let cache = tempfile::tempdir().unwrap();
        let mut reports = Vec::new();
        let path = fetch(&download, cache.path(), &mut |p| reports.push(p)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), contents);
        let last = reports.last().unwrap();
        assert_eq!(
            *last,
            Progress::Download {
                name: "jars.tar.gz".into(),
                done: 3 << 20,
                total: 3 << 20
            }
        );
        assert!(reports.len() >= 3, "{reports:?}");
        // The server is gone: a second fetch must come from the cache.
        let again = fetch(&download, cache.path(), &mut |_| {}).unwrap();
        assert_eq!(again, path);
    }

    #[test]
    fn a_mirror_serving_other_bytes_leaves_nothing_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let pinned = b"the real archive".to_vec();
        for served in [
            b"the evil archive".to_vec(), // same size, other bytes
            b"the real archiv".to_vec(),  // cut short
            vec![0u8; 8 << 20],           // far too large: read no further than the pin
        ] {
            let download = pin(serve(served, 1), &pinned);
            let err = fetch(&download, cache.path(), &mut |_| {}).unwrap_err();
            assert!(matches!(err, ImageError::DownloadMismatch { .. }), "{err}");
            let left: Vec<_> = fs::read_dir(cache.path()).unwrap().collect();
            assert!(left.is_empty(), "the cache kept {left:?}");
        }
    }

    #[test]
    fn a_wrong_cached_file_is_replaced() {
        let contents = b"pinned".to_vec();
        let download = pin(serve(contents.clone(), 1), &contents);
        let cache = tempfile::tempdir().unwrap();
        fs::write(cache.path().join("jars.tar.gz"), b"stale!").unwrap();
        let path = fetch(&download, cache.path(), &mut |_| {}).unwrap();
        assert_eq!(fs::read(path).unwrap(), contents);
    }

    #[test]
    fn an_unreachable_server_is_a_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let download = pin(format!("http://127.0.0.1:{port}/x.tar.gz"), b"x");
        let cache = tempfile::tempdir().unwrap();
        let err = fetch(&download, cache.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::DownloadFailed { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
    }
}
