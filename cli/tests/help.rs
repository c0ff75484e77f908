//! The built binary answers `--help` with every command the README names,
//! and refuses an unknown argument with exit code 2 and a reason.
//!
//! Being an integration test of this package, it also makes `cargo test
//! --workspace` build `target/debug/zennet` with the test build's features:
//! `scripts/test.sh` points the end-to-end tests at that binary
//! (`ZENNET_BIN`), so CI builds the workspace once, not a second time with
//! `zennet-cli`'s features alone.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_zennet");

#[test]
fn help_lists_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in [
        "init",
        "node",
        "wallet",
        "chain",
        "id",
        "bench",
        "image",
        "agent",
        "task",
        "vm",
        "app",
        "job",
        "fs",
        "dashboard",
        "devnet",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`zennet --help` does not list `{command}`:\n{help}"
        );
    }
}

#[test]
fn an_unknown_argument_is_refused_with_a_reason() {
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.lines()
            .next()
            .is_some_and(|l| l.contains("unexpected argument '--bogus'")),
        "{err}"
    );
}
