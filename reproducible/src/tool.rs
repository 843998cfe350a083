//! Running a host tool (apt-get, dpkg-deb, tar, make) and reading its answer.

use std::process::Command;

use crate::error::BuildError;

/// Runs `cmd` to completion. A tool that cannot start is an error; one that
/// exits non-zero gives `Err(stderr)` inside, for the caller to name.
pub(crate) fn run(
    tool: &'static str,
    cmd: &mut Command,
) -> Result<Result<String, String>, BuildError> {
    let out = cmd
        .output()
        .map_err(|source| BuildError::Spawn { tool, source })?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    Ok(if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    })
}
