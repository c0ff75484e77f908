//! Running the host's tools (apt, dpkg, mke2fs, debugfs), each of which
//! `images/HOST-PACKAGES` installs.

use std::process::{Command, Output};

use tracing::debug;

use crate::error::ImageError;

/// Runs a command to completion, turning a failure into an error that
/// carries the command line and its stderr.
pub(crate) fn run(command: &mut Command) -> Result<Output, ImageError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let line = std::iter::once(program.clone())
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    debug!(command = %line, "running");
    let output = command
        .output()
        .map_err(|source| ImageError::ToolMissing { program, source })?;
    if !output.status.success() {
        return Err(ImageError::ToolFailed {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}
