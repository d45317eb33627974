//! The repository stands alone: no tracked file points at documents outside it, and every
//! relative link of its Markdown documents leads to a file or folder inside it.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (`git ls-files`), without build output and the fuzz corpus (arbitrary
/// bytes, where any string may appear by chance).
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "-z"])
        .output()
        .expect(
            "`git` not found on PATH: apt-get install -y git (this test lists the tracked files)",
        );
    assert!(
        out.status.success(),
        "git ls-files failed (is {} a git checkout?): {}",
        root().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| !p.starts_with("target") && !p.starts_with("fuzz/corpus"))
        .collect();
    assert!(
        files.iter().any(|p| p == Path::new("README.md")),
        "git ls-files listed no README.md: {files:?}"
    );
    files
}

/// Names of documents that live outside the repository. Built from pieces so that this file
/// does not match itself.
fn outside_references() -> Vec<String> {
    vec![
        ["..", "/shared"].concat(),
        ["shared", "/DESIGN"].concat(),
        ["seed-", "protocol.md"].concat(),
    ]
}

/// Every `[text](target)` of a Markdown text, outside fenced code blocks and code spans, with
/// its line number.
fn markdown_links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans are text, not links: drop every other backtick-delimited piece.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, piece)| piece)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((n + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    links
}

/// Why a link target found in `doc` does not lead to something in the repository, if it does
/// not. Web addresses are not files and are left alone; anchors are not checked.
fn broken_link(doc: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let path = target.split('#').next().unwrap_or("");
    if path.is_empty() {
        return None;
    }
    if path.starts_with('/') {
        return Some("an absolute path leads outside the repository".into());
    }
    let mut resolved = PathBuf::new();
    for part in doc
        .parent()
        .unwrap_or(Path::new(""))
        .join(path)
        .components()
    {
        match part {
            Component::ParentDir => {
                let true = resolved.pop() else {
                    return Some("it leads outside the repository".into());
                };
            }
            Component::Normal(p) => resolved.push(p),
            _ => {}
        }
    }
    if root().join(&resolved).exists() {
        None
    } else {
        Some(format!("{} does not exist", resolved.display()))
    }
}

#[test]
fn no_tracked_file_refers_to_documents_outside_the_repository() {
    let needles = outside_references();
    let mut found = Vec::new();
    for file in tracked_files() {
        let Ok(bytes) = std::fs::read(root().join(&file)) else {
            continue; // deleted in the work tree but still in the index
        };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            for needle in &needles {
                if line.contains(needle.as_str()) {
                    found.push(format!("{}:{}: {needle}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the repository must stand alone; these lines refer to documents outside it (cite docs/rules.md or docs/protocol.md instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_relative_link_of_the_markdown_documents_leads_to_a_file_of_the_repository() {
    let docs: Vec<PathBuf> = tracked_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    assert!(
        docs.iter().any(|p| p.starts_with("docs")),
        "no tracked document under docs/: {docs:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for (line, target) in markdown_links(&text) {
            checked += 1;
            if let Some(why) = broken_link(doc, &target) {
                broken.push(format!("{}:{line}: ({target}): {why}", doc.display()));
            }
        }
    }
    assert!(
        checked > 0,
        "no links found in {docs:?}: the link parser is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_catches_missing_files_escapes_and_skips_code() {
    let doc = Path::new("docs/example.md");
    let text = "See [rules](rules.md#dialects), [gone](nothing-here.md), [up](../../x.md),\n\
                [abs](/etc/passwd), [web](https://xmpp.org/), `[code](missing.md)`.\n\
                ```\n[fenced](missing.md)\n```\n";
    let links: Vec<String> = markdown_links(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        links,
        [
            "rules.md#dialects",
            "nothing-here.md",
            "../../x.md",
            "/etc/passwd",
            "https://xmpp.org/"
        ]
    );
    assert_eq!(broken_link(doc, "rules.md#dialects"), None);
    assert_eq!(broken_link(doc, "../README.md"), None);
    assert_eq!(broken_link(doc, "../schema/"), None);
    assert_eq!(
        broken_link(doc, "nothing-here.md"),
        Some("docs/nothing-here.md does not exist".into())
    );
    assert_eq!(
        broken_link(doc, "../../x.md"),
        Some("it leads outside the repository".into())
    );
    assert!(broken_link(doc, "/etc/passwd").is_some());
    assert_eq!(broken_link(doc, "https://xmpp.org/"), None);
}
