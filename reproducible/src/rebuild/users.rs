//! The accounts the two builds run as: throwaway system users when the
//! check runs as root, or the caller itself (twice) otherwise.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::error::RebuildError;

/// The default build users, created (and removed again) when running as root.
pub(crate) const DEFAULT_USERS: [&str; 2] = ["dstack-rebuild-a", "dstack-rebuild-b"];

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The effective uid of this process (the owner of `/proc/self`).
pub(crate) fn effective_uid() -> Result<u32, RebuildError> {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|source| RebuildError::Spawn {
            tool: "stat /proc/self".into(),
            source,
        })
}

/// Runs `program args`: `Ok(Ok(stdout))`, or `Ok(Err(stderr))` when it
/// exits non-zero.
fn run(program: &str, args: &[&str]) -> Result<Result<String, String>, RebuildError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| RebuildError::Spawn {
            tool: program.into(),
            source,
        })?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    Ok(if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    })
}

fn id_number(flag: &str, name: &str) -> Result<Option<u32>, RebuildError> {
    Ok(run("id", &[flag, "--", name])?
        .ok()
        .and_then(|n| n.parse().ok()))
}

/// The account `name`, if it exists.
pub(crate) fn lookup(name: &str) -> Result<Option<Account>, RebuildError> {
    let (Some(uid), Some(gid)) = (id_number("-u", name)?, id_number("-g", name)?) else {
        return Ok(None);
    };
    Ok(Some(Account {
        name: name.to_owned(),
        uid,
        gid,
    }))
}

/// The account this process runs as.
pub(crate) fn current() -> Result<Account, RebuildError> {
    let uid = effective_uid()?;
    let name = run("id", &["-un"])?.unwrap_or_else(|_| uid.to_string());
    let gid = run("id", &["-g"])?
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(uid);
    Ok(Account { name, uid, gid })
}

/// The users the check creates, removed again when dropped.
#[derive(Debug, Default)]
pub(crate) struct CreatedUsers(Vec<String>);

impl Drop for CreatedUsers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = run("userdel", &[name]);
        }
    }
}

/// `name`, created as a system user without a home or login shell if it
/// does not exist yet (recorded in `created`).
pub(crate) fn ensure_system_user(
    name: &str,
    created: &mut CreatedUsers,
) -> Result<Account, RebuildError> {
    if let Some(account) = lookup(name)? {
        return Ok(account);
    }
    run(
        "useradd",
        &[
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
    )?
    .map_err(|stderr| RebuildError::CreateUser {
        name: name.to_owned(),
        stderr,
    })?;
    created.0.push(name.to_owned());
    lookup(name)?.ok_or_else(|| RebuildError::NoSuchUser {
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_account_is_found_by_name_too() {
        let me = current().unwrap();
        assert_eq!(me.uid, effective_uid().unwrap());
        assert_eq!(lookup(&me.name).unwrap(), Some(me));
        assert_eq!(lookup("dstack-no-such-user-x9").unwrap(), None);
    }
}
