//! The real `tern` binary as a child process: start it with a config file, read its log lines,
//! stop it on drop.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// A scratch directory (from `tempfile`) removed on drop; `.0` is its path.
pub struct TempDir(pub PathBuf, tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir =
            tempfile::Builder::new().prefix(&format!("tern-{tag}-")).tempdir().expect("temp dir");
        TempDir(dir.path().to_path_buf(), dir)
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// A port free now (bound and released), for a config that needs a fixed port.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running `tern` whose standard output is read line by line.
pub struct Tern {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Tern {
    /// Starts `tern --config CONFIG` (two shards) with `env`, logs at info.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Tern {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["--config", &config.display().to_string(), "--shards", "2"])
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tern");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx_err.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tern { child, lines: rx }
    }

    /// The next line containing every needle, within 30 s.
    pub fn wait_line(&self, needles: &[&str]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut skipped = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return Some(line),
                Ok(line) => skipped.push(line),
                Err(_) => break,
            }
        }
        // Shown with the failing test's output: what tern said instead (stderr too).
        eprintln!("no line with {needles:?}; tern wrote:\n{}", skipped.join("\n"));
        None
    }

    /// Waits for the "listening" line and returns the MQTT address it names.
    pub fn listening(&self) -> SocketAddr {
        let line = self.wait_line(&["listening", "addr="]).expect("listening line");
        address_in(&line)
    }
}

/// The address after `addr=` in a text log line.
pub fn address_in(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if super::poll_until(Duration::from_secs(5), || self.child.try_wait().ok().flatten())
            .is_some()
        {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tern ARGS` to completion: exit code, stdout, stderr. A run that does not end within
/// 30 s (a broker that started when it should have refused) is killed and reports code -1.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tern");
    let _ = super::poll_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}
