//! The harness's side of mod_readtrack's component link: a raw XEP-0114 connection, and
//! [`unbatch`] for the messages the module writes once readtrack said `batched`.

use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::AsyncReadExt;

use super::*;

/// A bare XEP-0114 component connection, to drive and observe mod_readtrack without readtrack.
pub struct RawComponent {
    pub conn: XmlConn,
    pub domain: String,
}

/// The XEP-0114 handshake value: lowercase hex SHA-1 of stream id + secret.
pub fn handshake(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl RawComponent {
    pub async fn connect(port: u16, domain: &str, secret: &str) -> RawComponent {
        let mut conn = XmlConn::connect(port).await;
        conn.send_raw(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            escape(domain)
        ))
        .await;
        let open = conn.expect_open().await;
        let id = attr(&open, "id").unwrap_or_else(|| panic!("no stream id in {open}"));
        conn.send_raw(&format!(
            "<handshake>{}</handshake>",
            handshake(&id, secret)
        ))
        .await;
        let reply = conn.next_stanza(WAIT).await.expect("handshake reply");
        assert_eq!(reply.trim(), "<handshake/>", "component handshake refused");
        conn.unbatch = true;
        RawComponent {
            conn,
            domain: domain.to_string(),
        }
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.conn.send_raw(xml).await;
    }

    /// From now on, hands out the messages as the server wrote them, several hook events in
    /// one where it batched them, for a test of the batching itself. By default each event
    /// comes as a message of its own ([`unbatch`]), as a readtrack that does not say `batched`
    /// gets them, so the helpers that read one event per message work either way.
    pub fn keep_batches(&mut self) {
        self.conn.unbatch = false;
    }

    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        self.conn.next_stanza(timeout).await
    }

    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.conn.expect(what, timeout, pred).await
    }

    pub async fn drain(&mut self, window: Duration) -> Vec<String> {
        self.conn.drain(window).await
    }

    pub async fn close(&mut self) {
        self.conn.close().await;
    }

    /// Reads and drops everything until the stream ends: a sink that costs its server only the
    /// writes (the load bench's `LOAD_PROBE=1` component).
    pub async fn discard_all(mut self) {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = self.conn.stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// The namespace of mod_readtrack's events.
const NS_HOOK: &str = "urn:readtrack:hook:0";

/// A `<message>` as mod_readtrack writes it once readtrack said `batched` (several hook events
/// in one message), cut into the messages it writes otherwise: the same start tag around each
/// event, each event's text as it came. Anything else comes back whole. A message whose first
/// child is a hook event must hold hook events only, and nothing between them but whitespace:
/// anything else is a broken batch and fails the test.
pub fn unbatch(stanza: &str) -> Vec<String> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let whole = || vec![stanza.to_string()];
    let mut reader = quick_xml::NsReader::from_str(stanza);
    let mut depth = 0usize;
    let mut open_end = 0;
    // Each child of the message: where it starts and ends, and whether it is a hook event.
    let mut children: Vec<(usize, usize, bool)> = Vec::new();
    let mut text_between = false;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, event) = match reader.read_resolved_event() {
            Ok(read) => read,
            Err(e) => panic!("bad XML from the server ({e}): {stanza}"),
        };
        let hook = matches!(ns, ResolveResult::Bound(ns) if ns.as_ref() == NS_HOOK);
        let after = reader.buffer_position() as usize;
        match event {
            Event::Start(e) if depth == 0 => {
                if e.local_name().as_ref() != "message" {
                    return whole();
                }
                open_end = after;
                depth = 1;
            }
            Event::Start(_) => {
                if depth == 1 {
                    children.push((before, before, hook));
                }
                depth += 1;
            }
            Event::Empty(_) if depth == 0 => return whole(),
            Event::Empty(_) if depth == 1 => children.push((before, after, hook)),
            Event::End(_) => {
                depth -= 1;
                match (depth, children.last_mut()) {
                    (0, _) => break,
                    (1, Some(child)) => child.1 = after,
                    _ => {}
                }
            }
            Event::Text(t) if depth == 1 => {
                text_between |= !t.as_ref().bytes().all(|b| b.is_ascii_whitespace());
            }
            Event::Eof => panic!("a stanza that does not end: {stanza}"),
            _ => {}
        }
    }
    if children.len() < 2 || !children[0].2 {
        return whole();
    }
    assert!(
        !text_between && children.iter().all(|c| c.2),
        "a message that batches hook events holds something else too: {stanza}"
    );
    let open = stanza[..open_end].trim_start();
    children
        .into_iter()
        .map(|(from, to, _)| format!("{open}{}</message>", &stanza[from..to]))
        .collect()
}
