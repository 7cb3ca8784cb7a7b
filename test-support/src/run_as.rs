//! Running the server as the `postgres` OS user when the tests run as root: PostgreSQL refuses
//! to run as root, so every server command (and the watchdog's `pg_ctl stop`) goes through
//! `runuser` (or `su`), and the server's directory is given to that user.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs};

use crate::PG_URL_ENV;
use crate::watchdog::sh_quote;

/// The OS user that runs the server when the tests run as root.
pub(crate) const OS_USER: &str = "postgres";

/// How server commands are run: directly, or as the `postgres` OS user when we are root.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
    CurrentUser,
    Runuser {
        runuser: PathBuf,
        uid: u32,
        gid: u32,
    },
    Su {
        su: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    pub(crate) fn detect() -> RunAs {
        if current_uid() != Some(0) {
            return RunAs::CurrentUser;
        }
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, OS_USER]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
            panic!(
                "the tests run as root, but PostgreSQL refuses to run as root and there is no \
                 `{OS_USER}` OS user to run it as. Create it (useradd --system {OS_USER}), run the \
                 tests as an ordinary user, or set {PG_URL_ENV}=postgres://user@host:port/db to \
                 a server whose user can CREATE DATABASE."
            )
        };
        if let Some(runuser) = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        {
            return RunAs::Runuser { runuser, uid, gid };
        }
        if let Some(su) = find_program("su", &["/usr/bin", "/bin"]) {
            return RunAs::Su { su, uid, gid };
        }
        panic!(
            "the tests run as root and must start PostgreSQL as the `{OS_USER}` OS user, but \
             neither `runuser` nor `su` was found (Debian: apt-get install util-linux login)"
        )
    }

    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser => Command::new(program),
            RunAs::Runuser { runuser, .. } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", OS_USER, "--"]).arg(program);
                cmd
            }
            RunAs::Su { su, .. } => {
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "-c", "exec \"$0\" \"$@\"", "--", OS_USER])
                    .arg(program);
                cmd
            }
        };
        cmd.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        cmd
    }

    /// Shell words to put in front of a command in a shell script, to run it as the server user.
    pub(crate) fn shell_prefix(&self) -> Vec<String> {
        match self {
            RunAs::CurrentUser => Vec::new(),
            RunAs::Runuser { runuser, .. } => vec![
                sh_quote(runuser.as_os_str()),
                "-u".to_owned(),
                OS_USER.to_owned(),
                "--".to_owned(),
            ],
            RunAs::Su { su, .. } => vec![
                sh_quote(su.as_os_str()),
                "-s /bin/sh -c".to_owned(),
                sh_quote(OsStr::new("exec \"$0\" \"$@\"")),
                "--".to_owned(),
                OS_USER.to_owned(),
            ],
        }
    }

    /// Makes `dir` usable by the server user.
    pub(crate) fn prepare_dir(&self, dir: &Path) {
        if let RunAs::Runuser { uid, gid, .. } | RunAs::Su { uid, gid, .. } = self {
            std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).unwrap_or_else(|e| {
                panic!("cannot give {} to the {OS_USER} user: {e}", dir.display())
            });
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
            // The server user must be able to reach the directory.
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor {
                let mode = fs::metadata(a).map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o001 == 0 {
                    panic!(
                        "the {OS_USER} OS user cannot reach {} because {} is not searchable by \
                         others (mode {mode:o}): point TMPDIR at a directory such as /tmp",
                        dir.display(),
                        a.display()
                    );
                }
                ancestor = a.parent();
            }
        }
    }
}

pub(crate) fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

pub(crate) fn current_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::run;

    #[test]
    fn server_commands_run_as_the_postgres_user_when_root() {
        let expected = if current_uid() == Some(0) {
            OS_USER.to_owned()
        } else {
            let out = Command::new("id").arg("-un").output().expect("run id -un");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let detected = RunAs::detect();
        let mut variants = vec![detected.clone()];
        if let RunAs::Runuser { uid, gid, .. } = detected
            && let Some(su) = find_program("su", &["/usr/bin", "/bin"])
        {
            variants.push(RunAs::Su { su, uid, gid });
        }
        for run_as in variants {
            let out = run(run_as.command(Path::new("/bin/sh")).args([
                "-c",
                r#"id -un; printf '%s\n' "$1""#,
                "sh",
                "-x 'y'",
            ]))
            .unwrap_or_else(|e| panic!("{run_as:?}: {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout, format!("{expected}\n-x 'y'\n"), "{run_as:?}");

            let script = run_as
                .shell_prefix()
                .into_iter()
                .chain(["/bin/sh -c 'id -un'".to_owned()])
                .collect::<Vec<_>>()
                .join(" ");
            let out = run(Command::new("/bin/sh").args(["-c", &script]))
                .unwrap_or_else(|e| panic!("{run_as:?}: {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.trim(), expected, "{run_as:?}");
        }
    }
}
