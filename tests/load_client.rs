//! The load bench's raw client (`benches/common/rawclient.rs`): its scanner on fixed input cut at
//! every byte, and the client itself against a real Prosody on loopback. The bench's numbers are
//! only as good as this client's counting.

mod common;
#[path = "../benches/common/rawclient.rs"]
#[allow(dead_code)]
mod rawclient;

use rawclient::{attr, base64, find, start_tag, trailing_u64, RawConn, Scanner, Template};

/// Each message's id, in the order the scanner hands them out.
fn ids(scanner: &mut Scanner) -> Vec<String> {
    let mut out = Vec::new();
    scanner
        .for_each_message(|m| {
            let id = attr(start_tag(m), b"id").unwrap_or(b"-");
            out.push(String::from_utf8_lossy(id).into_owned());
        })
        .unwrap();
    out
}

const STREAM: &str = "<iq type='result' id='rtsync-1'/>\
    <message id='a' from='x@localhost/r'><body>1 &lt; 2</body></message>\
    <presence from='y@localhost/r'/>\
    <message type=\"crs\" id=\"b\"><body>{\"msgType\":\"10013\"}</body></message>\
    <message id='c'><received xmlns='urn:xmpp:receipts' id='a'/></message>";

#[test]
fn the_scanner_finds_every_message_wherever_the_reads_cut_the_stream() {
    let bytes = STREAM.as_bytes();
    for cut in 0..=bytes.len() {
        let mut s = Scanner::default();
        s.push(&bytes[..cut]);
        let mut got = ids(&mut s);
        s.push(&bytes[cut..]);
        got.extend(ids(&mut s));
        assert_eq!(got, ["a", "b", "c"], "cut at {cut}");
        assert!(s.pending().is_empty(), "cut at {cut}: {:?}", s.pending());
    }
}

#[test]
fn the_scanner_finds_every_message_when_the_stream_arrives_one_byte_at_a_time() {
    let mut s = Scanner::default();
    let mut got = Vec::new();
    for b in STREAM.as_bytes().chunks(1) {
        s.push(b);
        got.extend(ids(&mut s));
    }
    assert_eq!(got, ["a", "b", "c"]);
}

#[test]
fn the_scanner_keeps_an_unfinished_message_until_its_end_arrives() {
    let mut s = Scanner::default();
    s.push(b"<message id='a'><body>half");
    assert_eq!(ids(&mut s), Vec::<String>::new());
    s.push(b"</body></mess");
    assert_eq!(ids(&mut s), Vec::<String>::new());
    s.push(b"age><message id='b'/>");
    assert_eq!(ids(&mut s), ["a"]);
    assert_eq!(s.pending(), b"<message id='b'/>");
}

#[test]
fn the_scanner_reports_a_message_end_without_its_start() {
    let mut s = Scanner::default();
    s.push(b"<presence/></message>");
    let err = s.for_each_message(|_| {}).unwrap_err();
    assert!(err.contains("<presence/>"), "{err}");
}

#[test]
fn attributes_are_found_by_their_whole_name_in_either_quote() {
    let tag = start_tag(b"<message xml:id='x' stanza-id='y' type='crs' id=\"p1m7\"><body id='z'>");
    assert_eq!(attr(tag, b"id"), Some(&b"p1m7"[..]));
    assert_eq!(attr(tag, b"type"), Some(&b"crs"[..]));
    assert_eq!(attr(tag, b"to"), None);
    assert_eq!(attr(start_tag(b"<message><body id='z'/>"), b"id"), None);
}

#[test]
fn templates_fill_every_hole_and_numbers_are_read_back() {
    let mut out = Vec::new();
    Template::new("<a id='m{}' n='{}'/>").push_u64(&mut out, 120);
    Template::new("<b x='{}'/>").push_u64(&mut out, 0);
    Template::new("<c x='{}'/>").push_same(&mut out, b"rc-p2m9");
    assert_eq!(out, b"<a id='m120' n='120'/><b x='0'/><c x='rc-p2m9'/>");
    assert_eq!(trailing_u64(b"rc-p2m9"), Some(9));
    assert_eq!(trailing_u64(b"rc-p2m18446744073709551615"), Some(u64::MAX));
    assert_eq!(trailing_u64(b"rc-p2m18446744073709551616"), None);
    assert_eq!(trailing_u64(b"rc-"), None);
    assert_eq!(find(b"ab</message>", b"</message>"), Some(2));
    assert_eq!(find(b"<<m", b"<m"), Some(1));
    assert_eq!(find(b"ab", b"abc"), None);
    assert_eq!(base64(b"\0u\0pw"), "AHUAcHc=");
}

/// Two raw clients through a real Prosody: a burst of messages written in one write arrives
/// whole and in order, and the receipts the receiver writes back in one write all come back.
#[tokio::test(flavor = "current_thread")]
async fn raw_clients_exchange_a_burst_of_messages_and_receipts_through_prosody() {
    let p = common::Prosody::start(common::ProsodyOpts {
        readtrack: false,
        ..Default::default()
    });
    p.register("alice", "pw");
    p.register("bob", "pw");
    let mut a = RawConn::online(p.c2s_port, p.domain(), "alice", "pw", "load").await;
    let mut b = RawConn::online(p.c2s_port, p.domain(), "bob", "pw", "load").await;
    assert_eq!(a.jid, "alice@localhost/load");
    const N: u64 = 300;
    let message = Template::new(&format!(
        "<message id='m{{}}' type='chat' to='{}'><body>message {{}} &amp; more</body></message>",
        b.jid
    ));
    let mut out = Vec::new();
    for i in 1..=N {
        message.push_u64(&mut out, i);
    }
    a.write(&out).await;

    let receipt = Template::new(&format!(
        "<message id='rc-{{}}' to='{}'><received xmlns='urn:xmpp:receipts' id='{{}}'/></message>",
        a.jid
    ));
    let mut next = 1;
    let mut receipts = Vec::new();
    while next <= N {
        b.fill().await;
        b.for_each_message(|m| {
            let id = attr(start_tag(m), b"id").unwrap();
            assert_eq!(
                trailing_u64(id),
                Some(next),
                "{}",
                String::from_utf8_lossy(m)
            );
            assert!(find(m, format!("message {next} &amp; more").as_bytes()).is_some());
            receipt.push_same(&mut receipts, id);
            next += 1;
        });
    }
    b.write(&receipts).await;

    let mut acked = 0;
    while acked < N {
        a.fill().await;
        a.for_each_message(|m| {
            let id = attr(start_tag(m), b"id").unwrap();
            assert!(id.starts_with(b"rc-m"), "{}", String::from_utf8_lossy(m));
            acked += 1;
            assert_eq!(trailing_u64(id), Some(acked));
        });
    }
    // Both streams are still usable, and nothing more is waiting.
    a.sync().await;
    b.sync().await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "current_thread")]
#[should_panic(expected = "SASL PLAIN for alice")]
async fn a_raw_client_with_a_wrong_password_fails_its_login() {
    let p = common::Prosody::start(common::ProsodyOpts {
        readtrack: false,
        ..Default::default()
    });
    p.register("alice", "pw");
    RawConn::login(p.c2s_port, p.domain(), "alice", "wrong", "load").await;
}
