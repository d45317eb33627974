//! A replay is the stanza that was sent: for every message fixture and every stanza of the
//! fuzz corpus that readtrack logs, the replay minus the markers readtrack adds is the original
//! (minus `to`, which the replay sets, and a forged `<stanza-id by=user>`), compared as XML
//! trees with namespaces resolved, not as strings.

use std::path::{Path, PathBuf};

mod common;

use common::xmltree::{normalised, tree, Node};
use readtrack::jid::Jid;
use readtrack::stanza::original::{stored_form, write_with_markers, Markers};
use readtrack::time::Millis;

const USER: &str = "bob@example.com";

/// The top element without `to`, and without the children `drop` says.
fn without(node: Node, mut drop: impl FnMut(&Node) -> bool) -> Node {
    match node {
        Node::Element {
            ns,
            name,
            attrs,
            children,
        } => Node::Element {
            ns,
            name,
            attrs: attrs
                .into_iter()
                .filter(|(ns, n, _)| !(ns.is_none() && n == "to"))
                .collect(),
            children: children.into_iter().filter(|c| !drop(c)).collect(),
        },
        text => text,
    }
}

fn is(node: &Node, want_ns: &str, want_name: &str) -> bool {
    matches!(node, Node::Element { ns: Some(ns), name, .. } if ns == want_ns && name == want_name)
}

/// A `<stanza-id by=user>`: only the user's server may set one, so the stored form drops it.
fn forged_stanza_id(user: &str) -> impl Fn(&Node) -> bool + '_ {
    move |node| {
        is(node, "urn:xmpp:sid:0", "stanza-id")
            && matches!(node, Node::Element { attrs, .. }
                if attrs.iter().any(|(ns, n, v)| ns.is_none() && n == "by" && v.eq_ignore_ascii_case(user)))
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_logged_fixture_and_corpus_stanza_is_replayed_as_it_was_sent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = files(&root.join("tests/fixtures"));
    inputs.extend(files(&root.join("fuzz/corpus/parse_message")));
    let device = Jid::parse("bob@example.com/phone").unwrap();
    let mut checked = 0;
    for path in inputs {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // binary fuzz inputs
        };
        // A message as a server forwards it names jabber:client; the seed fixtures leave it out.
        let Some(original) = in_client_ns(text.trim()) else {
            continue; // not a <message> element
        };
        let Ok(stored) = stored_form(&original, USER, false) else {
            continue; // readtrack does not log it (and says why)
        };
        let mut replay = String::new();
        write_with_markers(
            &mut replay,
            &stored.text,
            Some(&device),
            &Markers {
                offline: Some(Millis(1)),
                delay: Some(("example.com", Millis(2))),
                stanza_id: Some(("arch-1", USER)),
                request_receipt: true,
            },
        );
        let replayed = tree(&replay);
        // The replay goes to the device.
        let Node::Element { attrs, .. } = &replayed else {
            unreachable!()
        };
        assert!(
            attrs
                .iter()
                .any(|(ns, n, v)| ns.is_none() && n == "to" && v == "bob@example.com/phone"),
            "{}: {replay}",
            path.display()
        );
        // Its last four children are the markers; everything before them is the original.
        let Node::Element { children, .. } = &replayed else {
            unreachable!()
        };
        let markers = &children[children.len() - 4..];
        assert!(is(&markers[0], "urn:xmpp:offline", "offline"));
        assert!(is(&markers[1], "urn:xmpp:delay", "delay"));
        assert!(is(&markers[2], "urn:xmpp:sid:0", "stanza-id"));
        assert!(is(&markers[3], "urn:xmpp:receipts", "request"));
        let marker_count = children.len() - 4;
        let mut index = 0;
        let replayed = without(replayed, |_| {
            index += 1;
            index > marker_count
        });
        let original_tree = without(tree(&original), forged_stanza_id(USER));
        assert_eq!(
            normalised(replayed),
            normalised(original_tree),
            "{}: replay {replay:?} is not the original {original:?}",
            path.display()
        );
        checked += 1;
    }
    // The fixtures alone hold more than a dozen loggable messages: a run that checks few has
    // lost its inputs.
    assert!(checked >= 20, "only {checked} stanzas checked");
}

/// readtrack accepts every message Prosody can serialise, on both lines it supports: random
/// messages (markup characters and quotes in text and attributes, `xml:lang`, every width of
/// UTF-8, nested elements of many namespaces) built and serialised by Prosody's own util.stanza,
/// wrapped as mod_readtrack wraps them, are parsed, logged and replayed as they were.
#[test]
fn every_message_prosodys_serialiser_writes_is_accepted_and_replayed_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = Jid::parse("bob@localhost/phone").unwrap();
    for launcher in [
        PathBuf::from("/usr/bin/prosody"),
        root.join("target/prosody13/usr/bin/prosody"),
    ] {
        let sources = common::prosody_sources(&launcher);
        let out = std::process::Command::new("lua5.4")
            .arg(root.join("tests/prosody_serialised.lua"))
            .arg(&sources)
            .args(["20261202", "500"])
            .output()
            .unwrap_or_else(|e| panic!("lua5.4 ({e}): apt-get install -y lua5.4 (Prosody's Lua)"));
        assert!(
            out.status.success(),
            "{}: {}",
            sources.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let events = String::from_utf8(out.stdout).expect("UTF-8");
        let mut checked = 0;
        for event in events.split('\0').filter(|e| !e.is_empty()) {
            let input = match readtrack::service::from_server(event, "localhost") {
                Ok(readtrack::service::FromServer::Input(input, _)) => *input,
                Ok(_) => panic!("{}: handed back, not logged: {event}", sources.display()),
                Err(e) => panic!("{}: refused ({e}): {event}", sources.display()),
            };
            let readtrack::engine::Input::Routed { original, .. } = input else {
                panic!("not a routed input: {event}");
            };
            // What the engine logs: the stored form cut from the one pass over the event.
            let message_xml = original.text();
            let stored = original
                .stored_form("bob@localhost", false)
                .unwrap_or_else(|e| {
                    panic!("{}: not logged ({e}): {message_xml}", sources.display())
                });
            let mut replay = String::new();
            write_with_markers(
                &mut replay,
                &stored.text,
                Some(&device),
                &Markers {
                    offline: None,
                    delay: None,
                    stanza_id: None,
                    request_receipt: false,
                },
            );
            assert_eq!(
                normalised(without(tree(&replay), |_| false)),
                normalised(without(
                    tree(message_xml),
                    forged_stanza_id("bob@localhost")
                )),
                "{}: {message_xml}",
                sources.display()
            );
            checked += 1;
        }
        assert_eq!(checked, 500, "{}", sources.display());
    }
}

/// `text` with `xmlns="jabber:client"` on its `<message>` start tag where it names no namespace
/// (what does not stand alone is then refused by the stored form, as it would be logged).
fn in_client_ns(text: &str) -> Option<String> {
    let rest = text.strip_prefix("<message")?;
    let tag = &rest[..rest.find('>')?];
    Some(if tag.contains("xmlns=") {
        text.to_string()
    } else {
        format!("<message xmlns=\"jabber:client\"{rest}")
    })
}
