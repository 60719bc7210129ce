//! The core's boundary, checked on its sources: no source names a socket, file, thread or task
//! waker API, or the IO crates, and the manifest depends on none of those crates. (The clock is
//! clippy's job: `clippy.toml` bans `Instant::now` and `SystemTime::now`.)

use std::path::{Path, PathBuf};

/// Names a core source must not contain outside comments.
const FORBIDDEN: &[&str] = &["std::net", "std::fs", "std::thread", "Waker", "glommio", "rustls"];

/// Crates the core must not depend on.
const FORBIDDEN_DEPS: &[&str] = &["glommio", "rustls", "futures-rustls", "socket2", "signal-hook"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of one line: what comes before a `//` comment. A `//` inside a string literal
/// cuts the line short, which can only hide a name, never invent one; no core source has one
/// before a forbidden name.
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

#[test]
fn core_sources_name_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            for name in FORBIDDEN {
                if code(line).contains(name) {
                    found.push(format!("{}:{}: {name}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core names IO:\n{}", found.join("\n"));
}

#[test]
fn core_manifest_has_no_io_dependency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
    for line in manifest.lines().map(code).map(str::trim) {
        let Some((key, _)) = line.split_once('=') else { continue };
        let key = key.trim();
        assert!(!FORBIDDEN_DEPS.contains(&key), "the core depends on {key}");
    }
}

/// The checker itself: a forbidden name in code is found, one in a comment is not.
#[test]
fn the_check_sees_code_and_skips_comments() {
    assert!(code("use std::net::TcpStream;").contains("std::net"));
    assert!(!code("//! no glommio here").contains("glommio"));
    assert!(code("let w: Waker; // a waker").contains("Waker"));
}
