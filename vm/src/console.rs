//! The guest's console as the node keeps it: a log capped at
//! [`LOG_CAP`] bytes, rotated once (`serial.log` → `serial.log.1`), so a
//! guest that prints without end costs the host at most twice the cap.
//!
//! The hypervisor never writes the file itself: the node reads the
//! console from a socket (QEMU's serial chardev, which drops output while
//! nobody is connected, so a dead node never blocks the guest) and the
//! hypervisor's own messages from a pipe, and [`pump`]s both in here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most one console log file holds before it is rotated.
pub const LOG_CAP: u64 = 1 << 20;

/// An append-only log that rotates at its cap.
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    len: u64,
}

/// A log shared by the tasks that feed it.
pub type SharedLog = Arc<Mutex<CappedLog>>;

impl CappedLog {
    /// Opens (or creates, 0600) the log at `path`, appending.
    pub fn open(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            cap: cap.max(1),
            file,
            len,
        })
    }

    pub fn shared(self) -> SharedLog {
        Arc::new(Mutex::new(self))
    }

    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.len >= self.cap {
                self.rotate()?;
            }
            let room = (self.cap - self.len) as usize;
            let (now, later) = buf.split_at(room.min(buf.len()));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            buf = later;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(&self.path, rotated(&self.path))?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// Copies everything `src` yields into `log` until end of file (or an
/// error: the writer is gone).
pub async fn pump(mut src: impl AsyncRead + Unpin, log: SharedLog) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = log.write(&buf[..n]) {
                    tracing::warn!(path = %log.path.display(), error = %e, "cannot write the console log");
                    return;
                }
            }
        }
    }
}

/// The whole log as text, the rotated part first.
pub fn read(path: &Path) -> String {
    let mut text = fs::read_to_string(rotated(path)).unwrap_or_default();
    text.push_str(&fs::read_to_string(path).unwrap_or_default());
    text
}

/// Where the older half of the log goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_console_costs_at_most_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let log = CappedLog::open(&path, 4096).unwrap().shared();
        let (mut tx, rx) = tokio::io::duplex(1024);
        let pump = tokio::spawn(pump(rx, log));
        let line = b"0123456789abcdef".repeat(64);
        for _ in 0..1000 {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &line)
                .await
                .unwrap();
        }
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"THE END")
            .await
            .unwrap();
        drop(tx);
        pump.await.unwrap();
        let now = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(rotated(&path)).unwrap().len();
        assert!(now <= 4096 && old == 4096, "{now} + {old}");
        assert!(read(&path).ends_with("THE END"));
    }

    #[test]
    fn a_reopened_log_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        CappedLog::open(&path, 10)
            .unwrap()
            .write(b"12345678")
            .unwrap();
        let mut log = CappedLog::open(&path, 10).unwrap();
        log.write(b"abcd").unwrap();
        assert_eq!(fs::read(rotated(&path)).unwrap(), b"12345678ab");
        assert_eq!(fs::read(&path).unwrap(), b"cd");
    }
}
