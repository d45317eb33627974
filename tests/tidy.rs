//! The layering ARCHITECTURE.md promises, checked on the source: the engine, the stanza code
//! and the hook vocabulary are sans-IO. They never open a socket, never read the clock (time is
//! an argument) and never name a sled type (only `store` touches the database). A use of any of
//! these in `src/engine`, `src/stanza` or `src/hooks.rs` fails here, naming the file and line.

use std::path::{Path, PathBuf};

/// What sans-IO code must not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("sled::", "only src/store touches sled"),
    ("postgres::", "only src/store touches PostgreSQL"),
    (
        "std::net",
        "only src/component, src/admin and src/metrics open sockets",
    ),
    (
        "tokio::net",
        "only src/component, src/admin and src/metrics open sockets",
    ),
    ("UnixStream", "only src/admin opens the admin socket"),
    ("TcpStream", "only src/component opens the component link"),
    (
        "SystemTime::now",
        "time is passed in (service and main read the clock)",
    ),
    (
        "Instant::now",
        "time is passed in (service and main read the clock)",
    ),
    (
        "Millis::now",
        "time is passed in (service and main read the clock)",
    ),
    ("std::fs", "files are the store's and main's"),
    ("tokio::", "the engine and the stanza code are synchronous"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: what comes before a `//` comment (a comment may name anything).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

#[test]
fn engine_and_stanza_never_touch_sockets_the_clock_or_sled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src/engine", "src/stanza"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.push(root.join("src/hooks.rs"));
    assert!(files.len() >= 8, "the layout moved: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests at the end of a file may read their fixtures.
        let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]");
        for (n, line) in lines.enumerate() {
            for (needle, why) in FORBIDDEN {
                if code(line).contains(needle) {
                    found.push(format!(
                        "{}:{}: {needle} ({why}): {}",
                        file.strip_prefix(root).unwrap_or(file).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "sans-IO code reaches out:\n{}",
        found.join("\n")
    );
}

/// The check itself finds what it looks for, and lets comments say anything.
#[test]
fn the_tidy_check_sees_code_not_comments() {
    assert!(code("let db = sled::open(p); // sled").contains("sled::"));
    assert!(!code("    // sled::open would be wrong here").contains("sled::"));
}
