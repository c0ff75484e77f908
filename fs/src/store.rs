//! The content store: parts on disk named by their SHA-1 (RFC: "stored
//! with their SHA1 hash as filenames"), deduplicated across files, an
//! SQLite index of files and of which parts each holds, and a quota.
//!
//! ```text
//! DIR/index.db             files (metainfo, have-bitfield, price, seeding), parts (hash, size, refs)
//! DIR/parts/ab/ab12….      one file per distinct part
//! DIR/tmp/                 parts being written (renamed into parts/ once complete)
//! ```
//!
//! Crash safety: a part is written to `tmp/`, renamed into place, and only
//! then marked held in one SQL transaction (bitfield and reference count
//! together), so after `kill -9` every part the index says is held is whole.
//! A part renamed but not yet indexed is adopted (re-hashed) when a download
//! of a file that needs it starts, and garbage-collected at open otherwise.
//! Parts are not fsynced one by one: a process kill loses nothing, and a
//! power cut can at worst leave a part that the downloader who fetches it
//! rejects by its SHA-1.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde::Serialize;
use sha1::{Digest, Sha1};
use zennet_chain::{Address, Amount};

use crate::bitfield::Bitfield;
use crate::crypt::{self, FileKey, SEGMENT, Sealer};
use crate::error::{CryptError, StoreError};
use crate::metainfo::{FileEntry, FileId, Metainfo, PIECE_LEN};
use crate::payment::Account;

/// How a file is to be encrypted when added.
pub struct Encryption {
    pub key: FileKey,
    pub salt: [u8; 16],
}

/// A file the store knows, complete or not.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub meta: Arc<Metainfo>,
    pub have: Bitfield,
    /// Asking price when seeding, base units per MiB.
    pub price_per_mib: Amount,
    pub seeding: bool,
    /// Added here with `--encrypt` (the store holds only ciphertext either way).
    pub encrypted: bool,
    pub added_ms: u64,
}

impl StoredFile {
    pub fn complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Bytes of the parts held.
    pub fn have_bytes(&self) -> u64 {
        self.have.ones().map(|i| self.meta.piece_len(i)).sum()
    }
}

/// Where an export goes: `path` if given, else `dir/NAME`.
pub struct ExportTarget {
    pub path: Option<PathBuf>,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub reserved_bytes: u64,
    pub max_bytes: u64,
    pub parts: u64,
}

pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
    db: Mutex<Connection>,
    /// The index in memory (written through to `index.db`).
    files: Mutex<HashMap<FileId, StoredFile>>,
    /// Files held under storage contracts (how many each), which
    /// [`Store::remove`] refuses; the contracts re-pin them at start.
    pins: Mutex<HashMap<FileId, u32>>,
}

impl Store {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Store, StoreError> {
        for d in [dir.to_path_buf(), dir.join("parts"), dir.join("tmp")] {
            fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
        }
        let db = Connection::open(dir.join("index.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&db)?;
        let store = Store {
            dir: dir.to_path_buf(),
            max_bytes,
            files: Mutex::new(load(&db)?),
            db: Mutex::new(db),
            pins: Mutex::new(HashMap::new()),
        };
        store.collect_garbage()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Cuts `path` (a file or a directory, walked in name order) into
    /// parts, writes them, and indexes the new file as complete. With
    /// `encryption` the parts are sealed first (single files only).
    pub fn add_path(
        &self,
        path: &Path,
        encryption: Option<Encryption>,
        price_per_mib: Amount,
    ) -> Result<Arc<Metainfo>, StoreError> {
        self.add_path_with(path, encryption, price_per_mib, &mut |_, _| {})
    }

    /// [`Store::add_path`], telling `progress(done, total)` the bytes
    /// hashed so far after each part (`total` is what will be stored).
    pub fn add_path_with(
        &self,
        path: &Path,
        encryption: Option<Encryption>,
        price_per_mib: Amount,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Arc<Metainfo>, StoreError> {
        let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StoreError::NotRegular {
                path: path.to_path_buf(),
                what: "not a named path",
            })?
            .to_string();
        let (inputs, entries) = if meta.is_dir() {
            if encryption.is_some() {
                return Err(CryptError::NotAFile.into());
            }
            let mut files = Vec::new();
            walk(path, &mut Vec::new(), &mut files)?;
            let entries: Vec<FileEntry> = files
                .iter()
                .map(|(_, rel, len)| FileEntry {
                    length: *len,
                    path: rel.clone(),
                })
                .collect();
            if entries.is_empty() {
                return Err(StoreError::NotRegular {
                    path: path.to_path_buf(),
                    what: "a directory without files",
                });
            }
            (
                files.into_iter().map(|(p, _, len)| (p, len)).collect(),
                Some(entries),
            )
        } else if meta.is_file() {
            (vec![(path.to_path_buf(), meta.len())], None)
        } else {
            return Err(StoreError::NotRegular {
                path: path.to_path_buf(),
                what: kind_of(&meta),
            });
        };
        let plain_len: u64 = inputs.iter().map(|(_, l)| l).sum();
        let stored_len = match &encryption {
            Some(_) => crypt::sealed_len(crypt::header(&name, plain_len).len() as u64 + plain_len),
            None => plain_len,
        };
        self.check_quota(&format!("adding {}", path.display()), stored_len)?;

        let mut reader = Concat::new(inputs);
        let mut pieces = Vec::new();
        let mut new_parts: Vec<([u8; 20], u64)> = Vec::new();
        let mut sealer = None;
        if let Some(enc) = &encryption {
            reader.prefix = crypt::header(&name, plain_len);
            sealer = Some(Sealer::new(&enc.key, &enc.salt));
        }
        let chunk = if sealer.is_some() {
            SEGMENT
        } else {
            PIECE_LEN as usize
        };
        let mut index = 0u32;
        let mut done = 0u64;
        loop {
            let mut buf = Vec::with_capacity(PIECE_LEN as usize);
            let n = reader.read_up_to(&mut buf, chunk)?;
            if n == 0 {
                break;
            }
            if let Some(s) = &sealer {
                s.seal(index, &mut buf);
            }
            let hash: [u8; 20] = Sha1::digest(&buf).into();
            self.write_part(&hash, &buf)?;
            pieces.extend_from_slice(&hash);
            new_parts.push((hash, buf.len() as u64));
            index += 1;
            done += buf.len() as u64;
            progress(done, stored_len);
        }
        let (torrent_name, length, files) = match (&encryption, entries) {
            (Some(enc), _) => (crypt::encrypted_name(&enc.salt), Some(stored_len), None),
            (None, Some(entries)) => (name, None, Some(entries)),
            (None, None) => (name, Some(plain_len), None),
        };
        let m = Arc::new(Metainfo::build(torrent_name, length, files, pieces)?);
        let mut files = self.files();
        let mut db = self.db();
        let tx = db.transaction()?;
        let existing = files.get(&m.id).map(|f| f.have.clone());
        let mut have = existing
            .clone()
            .unwrap_or_else(|| Bitfield::new(m.piece_count()));
        if existing.is_none() {
            tx.execute(
                "INSERT INTO files (id, info, have, price, seeding, encrypted, added_ms)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
                params![
                    &m.id.0[..],
                    &m.bytes,
                    have.as_bytes(),
                    price_per_mib.to_string(),
                    encryption.is_some(),
                    now_ms() as i64
                ],
            )?;
        }
        for (i, (hash, size)) in new_parts.iter().enumerate() {
            if !have.get(i as u32) {
                have.set(i as u32);
                add_ref(&tx, hash, *size)?;
            }
        }
        tx.execute(
            "UPDATE files SET have = ?2, encrypted = encrypted OR ?3 WHERE id = ?1",
            params![&m.id.0[..], have.as_bytes(), encryption.is_some()],
        )?;
        tx.commit()?;
        let entry = files.entry(m.id).or_insert_with(|| StoredFile {
            meta: m.clone(),
            have: have.clone(),
            price_per_mib,
            seeding: false,
            encrypted: encryption.is_some(),
            added_ms: now_ms(),
        });
        entry.have = have;
        entry.encrypted |= encryption.is_some();
        Ok(m)
    }

    /// Registers the metainfo of a file to download (no parts yet),
    /// reserving its size against the quota. Known files are left as they are.
    pub fn insert_metainfo(&self, meta: &Metainfo) -> Result<StoredFile, StoreError> {
        if let Some(f) = self.file(&meta.id) {
            return Ok(f);
        }
        self.check_quota(&format!("downloading {}", meta.id), meta.length())?;
        let have = Bitfield::new(meta.piece_count());
        self.db().execute(
            "INSERT OR IGNORE INTO files (id, info, have, price, seeding, encrypted, added_ms)
             VALUES (?1, ?2, ?3, '0', 0, 0, ?4)",
            params![
                &meta.id.0[..],
                &meta.bytes,
                have.as_bytes(),
                now_ms() as i64
            ],
        )?;
        let f = StoredFile {
            meta: Arc::new(meta.clone()),
            have,
            price_per_mib: 0,
            seeding: false,
            encrypted: false,
            added_ms: now_ms(),
        };
        self.files().insert(meta.id, f.clone());
        Ok(f)
    }

    pub fn file(&self, id: &FileId) -> Option<StoredFile> {
        self.files().get(id).cloned()
    }

    pub fn list(&self) -> Vec<StoredFile> {
        let mut v: Vec<StoredFile> = self.files().values().cloned().collect();
        v.sort_by_key(|f| (f.added_ms, f.meta.id));
        v
    }

    /// Verifies part `index` of `id` against its SHA-1, writes it and marks
    /// it held. `Ok(false)`: it was held already.
    pub fn put_part(&self, id: &FileId, index: u32, bytes: &[u8]) -> Result<bool, StoreError> {
        let meta = self.meta(id)?;
        let hash = meta.piece_hash(index);
        if bytes.len() as u64 != meta.piece_len(index)
            || <[u8; 20]>::from(Sha1::digest(bytes)) != hash
        {
            return Err(StoreError::BadPart { file: *id, index });
        }
        self.write_part(&hash, bytes)?;
        self.mark_held(id, index)
    }

    /// Takes part `index` from a part file already on disk (the same part
    /// of another file, or one written just before a crash), re-hashing it.
    pub fn adopt_local(&self, id: &FileId, index: u32) -> Result<bool, StoreError> {
        let meta = self.meta(id)?;
        let path = self.part_path(&meta.piece_hash(index));
        let Ok(bytes) = fs::read(&path) else {
            return Ok(false);
        };
        if bytes.len() as u64 != meta.piece_len(index)
            || <[u8; 20]>::from(Sha1::digest(&bytes)) != meta.piece_hash(index)
        {
            let _ = fs::remove_file(&path);
            return Ok(false);
        }
        self.mark_held(id, index)
    }

    /// Part `index` of `id`, if held.
    pub fn read_part(&self, id: &FileId, index: u32) -> Result<Vec<u8>, StoreError> {
        let f = self.file(id).ok_or(StoreError::Unknown(*id))?;
        if !f.have.get(index) {
            return Err(StoreError::MissingPart { file: *id, index });
        }
        let path = self.part_path(&f.meta.piece_hash(index));
        fs::read(&path).map_err(|e| io_err(&path, e))
    }

    /// `len` bytes of the content of `id` from `offset` (all parts in the
    /// range must be held).
    pub fn read_range(&self, id: &FileId, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let f = self.file(id).ok_or(StoreError::Unknown(*id))?;
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let index = (pos / PIECE_LEN) as u32;
            if !f.have.get(index) {
                return Err(StoreError::MissingPart { file: *id, index });
            }
            let within = pos % PIECE_LEN;
            let take = (PIECE_LEN - within).min(end - pos);
            let path = self.part_path(&f.meta.piece_hash(index));
            let file = File::open(&path).map_err(|e| io_err(&path, e))?;
            let start = out.len();
            out.resize(start + take as usize, 0);
            file.read_exact_at(&mut out[start..], within)
                .map_err(|e| io_err(&path, e))?;
            pos += take;
        }
        Ok(out)
    }

    pub fn set_seeding(&self, id: &FileId, seeding: bool) -> Result<StoredFile, StoreError> {
        let mut files = self.files();
        let f = files.get_mut(id).ok_or(StoreError::Unknown(*id))?;
        self.db().execute(
            "UPDATE files SET seeding = ?2 WHERE id = ?1",
            params![&id.0[..], seeding],
        )?;
        f.seeding = seeding;
        Ok(f.clone())
    }

    pub fn set_price(&self, id: &FileId, price_per_mib: Amount) -> Result<(), StoreError> {
        let mut files = self.files();
        let f = files.get_mut(id).ok_or(StoreError::Unknown(*id))?;
        self.db().execute(
            "UPDATE files SET price = ?2 WHERE id = ?1",
            params![&id.0[..], price_per_mib.to_string()],
        )?;
        f.price_per_mib = price_per_mib;
        Ok(())
    }

    /// Keeps `id` from being removed (once more).
    pub fn pin(&self, id: &FileId) {
        *self.pins().entry(*id).or_default() += 1;
    }

    /// Undoes one [`Store::pin`].
    pub fn unpin(&self, id: &FileId) {
        let mut pins = self.pins();
        if let Some(n) = pins.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(id);
            }
        }
    }

    pub fn pinned(&self, id: &FileId) -> bool {
        self.pins().contains_key(id)
    }

    fn pins(&self) -> MutexGuard<'_, HashMap<FileId, u32>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets `id` and deletes the parts no other file uses; refused while
    /// it is pinned.
    pub fn remove(&self, id: &FileId) -> Result<(), StoreError> {
        if self.pinned(id) {
            return Err(StoreError::Pinned(*id));
        }
        let mut files = self.files();
        let f = files.remove(id).ok_or(StoreError::Unknown(*id))?;
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut gone = Vec::new();
        for i in f.have.ones() {
            let hash = f.meta.piece_hash(i);
            tx.execute(
                "UPDATE parts SET refs = refs - 1 WHERE hash = ?1",
                params![&hash[..]],
            )?;
            let refs: i64 = tx.query_row(
                "SELECT refs FROM parts WHERE hash = ?1",
                params![&hash[..]],
                |r| r.get(0),
            )?;
            if refs <= 0 {
                tx.execute("DELETE FROM parts WHERE hash = ?1", params![&hash[..]])?;
                gone.push(hash);
            }
        }
        tx.execute("DELETE FROM files WHERE id = ?1", params![&id.0[..]])?;
        tx.commit()?;
        // Deleted from the index first: a crash here leaves only garbage.
        for h in gone {
            let _ = fs::remove_file(self.part_path(&h));
        }
        Ok(())
    }

    pub fn usage(&self) -> Result<Usage, StoreError> {
        let (used, parts): (i64, i64) = self.db().query_row(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM parts",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let reserved = self
            .files()
            .values()
            .map(|f| f.meta.length() - f.have_bytes())
            .sum();
        Ok(Usage {
            used_bytes: used as u64,
            reserved_bytes: reserved,
            max_bytes: self.max_bytes,
            parts: parts as u64,
        })
    }

    /// Writes the content of a complete file out: a file, or a directory
    /// tree for a multi-file torrent; decrypted when `key` is given. It is
    /// written under a temporary name beside the target and renamed at the
    /// end, so a failure (a wrong key) leaves nothing behind. Returns the path.
    pub fn export(
        &self,
        id: &FileId,
        target: &ExportTarget,
        key: Option<&FileKey>,
    ) -> Result<PathBuf, StoreError> {
        let f = self.file(id).ok_or(StoreError::Unknown(*id))?;
        if let Some(index) = (0..f.have.len()).find(|i| !f.have.get(*i)) {
            return Err(StoreError::MissingPart { file: *id, index });
        }
        match key {
            Some(key) => self.export_decrypted(&f, target, key),
            None => self.export_plain(&f, target),
        }
    }

    fn export_plain(&self, f: &StoredFile, target: &ExportTarget) -> Result<PathBuf, StoreError> {
        let out = target
            .path
            .clone()
            .unwrap_or_else(|| target.dir.join(f.meta.name()));
        refuse_existing(&out)?;
        create_parent(&out)?;
        let tmp = temp_beside(&out);
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            if f.meta.is_dir() {
                fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
            }
            for span in f.meta.spans() {
                let mut path = tmp.clone();
                for c in &span.path {
                    path.push(c);
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                let mut file = File::create(&path).map_err(|e| io_err(&path, e))?;
                let mut pos = span.offset;
                let end = span.offset + span.length;
                while pos < end {
                    let take = (PIECE_LEN - pos % PIECE_LEN).min(end - pos);
                    let bytes = self.read_range(&f.meta.id, pos, take)?;
                    file.write_all(&bytes).map_err(|e| io_err(&path, e))?;
                    pos += take;
                }
                file.sync_all().map_err(|e| io_err(&path, e))?;
            }
            fs::rename(&tmp, &out).map_err(|e| io_err(&out, e))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| out)
    }

    fn export_decrypted(
        &self,
        f: &StoredFile,
        target: &ExportTarget,
        key: &FileKey,
    ) -> Result<PathBuf, StoreError> {
        let id = f.meta.id;
        let salt = crypt::salt_of(f.meta.name()).ok_or(CryptError::NotEncrypted(id))?;
        let sealer = Sealer::new(key, &salt);
        let n = f.meta.piece_count();
        if n == 0 {
            return Err(CryptError::BadHeader(id).into());
        }
        let mut first = self.read_part(&id, 0)?;
        if !sealer.open(0, &mut first) {
            return Err(CryptError::WrongKey(id).into());
        }
        let (name, content_len, header_len) = crypt::parse_header(&first, id)?;
        if crate::metainfo::Metainfo::build(name.clone(), Some(0), None, vec![]).is_err() {
            return Err(CryptError::BadHeader(id).into());
        }
        let out = target
            .path
            .clone()
            .unwrap_or_else(|| target.dir.join(&name));
        refuse_existing(&out)?;
        create_parent(&out)?;
        let tmp = temp_beside(&out);
        let result = (|| {
            let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            let mut written = 0u64;
            let mut write = |bytes: &[u8], file: &mut File| -> Result<(), StoreError> {
                let take = (content_len - written).min(bytes.len() as u64) as usize;
                file.write_all(&bytes[..take])
                    .map_err(|e| io_err(&tmp, e))?;
                written += take as u64;
                Ok(())
            };
            write(&first[header_len..], &mut file)?;
            for index in 1..n {
                let mut part = self.read_part(&id, index)?;
                if !sealer.open(index, &mut part) {
                    return Err(CryptError::BadPart { file: id, index }.into());
                }
                write(&part, &mut file)?;
            }
            if written != content_len {
                return Err(CryptError::BadHeader(id).into());
            }
            file.sync_all().map_err(|e| io_err(&tmp, e))?;
            fs::rename(&tmp, &out).map_err(|e| io_err(&out, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| out)
    }

    /// What was served to (`earned`) or bought from each peer address.
    pub fn accounts(&self) -> Result<Vec<(Address, bool, Account)>, StoreError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT address, earned, parts, bytes, owed, paid FROM accounts")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (address, earned, parts, bytes, owed, paid) = row?;
            let Ok(address) = address.parse() else {
                continue;
            };
            out.push((address, earned, account(parts, bytes, &owed, &paid)));
        }
        Ok(out)
    }

    pub fn save_account(
        &self,
        address: &Address,
        earned: bool,
        a: &Account,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO accounts (address, earned, parts, bytes, owed, paid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(address, earned) DO UPDATE SET
                 parts = ?3, bytes = ?4, owed = ?5, paid = ?6",
            params![
                address.to_string(),
                earned,
                a.parts as i64,
                a.bytes as i64,
                a.owed.to_string(),
                a.paid.to_string()
            ],
        )?;
        Ok(())
    }

    /// What each file earned as a seeder: parts and bytes served, their
    /// cost, and the vouchers taken in sessions for it. Kept after a file
    /// is removed, so adding it again carries on its record.
    pub fn served(&self) -> Result<HashMap<FileId, Account>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT id, parts, bytes, owed, paid FROM served")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, parts, bytes, owed, paid) = row?;
            let Ok(id) = <[u8; 20]>::try_from(id.as_slice()) else {
                continue;
            };
            out.insert(FileId(id), account(parts, bytes, &owed, &paid));
        }
        Ok(out)
    }

    pub fn save_served(&self, id: &FileId, a: &Account) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO served (id, parts, bytes, owed, paid) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET parts = ?2, bytes = ?3, owed = ?4, paid = ?5",
            params![
                &id.0[..],
                a.parts as i64,
                a.bytes as i64,
                a.owed.to_string(),
                a.paid.to_string()
            ],
        )?;
        Ok(())
    }

    fn meta(&self, id: &FileId) -> Result<Arc<Metainfo>, StoreError> {
        self.files()
            .get(id)
            .map(|f| f.meta.clone())
            .ok_or(StoreError::Unknown(*id))
    }

    fn mark_held(&self, id: &FileId, index: u32) -> Result<bool, StoreError> {
        let mut files = self.files();
        let f = files.get_mut(id).ok_or(StoreError::Unknown(*id))?;
        if f.have.get(index) {
            return Ok(false);
        }
        let mut have = f.have.clone();
        have.set(index);
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE files SET have = ?2 WHERE id = ?1",
            params![&id.0[..], have.as_bytes()],
        )?;
        add_ref(&tx, &f.meta.piece_hash(index), f.meta.piece_len(index))?;
        tx.commit()?;
        f.have = have;
        Ok(true)
    }

    fn check_quota(&self, what: &str, need: u64) -> Result<(), StoreError> {
        let u = self.usage()?;
        let taken = u.used_bytes + u.reserved_bytes;
        if taken + need > self.max_bytes {
            return Err(StoreError::Quota {
                what: what.to_string(),
                need_mib: need.div_ceil(1 << 20),
                free_mib: self.max_bytes.saturating_sub(taken) >> 20,
                max_gib: self.max_bytes as f64 / (1u64 << 30) as f64,
            });
        }
        Ok(())
    }

    fn part_path(&self, hash: &[u8; 20]) -> PathBuf {
        let hex = hex::encode(hash);
        self.dir.join("parts").join(&hex[..2]).join(hex)
    }

    /// Writes a part file unless it exists (deduplication): into `tmp/`
    /// first, then renamed, so a part file is never half-written.
    fn write_part(&self, hash: &[u8; 20], bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.part_path(hash);
        if path.exists() {
            return Ok(());
        }
        let parent = path.parent().expect("parts/xx");
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).expect("random");
        let tmp =
            self.dir
                .join("tmp")
                .join(format!("{}.{}", hex::encode(hash), hex::encode(suffix)));
        fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    }

    /// Deletes leftovers of interrupted writes: everything in `tmp/`, and
    /// part files nothing references unless an unfinished download needs them.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let tmp = self.dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(|e| io_err(&tmp, e))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut keep: HashSet<String> = {
            let db = self.db();
            let mut stmt = db.prepare("SELECT hash FROM parts")?;
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(Result::ok)
                .map(hex::encode)
                .collect()
        };
        for f in self.files().values() {
            for i in 0..f.have.len() {
                if !f.have.get(i) {
                    keep.insert(hex::encode(f.meta.piece_hash(i)));
                }
            }
        }
        let parts = self.dir.join("parts");
        for sub in fs::read_dir(&parts)
            .map_err(|e| io_err(&parts, e))?
            .flatten()
        {
            for e in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.contains(&name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn files(&self) -> MutexGuard<'_, HashMap<FileId, StoredFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An account as its row stores it (amounts as decimal text: u128).
fn account(parts: i64, bytes: i64, owed: &str, paid: &str) -> Account {
    Account {
        parts: parts as u64,
        bytes: bytes as u64,
        owed: owed.parse().unwrap_or(0),
        paid: paid.parse().unwrap_or(0),
    }
}

fn migrate(db: &Connection) -> Result<(), StoreError> {
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        // One transaction with the version bump: a kill halfway leaves
        // the old schema, not tables the next open would create again.
        db.execute_batch(
            "BEGIN;
             CREATE TABLE files (
                 id BLOB PRIMARY KEY,
                 info BLOB NOT NULL,
                 have BLOB NOT NULL,
                 price TEXT NOT NULL,
                 seeding INTEGER NOT NULL,
                 encrypted INTEGER NOT NULL,
                 added_ms INTEGER NOT NULL
             );
             CREATE TABLE parts (
                 hash BLOB PRIMARY KEY,
                 size INTEGER NOT NULL,
                 refs INTEGER NOT NULL
             );
             CREATE TABLE accounts (
                 address TEXT NOT NULL,
                 earned INTEGER NOT NULL,
                 parts INTEGER NOT NULL,
                 bytes INTEGER NOT NULL,
                 owed TEXT NOT NULL,
                 paid TEXT NOT NULL,
                 PRIMARY KEY (address, earned)
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if version < 2 {
        db.execute_batch(
            "BEGIN;
             CREATE TABLE served (
                 id BLOB PRIMARY KEY,
                 parts INTEGER NOT NULL,
                 bytes INTEGER NOT NULL,
                 owed TEXT NOT NULL,
                 paid TEXT NOT NULL
             );
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn load(db: &Connection) -> Result<HashMap<FileId, StoredFile>, StoreError> {
    let mut stmt =
        db.prepare("SELECT info, have, price, seeding, encrypted, added_ms FROM files")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, bool>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (info, have, price, seeding, encrypted, added_ms) = row?;
        let meta = Metainfo::decode(&info)?;
        let have = Bitfield::from_bytes(&have, meta.piece_count()).map_err(|e| {
            StoreError::Db(rusqlite::Error::InvalidColumnType(
                1,
                e.to_string(),
                rusqlite::types::Type::Blob,
            ))
        })?;
        out.insert(
            meta.id,
            StoredFile {
                meta: Arc::new(meta),
                have,
                price_per_mib: price.parse().unwrap_or(0),
                seeding,
                encrypted,
                added_ms: added_ms as u64,
            },
        );
    }
    Ok(out)
}

fn add_ref(tx: &rusqlite::Transaction<'_>, hash: &[u8; 20], size: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO parts (hash, size, refs) VALUES (?1, ?2, 1)
         ON CONFLICT(hash) DO UPDATE SET refs = refs + 1",
        params![&hash[..], size as i64],
    )
    .map(|_| ())
}

/// Regular files below `dir` in name order, with their path components.
fn walk(
    dir: &Path,
    rel: &mut Vec<String>,
    out: &mut Vec<(PathBuf, Vec<String>, u64)>,
) -> Result<(), StoreError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e
            .file_name()
            .into_string()
            .map_err(|_| StoreError::NotRegular {
                path: path.clone(),
                what: "not UTF-8 named",
            })?;
        let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        rel.push(name);
        if meta.is_dir() {
            walk(&path, rel, out)?;
        } else if meta.is_file() {
            out.push((path, rel.clone(), meta.len()));
        } else {
            return Err(StoreError::NotRegular {
                path,
                what: kind_of(&meta),
            });
        }
        rel.pop();
    }
    Ok(())
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    if meta.file_type().is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// The files of a torrent read as one stream, after an optional prefix.
struct Concat {
    prefix: Vec<u8>,
    inputs: std::vec::IntoIter<(PathBuf, u64)>,
    current: Option<(PathBuf, File, u64)>,
}

impl Concat {
    fn new(inputs: Vec<(PathBuf, u64)>) -> Concat {
        Concat {
            prefix: Vec::new(),
            inputs: inputs.into_iter(),
            current: None,
        }
    }

    /// Appends up to `want` bytes to `buf`; returns how many (0 at the end).
    /// A file that changes length while read is an error, not a bad torrent.
    fn read_up_to(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<usize, StoreError> {
        let start = buf.len();
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(want);
            buf.extend(self.prefix.drain(..take));
        }
        while buf.len() - start < want {
            if self.current.is_none() {
                match self.inputs.next() {
                    Some((path, len)) => {
                        let f = File::open(&path).map_err(|e| io_err(&path, e))?;
                        self.current = Some((path, f, len));
                    }
                    None => break,
                }
            }
            let (path, file, left) = self.current.as_mut().expect("set above");
            let take = (want - (buf.len() - start)).min(*left as usize);
            let at = buf.len();
            buf.resize(at + take, 0);
            file.read_exact(&mut buf[at..])
                .map_err(|e| io_err(path, e))?;
            *left -= take as u64;
            if *left == 0 {
                self.current = None;
            }
        }
        Ok(buf.len() - start)
    }
}

fn refuse_existing(out: &Path) -> Result<(), StoreError> {
    if fs::symlink_metadata(out).is_ok() {
        return Err(StoreError::OutputExists(out.to_path_buf()));
    }
    Ok(())
}

fn create_parent(out: &Path) -> Result<(), StoreError> {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => fs::create_dir_all(p).map_err(|e| io_err(p, e)),
        _ => Ok(()),
    }
}

/// `.NAME.zennet-part` beside `out`: the same name on a retry, so an
/// interrupted export leaves at most one leftover, overwritten next time.
fn temp_beside(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.zennet-part"))
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::open(&dir.join("store"), 1 << 30).unwrap()
    }

    /// Bytes that differ from part to part (xorshift).
    pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn copy_parts(from: &Store, to: &Store, id: &FileId) {
        let f = from.file(id).unwrap();
        to.insert_metainfo(&f.meta).unwrap();
        for i in 0..f.meta.piece_count() {
            to.put_part(id, i, &from.read_part(id, i).unwrap()).unwrap();
        }
    }

    #[test]
    fn a_version_1_store_migrates_and_what_files_earned_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        drop(store(dir.path()));
        // Back to the first schema, as an older node left it.
        let db = Connection::open(path.join("index.db")).unwrap();
        db.execute_batch("DROP TABLE served; PRAGMA user_version = 1;")
            .unwrap();
        drop(db);
        let id = FileId([7; 20]);
        let a = Account {
            parts: 3,
            bytes: 3 * PIECE_LEN,
            owed: 30,
            paid: u128::MAX - 1,
        };
        {
            let s = store(dir.path());
            assert!(s.served().unwrap().is_empty());
            s.save_served(&id, &a).unwrap();
        }
        let got = store(dir.path()).served().unwrap();
        assert_eq!(got.len(), 1);
        let b = &got[&id];
        assert_eq!(
            (b.parts, b.bytes, b.owed, b.paid),
            (a.parts, a.bytes, a.owed, a.paid)
        );
    }

    #[test]
    fn an_add_reports_its_progress_part_by_part_up_to_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = pattern(PIECE_LEN as usize * 2 + 1, 3);
        std::fs::write(dir.path().join("a.bin"), &data).unwrap();
        let mut seen = Vec::new();
        s.add_path_with(&dir.path().join("a.bin"), None, 0, &mut |done, total| {
            seen.push((done, total))
        })
        .unwrap();
        let len = data.len() as u64;
        assert_eq!(seen, [(PIECE_LEN, len), (2 * PIECE_LEN, len), (len, len)]);
    }

    #[test]
    fn a_file_round_trips_and_parts_are_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = pattern(PIECE_LEN as usize * 2 + 1, 1);
        std::fs::write(dir.path().join("a.bin"), &data).unwrap();
        let m = s.add_path(&dir.path().join("a.bin"), None, 5).unwrap();
        assert_eq!(m.piece_count(), 3);
        assert_eq!(m.length(), data.len() as u64);
        // The same bytes under another name share every part.
        std::fs::write(dir.path().join("b.bin"), &data).unwrap();
        let m2 = s.add_path(&dir.path().join("b.bin"), None, 5).unwrap();
        assert_ne!(m.id, m2.id);
        assert_eq!(s.usage().unwrap().parts, 3);
        s.remove(&m.id).unwrap();
        assert_eq!(s.usage().unwrap().parts, 3, "b still uses them");
        let out = s
            .export(
                &m2.id,
                &ExportTarget {
                    path: None,
                    dir: dir.path().join("out"),
                },
                None,
            )
            .unwrap();
        assert_eq!(std::fs::read(out).unwrap(), data);
        s.remove(&m2.id).unwrap();
        assert_eq!(s.usage().unwrap().parts, 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/parts"))
                .unwrap()
                .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
                .count(),
            0
        );
    }

    #[test]
    fn a_directory_round_trips_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("a.txt"), b"hello").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        std::fs::write(src.join("sub/big"), pattern(PIECE_LEN as usize + 7, 2)).unwrap();
        std::fs::write(src.join("sub/deeper/z"), b"zz").unwrap();
        let a = store(dir.path());
        let m = a.add_path(&src, None, 0).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.spans().len(), 4);
        let b = Store::open(&dir.path().join("b"), 1 << 30).unwrap();
        copy_parts(&a, &b, &m.id);
        let out = dir.path().join("copy");
        b.export(
            &m.id,
            &ExportTarget {
                path: Some(out.clone()),
                dir: dir.path().into(),
            },
            None,
        )
        .unwrap();
        for p in ["a.txt", "empty", "sub/big", "sub/deeper/z"] {
            assert_eq!(
                std::fs::read(src.join(p)).unwrap(),
                std::fs::read(out.join(p)).unwrap(),
                "{p}"
            );
        }
        // Exporting over an existing path writes nothing.
        let err = b
            .export(
                &m.id,
                &ExportTarget {
                    path: Some(out.clone()),
                    dir: dir.path().into(),
                },
                None,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::OutputExists(_)));
    }

    #[test]
    fn zero_bytes_and_one_past_a_part() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for (name, len) in [("zero", 0usize), ("odd", PIECE_LEN as usize + 1)] {
            let data = pattern(len, 3);
            let path = dir.path().join(name);
            std::fs::write(&path, &data).unwrap();
            let m = s.add_path(&path, None, 0).unwrap();
            assert_eq!(m.piece_count() as usize, len.div_ceil(PIECE_LEN as usize));
            let b = Store::open(&dir.path().join(format!("b-{name}")), 1 << 30).unwrap();
            copy_parts(&s, &b, &m.id);
            let out = b
                .export(
                    &m.id,
                    &ExportTarget {
                        path: Some(dir.path().join(format!("{name}.out"))),
                        dir: dir.path().into(),
                    },
                    None,
                )
                .unwrap();
            assert_eq!(std::fs::read(out).unwrap(), data);
        }
    }

    #[test]
    fn a_corrupt_part_is_refused_and_nothing_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path());
        std::fs::write(dir.path().join("f"), pattern(1000, 4)).unwrap();
        let m = a.add_path(&dir.path().join("f"), None, 0).unwrap();
        let b = Store::open(&dir.path().join("b"), 1 << 30).unwrap();
        b.insert_metainfo(&m).unwrap();
        let mut bad = a.read_part(&m.id, 0).unwrap();
        bad[0] ^= 1;
        assert!(matches!(
            b.put_part(&m.id, 0, &bad),
            Err(StoreError::BadPart { .. })
        ));
        assert_eq!(b.file(&m.id).unwrap().have.count(), 0);
        assert!(matches!(
            b.read_part(&m.id, 0),
            Err(StoreError::MissingPart { .. })
        ));
    }

    #[test]
    fn the_bitfield_survives_a_reopen_and_orphans_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path());
        std::fs::write(dir.path().join("f"), pattern(PIECE_LEN as usize * 3, 5)).unwrap();
        let m = a.add_path(&dir.path().join("f"), None, 0).unwrap();
        let bdir = dir.path().join("b");
        {
            let b = Store::open(&bdir, 1 << 30).unwrap();
            b.insert_metainfo(&m).unwrap();
            b.put_part(&m.id, 0, &a.read_part(&m.id, 0).unwrap())
                .unwrap();
            // Part 2 written to disk but the process dies before indexing it.
            b.write_part(&m.piece_hash(2), &a.read_part(&m.id, 2).unwrap())
                .unwrap();
        }
        let b = Store::open(&bdir, 1 << 30).unwrap();
        let f = b.file(&m.id).unwrap();
        assert!(f.have.get(0) && !f.have.get(1) && !f.have.get(2));
        assert!(!b.adopt_local(&m.id, 1).unwrap());
        assert!(
            b.adopt_local(&m.id, 2).unwrap(),
            "kept through gc and adopted"
        );
    }

    #[test]
    fn the_quota_refuses_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s"), PIECE_LEN).unwrap();
        std::fs::write(dir.path().join("f"), pattern(PIECE_LEN as usize + 1, 6)).unwrap();
        let err = s.add_path(&dir.path().join("f"), None, 0).unwrap_err();
        assert!(err.to_string().contains("max_gib"), "{err}");
        assert_eq!(s.usage().unwrap().parts, 0);
        assert!(s.list().is_empty());
    }

    #[test]
    fn encrypted_parts_hold_no_plaintext_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let marker = b"THE-SECRET-PLAINTEXT-MARKER".repeat(20_000);
        std::fs::write(dir.path().join("secret.txt"), &marker).unwrap();
        let key = FileKey([7; 32]);
        let salt = [8; 16];
        let m = s
            .add_path(
                &dir.path().join("secret.txt"),
                Some(Encryption {
                    key: key.clone(),
                    salt,
                }),
                0,
            )
            .unwrap();
        assert_eq!(m.name(), crypt::encrypted_name(&salt));
        assert!(m.piece_len(0) == PIECE_LEN);
        for i in 0..m.piece_count() {
            let part = s.read_part(&m.id, i).unwrap();
            assert!(!part.windows(12).any(|w| w == b"THE-SECRET-P"));
        }
        let target = |p: &str| ExportTarget {
            path: Some(dir.path().join(p)),
            dir: dir.path().into(),
        };
        let err = s
            .export(&m.id, &target("wrong"), Some(&FileKey([9; 32])))
            .unwrap_err();
        assert!(matches!(err, StoreError::Crypt(CryptError::WrongKey(_))));
        assert!(!dir.path().join("wrong").exists());
        assert!(!dir.path().join(".wrong.zennet-part").exists());
        let out = s.export(&m.id, &target("right"), Some(&key)).unwrap();
        assert_eq!(std::fs::read(out).unwrap(), marker);
        let named = s
            .export(
                &m.id,
                &ExportTarget {
                    path: None,
                    dir: dir.path().join("d"),
                },
                Some(&key),
            )
            .unwrap();
        assert_eq!(named, dir.path().join("d/secret.txt"));
    }
}
