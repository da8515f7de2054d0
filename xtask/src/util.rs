//! Shared helpers: workspace paths, child-process construction and execution.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Prefix of the environment variables the gateway reads its configuration from.
pub const GATEWAY_ENV_PREFIX: &str = "SWITCHYARD_";

/// Loopback hosts that must never be sent through an HTTP proxy.
const LOOPBACK_NO_PROXY: &str = "127.0.0.1,localhost,::1";

/// Returns the workspace root: the parent directory of the xtask crate.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask manifest directory has no parent directory")
}

/// Returns cargo's target directory: `$CARGO_TARGET_DIR` when set (made
/// absolute against the current directory, as cargo does), otherwise
/// `<workspace root>/target`.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    match env::var_os("CARGO_TARGET_DIR").filter(|value| !value.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                Ok(dir)
            } else {
                Ok(env::current_dir()
                    .context("cannot determine the current directory")?
                    .join(dir))
            }
        }
        None => Ok(root.join("target")),
    }
}

/// Returns the cargo executable that launched xtask (`$CARGO`), or `cargo`.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Builds a command whose environment has every `SWITCHYARD_*` variable
/// removed, so the developer's shell cannot change what CI or a benchmark sees.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with(GATEWAY_ENV_PREFIX) {
            command.env_remove(&key);
        }
    }
    // A relative target directory is the caller's (see [`target_dir`]): a
    // child run from another directory (the workspace root) gets it whole.
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .filter(|dir| dir.is_relative())
        && let Ok(here) = env::current_dir()
    {
        command.env("CARGO_TARGET_DIR", here.join(dir));
    }
    command
}

/// Like [`clean_command`], and additionally makes sure loopback traffic of
/// the spawned service bypasses any HTTP proxy configured in the environment.
pub fn service_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = clean_command(program);
    // The services' `listening on` line, which says they are ready, is
    // logged at `info`: a `RUST_LOG` of the caller's must not hide it (nor
    // change what the services do per request from one shell to the next).
    command.env("RUST_LOG", "info");
    for key in ["NO_PROXY", "no_proxy"] {
        let value = match env::var(key) {
            Ok(existing) if !existing.trim().is_empty() => {
                format!("{existing},{LOOPBACK_NO_PROXY}")
            }
            _ => LOOPBACK_NO_PROXY.to_owned(),
        };
        command.env(key, value);
    }
    command
}

/// Renders a command line for messages (program and arguments, space separated).
pub fn display_command(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a command to completion with inherited stdio; fails with a message
/// naming `what` when it cannot start or exits unsuccessfully.
pub fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let shown = display_command(command);
    let status = command
        .status()
        .with_context(|| format!("{what}: failed to start `{shown}`"))?;
    if !status.success() {
        match status.code() {
            Some(code) => bail!("{what} failed (`{shown}` exited with status {code})"),
            None => bail!("{what} failed (`{shown}` was terminated by a signal)"),
        }
    }
    Ok(())
}

/// Prints a step header line.
pub fn header(text: &str) {
    println!();
    println!("==> {text}");
}

/// 64-bit FNV-1a hash of `bytes`, rendered as 16 hex digits. Stable across
/// toolchains, which makes it suitable for on-disk stamp files.
pub fn fnv1a_hex(bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes
        .iter()
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// Looks `name` up on `$PATH`, returning the first executable file found.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute permission bit set.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::fnv1a_hex;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a_hex(b""), "cbf29ce484222325");
        assert_eq!(fnv1a_hex(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a_hex(b"foobar"), "85944171f73967e8");
    }
}
