//! Everything `write.rs` produces, and the seed fixtures, validate against schema/seed-dialect.xsd.

mod common;

use common::jid;
use std::path::{Path, PathBuf};
use std::process::Command;

use readtrack::stanza::write::outgoing;
use readtrack::stanza::{Message, MessageType, Outgoing, Replay};
use readtrack::time::Millis;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs xmllint on one file: Ok on "validates", Err(xmllint's output) otherwise.
fn xmllint(file: &Path) -> Result<(), String> {
    let schema = root().join("schema/seed-dialect.xsd");
    let output = match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .arg(file)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("xmllint not found: install libxml2-utils (apt-get install -y libxml2-utils)")
        }
        Err(e) => panic!("running xmllint: {e}"),
    };
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() && text.contains("validates") {
        Ok(())
    } else {
        Err(text)
    }
}

fn validate_text(name: &str, xml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, xml).unwrap();
    xmllint(&file)
}

fn t(s: &str) -> Millis {
    Millis::parse_rfc3339(s).unwrap()
}

fn replay(all_options: bool) -> Replay {
    Replay {
        to: jid("bob@example.com/Spark 2.6.3#android"),
        stored: {
            let mut m = Message::new(MessageType::Chat);
            m.from = Some(jid("alice@example.com/Spark 2.6.3"));
            m.id = Some("HncqL-65".into());
            m.body = Some(r#"{"time":"2013-12-25T14:25:43.963Z","sd":"<&>"}"#.into());
            m.thread = all_options.then(|| "P2J5R2".into());
            readtrack::stanza::original::stored_form(
                &readtrack::stanza::write::client_message(&m),
                "bob@example.com",
                false,
            )
            .unwrap()
            .text
        },
        logged_at: t("2013-12-25T06:20:00.000Z"),
        stanza_id: "01936f1e-7c1a-7000-8000-000000000001".into(),
        stanza_id_by: "bob@example.com".into(),
        offline_marker: all_options,
        delay_from: all_options.then(|| "example.com".into()),
        now: t("2013-12-25T06:26:45.501Z"),
        request_receipt: all_options,
    }
}

fn every_outgoing() -> Vec<(&'static str, Outgoing)> {
    vec![
        (
            "ack.xml",
            Outgoing::ServerAck {
                from: "example.com".into(),
                to: jid("alice@example.com/Spark 2.6.3"),
                id: "V4NkR-38".into(),
                time: t("2013-11-20T06:42:23.761Z"),
            },
        ),
        (
            "bounce.xml",
            Outgoing::Bounce {
                from: "example.com".into(),
                to: jid("alice@example.com/Spark 2.6.3"),
                id: "V4NkR-38".into(),
                body: Some(r#"{"cnt":"hello"}"#.into()),
                time: t("2013-11-20T07:05:44.445Z"),
            },
        ),
        (
            "bounce-no-body.xml",
            Outgoing::Bounce {
                from: "example.com".into(),
                to: jid("alice@example.com/a"),
                id: "x".into(),
                body: None,
                time: t("2013-11-20T07:05:44.445Z"),
            },
        ),
        ("replay-all.xml", Outgoing::Replay(replay(true))),
        ("replay-bare.xml", Outgoing::Replay(replay(false))),
        (
            "carbon.xml",
            Outgoing::SentCarbon {
                from: jid("bob@example.com/laptop"),
                to: jid("bob@example.com/phone"),
                inner: replay(true),
            },
        ),
        (
            "carbon-bare.xml",
            Outgoing::SentCarbon {
                from: jid("bob@example.com/laptop"),
                to: jid("bob@example.com/phone"),
                inner: replay(false),
            },
        ),
    ]
}

#[test]
fn every_outgoing_stanza_validates() {
    for (name, out) in every_outgoing() {
        let xml = outgoing(&out);
        assert_eq!(validate_text(name, &xml), Ok(()), "{name}: {xml}");
    }
}

#[test]
fn seed_protocol_fixtures_validate() {
    let fixtures = [
        "seed-chat.xml",
        "seed-server-ack.xml",
        "seed-receipt-text.xml",
        "seed-receipt-attr.xml",
        "seed-bounce.xml",
        "seed-offline-replay.xml",
        "seed-offline-ack.xml",
        "seed-system-message.xml",
        "seed-system-receipt.xml",
        "xep0184-received.xml",
        "xep0333-displayed.xml",
        "replay-full.xml",
    ];
    for name in fixtures {
        let file = root().join("tests/fixtures").join(name);
        assert_eq!(xmllint(&file), Ok(()), "{name}");
    }
}

/// XEP-0203's own example: a delay may carry a natural-language description as text.
#[test]
fn a_delay_with_a_description_validates_as_xep_0203_writes_it() {
    let xml = r#"<message from="romeo@montague.net/orchard" to="juliet@capulet.com" type="chat"><body>O blessed, blessed night!</body><delay xmlns="urn:xmpp:delay" from="capulet.com" stamp="2002-09-10T23:08:25Z">Offline Storage</delay></message>"#;
    assert_eq!(validate_text("xep0203-example.xml", xml), Ok(()));
}

/// The schema is not a rubber stamp: each of these breaks one rule of the dialect.
#[test]
fn schema_rejects_what_the_dialect_forbids() {
    let bad = [
        r#"<message type="bogus"/>"#,
        r#"<message><received xmlns="urn:xmpp:receipts">OK</received></message>"#,
        r#"<message><received xmlns="urn:xmpp:receipts" type="2000"/></message>"#,
        r#"<message><offline xmlns="urn:xmpp:offline" current="yesterday"/></message>"#,
        r#"<message><delay xmlns="urn:xmpp:delay" stamp="yesterday"/></message>"#,
        r#"<message><stanza-id xmlns="urn:xmpp:sid:0" id="x"/></message>"#,
        r#"<message><displayed xmlns="urn:xmpp:chat-markers:0"/></message>"#,
        // The forwarded message must be jabber:client, not unqualified.
        r#"<message><sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0"><message xmlns=""/></forwarded></sent></message>"#,
        r#"<message xmlns="urn:example:other"/>"#,
    ];
    for (i, xml) in bad.iter().enumerate() {
        assert!(
            validate_text(&format!("bad-{i}.xml"), xml).is_err(),
            "schema accepted {xml}"
        );
    }
}
