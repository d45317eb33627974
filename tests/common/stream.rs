//! The harness's own stanza splitter and XML connection, private on purpose: it must keep
//! working while the crate's framer changes, and a bug there must not hide behind a bug here.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// One top-level item of an XMPP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The `<stream:stream ...>` open tag, as text.
    Open(String),
    /// One complete stanza (or `<stream:features>`, `<handshake/>`...), as text.
    Stanza(String),
    Close,
}

/// Finds the end of the tag starting at `buf[0] == '<'`, skipping quoted attribute values.
fn tag_end(buf: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// Cuts one item off the front of `buf`. `Ok(None)` means: need more bytes.
pub fn split_item(buf: &[u8]) -> Result<Option<(Item, usize)>, String> {
    let start = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(s) => s,
        None => return Ok(None),
    };
    let rest = &buf[start..];
    if rest[0] != b'<' {
        return Err(format!(
            "text at stream level: {:?}",
            String::from_utf8_lossy(rest)
        ));
    }
    if rest.starts_with(b"<?") {
        // A declaration carries nothing a test needs: skip it and cut the next item.
        let Some(e) = find(rest, b"?>") else {
            return Ok(None);
        };
        let skip = start + e + 2;
        return Ok(split_item(&buf[skip..])?.map(|(item, n)| (item, skip + n)));
    }
    if rest.starts_with(b"</stream:stream") {
        return Ok(tag_end(rest).map(|e| (Item::Close, start + e + 1)));
    }
    if rest.starts_with(b"<stream:stream") {
        return Ok(tag_end(rest).map(|e| {
            (
                Item::Open(String::from_utf8_lossy(&rest[..=e]).into_owned()),
                start + e + 1,
            )
        }));
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < rest.len() {
        if rest[i] != b'<' {
            i += 1;
            continue;
        }
        let here = &rest[i..];
        if here.starts_with(b"<!--") {
            match find(here, b"-->") {
                Some(e) => i += e + 3,
                None => return Ok(None),
            }
            continue;
        }
        if here.starts_with(b"<![CDATA[") {
            match find(here, b"]]>") {
                Some(e) => i += e + 3,
                None => return Ok(None),
            }
            continue;
        }
        let Some(e) = tag_end(here) else {
            return Ok(None);
        };
        if here.get(1) == Some(&b'/') {
            depth = depth
                .checked_sub(1)
                .ok_or_else(|| "unbalanced close tag".to_string())?;
        } else if here[e - 1] != b'/' {
            depth += 1;
        }
        i += e + 1;
        if depth == 0 {
            let text = String::from_utf8_lossy(&rest[..i]).into_owned();
            return Ok(Some((Item::Stanza(text), start + i)));
        }
    }
    Ok(None)
}

/// A TCP connection carrying an XMPP stream, read item by item.
pub struct XmlConn {
    pub(super) stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    /// Stanzas read while looking for something else, handed out first by `next_stanza`.
    backlog: std::collections::VecDeque<String>,
    /// Cut a `<message>` holding several hook events into one message per event
    /// ([`unbatch`]); set by [`RawComponent::connect`].
    pub(super) unbatch: bool,
    /// The events of a cut message after the first, handed out by `next_item` before it reads
    /// again: they arrived, in this order.
    arrived: std::collections::VecDeque<String>,
}

impl XmlConn {
    pub async fn connect(port: u16) -> XmlConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        XmlConn {
            stream,
            buf: Vec::new(),
            closed: false,
            backlog: Default::default(),
            unbatch: false,
            arrived: Default::default(),
        }
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.stream
            .write_all(xml.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write {xml:?}: {e}"));
    }

    /// The next stream item, or `None` on timeout or end of stream.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<Item> {
        if let Some(s) = self.arrived.pop_front() {
            return Some(Item::Stanza(s));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match split_item(&self.buf) {
                Ok(Some((Item::Stanza(s), used))) if self.unbatch => {
                    self.buf.drain(..used);
                    self.arrived.extend(unbatch(&s));
                    let first = self
                        .arrived
                        .pop_front()
                        .expect("a stanza is at least itself");
                    return Some(Item::Stanza(first));
                }
                Ok(Some((item, used))) => {
                    self.buf.drain(..used);
                    return Some(item);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "bad XML from server ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            if self.closed {
                return None;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next stanza, or `None` on timeout or end of stream. A stream close ends the stream.
    pub async fn next_stanza(&mut self, timeout: Duration) -> Option<String> {
        if let Some(s) = self.backlog.pop_front() {
            return Some(s);
        }
        match self.next_item(timeout).await? {
            Item::Stanza(s) => Some(s),
            Item::Close => {
                self.closed = true;
                None
            }
            Item::Open(o) => panic!("unexpected stream restart: {o}"),
        }
    }

    /// Waits for the first stanza matching `pred`; others are kept and handed out later by
    /// `next_stanza`. Panics on timeout, listing what did arrive.
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        // Look through the backlog first, keeping the order of what stays.
        let mut kept = std::collections::VecDeque::new();
        let mut found = None;
        while let Some(s) = self.backlog.pop_front() {
            if found.is_none() && pred(&s) {
                found = Some(s);
            } else {
                kept.push_back(s);
            }
        }
        self.backlog = kept;
        if let Some(s) = found {
            return s;
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let item = if left.is_zero() {
                None
            } else {
                self.next_item(left).await
            };
            match item {
                Some(Item::Stanza(s)) if pred(&s) => {
                    self.backlog.extend(skipped);
                    return s;
                }
                Some(Item::Stanza(s)) => skipped.push(s),
                Some(other) => panic!("waiting for {what}: unexpected {other:?}"),
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; received instead: {skipped:#?}"
                ),
            }
        }
    }

    /// Everything that arrives within `window` (plus the backlog).
    pub async fn drain(&mut self, window: Duration) -> Vec<String> {
        let mut out: Vec<String> = self.backlog.drain(..).collect();
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next_item(left).await {
                Some(Item::Stanza(s)) => out.push(s),
                Some(Item::Close) | None => return out,
                Some(Item::Open(o)) => panic!("unexpected stream restart: {o}"),
            }
        }
    }

    /// Sends the stream close and waits (briefly) for the peer's.
    pub async fn close(&mut self) {
        if self.closed {
            return;
        }
        let _ = self.stream.write_all(b"</stream:stream>").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.closed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_item(left).await {
                Some(Item::Close) | None => break,
                Some(_) => {}
            }
        }
        let _ = self.stream.shutdown().await;
        self.closed = true;
    }

    /// Reads the peer's stream header.
    pub(super) async fn expect_open(&mut self) -> String {
        match self.next_item(WAIT).await {
            Some(Item::Open(o)) => o,
            other => panic!("expected a stream header, got {other:?}"),
        }
    }
}

/// The value of attribute `name` on the first tag of `xml` (no entity decoding beyond the five
/// predefined ones). Good enough for test assertions on server output.
pub fn attr(xml: &str, name: &str) -> Option<String> {
    let end = tag_end(xml.as_bytes())?;
    let tag = &xml[..end];
    for q in ['"', '\''] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let v = &tag[i + pat.len()..];
            let v = &v[..v.find(q)?];
            return Some(unescape(v));
        }
    }
    None
}

/// The name of the first tag of `xml` (`message`, `iq`, `presence`...).
pub fn name(xml: &str) -> &str {
    let t = xml.trim_start().trim_start_matches('<');
    let end = t
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(t.len());
    &t[..end]
}

pub(super) fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}
