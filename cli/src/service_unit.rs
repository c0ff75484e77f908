//! `zennet node install-service`: the systemd unit of `deploy/zennet.service`
//! (embedded here, so the binary installs the unit it ships with), its
//! `ExecStart` adapted to the home and roles asked for, written to
//! `/etc/systemd/system`, then `systemctl daemon-reload` and
//! `enable --now`. A unit already there with other content is left alone
//! unless `--force`: it may hold an operator's own edits.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::commands::Output;
use crate::home::{self, Home};

/// The unit as shipped (also what `scripts/package.sh` installs).
pub const UNIT: &str = include_str!("../../deploy/zennet.service");
pub const UNIT_NAME: &str = "zennet.service";
/// Where systemd reads an administrator's units.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The shipped unit's home (its `StateDirectory=zennet`).
pub const DEFAULT_HOME: &str = "/var/lib/zennet";
/// The binary the shipped unit runs (where the .deb installs it).
pub const BIN: &str = "/usr/bin/zennet";

/// The roles of `node run` the service runs with; all off = as shipped
/// (`--provide`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub provide: bool,
    pub publish: bool,
    pub mine: bool,
}

pub struct InstallOptions {
    /// `--home` if given; the service's default is [`DEFAULT_HOME`], never
    /// `$ZENNET_HOME` or `~/.zennet` of whoever installs it.
    pub home: Option<PathBuf>,
    pub roles: Roles,
    pub unit_dir: PathBuf,
    pub force: bool,
    pub enable: bool,
}

/// The unit for `home` (None: [`DEFAULT_HOME`]) and `roles`; the shipped
/// text unchanged when neither is given.
pub fn render(home: Option<&Path>, roles: Roles) -> Result<String> {
    let home_str = match home {
        None => DEFAULT_HOME.to_string(),
        Some(h) => unit_path(h)?,
    };
    if home_str == DEFAULT_HOME && roles == Roles::default() {
        return Ok(UNIT.to_string());
    }
    let roles = if roles == Roles::default() {
        Roles {
            provide: true,
            ..Roles::default()
        }
    } else {
        roles
    };
    let mut flags = Vec::new();
    let mut names = Vec::new();
    for (on, flag, name) in [
        (roles.provide, "--provide", "provider"),
        (roles.publish, "--publish", "publisher"),
        (roles.mine, "--mine", "miner"),
    ] {
        if on {
            flags.push(flag);
            names.push(name);
        }
    }
    // StateDirectory= names a directory under /var/lib only.
    let state_dir = home_str
        .strip_prefix("/var/lib/")
        .filter(|rest| !rest.is_empty());
    let mut out = String::with_capacity(UNIT.len());
    for line in UNIT.lines() {
        let line = if line.starts_with("ExecStart=") {
            format!(
                "ExecStart={BIN} --home {home_str} node run {}",
                flags.join(" ")
            )
        } else if line.starts_with("Description=") {
            format!("Description=Zennet node ({})", names.join(", "))
        } else if line.starts_with("StateDirectory") && state_dir.is_none() {
            continue;
        } else if line.starts_with("StateDirectory=") {
            format!("StateDirectory={}", state_dir.unwrap_or_default())
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// `path` as it can stand in ExecStart: absolute, and nothing systemd would
/// split, expand or unquote.
fn unit_path(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("--home {} is not UTF-8", path.display()))?;
    if !path.is_absolute() {
        bail!("--home {s} must be an absolute path for a service");
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c))
    {
        bail!("--home {s} has characters a unit file would change; pick a plainer path");
    }
    let s = s.trim_end_matches('/');
    if s.is_empty() {
        bail!("--home / cannot be a zennet home");
    }
    Ok(s.to_string())
}

pub fn install(opts: InstallOptions, out: Output) -> Result<()> {
    let unit = render(opts.home.as_deref(), opts.roles)?;
    let home_dir = opts
        .home
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOME));
    let path = opts.unit_dir.join(UNIT_NAME);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if existing.as_deref().is_some_and(|e| e != unit) && !opts.force {
        bail!(
            "{} exists with other content; pass --force to replace it",
            path.display()
        );
    }
    let home = Home::locate(Some(home_dir.clone()))?;
    if opts.enable {
        // Starting would only fail in the journal: say it here instead.
        if !home.is_initialized() {
            bail!(
                "{} is not a zennet home yet; run `zennet --home {} init --genesis FILE` \
                 (or `--genesis dev` for a local chain) first",
                home_dir.display(),
                home_dir.display()
            );
        }
        if !Path::new(BIN).exists() {
            bail!("{BIN} is missing; install the zennet binary there first (or use the .deb)");
        }
    }
    let changed = existing.as_deref() != Some(unit.as_str());
    if changed {
        std::fs::create_dir_all(&opts.unit_dir)
            .with_context(|| format!("cannot create {}", opts.unit_dir.display()))?;
        home::write_atomic(&path, unit.as_bytes(), 0o644)?;
    }
    if opts.enable {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
    }
    let note = (!opts.enable && !home.is_initialized()).then(|| {
        format!(
            "before starting it: zennet --home {} init --genesis FILE",
            home_dir.display()
        )
    });
    out.print(
        &json!({
            "unit": path,
            "changed": changed,
            "enabled": opts.enable,
            "note": note,
        }),
        || {
            let mut text = format!(
                "{} {}",
                if changed { "wrote" } else { "unchanged" },
                path.display()
            );
            if opts.enable {
                text.push_str(&format!("\nenabled and started {UNIT_NAME}"));
            }
            if let Some(n) = &note {
                text.push_str(&format!("\nnote: {n}"));
            }
            text
        },
    );
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("cannot run systemctl (is this a systemd machine?)")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_start(unit: &str) -> &str {
        unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap()
    }

    #[test]
    fn as_shipped_by_default() {
        assert_eq!(render(None, Roles::default()).unwrap(), UNIT);
        assert_eq!(
            exec_start(UNIT),
            "ExecStart=/usr/bin/zennet --home /var/lib/zennet node run --provide"
        );
    }

    #[test]
    fn home_and_roles_reach_exec_start() {
        let roles = Roles {
            provide: true,
            mine: true,
            ..Roles::default()
        };
        let unit = render(Some(Path::new("/var/lib/zn2/")), roles).unwrap();
        assert_eq!(
            exec_start(&unit),
            "ExecStart=/usr/bin/zennet --home /var/lib/zn2 node run --provide --mine"
        );
        assert!(unit.contains("\nStateDirectory=zn2\n"));
        assert!(unit.contains("Description=Zennet node (provider, miner)"));

        let unit = render(Some(Path::new("/srv/zennet")), Roles::default()).unwrap();
        assert_eq!(
            exec_start(&unit),
            "ExecStart=/usr/bin/zennet --home /srv/zennet node run --provide"
        );
        assert!(
            !unit.contains("StateDirectory"),
            "no StateDirectory outside /var/lib"
        );
    }

    #[test]
    fn homes_a_unit_file_would_mangle_are_refused() {
        for bad in [
            "relative/home",
            "/srv/my home",
            "/srv/100%",
            "/srv/$HOME",
            "/",
        ] {
            assert!(
                render(Some(Path::new(bad)), Roles::default()).is_err(),
                "{bad}"
            );
        }
    }
}
