//! The contract between the host and the guest: what the guest's init reads
//! (kernel parameters, fw_cfg, disk serials), what it prints on the serial
//! console, and the files that implement its side (under `images/guest/`).

use base64::Engine as _;

use crate::error::ImageError;

/// Printed alone on a serial console line once sshd accepts connections.
pub const READY_MARKER: &str = "ZENNET-READY";

/// Prefixes the guest's SSH host public key on the serial console
/// (`ZENNET-HOSTKEY ssh-ed25519 AAAA...`), printed before [`READY_MARKER`],
/// so the host can pin the key instead of trusting it on first use.
pub const HOST_KEY_MARKER: &str = "ZENNET-HOSTKEY";

/// Kernel parameter carrying one authorized key: the base64 of an OpenSSH
/// public key line. It may repeat.
pub const AUTHORIZED_KEY_PARAM: &str = "zennet.authorized_key";

/// QEMU fw_cfg name the guest also reads authorized keys from
/// (`-fw_cfg name=opt/zennet/authorized_keys,file=PATH`), for key sets too
/// long for the kernel command line.
pub const FW_CFG_AUTHORIZED_KEYS: &str = "opt/zennet/authorized_keys";

/// Virtio serial (`-device virtio-blk-pci,serial=zennet-data,...`) marking
/// the persistent volume. Without such a disk the guest takes `/dev/vdb`,
/// unless that is an image disk ([`IMAGE_DISK_SERIAL_PREFIX`]). Either way a
/// blank volume is formatted ext4 and mounted at `/data`.
pub const DATA_DISK_SERIAL: &str = "zennet-data";

/// Prefix of the virtio serial of an image's own disks (`zennet-root`); see
/// [`crate::ImageDisk::serial`]. Besides [`DATA_DISK_SERIAL`], serials with
/// this prefix are the image's, and init never takes such a disk for `/data`.
pub const IMAGE_DISK_SERIAL_PREFIX: &str = "zennet-";

/// The x86 kernel's command line limit (COMMAND_LINE_SIZE), NUL included.
const COMMAND_LINE_SIZE: usize = 2048;

/// The kernel parameters for one boot: the image's own (`boot_args` from its
/// manifest) followed by one [`AUTHORIZED_KEY_PARAM`] per key. Join them with
/// spaces for QEMU's `-append`.
pub fn kernel_args(
    boot_args: &[String],
    authorized_keys: &[&str],
) -> Result<Vec<String>, ImageError> {
    let mut args = boot_args.to_vec();
    for key in authorized_keys {
        let key = key.trim();
        check_public_key(key)?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        args.push(format!("{AUTHORIZED_KEY_PARAM}={encoded}"));
    }
    let len = args.iter().map(|a| a.len() + 1).sum::<usize>();
    if len > COMMAND_LINE_SIZE {
        return Err(ImageError::CmdlineTooLong {
            len,
            max: COMMAND_LINE_SIZE - 1,
        });
    }
    Ok(args)
}

/// A light check that catches the usual mistakes (a private key, a file with
/// several lines, an empty string) before they become a guest nobody can
/// log in to. The guest's sshd does the real parsing.
fn check_public_key(key: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BadAuthorizedKey {
        reason: reason.to_owned(),
    };
    if key.contains(['\n', '\r']) {
        return Err(bad("it spans several lines; pass each key separately"));
    }
    if key.contains("PRIVATE KEY") {
        return Err(bad("that is a private key; pass the .pub file's line"));
    }
    let mut fields = key.split_whitespace();
    let (Some(kind), Some(_blob)) = (fields.next(), fields.next()) else {
        return Err(bad(
            "expected `TYPE BASE64 [COMMENT]`, as in an id_*.pub file",
        ));
    };
    let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"];
    if !known.iter().any(|prefix| kind.starts_with(prefix)) {
        return Err(bad(&format!("unknown key type `{kind}`")));
    }
    Ok(())
}

/// A file this crate puts into every image.
pub(crate) struct GuestFile {
    pub(crate) path: &'static str,
    pub(crate) mode: u32,
    pub(crate) contents: &'static str,
}

/// Where init finds the modules to load, one path per line relative to
/// `/lib/modules/<release>/`, dependencies first.
pub(crate) const MODULE_ORDER_FILE: &str = "etc/zennet/modules";

/// Where init finds the image's disks, one `SERIAL ROLE` line each, in the
/// manifest's order; absent in images without disks.
pub(crate) const IMAGE_DISKS_FILE: &str = "etc/zennet/disks";

/// The argument init gets when it starts over on the root disks' overlay
/// (only init itself passes it; kept here so the test sees the contract).
#[cfg(test)]
pub(crate) const SECOND_STAGE_ARG: &str = "--second-stage";

pub(crate) const FILES: &[GuestFile] = &[
    GuestFile {
        path: "init",
        mode: 0o755,
        contents: include_str!("../guest/init"),
    },
    GuestFile {
        path: "etc/inittab",
        mode: 0o644,
        contents: include_str!("../guest/inittab"),
    },
    GuestFile {
        path: "etc/zennet/ready",
        mode: 0o755,
        contents: include_str!("../guest/ready"),
    },
    GuestFile {
        path: "etc/zennet/shutdown",
        mode: 0o755,
        contents: include_str!("../guest/shutdown"),
    },
    GuestFile {
        path: "etc/passwd",
        mode: 0o644,
        contents: include_str!("../guest/etc/passwd"),
    },
    GuestFile {
        path: "etc/group",
        mode: 0o644,
        contents: include_str!("../guest/etc/group"),
    },
    GuestFile {
        path: "etc/shells",
        mode: 0o644,
        contents: include_str!("../guest/etc/shells"),
    },
    GuestFile {
        path: "etc/profile",
        mode: 0o644,
        contents: include_str!("../guest/etc/profile"),
    },
    // The guest's own name (`zennet`) must resolve: the JVM's
    // InetAddress.getLocalHost, which Spark calls at start, fails otherwise.
    GuestFile {
        path: "etc/hosts",
        mode: 0o644,
        contents: include_str!("../guest/etc/hosts"),
    },
    GuestFile {
        path: "etc/nsswitch.conf",
        mode: 0o644,
        contents: include_str!("../guest/etc/nsswitch.conf"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0bUhxl0S2mUVb7ecmXDiVmtJv4rq1bGEjpJjAQhLRr me@host";

    #[test]
    fn keys_become_base64_parameters_after_the_image_args() {
        let base = vec!["console=ttyS0".to_owned()];
        let args = kernel_args(&base, &[KEY, &format!("  {KEY}\n")]).unwrap();
        assert_eq!(args.len(), 3);
        assert_eq!(args[0], "console=ttyS0");
        let value = args[1].strip_prefix("zennet.authorized_key=").unwrap();
        assert!(!value.contains(' '));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        assert_eq!(decoded, KEY.as_bytes());
        assert_eq!(args[1], args[2]);
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        for key in [
            "",
            "AAAAC3NzaC1lZDI1NTE5",
            "-----BEGIN OPENSSH PRIVATE KEY----- b3Blbn",
            "ssh-ed25519 AAAA\nssh-rsa AAAA",
            "rsa AAAAB3Nza",
        ] {
            let err = kernel_args(&[], &[key]).unwrap_err();
            assert!(
                matches!(err, ImageError::BadAuthorizedKey { .. }),
                "{key:?}: {err}"
            );
        }
    }

    #[test]
    fn overlong_command_lines_point_to_fw_cfg() {
        let long_key = format!("ssh-rsa {}", "A".repeat(1600));
        let err = kernel_args(&[], &[&long_key]).unwrap_err();
        assert!(err.to_string().contains("fw_cfg"), "{err}");
    }

    fn guest_file(path: &str) -> &'static str {
        FILES.iter().find(|f| f.path == path).unwrap().contents
    }

    #[test]
    fn the_guest_resolves_its_own_name_and_sshd_takes_big_windows() {
        let init = guest_file("init");
        let name = init
            .lines()
            .find_map(|l| l.trim().strip_prefix("hostname "))
            .unwrap();
        let hosts = guest_file("etc/hosts");
        assert!(
            hosts
                .lines()
                .any(|l| l.starts_with("127.0.0.1") && l.split_whitespace().any(|w| w == name)),
            "{hosts}"
        );
        assert!(guest_file("etc/nsswitch.conf").contains("hosts: files dns"));
        let inittab = guest_file("etc/inittab");
        let sshd = inittab
            .lines()
            .find(|l| l.starts_with("::respawn:/usr/sbin/dropbear"))
            .unwrap();
        assert!(sshd.contains(" -W 2097152 "), "{sshd}");
        assert!(sshd.contains(" -a "), "{sshd}");
    }

    #[test]
    fn init_reads_what_the_host_side_writes() {
        let init = FILES.iter().find(|f| f.path == "init").unwrap().contents;
        for needle in [
            AUTHORIZED_KEY_PARAM,
            FW_CFG_AUTHORIZED_KEYS,
            DATA_DISK_SERIAL,
            HOST_KEY_MARKER,
            MODULE_ORDER_FILE,
            IMAGE_DISKS_FILE,
            IMAGE_DISK_SERIAL_PREFIX,
            SECOND_STAGE_ARG,
        ] {
            assert!(
                init.contains(needle),
                "guest/init does not mention {needle}"
            );
        }
        let ready = FILES
            .iter()
            .find(|f| f.path == "etc/zennet/ready")
            .unwrap()
            .contents;
        assert!(ready.contains(&format!("echo {READY_MARKER}")));
    }
}
