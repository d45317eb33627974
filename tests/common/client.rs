//! The harness's XMPP client, for the users' side of a test.

use std::time::Duration;

use super::*;

/// A minimal c2s client: SASL PLAIN over plain TCP, resource binding, raw stanzas.
pub struct Client {
    pub conn: XmlConn,
    /// The full JID the server bound.
    pub jid: String,
    sync_count: u32,
}

impl Client {
    /// `user` is a localpart on `localhost`, or `local@domain`.
    pub async fn connect(port: u16, user: &str, pass: &str, resource: &str) -> Client {
        match user.split_once('@') {
            Some((local, domain)) => Client::connect_to(port, domain, local, pass, resource).await,
            None => Client::connect_to(port, DOMAIN, user, pass, resource).await,
        }
    }

    pub async fn connect_to(
        port: u16,
        domain: &str,
        user: &str,
        pass: &str,
        resource: &str,
    ) -> Client {
        let (mut conn, _) = Client::authenticate(port, domain, user, pass).await;
        conn.send_raw(&format!(
            "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{}</resource></bind></iq>",
            escape(resource)
        ))
        .await;
        let bound = conn
            .expect("bind result", WAIT, |s| {
                attr(s, "id").as_deref() == Some("bind-1")
            })
            .await;
        assert_eq!(
            attr(&bound, "type").as_deref(),
            Some("result"),
            "bind: {bound}"
        );
        let jid = bound
            .split_once("<jid>")
            .and_then(|(_, r)| r.split_once("</jid>"))
            .map(|(j, _)| unescape(j))
            .unwrap_or_else(|| panic!("no <jid> in bind result: {bound}"));
        Client {
            conn,
            jid,
            sync_count: 0,
        }
    }

    /// A new connection, authenticated (SASL PLAIN) and restarted, before any resource is
    /// bound (or a stream-management session resumed); with the features offered then.
    pub async fn authenticate(
        port: u16,
        domain: &str,
        user: &str,
        pass: &str,
    ) -> (XmlConn, String) {
        let mut conn = XmlConn::connect(port).await;
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            escape(domain)
        );
        conn.send_raw(&header).await;
        conn.expect_open().await;
        let features = conn
            .expect("stream features", WAIT, |s| name(s) == "stream:features")
            .await;
        assert!(
            features.contains("PLAIN"),
            "server offers no SASL PLAIN: {features}"
        );
        let token = base64(format!("\0{user}\0{pass}").as_bytes());
        conn.send_raw(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await;
        let outcome = conn.next_stanza(WAIT).await.expect("SASL outcome");
        assert_eq!(
            name(&outcome),
            "success",
            "SASL PLAIN for {user}: {outcome}"
        );
        conn.send_raw(&header).await;
        conn.expect_open().await;
        let features = conn
            .expect("post-auth features", WAIT, |s| name(s) == "stream:features")
            .await;
        (conn, features)
    }

    /// Initial presence: the moment readtrack treats the device as available.
    pub async fn send_presence(&mut self) {
        self.conn.send_raw("<presence/>").await;
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.conn.send_raw(xml).await;
    }

    /// Round trip (XEP-0199 ping to the server): Prosody handles one session's stanzas in order,
    /// so everything sent before has been processed when this returns.
    pub async fn sync(&mut self) {
        self.sync_count += 1;
        let id = format!("sync-{}", self.sync_count);
        self.conn
            .send_raw(&format!(
                "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        let reply = self
            .conn
            .expect("ping reply", WAIT, |s| {
                attr(s, "id").as_deref() == Some(id.as_str())
            })
            .await;
        assert_eq!(attr(&reply, "type").as_deref(), Some("result"), "{reply}");
    }

    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        self.conn.next_stanza(timeout).await
    }

    /// The first `<message>` matching `pred`; other stanzas are kept for later.
    pub async fn expect_message(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.conn
            .expect("a matching <message>", timeout, |s| {
                name(s) == "message" && pred(s)
            })
            .await
    }

    /// Every `<message>` that arrives within `window` (presences and iqs are dropped).
    pub async fn messages_within(&mut self, window: Duration) -> Vec<String> {
        self.conn
            .drain(window)
            .await
            .into_iter()
            .filter(|s| name(s) == "message")
            .collect()
    }

    pub async fn close(&mut self) {
        self.conn.close().await;
    }
}

/// Base64 (RFC 4648, padded), for SASL PLAIN.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
