//! The stanza codec: fixtures to typed values, round trips, exact error texts, and the framer
//! under every way of chunking its input.

mod common;

use common::jid;
use std::path::PathBuf;

use proptest::prelude::*;
use readtrack::jid::Jid;
use readtrack::stanza::write::{message as write_message, outgoing};
use readtrack::stanza::*;
use readtrack::time::Millis;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn all_fixtures() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    names.sort();
    assert!(names.len() >= 19, "fixtures missing: {names:?}");
    names
}

fn t(s: &str) -> Millis {
    Millis::parse_rfc3339(s).unwrap()
}

/// Pushes the chunks in order, draining frames after each push, as a connection would.
fn frame_chunks<'a>(
    limits: Limits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Frame>, FrameError> {
    let mut framer = Framer::new(limits);
    let mut frames = Vec::new();
    for chunk in chunks {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame()? {
            frames.push(frame);
        }
    }
    Ok(frames)
}

fn frame_all(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
    frame_chunks(Limits::default(), [input])
}

/// The framer result is the same for one push, one byte per push, and every split in two.
fn frame_every_way(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let whole = frame_all(input);
    let bytewise = frame_chunks(Limits::default(), input.chunks(1));
    assert_eq!(bytewise, whole, "byte by byte differs");
    for cut in 0..=input.len() {
        let split = frame_chunks(Limits::default(), [&input[..cut], &input[cut..]]);
        assert_eq!(split, whole, "split at {cut} differs");
    }
    whole
}

fn only_stanza(name: &str) -> String {
    let text = fixture(name);
    let frames = frame_every_way(text.as_bytes()).unwrap();
    let start = text.find("<message ").unwrap();
    assert_eq!(
        frames,
        vec![Frame::Stanza(text[start..].trim_end().to_string())]
    );
    match frames.into_iter().next() {
        Some(Frame::Stanza(s)) => s,
        other => panic!("{other:?}"),
    }
}

fn parse_fixture(name: &str) -> Message {
    let stanza = only_stanza(name);
    let msg = parse_message(&stanza).unwrap();
    // Every parsed fixture survives write + parse unchanged.
    assert_eq!(parse_message(&write_message(&msg)).unwrap(), msg, "{name}");
    msg
}

const CHAT_BODY: &str =
    r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#;

#[test]
fn seed_chat() {
    let mut want = Message::new(MessageType::Chat);
    want.id = Some("V4NkR-38".into());
    want.from = Some(jid("alice@example.com/Spark 2.6.3"));
    want.to = Some(jid("bob@example.com/Spark 2.6.3"));
    want.body = Some(CHAT_BODY.into());
    want.thread = Some("P2J5R2".into());
    assert_eq!(parse_fixture("seed-chat.xml"), want);
}

#[test]
fn seed_server_ack() {
    let mut want = Message::new(MessageType::Crs);
    want.id = Some("V4NkR-38".into());
    want.from = Some(jid("example.com"));
    want.to = Some(jid("alice@example.com/Spark 2.6.3"));
    want.body = Some(r#"{"time":"2013-11-20T06:42:23.761Z","msgType":"10013"}"#.into());
    assert_eq!(parse_fixture("seed-server-ack.xml"), want);
}

#[test]
fn seed_receipts_text_and_attribute_forms() {
    for name in ["seed-receipt-text.xml", "seed-receipt-attr.xml"] {
        let mut want = Message::new(MessageType::Crs);
        want.id = Some("V4NkR-38".into());
        want.from = Some(jid("bob@example.com/Spark 2.6.3"));
        want.to = Some(jid("example.com"));
        want.receipt = Some(Receipt::SeedReceived {
            id: "V4NkR-38".into(),
            status: "200".into(),
        });
        assert_eq!(parse_fixture(name), want, "{name}");
    }
}

#[test]
fn seed_bounce() {
    let mut want = Message::new(MessageType::Error);
    want.id = Some("V4NkR-38".into());
    want.from = Some(jid("example.com"));
    want.to = Some(jid("alice@example.com/Spark 2.6.3"));
    want.body = Some(CHAT_BODY.into());
    want.delay = Some(Delay {
        stamp: None,
        from: None,
        current: Some(t("2013-11-20T07:05:44.445Z")),
        code: Some("501".into()),
    });
    assert_eq!(parse_fixture("seed-bounce.xml"), want);
}

#[test]
fn seed_offline_replay_is_not_a_receipt() {
    let mut want = Message::new(MessageType::Chat);
    want.id = Some("HncqL-65".into());
    want.from = Some(jid("alice@example.com/Spark 2.6.3"));
    want.to = Some(jid("bob@example.com"));
    want.body = Some(r#"{"time":"2013-12-25T14:25:43.963Z","sd":"sd"}"#.into());
    want.offline = Some(Some(t("2013-12-25T06:26:45.501Z")));
    assert_eq!(parse_fixture("seed-offline-replay.xml"), want);
}

#[test]
fn seed_offline_ack() {
    let mut want = Message::new(MessageType::Crs);
    want.id = Some("HncqL-65".into());
    want.from = Some(jid("bob@example.com/Spark 2.6.3#android"));
    want.to = Some(jid("example.com"));
    want.offline = Some(None);
    want.receipt = Some(Receipt::SeedOffline {
        id: "HncqL-65".into(),
    });
    assert_eq!(parse_fixture("seed-offline-ack.xml"), want);
}

#[test]
fn seed_system_message_and_its_chat_typed_receipt() {
    let mut want = Message::new(MessageType::Normal);
    want.id = Some("gJE6T-2".into());
    want.from = Some(jid("example.com"));
    want.to = Some(jid("carol@example.com"));
    want.body = Some(
        r#"{"optType":"add","groupId":"room100","groupName":"Room 100","admin":"600788","msgType":10001}"#
            .into(),
    );
    assert_eq!(parse_fixture("seed-system-message.xml"), want);

    let mut want = Message::new(MessageType::Chat);
    want.id = Some("gJE6T-2".into());
    want.from = Some(jid("carol@example.com/phone"));
    want.to = Some(jid("example.com"));
    want.receipt = Some(Receipt::SeedReceived {
        id: "gJE6T-2".into(),
        status: "200".into(),
    });
    assert_eq!(parse_fixture("seed-system-receipt.xml"), want);
}

#[test]
fn xep0184_receipt_in_jabber_client_namespace() {
    let mut want = Message::new(MessageType::Normal);
    want.id = Some("bi29sg183b4v".into());
    want.from = Some(jid("bob@example.com/phone"));
    want.to = Some(jid("alice@example.com/laptop"));
    want.receipt = Some(Receipt::Xep0184 {
        id: "richard2-4.1.247".into(),
    });
    assert_eq!(parse_fixture("xep0184-received.xml"), want);
}

#[test]
fn xep0333_displayed() {
    let mut want = Message::new(MessageType::Chat);
    want.id = Some("m-7".into());
    want.from = Some(jid("bob@example.com/phone"));
    want.to = Some(jid("alice@example.com"));
    want.displayed = Some("message-5".into());
    assert_eq!(parse_fixture("xep0333-displayed.xml"), want);
}

fn replayed_message() -> Message {
    let mut m = Message::new(MessageType::Chat);
    m.id = Some("HncqL-65".into());
    m.from = Some(jid("alice@example.com/Spark 2.6.3"));
    m.to = Some(jid("bob@example.com"));
    m.body = Some(r#"{"time":"2013-12-25T14:25:43.963Z","sd":"sd"}"#.into());
    m.thread = Some("P2J5R2".into());
    m
}

/// `message` as readtrack logs it for bob (`sent`: bob sent it, so it keeps its `to`).
fn stored(message: &Message, sent: bool) -> String {
    readtrack::stanza::original::stored_form(
        &write::client_message(message),
        "bob@example.com",
        sent,
    )
    .unwrap()
    .text
}

fn full_replay() -> Replay {
    Replay {
        to: jid("bob@example.com/Spark 2.6.3#android"),
        stored: stored(&replayed_message(), false),
        logged_at: t("2013-12-25T06:20:00.000Z"),
        stanza_id: "01936f1e-7c1a-7000-8000-000000000001".into(),
        stanza_id_by: "bob@example.com".into(),
        offline_marker: true,
        delay_from: Some("example.com".into()),
        now: t("2013-12-25T06:26:45.501Z"),
        request_receipt: true,
    }
}

/// What a replay of `message` to `to` with these markers parses as.
fn replay_as_parsed(message: &Message, r: &Replay) -> Message {
    let mut want = message.clone();
    want.to = Some(r.to.clone());
    want.offline = r.offline_marker.then_some(Some(r.now));
    want.delay = r.delay_from.as_ref().map(|from| Delay {
        stamp: Some(r.logged_at),
        from: Some(from.clone()),
        current: None,
        code: None,
    });
    want.stanza_ids = vec![StanzaId {
        id: r.stanza_id.clone(),
        by: r.stanza_id_by.clone(),
    }];
    want.receipt_request = r.request_receipt;
    want
}

#[test]
fn replay_with_every_marker_is_written_exactly_and_parses_back() {
    let replay = full_replay();
    let text = outgoing(&Outgoing::Replay(replay.clone()));
    assert_eq!(text, fixture("replay-full.xml").trim_end());
    let want = replay_as_parsed(&replayed_message(), &replay);
    assert_eq!(parse_fixture("replay-full.xml"), want);
    assert_eq!(parse_message(&text).unwrap(), want);
}

#[test]
fn replay_without_markers_is_the_stored_stanza_with_its_id() {
    let replay = Replay {
        offline_marker: false,
        delay_from: None,
        request_receipt: false,
        ..full_replay()
    };
    assert_eq!(
        outgoing(&Outgoing::Replay(replay)),
        r#"<message to="bob@example.com/Spark 2.6.3#android" xmlns="jabber:client" id="HncqL-65" type="chat" from="alice@example.com/Spark 2.6.3"><body>{"time":"2013-12-25T14:25:43.963Z","sd":"sd"}</body><thread>P2J5R2</thread><stanza-id xmlns="urn:xmpp:sid:0" id="01936f1e-7c1a-7000-8000-000000000001" by="bob@example.com"/></message>"#
    );
}

#[test]
fn server_ack_is_written_exactly() {
    let ack = Outgoing::ServerAck {
        from: "example.com".into(),
        to: jid("alice@example.com/Spark 2.6.3"),
        id: "V4NkR-38".into(),
        time: t("2013-11-20T06:42:23.761Z"),
    };
    let text = outgoing(&ack);
    assert_eq!(
        text,
        fixture("seed-server-ack.xml")
            .replace("\n  ", "")
            .replace("\n</message>", "</message>")
            .trim_end()
    );
    assert_eq!(
        parse_message(&text).unwrap(),
        parse_fixture("seed-server-ack.xml")
    );
}

#[test]
fn bounce_is_written_exactly() {
    let bounce = Outgoing::Bounce {
        from: "example.com".into(),
        to: jid("alice@example.com/Spark 2.6.3"),
        id: "V4NkR-38".into(),
        body: Some(CHAT_BODY.into()),
        time: t("2013-11-20T07:05:44.445Z"),
    };
    let text = outgoing(&bounce);
    assert_eq!(
        text,
        fixture("seed-bounce.xml")
            .replace("\n  ", "")
            .replace("\n</message>", "</message>")
            .trim_end()
    );
    assert_eq!(
        parse_message(&text).unwrap(),
        parse_fixture("seed-bounce.xml")
    );

    let bodiless = Outgoing::Bounce {
        from: "example.com".into(),
        to: jid("alice@example.com/a"),
        id: "x".into(),
        body: None,
        time: t("2013-11-20T07:05:44.445Z"),
    };
    assert_eq!(
        outgoing(&bodiless),
        r#"<message id="x" type="error" from="example.com" to="alice@example.com/a"><delay xmlns="urn:xmpp:delay" current="2013-11-20T07:05:44.445Z">501</delay></message>"#
    );
}

#[test]
fn sent_carbon_is_written_exactly() {
    let mut sent = Message::new(MessageType::Chat);
    sent.id = Some("out-1".into());
    sent.from = Some(jid("bob@example.com/laptop"));
    sent.to = Some(jid("carol@example.com/phone"));
    sent.body = Some("hi & bye".into());
    let inner = Replay {
        stored: stored(&sent, true),
        offline_marker: false,
        request_receipt: false,
        ..full_replay()
    };
    let carbon = Outgoing::SentCarbon {
        from: jid("bob@example.com/laptop"),
        to: jid("bob@example.com/Spark 2.6.3#android"),
        inner,
    };
    assert_eq!(
        outgoing(&carbon),
        concat!(
            r#"<message from="bob@example.com" to="bob@example.com/Spark 2.6.3#android" type="chat">"#,
            r#"<sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">"#,
            r#"<delay xmlns="urn:xmpp:delay" from="example.com" stamp="2013-12-25T06:20:00.000Z"/>"#,
            r#"<message xmlns="jabber:client" id="out-1" type="chat" from="bob@example.com/laptop" to="carol@example.com/phone">"#,
            r#"<body>hi &amp; bye</body>"#,
            r#"<stanza-id xmlns="urn:xmpp:sid:0" id="01936f1e-7c1a-7000-8000-000000000001" by="bob@example.com"/>"#,
            r#"</message></forwarded></sent></message>"#
        )
    );
}

#[test]
fn escaping_in_text_and_attributes() {
    let mut msg = Message::new(MessageType::Chat);
    msg.id = Some("q\"'<&>\t\n\r".into());
    msg.body = Some("a<b>&c]]>\r\n\"'\u{1}".into());
    let text = write_message(&msg);
    assert_eq!(
        text,
        "<message id=\"q&quot;'&lt;&amp;&gt;&#9;&#10;&#13;\" type=\"chat\"><body>a&lt;b&gt;&amp;c]]&gt;&#13;\n\"'\u{FFFD}</body></message>"
    );
    let back = parse_message(&text).unwrap();
    assert_eq!(back.id, msg.id);
    assert_eq!(back.body.as_deref(), Some("a<b>&c]]>\r\n\"'\u{FFFD}"));
}

#[test]
fn nasty_cdata_holding_end_tag() {
    let msg = parse_fixture("nasty-cdata.xml");
    assert_eq!(msg.body.as_deref(), Some("look: </message> <b>&amp; ]] ]"));
}

#[test]
fn nasty_attribute_values_holding_tag_ends() {
    let msg = parse_fixture("nasty-attr-gt.xml");
    assert_eq!(msg.id.as_deref(), Some("a/>b>c"));
    assert_eq!(msg.from, Some(jid("alice@example.com/x/>y")));
    assert_eq!(msg.body.as_deref(), Some("ok"));
}

#[test]
fn nasty_entities_are_decoded() {
    let msg = parse_fixture("nasty-entities.xml");
    assert_eq!(msg.id.as_deref(), Some("e&1"));
    assert_eq!(msg.body.as_deref(), Some("<b> & \"q\" 'a' é€ 😀"));
}

#[test]
fn comments_are_skipped() {
    let msg = parse_fixture("nasty-comments.xml");
    assert_eq!(msg.body.as_deref(), Some("ab"));
}

#[test]
fn elements_in_foreign_namespaces_are_ignored() {
    let mut want = Message::new(MessageType::Crs);
    want.id = Some("w1".into());
    want.from = Some(jid("bob@example.com/phone"));
    want.to = Some(jid("example.com"));
    assert_eq!(parse_fixture("nasty-wrong-namespace.xml"), want);
}

#[test]
fn keepalives_between_stanzas_are_skipped() {
    let frames = frame_every_way(fixture("keepalives.xml").as_bytes()).unwrap();
    assert_eq!(
        frames,
        vec![
            Frame::Stanza(r#"<message id="k1" type="chat" from="alice@example.com/a" to="bob@example.com"><body>one</body></message>"#.into()),
            Frame::Stanza(r#"<message id="k2" to="bob@example.com"/>"#.into()),
            Frame::Stanza(r#"<message id="k3" type="chat" to="bob@example.com"><body>three</body></message>"#.into()),
        ]
    );
    let ids: Vec<_> = frames
        .iter()
        .map(|f| match f {
            Frame::Stanza(s) => parse_message(s).unwrap().id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["k1", "k2", "k3"]);
}

#[test]
fn stream_with_header() {
    let frames = frame_every_way(fixture("stream.xml").as_bytes()).unwrap();
    let attrs = [
        ("xmlns", "jabber:component:accept"),
        ("xmlns:stream", "http://etherx.jabber.org/streams"),
        ("from", "readtrack.example.com"),
        ("id", "3BF96D32"),
        ("xml:lang", "en"),
    ];
    assert_eq!(
        frames,
        vec![
            Frame::StreamOpen {
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            },
            Frame::Stanza("<handshake/>".into()),
            Frame::Stanza(r#"<message id="s1" type="chat" from="alice@example.com/a" to="bob@example.com"><body>in a &lt;stream&gt;</body></message>"#.into()),
            Frame::Stanza(r#"<stream:error><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>"#.into()),
            Frame::StreamClose,
        ]
    );
    let Frame::Stanza(message) = &frames[2] else {
        unreachable!()
    };
    assert_eq!(
        parse_message(message).unwrap().body.as_deref(),
        Some("in a <stream>")
    );
    let Frame::Stanza(error) = &frames[3] else {
        unreachable!()
    };
    assert_eq!(
        parse_message(error).unwrap_err().to_string(),
        "not a message stanza: <stream:error>"
    );
    assert_eq!(
        stanza_name(error).unwrap(),
        StanzaName {
            qname: "stream:error".into(),
            local: "error".into(),
            ns: None
        }
    );
}

#[test]
fn self_closed_stream_header_opens_and_closes() {
    assert_eq!(
        frame_every_way(b"<stream:stream to='a&amp;b'/>").unwrap(),
        vec![
            Frame::StreamOpen {
                attrs: vec![("to".into(), "a&b".into())]
            },
            Frame::StreamClose
        ]
    );
}

#[test]
fn every_fixture_frames_the_same_however_it_is_cut() {
    for name in all_fixtures() {
        let text = fixture(&name);
        let frames = frame_every_way(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!frames.is_empty(), "{name}");
    }
}

fn frame_error(input: &[u8]) -> String {
    match frame_every_way(input) {
        Err(e) => e.to_string(),
        Ok(frames) => panic!("no error, frames {frames:?}"),
    }
}

#[test]
fn invalid_frames_have_exact_errors() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"<!DOCTYPE message><message/>",
            "DOCTYPE is not allowed (at byte 0)",
        ),
        (
            b"<message><!DOCTYPE x></message>",
            "DOCTYPE is not allowed (at byte 9)",
        ),
        (
            b"<message><?php x?></message>",
            "processing instruction is not allowed (at byte 9)",
        ),
        (
            b"<?xml-stylesheet href='a'?><message/>",
            "processing instruction is not allowed (at byte 0)",
        ),
        (
            b" <?xml version='1.0'?><message/>",
            "processing instruction is not allowed (at byte 1)",
        ),
        (
            b"<message/><?xml version='1.0'?>",
            "processing instruction is not allowed (at byte 10)",
        ),
        (
            b"<message><body>&nbsp;</body></message>",
            "undefined entity &nbsp; (at byte 15)",
        ),
        (
            b"<message id='&foo;'/>",
            "undefined entity &foo; (at byte 13)",
        ),
        (
            b"<message><body>&#0;</body></message>",
            "invalid character reference &#0; (at byte 15)",
        ),
        (
            b"<message><body>&#xD800;</body></message>",
            "invalid character reference &#xD800; (at byte 15)",
        ),
        (
            b"<message><body>&#x;</body></message>",
            "invalid character reference &#x; (at byte 15)",
        ),
        (
            b"<message>a & b</message>",
            "malformed XML: '&' must start a reference ending in ';' (at byte 11)",
        ),
        (
            b"<message><body>\xff</body></message>",
            "invalid UTF-8 (at byte 15)",
        ),
        (
            b"<message><body></message>",
            "end tag </message> does not match <body> (at byte 15)",
        ),
        (
            b"</message>",
            "end tag </message> closes no open element (at byte 0)",
        ),
        (b"hello<message/>", "text outside a stanza (at byte 0)"),
        (b"<![CDATA[x]]>", "text outside a stanza (at byte 0)"),
        (
            b"<stream:stream xmlns:stream='x'>hi",
            "text outside a stanza (at byte 32)",
        ),
        (
            b"<stream:stream xmlns:stream='x'></stream:stream> <message/>",
            "data after the end of the stream (at byte 49)",
        ),
        (
            b"<stream:stream xmlns:stream='x'><message></stream:stream>",
            "end tag </stream:stream> does not match <message> (at byte 41)",
        ),
        (
            b"<message id='<'/>",
            "malformed XML: '<' in attribute value (at byte 13)",
        ),
        (
            b"<message id=x/>",
            "malformed XML: attribute value must be quoted (at byte 12)",
        ),
        (
            b"<message id/>",
            "malformed XML: invalid character in attribute name (at byte 11)",
        ),
        (
            b"<message a='1'b='2'/>",
            "malformed XML: missing whitespace between attributes (at byte 14)",
        ),
        (
            b"<message / >",
            "malformed XML: expected '>' after '/' in a tag (at byte 10)",
        ),
        (
            b"<message><!-- a -- b --></message>",
            "malformed XML: '--' inside a comment (at byte 18)",
        ),
        (
            b"<message><!x></message>",
            "malformed XML: '<!' must start a comment or a CDATA section (at byte 11)",
        ),
        (
            b"< message/>",
            "malformed XML: invalid character after '<' (at byte 1)",
        ),
        (
            b"<message></ message>",
            "malformed XML: invalid character in element name (at byte 11)",
        ),
        // A name's first character is checked on its own; the rest are stepped over together.
        (
            b"<message></1message>",
            "malformed XML: invalid character in element name (at byte 11)",
        ),
        (
            b"<message><a-b.c:d9 x='1'></a-b.c:d8 ></message>",
            "end tag </a-b.c:d8> does not match <a-b.c:d9> (at byte 25)",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            frame_error(input),
            *want,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn frames_before_an_error_are_delivered_and_the_error_sticks() {
    let mut framer = Framer::new(Limits::default());
    framer.push(b"<message id='1'/><message><body>&bogus;</body></message><message id='3'/>");
    assert_eq!(
        framer.next_frame(),
        Ok(Some(Frame::Stanza("<message id='1'/>".into())))
    );
    let err = FrameError::UndefinedEntity {
        name: "bogus".into(),
        offset: 32,
    };
    assert_eq!(framer.next_frame(), Err(err.clone()));
    framer.push(b"<message/>");
    assert_eq!(framer.next_frame(), Err(err));
}

#[test]
fn incomplete_input_is_not_an_error() {
    let mut framer = Framer::new(Limits::default());
    assert_eq!(framer.next_frame(), Ok(None));
    framer.push(b"<message><body>&am");
    assert_eq!(framer.next_frame(), Ok(None));
    framer.push(b"p;</body></mess");
    assert_eq!(framer.next_frame(), Ok(None));
    framer.push(b"age>");
    assert_eq!(
        framer.next_frame(),
        Ok(Some(Frame::Stanza(
            "<message><body>&amp;</body></message>".into()
        )))
    );
    assert_eq!(framer.next_frame(), Ok(None));
}

#[test]
fn oversize_stanza_is_skipped_without_holding_more_than_the_limit() {
    let limits = Limits {
        max_stanza_bytes: 64,
        max_depth: 32,
    };
    let mut framer = Framer::new(limits);
    let big = format!("<message><body>{}</body></message>", "a".repeat(200));
    let mut held = 0;
    for (i, byte) in big.as_bytes().iter().enumerate() {
        framer.push(std::slice::from_ref(byte));
        held = held.max(framer.buffered());
        let frame = framer.next_frame();
        if i + 1 == big.len() {
            assert_eq!(
                frame,
                Ok(Some(Frame::Skipped {
                    bytes: big.len(),
                    depth: 2
                }))
            );
        } else {
            assert_eq!(frame, Ok(None));
        }
    }
    assert!(held <= 66, "held {held} bytes");
    // Exactly at the limit is framed, one byte over is skipped, even when complete in one push.
    let exact = format!("<message>{}</message>", "b".repeat(64 - 19));
    assert_eq!(exact.len(), 64);
    assert_eq!(
        frame_chunks(limits, [exact.as_bytes()]),
        Ok(vec![Frame::Stanza(exact.clone())])
    );
    let over = format!("<message>{}</message>", "b".repeat(64 - 18));
    assert_eq!(
        frame_chunks(limits, [over.as_bytes(), b"<message/>"]),
        Ok(vec![
            Frame::Skipped {
                bytes: 65,
                depth: 1
            },
            Frame::Stanza("<message/>".into())
        ])
    );
    // Whitespace between stanzas is not buffered, so it never counts.
    let spaced = format!("{}<message/>", " ".repeat(1000));
    assert_eq!(
        frame_chunks(limits, spaced.as_bytes().chunks(7)),
        Ok(vec![Frame::Stanza("<message/>".into())])
    );
}

#[test]
fn nesting_depth_is_limited() {
    let limits = Limits {
        max_stanza_bytes: 1024,
        max_depth: 3,
    };
    assert_eq!(
        frame_chunks(limits, [&b"<a><b><c/></b></a>"[..]]),
        Ok(vec![Frame::Stanza("<a><b><c/></b></a>".into())])
    );
    // Deeper is skipped up to its end (end tag names are not compared any more) and the
    // stream goes on.
    assert_eq!(
        frame_chunks(limits, [&b"<a><b><c><d><e/></d></x></b></a><ok/>"[..]]),
        Ok(vec![
            Frame::Skipped {
                bytes: 32,
                depth: 5
            },
            Frame::Stanza("<ok/>".into())
        ])
    );
    // The stream element does not count towards a stanza's depth.
    assert_eq!(
        frame_chunks(limits, [&b"<stream:stream><a><b><c/></b></a>"[..]]).map(|f| f.len()),
        Ok(2)
    );
}

#[test]
fn default_limits() {
    assert_eq!(
        Limits::default(),
        Limits {
            max_stanza_bytes: 1024 * 1024,
            max_depth: 32
        }
    );
}

fn parse_error(input: &str) -> String {
    parse_message(input).unwrap_err().to_string()
}

#[test]
fn invalid_stanzas_have_exact_errors() {
    let cases = [
        (r#"<iq type="get"/>"#, "not a message stanza: <iq>"),
        (
            r#"<stream:error xmlns:stream="http://etherx.jabber.org/streams"/>"#,
            "not a message stanza: <stream:error>",
        ),
        (
            r#"<message xmlns="urn:foo"/>"#,
            r#"not a message stanza: <message> in namespace "urn:foo""#,
        ),
        (
            r#"<message from="a@"/>"#,
            r#"invalid JID in attribute "from": JID "a@" has an empty domain"#,
        ),
        (
            r#"<message to=""/>"#,
            r#"invalid JID in attribute "to": empty JID"#,
        ),
        (
            r#"<message type="crs"><received xmlns="urn:xmpp:receipts">200</received></message>"#,
            "message has a receipt but no id",
        ),
        (
            r#"<message type="crs"><offline xmlns="urn:xmpp:offline"/></message>"#,
            "message has a receipt but no id",
        ),
        (
            r#"<message id="1"><stanza-id xmlns="urn:xmpp:sid:0" id="x"/></message>"#,
            r#"<stanza-id> has no "by" attribute"#,
        ),
        (
            r#"<message id="1"><stanza-id xmlns="urn:xmpp:sid:0" by="x"/></message>"#,
            r#"<stanza-id> has no "id" attribute"#,
        ),
        (
            r#"<message id="1"><displayed xmlns="urn:xmpp:chat-markers:0"/></message>"#,
            r#"<displayed> has no "id" attribute"#,
        ),
        (
            r#"<message><delay xmlns="urn:xmpp:delay" stamp="yesterday"/></message>"#,
            r#"invalid timestamp in <delay> attribute "stamp": "yesterday""#,
        ),
        (
            r#"<message><delay xmlns="urn:xmpp:delay" current="2013-13-01T00:00:00Z">501</delay></message>"#,
            r#"invalid timestamp in <delay> attribute "current": "2013-13-01T00:00:00Z""#,
        ),
        (
            r#"<message><offline xmlns="urn:xmpp:offline" current="soon"/></message>"#,
            r#"invalid timestamp in <offline> attribute "current": "soon""#,
        ),
        (
            "<message><body>&nbsp;</body></message>",
            "malformed XML: undefined entity &nbsp;",
        ),
        (
            "<message><body>&#1;</body></message>",
            "malformed XML: invalid character reference &#1;",
        ),
        (
            "<message/><message/>",
            "malformed XML: content after the root element",
        ),
        ("", "malformed XML: no element"),
        ("hello", "malformed XML: text before the root element"),
        (
            "<message><body>x</body>",
            "malformed XML: unexpected end of input inside <message>",
        ),
        (
            "<message><x>",
            "malformed XML: unexpected end of input inside <message>",
        ),
        (
            "<message><body>x</b></message>",
            "malformed XML: ill-formed document: expected `</body>`, but `</b>` was found",
        ),
        (
            r#"<message id="1" id="2"/>"#,
            "malformed XML: position 15: duplicated attribute, previous declaration at position 8",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse_error(input), want, "{input}");
    }
}

#[test]
fn receipt_forms() {
    let received = |inner: &str| {
        parse_message(&format!(r#"<message id="m1" type="crs">{inner}</message>"#))
            .unwrap()
            .receipt
    };
    assert_eq!(
        received(r#"<received xmlns="urn:xmpp:receipts" id="other"/>"#),
        Some(Receipt::Xep0184 { id: "other".into() })
    );
    assert_eq!(
        received(r#"<received xmlns="urn:xmpp:receipts"> 200 </received>"#),
        Some(Receipt::SeedReceived {
            id: "m1".into(),
            status: "200".into()
        })
    );
    // Legacy XEP-0184 (no id, no status) names the enclosing message too.
    assert_eq!(
        received(r#"<received xmlns="urn:xmpp:receipts"/>"#),
        Some(Receipt::SeedReceived {
            id: "m1".into(),
            status: "".into()
        })
    );
    assert_eq!(received(r#"<received>200</received>"#), None);
    assert_eq!(
        received(r#"<r:received xmlns:r="urn:xmpp:receipts" type="200"/>"#),
        Some(Receipt::SeedReceived {
            id: "m1".into(),
            status: "200".into()
        })
    );
    let req =
        parse_message(r#"<message id="m"><request xmlns="urn:xmpp:receipts"/></message>"#).unwrap();
    assert!(req.receipt_request);
    assert_eq!(req.receipt, None);
}

#[test]
fn body_line_ends_and_cdata_are_decoded() {
    let msg = parse_message(
        "<message><body>a\r\nb\rc&#13;<![CDATA[<x>&amp;]]>&#x1F600;</body><thread>t</thread></message>",
    )
    .unwrap();
    assert_eq!(msg.body.as_deref(), Some("a\nb\nc\r<x>&amp;😀"));
    let zeros = "<message><body>&#x0000000000041;&#00000000066;</body></message>";
    assert_eq!(
        frame_all(zeros.as_bytes()),
        Ok(vec![Frame::Stanza(zeros.into())])
    );
    assert_eq!(parse_message(zeros).unwrap().body.as_deref(), Some("AB"));
    assert_eq!(msg.thread.as_deref(), Some("t"));
}

#[test]
fn stanza_name_reports_the_root() {
    assert_eq!(
        stanza_name("<iq xmlns='jabber:component:accept' type='get'><x/></iq>").unwrap(),
        StanzaName {
            qname: "iq".into(),
            local: "iq".into(),
            ns: Some("jabber:component:accept".into())
        }
    );
    assert_eq!(
        stanza_name("<readtrack:event xmlns:readtrack='urn:x'/>").unwrap(),
        StanzaName {
            qname: "readtrack:event".into(),
            local: "event".into(),
            ns: Some("urn:x".into())
        }
    );
    assert_eq!(
        stanza_name("  ").unwrap_err().to_string(),
        "malformed XML: no element"
    );
}

// Text a message can carry: any XML character, plus the sequences most likely to break a
// writer (markup, references, CDATA ends, line ends that XML normalises).
fn xml_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "\\PC{0,6}",
            Just("]]>".to_string()),
            Just("&amp;".to_string()),
            Just("<".to_string()),
            Just("\r\n".to_string()),
            Just("\r".to_string()),
            Just("\t".to_string()),
            Just("  ".to_string()),
            Just("\"'".to_string()),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

fn jid_strategy() -> impl Strategy<Value = Jid> {
    (
        prop::option::of("[a-z0-9._-]{1,8}"),
        "[a-z]{1,6}\\.(com|org)",
        prop::option::of("[A-Za-z0-9 #./>&<\"'-]{1,12}"),
    )
        .prop_filter_map("valid JID", |(local, domain, resource)| {
            let mut text = String::new();
            if let Some(l) = local {
                text.push_str(&l);
                text.push('@');
            }
            text.push_str(&domain);
            if let Some(r) = resource {
                text.push('/');
                text.push_str(&r);
            }
            Jid::parse(&text).ok()
        })
}

fn kind_strategy() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::Normal),
        Just(MessageType::Chat),
        Just(MessageType::Groupchat),
        Just(MessageType::Headline),
        Just(MessageType::Error),
        Just(MessageType::Crs),
        "[a-z]{1,5}".prop_map(|s| MessageType::from_attr(Some(&s))),
    ]
}

fn millis() -> impl Strategy<Value = Millis> {
    (0u64..4_102_444_800_000).prop_map(Millis)
}

prop_compose! {
    fn message_strategy()(
        id in prop::option::of(xml_text()),
        from in prop::option::of(jid_strategy()),
        to in prop::option::of(jid_strategy()),
        kind in kind_strategy(),
        body in prop::option::of(xml_text()),
        thread in prop::option::of(xml_text()),
        stanza_ids in prop::collection::vec((xml_text(), xml_text()), 0..3),
        delay in prop::option::of((
            prop::option::of(millis()),
            prop::option::of(xml_text()),
            prop::option::of(millis()),
            prop::option::of("[0-9]{1,3}"),
        )),
        offline in prop::option::of(prop::option::of(millis())),
        receipt in 0u8..3,
        receipt_id in xml_text(),
        status in "[0-9]{0,3}",
        receipt_request in any::<bool>(),
        displayed in prop::option::of(xml_text()),
    ) -> Message {
        let mut msg = Message::new(kind);
        msg.id = id;
        msg.from = from;
        msg.to = to;
        msg.body = body;
        msg.thread = thread;
        msg.stanza_ids = stanza_ids
            .into_iter()
            .map(|(id, by)| StanzaId { id, by })
            .collect();
        msg.delay = delay.map(|(stamp, from, current, code)| Delay { stamp, from, current, code });
        msg.offline = offline;
        msg.receipt = match (receipt, &msg.id) {
            (1, _) => Some(Receipt::Xep0184 { id: receipt_id }),
            (2, Some(id)) => Some(Receipt::SeedReceived { id: id.clone(), status }),
            _ => None,
        };
        // What the parser derives: a crs message with an offline marker is an offline ack.
        if msg.kind == MessageType::Crs && msg.offline.is_some() && msg.receipt.is_none() {
            match &msg.id {
                Some(id) => msg.receipt = Some(Receipt::SeedOffline { id: id.clone() }),
                None => msg.offline = None,
            }
        }
        msg.receipt_request = receipt_request;
        msg.displayed = displayed;
        msg
    }
}

proptest! {
    #[test]
    fn any_message_round_trips_through_write_frame_and_parse(msg in message_strategy()) {
        let text = write_message(&msg);
        let frames = frame_all(text.as_bytes()).unwrap();
        prop_assert_eq!(frames, vec![Frame::Stanza(text.clone())]);
        prop_assert_eq!(parse_message(&text).unwrap(), msg);
    }

    #[test]
    fn any_replay_parses_as_the_original_with_its_markers(
        body in prop::option::of(xml_text()),
        id in prop::option::of(xml_text()),
        stanza_id in xml_text(),
        from in jid_strategy(),
        logged_at in millis(),
        flags in any::<(bool, bool, bool)>(),
    ) {
        let mut message = replayed_message();
        message.body = body;
        message.id = id;
        message.from = Some(from);
        let replay = Replay {
            stored: stored(&message, false),
            stanza_id,
            logged_at,
            offline_marker: flags.0,
            delay_from: flags.1.then(|| "example.com".to_string()),
            request_receipt: flags.2,
            ..full_replay()
        };
        let text = outgoing(&Outgoing::Replay(replay.clone()));
        prop_assert_eq!(parse_message(&text).unwrap(), replay_as_parsed(&message, &replay));
    }

    #[test]
    fn framer_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        cut in 0usize..200,
    ) {
        let cut = cut.min(bytes.len());
        let whole = frame_chunks(Limits::default(), [&bytes[..]]);
        let split = frame_chunks(Limits::default(), [&bytes[..cut], &bytes[cut..]]);
        prop_assert_eq!(whole, split);
    }

    /// Stanzas with long names and attributes, cut anywhere, under a small stanza limit: the
    /// frames (skips and errors included) do not depend on the reads. The framer steps over a
    /// name, a value or text in one go, up to the end of what it has read.
    #[test]
    fn frames_under_a_small_limit_do_not_depend_on_the_reads(
        stanzas in prop::collection::vec(stanza_strategy(), 1..4),
        limit in 8usize..160,
        cut in any::<prop::sample::Index>(),
        chunk in 1usize..9,
    ) {
        let input = stanzas.concat();
        let bytes = input.as_bytes();
        let limits = Limits { max_stanza_bytes: limit, max_depth: 4 };
        let whole = frame_chunks(limits, [bytes]);
        let cut = cut.index(bytes.len() + 1);
        prop_assert_eq!(&frame_chunks(limits, [&bytes[..cut], &bytes[cut..]]), &whole);
        prop_assert_eq!(&frame_chunks(limits, bytes.chunks(chunk)), &whole);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,100}|<message[ -~]{0,100}") {
        let _ = parse_message(&text);
        let _ = stanza_name(&text);
    }
}

/// An element with long names, attributes (with references, and now and then a `<` or an
/// unquoted value) and children, or now and then a mismatched end tag.
fn stanza_strategy() -> impl Strategy<Value = String> {
    let name = "[a-z][a-z0-9:._-]{0,40}";
    let attr = (
        name,
        "[a-z0-9 .]{0,12}(&amp;|&#x41;|&bad|<)?[a-z]{0,6}",
        prop::bool::ANY,
    )
        .prop_map(|(n, v, single)| {
            if single {
                format!(" {n}='{v}'")
            } else {
                format!(" {n}=\"{v}\"")
            }
        });
    let leaf = (name, prop::collection::vec(attr.clone(), 0..3))
        .prop_map(|(n, attrs)| format!("<{n}{}/>", attrs.concat()));
    let child = prop_oneof![leaf.clone(), "[a-z &;]{0,30}".prop_map(String::from)];
    (
        name,
        prop::collection::vec(attr, 0..4),
        prop::collection::vec(child, 0..4),
        prop::option::weighted(0.1, name),
    )
        .prop_map(|(n, attrs, children, wrong_end)| {
            let end = wrong_end.unwrap_or_else(|| n.clone());
            format!("<{n}{}>{}</{end}>", attrs.concat(), children.concat())
        })
}
