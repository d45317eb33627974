//! The fuzz corpus as tests: every file of `fuzz/corpus/<target>/` (and every fixture) goes
//! through the same check the cargo-fuzz target runs, so CI re-proves on each build what the
//! fuzzer established, without libFuzzer. The checks live in `fuzz/src/lib.rs` and are compiled
//! in here by path: there is one copy of each property.
//!
//! Inputs a fuzzer found to break something are also kept below as named tests with a comment
//! saying what went wrong, so the reason survives a corpus minimisation.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use checks::{check_framer, check_hooks, check_parse_message};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every regular file under `dir`, recursively, sorted so failures are reproducible by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("corpus {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs `check` over the committed corpus of `target` and over the fixtures. Each input must
/// pass and finish quickly: a slow input is a denial of service on the component link, so it
/// counts as a failure too.
fn run_corpus(target: &str, check: fn(&[u8]), min_files: usize) {
    let corpus = files(&root().join("fuzz/corpus").join(target));
    assert!(
        corpus.len() >= min_files,
        "fuzz/corpus/{target} has {} files, expected at least {min_files} (seeded from tests/fixtures)",
        corpus.len()
    );
    let fixtures = files(&root().join("tests/fixtures"));
    assert!(fixtures.len() >= 28, "fixtures missing: {}", fixtures.len());
    for path in corpus.iter().chain(&fixtures) {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-text panic)");
            panic!("{target}: {} fails: {why}", path.display());
        }
        // Generous for a debug build on a shared machine; the inputs are at most a few KiB and
        // the checks are linear apart from the byte-per-push framing.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{target}: {} took {:?}",
            path.display(),
            started.elapsed()
        );
    }
}

#[test]
fn framer_corpus() {
    run_corpus("framer", check_framer, 28);
}

#[test]
fn parse_message_corpus() {
    run_corpus("parse_message", check_parse_message, 28);
}

#[test]
fn hooks_corpus() {
    run_corpus("hooks", check_hooks, 28);
}

/// The committed corpus must stay small enough to live in git and run in CI.
#[test]
fn corpus_is_small() {
    let total: u64 = files(&root().join("fuzz/corpus"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total < 2 * 1024 * 1024, "fuzz/corpus is {total} bytes");
}

/// The checks must be able to fail: a framer that let a stanza over the limit through, or a
/// hook round trip that changed a value, would be caught. Proven here on inputs where the
/// property is known, so a check that silently became a no-op shows up.
#[test]
fn checks_can_fail() {
    let big = format!("split-01<message>{}</message>", "x".repeat(600));
    // Fine with the default limit, refused under the small one: the check accepts both.
    check_framer(big.as_bytes());
    let framed = checks::frame_with_cuts(checks::SMALL, &big.as_bytes()[8..], &[]);
    assert_eq!(framed.end, Ok(()));
    assert_eq!(
        framed.frames,
        vec![readtrack::stanza::Frame::Skipped {
            bytes: big.len() - 8,
            depth: 1
        }]
    );
    // A stream header over the limit still ends the stream.
    let header = format!("<stream:stream a='{}'>", "y".repeat(600));
    let framed = checks::frame_with_cuts(checks::SMALL, header.as_bytes(), &[]);
    assert_eq!(
        framed.end,
        Err(readtrack::stanza::FrameError::TooLarge { limit: 512 })
    );
    // A stanza the framer cut is a piece of the input, byte for byte.
    let framed = checks::frame_with_cuts(
        readtrack::stanza::Limits::default(),
        b"<a/><b x='1'/>",
        &[3],
    );
    assert_eq!(
        framed.frames,
        vec![
            readtrack::stanza::Frame::Stanza("<a/>".into()),
            readtrack::stanza::Frame::Stanza("<b x='1'/>".into())
        ]
    );
}
