//! `tern passwd`: creates and edits password files, like Mosquitto's `mosquitto_passwd`.
//!
//! ```text
//! tern passwd [-c | -D] [-H sha512-pbkdf2|argon2id|scram-sha-256] [--argon2] [-I ITERATIONS] FILE USER
//! tern passwd [-c] -b [-H sha512-pbkdf2|argon2id|scram-sha-256] [--argon2] [-I ITERATIONS] FILE USER PASSWORD
//! ```
//!
//! - no flag: add USER, or replace its password, in the existing FILE; the password is asked on
//!   the terminal twice, without echo;
//! - `-c`: create FILE (replacing it if it exists) with USER as the only user;
//! - `-b`: batch mode, the password is the last argument (it is then visible to other local
//!   users in the process list: prefer the prompt);
//! - `-D`: delete USER from FILE;
//! - `-H sha512-pbkdf2` (the default) writes `$7$` hashes with
//!   [`PBKDF2_ITERATIONS_DEFAULT`] iterations (`-I` to change), readable by every Mosquitto 2.x;
//!   `-H argon2id` or `--argon2` writes Argon2id with Mosquitto's parameters (readable by
//!   Mosquitto builds with Argon2 support, 2.1 and later). `-H sha512` (Mosquitto 1.x's single
//!   round of SHA-512) is refused: it is read for old files, never written.
//!
//! Unlike `mosquitto_passwd`, comment lines in FILE are kept, and FILE is replaced atomically
//! (a new file written next to it, then renamed over it) with its permissions, so a crash never
//! leaves half a file. A new file is created readable by its owner only (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::password::{
    check_username, PasswordDb, PasswordHash, CREDENTIAL_BYTES_MAX, PBKDF2_ITERATIONS_DEFAULT,
    PBKDF2_ITERATIONS_MAX,
};

const USAGE: &str = "\
usage: tern passwd [-c | -D] [-H sha512-pbkdf2|argon2id|scram-sha-256] [--argon2] [-I ITERATIONS] FILE USER
       tern passwd [-c] -b [-H sha512-pbkdf2|argon2id|scram-sha-256] [--argon2] [-I ITERATIONS] FILE USER PASSWORD

 -b : batch mode: the password is given on the command line
 -c : create FILE, replacing it if it exists
 -D : delete USER instead of setting its password
 -H : hash to write: sha512-pbkdf2 (default, $7$) or argon2id
 --argon2 : same as -H argon2id
 -I : PBKDF2 iterations (default 1000)";

/// Runs `tern passwd` with `args`, the arguments after `passwd`. Reads the password from the
/// terminal unless `-b` is given. Errors are one-line messages for the user (with the usage
/// text for argument errors).
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(cmd) = parse_args(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let password = match (&cmd.action, cmd.password.take_batch()) {
        (Action::Delete, _) => None,
        (_, Some(password)) => Some(password),
        (_, None) => Some(prompt_password()?),
    };
    execute(&cmd, password.as_deref())
}

/// What to do with the user.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// `-c`: a new file with this user only.
    Create,
    /// Add the user or replace its password.
    Update,
    /// `-D`.
    Delete,
}

#[derive(Debug, PartialEq, Eq)]
enum Scheme {
    Pbkdf2 { iterations: u32 },
    Argon2id,
    ScramSha256,
}

/// Where the password comes from.
#[derive(Debug, PartialEq, Eq)]
enum PasswordSource {
    /// `-b`: from the command line.
    Batch(String),
    /// From the terminal.
    Prompt,
    /// Not needed (`-D`).
    None,
}

impl PasswordSource {
    fn take_batch(&self) -> Option<String> {
        match self {
            PasswordSource::Batch(p) => Some(p.clone()),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Command {
    action: Action,
    scheme: Scheme,
    file: PathBuf,
    user: String,
    password: PasswordSource,
}

fn usage_error(message: &str) -> String {
    format!("{message}\n{USAGE}")
}

/// The arguments of `tern passwd`, parsed by clap; [`run_args`] checks the combinations.
#[derive(clap::Args, Debug, Default)]
#[command(after_help = USAGE)]
pub struct PasswdArgs {
    /// Batch mode: the password is given on the command line.
    #[arg(short = 'b')]
    batch: bool,
    /// Create FILE, replacing it if it exists.
    #[arg(short = 'c')]
    create: bool,
    /// Delete USER instead of setting its password.
    #[arg(short = 'D')]
    delete: bool,
    /// Hash to write: sha512-pbkdf2 (default, $7$), argon2id or scram-sha-256.
    #[arg(short = 'H', value_name = "HASH")]
    hash: Option<String>,
    /// Same as -H argon2id.
    #[arg(long)]
    argon2: bool,
    /// PBKDF2 iterations (default 1000).
    #[arg(short = 'I', value_name = "ITERATIONS")]
    iterations: Option<String>,
    /// Mosquitto's "hash a plain-text file": not supported.
    #[arg(short = 'U', hide = true)]
    plain_file: bool,
    /// FILE USER, or FILE USER PASSWORD with -b.
    #[arg(value_name = "FILE USER [PASSWORD]")]
    positional: Vec<String>,
}

/// Runs `tern passwd` with arguments clap already parsed (the `tern` command line).
pub fn run_args(args: PasswdArgs) -> Result<(), String> {
    let cmd = check_args(args)?;
    let password = match (&cmd.action, cmd.password.take_batch()) {
        (Action::Delete, _) => None,
        (_, Some(password)) => Some(password),
        (_, None) => Some(prompt_password()?),
    };
    execute(&cmd, password.as_deref())
}

/// Parses the arguments; `Ok(None)` for `-h`/`--help`.
fn parse_args(args: &[String]) -> Result<Option<Command>, String> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: PasswdArgs,
    }
    use clap::Parser;
    let argv = std::iter::once("tern passwd").chain(args.iter().map(String::as_str));
    match Wrap::try_parse_from(argv) {
        Ok(w) => check_args(w.args).map(Some),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(None),
        Err(e) => Err(e.to_string().trim().to_owned()),
    }
}

/// The rules clap does not express, with the messages `mosquitto_passwd` users expect.
fn check_args(a: PasswdArgs) -> Result<Command, String> {
    let (batch, create, delete) = (a.batch, a.create, a.delete);
    if a.plain_file {
        return Err("-U (hash a plain-text file) is not supported".into());
    }
    let hash = if a.argon2 { Some("argon2id".to_owned()) } else { a.hash };
    let iterations = match a.iterations {
        None => None,
        Some(value) => Some(
            value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=PBKDF2_ITERATIONS_MAX).contains(n))
                .ok_or_else(|| {
                    format!("-I: iterations must be between 1 and {PBKDF2_ITERATIONS_MAX}")
                })?,
        ),
    };
    let positional = a.positional;
    if create && delete {
        return Err(usage_error("-c and -D cannot be used together"));
    }
    if batch && delete {
        return Err(usage_error("-b and -D cannot be used together"));
    }
    let scheme = match hash.as_deref() {
        None | Some("sha512-pbkdf2") => {
            Scheme::Pbkdf2 { iterations: iterations.unwrap_or(PBKDF2_ITERATIONS_DEFAULT) }
        }
        Some("argon2id") if iterations.is_some() => {
            return Err(usage_error("-I applies to sha512-pbkdf2 only"));
        }
        Some("argon2id") => Scheme::Argon2id,
        Some("scram-sha-256") if iterations.is_some() => {
            return Err(usage_error("-I applies to sha512-pbkdf2 only"));
        }
        Some("scram-sha-256") => Scheme::ScramSha256,
        Some("sha512") => {
            return Err("-H sha512 is not written: a single round of SHA-512 is too fast to \
                        resist guessing; use sha512-pbkdf2 (the default) or argon2id"
                .into());
        }
        Some(other) => return Err(usage_error(&format!("unknown hash type {other:?}"))),
    };
    let wanted = if batch { 3 } else { 2 };
    if positional.len() != wanted {
        return Err(usage_error(&format!(
            "expected {} arguments, got {}",
            if batch { "FILE USER PASSWORD" } else { "FILE USER" },
            positional.len()
        )));
    }
    let user = positional[1].clone();
    check_username(&user).map_err(|e| format!("invalid user name: {e}"))?;
    let password = match (batch, delete) {
        (true, _) => PasswordSource::Batch(positional[2].clone()),
        (false, true) => PasswordSource::None,
        (false, false) => PasswordSource::Prompt,
    };
    let action = match (create, delete) {
        (true, _) => Action::Create,
        (_, true) => Action::Delete,
        _ => Action::Update,
    };
    Ok(Command { action, scheme, file: positional[0].clone().into(), user, password })
}

/// Asks for the password twice on the terminal, without echo.
fn prompt_password() -> Result<String, String> {
    let first = rpassword::prompt_password("Password: ")
        .map_err(|e| format!("cannot read the password from the terminal: {e}"))?;
    let second = rpassword::prompt_password("Reenter password: ")
        .map_err(|e| format!("cannot read the password from the terminal: {e}"))?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// Does the work of `cmd` once the password (if any) is known.
fn execute(cmd: &Command, password: Option<&str>) -> Result<(), String> {
    let file = cmd.file.display();
    let mut db = match cmd.action {
        Action::Create => PasswordDb::new(),
        Action::Update | Action::Delete => crate::auth::load_passwords(&cmd.file).map_err(|e| {
            if e.line == 0 {
                format!("{e} (use -c to create a new file)")
            } else {
                e.to_string()
            }
        })?,
    };
    match (&cmd.action, password) {
        (Action::Delete, _) => {
            if !db.remove(&cmd.user) {
                return Err(format!("user {:?} not found in {file}", cmd.user));
            }
        }
        (_, Some(password)) => {
            if password.is_empty() {
                return Err("empty password".into());
            }
            if password.len() > CREDENTIAL_BYTES_MAX {
                return Err(format!("password longer than {CREDENTIAL_BYTES_MAX} bytes"));
            }
            let hash = match cmd.scheme {
                Scheme::Pbkdf2 { iterations } => {
                    PasswordHash::new_pbkdf2_sha512(password.as_bytes(), iterations)
                }
                Scheme::Argon2id => PasswordHash::new_argon2id(password.as_bytes()),
                Scheme::ScramSha256 => PasswordHash::new_scram_sha256(password.as_bytes()),
            }
            .map_err(|e| format!("cannot hash the password: {e}"))?;
            db.upsert(&cmd.user, hash).map_err(|e| format!("invalid user name: {e}"))?;
        }
        (_, None) => return Err("no password given".into()),
    }
    write_atomically(&cmd.file, &db.to_file_string())
}

/// Replaces `path` with `text`: writes a temporary file in the same directory (mode 0600, or the
/// existing file's mode), flushes it to disk and renames it over `path`. A symbolic link is
/// followed, so the file it points to is replaced, not the link.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let target = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let existing = std::fs::metadata(&target).ok();
    let name = target.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tern-passwd.{}", std::process::id()));
    let tmp = target.with_file_name(tmp_name);
    let result =
        write_new_file(&tmp, text, existing.as_ref()).and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = result {
        // Best effort: the temporary file is useless now; the original is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", target.display()));
    }
    Ok(())
}

fn write_new_file(
    tmp: &Path,
    text: &str,
    existing: Option<&std::fs::Metadata>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    if let Some(meta) = existing {
        // Keep who may read the file (e.g. root:mosquitto 0640). Changing the owner needs
        // privileges we may not have; a file we cannot give back is still ours and 0600 at most.
        if std::os::unix::fs::chown(tmp, Some(meta.uid()), Some(meta.gid())).is_ok() {
            file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn parse(list: &[&str]) -> Result<Command, String> {
        parse_args(&args(list)).map(|c| c.expect("not help"))
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("tern-passwd-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn argument_parsing() {
        let c = parse(&["-c", "-b", "pw", "alice", "s3cret"]).expect("ok");
        assert_eq!((c.action, c.user.as_str()), (Action::Create, "alice"));
        assert_eq!(c.password, PasswordSource::Batch("s3cret".into()));
        assert_eq!(c.scheme, Scheme::Pbkdf2 { iterations: PBKDF2_ITERATIONS_DEFAULT });
        let c = parse(&["pw", "alice"]).expect("ok");
        assert_eq!((c.action, c.password), (Action::Update, PasswordSource::Prompt));
        let c = parse(&["-D", "pw", "alice"]).expect("ok");
        assert_eq!((c.action, c.password), (Action::Delete, PasswordSource::None));
        let c = parse(&["--argon2", "-b", "pw", "a", "p"]).expect("ok");
        assert_eq!(c.scheme, Scheme::Argon2id);
        let c = parse(&["-H", "argon2id", "pw", "a"]).expect("ok");
        assert_eq!(c.scheme, Scheme::Argon2id);
        let c = parse(&["-I", "5000", "-H", "sha512-pbkdf2", "pw", "a"]).expect("ok");
        assert_eq!(c.scheme, Scheme::Pbkdf2 { iterations: 5000 });
        // `--` ends the options, so a user named "-x" can be given.
        assert_eq!(parse(&["--", "pw", "-x"]).map(|c| c.user), Ok("-x".to_owned()));
        assert!(parse_args(&args(&["--help"])).expect("help").is_none());

        let refused = [
            (&["-c", "-D", "pw", "a"][..], "-c and -D"),
            (&["-b", "-D", "pw", "a", "p"][..], "-b and -D"),
            (&["pw"][..], "expected FILE USER"),
            (&["-b", "pw", "a"][..], "expected FILE USER PASSWORD"),
            (&["pw", "a", "extra"][..], "expected FILE USER"),
            (&["-x", "pw", "a"][..], "unexpected argument '-x'"),
            (&["-H", "md5", "pw", "a"][..], "unknown hash type"),
            (&["-H", "sha512", "pw", "a"][..], "is not written"),
            (&["-H"][..], "a value is required for '-H <HASH>'"),
            (&["-I", "0", "pw", "a"][..], "iterations must be between"),
            (&["-I", "many", "pw", "a"][..], "iterations must be between"),
            (&["-I", "5", "--argon2", "pw", "a"][..], "sha512-pbkdf2 only"),
            (&["pw", ""][..], "empty user name"),
            (&["pw", "a:b"][..], "contains ':'"),
            (&["-U", "pw"][..], "not supported"),
        ];
        for (list, want) in refused {
            let e = parse(list).expect_err(&format!("{list:?}"));
            assert!(e.contains(want), "{list:?}: {e}");
        }
    }

    #[test]
    fn create_update_delete() {
        let dir = TempDir::new("cud");
        let file = dir.0.join("passwd");
        let f = file.to_str().expect("utf-8 path");
        run(&args(&["-c", "-b", f, "alice", "one"])).expect("create");
        let db = crate::auth::load_passwords(&file).expect("load");
        assert!(db.check("alice", Some(b"one")) && db.len() == 1);
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(text.starts_with("alice:$7$1000$") && text.ends_with('\n'), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Comments survive an update; the mode of the existing file is kept.
        std::fs::write(&file, format!("# users\n{text}")).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        run(&args(&["-b", "-I", "7", f, "bob", "two"])).expect("add bob");
        run(&args(&["-b", f, "alice", "three"])).expect("update alice");
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(text.starts_with("# users\nalice:$7$1000$"), "{text}");
        assert!(text.contains("\nbob:$7$7$"), "{text}");
        let db = crate::auth::load_passwords(&file).expect("load");
        assert!(db.check("alice", Some(b"three")) && !db.check("alice", Some(b"one")));
        assert!(db.check("bob", Some(b"two")));
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);

        run(&args(&["-D", f, "alice"])).expect("delete");
        let db = crate::auth::load_passwords(&file).expect("load");
        assert!(!db.contains("alice") && db.contains("bob"));
        let e = run(&args(&["-D", f, "alice"])).expect_err("already gone");
        assert!(e.contains("not found"), "{e}");

        // -c replaces the file.
        run(&args(&["-c", "-b", f, "carol", "four"])).expect("recreate");
        let db = crate::auth::load_passwords(&file).expect("load");
        assert!(db.contains("carol") && db.len() == 1);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir.0).expect("dir").collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn errors_leave_the_file_alone() {
        let dir = TempDir::new("err");
        let file = dir.0.join("passwd");
        let f = file.to_str().expect("utf-8 path");
        let e = run(&args(&["-b", f, "alice", "x"])).expect_err("no file");
        assert!(e.contains("cannot read") && e.contains("use -c"), "{e}");
        let e = run(&args(&["-c", "-b", f, "alice", ""])).expect_err("empty password");
        assert!(e.contains("empty password"), "{e}");
        assert!(!file.exists());

        std::fs::write(&file, "alice:$7$x\n").expect("write");
        let e = run(&args(&["-b", f, "bob", "x"])).expect_err("malformed file");
        assert!(e.contains(":1: "), "{e}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "alice:$7$x\n");
    }

    #[test]
    fn symlinks_are_followed() {
        let dir = TempDir::new("link");
        let real = dir.0.join("real");
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        std::fs::write(&real, "").expect("write");
        let l = link.to_str().expect("utf-8 path");
        run(&args(&["-b", l, "alice", "x"])).expect("update through link");
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink());
        assert!(crate::auth::load_passwords(&real).expect("load").contains("alice"));
    }
}
