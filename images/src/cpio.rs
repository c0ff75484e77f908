//! A reproducible writer for the "newc" cpio format, the one the Linux kernel
//! unpacks as an initramfs.
//!
//! Reproducible means: the same entries give the same bytes, whatever order
//! they were added in and whatever the host's clock, users or umask. Entries
//! are kept sorted by path, every mtime is 0, every owner is root, and inode
//! numbers are handed out in path order. Parents sort before their children
//! (a path sorts after its own prefix), which is the order the kernel needs
//! to create them. The archive starts with `.`, the root itself: without it
//! the kernel leaves the initramfs root world-writable (mode 1777).

use std::collections::BTreeMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const ROOT_MODE: u32 = 0o755;

/// One archive member, without its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An in-memory tree of entries keyed by their path (no leading `/`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Entry::Dir { mode });
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Entry::File { mode, data });
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        let target = target.to_owned();
        self.insert(path, Entry::Symlink { target });
    }

    pub(crate) fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Entry::CharDev { mode, major, minor });
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(normalize(path).as_str())
    }

    /// Adds `entry` at `path`, replacing what was there, and creates missing
    /// parent directories (0755) so the kernel never meets an orphan.
    fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        assert!(!path.is_empty(), "cpio entry needs a path");
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(dir.to_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            parent = dir;
        }
        self.entries.insert(path, entry);
    }

    /// Writes the archive as newc cpio, trailer included.
    pub(crate) fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        // Inode 0 is what the trailer uses; the root is 1.
        write_member(out, ".", 1, S_IFDIR | ROOT_MODE, 2, &[], (0, 0))?;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 2).map_err(|_| too_big("entry count"))?;
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) {
                2
            } else {
                1
            };
            write_member(out, path, ino, mode, nlink, data, rdev)?;
        }
        write_member(out, "TRAILER!!!", 0, 0, 1, &[], (0, 0))
    }
}

fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    assert!(
        !parts.contains(&".."),
        "cpio entry path {path:?} must not contain `..`"
    );
    parts.join("/")
}

fn write_member<W: Write>(
    out: &mut W,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> io::Result<()> {
    let filesize = u32::try_from(data.len()).map_err(|_| too_big(name))?;
    // The name size counts the terminating NUL.
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big(name))?;
    // c_ino, c_mode, c_uid, c_gid, c_nlink, c_mtime, c_filesize, c_devmajor,
    // c_devminor, c_rdevmajor, c_rdevminor, c_namesize, c_check.
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev_major, rdev_minor, namesize, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad4(out, data.len())
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    const ZEROS: [u8; 3] = [0; 3];
    out.write_all(&ZEROS[..(4 - len % 4) % 4])
}

fn too_big(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} is too large for the newc cpio format"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(archive: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        archive.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn same_entries_in_any_order_give_same_bytes() {
        let mut a = Archive::new();
        a.file("/bin/busybox", 0o755, b"static".to_vec());
        a.symlink("/bin/sh", "busybox");
        a.char_dev("/dev/console", 0o600, 5, 1);
        a.dir("/root", 0o700);

        let mut b = Archive::new();
        b.dir("root", 0o700);
        b.char_dev("dev/console", 0o600, 5, 1);
        b.symlink("bin/sh", "busybox");
        b.file("bin//busybox", 0o755, b"static".to_vec());

        assert_eq!(bytes(&a), bytes(&b));
    }

    #[test]
    fn parents_are_created_before_children() {
        let mut a = Archive::new();
        a.file("lib/modules/6.1/kernel/virtio.ko", 0o644, vec![1, 2, 3]);
        let names: Vec<&str> = a.entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/virtio.ko"
            ]
        );
    }

    #[test]
    fn newc_layout_matches_the_format() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        let all = bytes(&a);

        // The root comes first: directory 0755, named ".", 112 bytes padded.
        assert_eq!(&all[14..22], b"000041ED");
        assert_eq!(&all[110..112], b".\0");
        let out = &all[112..];

        // Header of the first entry: magic, ino 2, regular file 0755.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000002");
        assert_eq!(&out[14..22], b"000081ED");
        // mtime is zero.
        assert_eq!(&out[46..54], b"00000000");
        // filesize 10, namesize 5 ("init" + NUL).
        assert_eq!(&out[54..62], b"0000000A");
        assert_eq!(&out[94..102], b"00000005");
        // Name, then padding to a multiple of four (110 + 5 = 115 -> 116).
        assert_eq!(&out[110..116], b"init\0\0");
        assert_eq!(&out[116..126], b"#!/bin/sh\n");
        // Data padded to 4 (10 -> 12), then the trailer.
        assert_eq!(&out[126..128], b"\0\0");
        assert_eq!(&out[128..134], b"070701");
        let trailer = &out[128 + 110..];
        assert!(trailer.starts_with(b"TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn devices_and_symlinks_are_encoded() {
        let mut a = Archive::new();
        a.char_dev("console", 0o600, 5, 1);
        a.symlink("sh", "busybox");
        let out = &bytes(&a)[112..];
        // console: char device 0600, rdev 5:1.
        assert_eq!(&out[14..22], b"00002180");
        assert_eq!(&out[78..86], b"00000005");
        assert_eq!(&out[86..94], b"00000001");
        // sh: symlink whose data is the target.
        // The first member is 110 header bytes + "console\0", padded to 120.
        let second = 120;
        assert_eq!(&out[second + 14..second + 22], b"0000A1FF");
        assert_eq!(&out[second + 110..second + 113], b"sh\0");
        assert_eq!(&out[second + 116..second + 123], b"busybox");
    }

    #[test]
    #[should_panic(expected = "must not contain `..`")]
    fn dot_dot_is_refused() {
        Archive::new().file("../etc/passwd", 0o644, Vec::new());
    }
}
