//! SSH keys as both sides keep them: Ed25519, OpenSSH format, files 0600,
//! named on chain by the SHA-256 fingerprint of the public key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use zennet_chain::Hash;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("SSH key {path}: {reason}")]
    Bad { path: String, reason: String },
    #[error("SSH key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Loads the Ed25519 key at `path`, creating it (mode 0600) if missing.
/// A key file readable by others is refused, as OpenSSH does.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    let shown = path.display().to_string();
    let io = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Bad {
                    path: shown,
                    reason: format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777),
                });
            }
            PrivateKey::from_openssh(&bytes).map_err(|e| KeyError::Bad {
                path: shown.clone(),
                reason: format!("not an OpenSSH private key: {e}"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            let text = key
                .to_openssh(LineEnding::LF)
                .expect("an Ed25519 key encodes");
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            std::fs::write(
                path.with_extension("pub"),
                format!("{}\n", public_line(key.public_key())),
            )
            .map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A fresh Ed25519 key from the OS random source.
pub fn generate() -> PrivateKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source works");
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// SHA-256 of the public key blob — the fingerprint OpenSSH prints
/// (`SHA256:…`), as the 32 bytes the chain stores.
pub fn fingerprint(key: &PublicKey) -> Hash {
    let fp = key.fingerprint(HashAlg::Sha256);
    Hash::from_slice(fp.as_bytes()).expect("SHA-256 is 32 bytes")
}

/// The `ssh-ed25519 AAAA…` line for authorized_keys and known_hosts.
pub fn public_line(key: &PublicKey) -> String {
    key.to_openssh().expect("a public key encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_private_and_fingerprints_match_openssh_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(fingerprint(a.public_key()), fingerprint(b.public_key()));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let line = public_line(a.public_key());
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        let parsed = PublicKey::from_openssh(&line).unwrap();
        assert_eq!(fingerprint(&parsed), fingerprint(a.public_key()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
