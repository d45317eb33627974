//! Serialises what readtrack emits.
//!
//! What readtrack sends travels inside a hook command's XEP-0297 `<forwarded>`, which requires
//! `xmlns="jabber:client"` on the forwarded stanza: [`client_outgoing`] writes it there, once,
//! where the stanza is written (a replay's stored form already carries it). [`outgoing`] writes
//! the same stanza with no `xmlns` on the outer element, as it would stand on a component
//! stream.

use std::fmt::Write as _;

use super::{
    Message, Outgoing, Receipt, Replay, NS_CARBONS, NS_DELAY, NS_FORWARD, NS_MARKERS, NS_OFFLINE,
    NS_RECEIPTS, NS_SID,
};
use crate::jid::Jid;
use crate::time::Millis;

fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Copies `text` to `out`, replacing each char for which `escape` gives a replacement. Only
/// chars that start with a byte `flagged` can be replaced, so runs of other bytes (nearly all
/// text) are found by a byte scan and copied as whole slices: the replay path writes ten
/// thousand stanzas per login.
fn push_escaped(
    out: &mut String,
    text: &str,
    flagged: impl Fn(u8) -> bool,
    escape: impl Fn(char) -> Option<&'static str>,
) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|b| flagged(*b)) {
        i += at;
        // A flagged byte is ASCII or a lead byte (0xEF), so `i` is a char boundary.
        let c = text[i..].chars().next().unwrap_or('\0');
        if let Some(replacement) = escape(c) {
            out.push_str(&text[start..i]);
            out.push_str(replacement);
            start = i + c.len_utf8();
        }
        i += c.len_utf8();
    }
    out.push_str(&text[start..]);
}

/// Bytes that can start a char text or attribute escaping replaces: the markup characters, C0
/// controls (tab and line ends included), and 0xEF, the lead byte of U+FFFE and U+FFFF.
fn flagged_in_text(b: u8) -> bool {
    b < 0x20 || matches!(b, b'<' | b'>' | b'&' | 0xEF)
}

fn flagged_in_attr(b: u8) -> bool {
    flagged_in_text(b) || b == b'"'
}

/// Escapes character data. `\r` becomes a reference because a literal one would be turned into
/// `\n` by the receiver's line-end normalisation. Characters XML cannot carry at all (most C0
/// controls) become U+FFFD so the output is always well-formed.
fn push_text(out: &mut String, text: &str) {
    push_escaped(out, text, flagged_in_text, |c| match c {
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '&' => Some("&amp;"),
        '\r' => Some("&#13;"),
        c if is_xml_char(c) => None,
        _ => Some("\u{FFFD}"),
    })
}

/// Escapes an attribute value for double quotes. Tab and line ends become references because
/// attribute-value normalisation would turn literal ones into spaces.
pub(crate) fn push_attr_value(out: &mut String, value: &str) {
    push_escaped(out, value, flagged_in_attr, |c| match c {
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '&' => Some("&amp;"),
        '"' => Some("&quot;"),
        '\t' => Some("&#9;"),
        '\n' => Some("&#10;"),
        '\r' => Some("&#13;"),
        c if is_xml_char(c) => None,
        _ => Some("\u{FFFD}"),
    })
}

/// Escapes an attribute value for single quotes, no more than XML asks: for a value full of
/// double quotes and `>`, as a stanza readtrack wrote is (`<deliver-bytes stanza>`), which
/// [`push_attr_value`] would write five and three bytes longer each. Tab and line ends become
/// references, as there.
pub(crate) fn push_single_quoted_attr_value(out: &mut String, value: &str) {
    push_escaped(
        out,
        value,
        |b| b < 0x20 || matches!(b, b'<' | b'&' | b'\'' | 0xEF),
        |c| match c {
            '<' => Some("&lt;"),
            '&' => Some("&amp;"),
            '\'' => Some("&apos;"),
            '\t' => Some("&#9;"),
            '\n' => Some("&#10;"),
            '\r' => Some("&#13;"),
            c if is_xml_char(c) => None,
            _ => Some("\u{FFFD}"),
        },
    )
}

fn attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    push_attr_value(out, value);
    out.push('"');
}

fn opt_attr(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        attr(out, name, value);
    }
}

fn text_element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_text(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// A `<delay>` element, borrowed.
struct DelayParts<'a> {
    from: Option<&'a str>,
    stamp: Option<Millis>,
    current: Option<Millis>,
    code: Option<&'a str>,
}

/// Everything one `<message>` element holds, borrowed: the single writer behind every message
/// readtrack writes, so a replay is written from the logged fields without building a typed
/// [`Message`] first.
struct Parts<'a> {
    xmlns: Option<&'a str>,
    id: Option<&'a str>,
    kind: Option<&'a str>,
    from: Option<&'a Jid>,
    to: Option<&'a Jid>,
    body: Option<&'a str>,
    thread: Option<&'a str>,
    /// `Some(current)`: an `<offline>` element, with `current` if given.
    offline: Option<Option<Millis>>,
    delay: Option<DelayParts<'a>>,
    stanza_ids: &'a [super::StanzaId],
    receipt: Option<&'a Receipt>,
    receipt_request: bool,
    displayed: Option<&'a str>,
}

/// An attribute whose value is a JID, escaped part by part (escaping is per char, so this is
/// the same as escaping `jid.to_string()`, without building it).
pub(super) fn jid_attr(out: &mut String, name: &str, jid: &Jid) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    if let Some(local) = jid.local() {
        push_attr_value(out, local);
        out.push('@');
    }
    push_attr_value(out, jid.domain());
    if let Some(resource) = jid.resource() {
        out.push('/');
        push_attr_value(out, resource);
    }
    out.push('"');
}

/// An attribute whose value is a timestamp (RFC 3339 needs no escaping).
pub(super) fn time_attr(out: &mut String, name: &str, at: Millis) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    at.push_rfc3339(out);
    out.push('"');
}

/// `<name xmlns="ns"`, left open for attributes.
fn open_element(out: &mut String, name: &str, ns: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str(" xmlns=\"");
    out.push_str(ns);
    out.push('"');
}

fn write_parts(out: &mut String, m: &Parts) {
    out.push_str("<message");
    opt_attr(out, "xmlns", m.xmlns);
    opt_attr(out, "id", m.id);
    opt_attr(out, "type", m.kind);
    if let Some(from) = m.from {
        jid_attr(out, "from", from);
    }
    if let Some(to) = m.to {
        jid_attr(out, "to", to);
    }
    out.push('>');
    if let Some(body) = m.body {
        text_element(out, "body", body);
    }
    if let Some(thread) = m.thread {
        text_element(out, "thread", thread);
    }
    if let Some(current) = m.offline {
        open_element(out, "offline", NS_OFFLINE);
        if let Some(current) = current {
            time_attr(out, "current", current);
        }
        out.push_str("/>");
    }
    if let Some(delay) = &m.delay {
        open_element(out, "delay", NS_DELAY);
        opt_attr(out, "from", delay.from);
        if let Some(stamp) = delay.stamp {
            time_attr(out, "stamp", stamp);
        }
        if let Some(current) = delay.current {
            time_attr(out, "current", current);
        }
        match delay.code {
            Some(code) => {
                out.push('>');
                push_text(out, code);
                out.push_str("</delay>");
            }
            None => out.push_str("/>"),
        }
    }
    for sid in m.stanza_ids {
        open_element(out, "stanza-id", NS_SID);
        attr(out, "id", &sid.id);
        attr(out, "by", &sid.by);
        out.push_str("/>");
    }
    match m.receipt {
        Some(Receipt::Xep0184 { id }) => {
            let _ = write!(out, "<received xmlns=\"{NS_RECEIPTS}\"");
            attr(out, "id", id);
            out.push_str("/>");
        }
        Some(Receipt::SeedReceived { status, .. }) => {
            let _ = write!(out, "<received xmlns=\"{NS_RECEIPTS}\">");
            push_text(out, status);
            out.push_str("</received>");
        }
        Some(Receipt::SeedOffline { .. }) | None => {}
    }
    if m.receipt_request {
        open_element(out, "request", NS_RECEIPTS);
        out.push_str("/>");
    }
    if let Some(id) = m.displayed {
        let _ = write!(out, "<displayed xmlns=\"{NS_MARKERS}\"");
        attr(out, "id", id);
        out.push_str("/>");
    }
    out.push_str("</message>");
}

fn write_message(out: &mut String, msg: &Message, xmlns: Option<&str>) {
    // A typed offline ack may come without the marker field set; it still needs the element.
    let offline = match (&msg.offline, &msg.receipt) {
        (Some(current), _) => Some(*current),
        (None, Some(Receipt::SeedOffline { .. })) => Some(None),
        (None, _) => None,
    };
    write_parts(
        out,
        &Parts {
            xmlns,
            id: msg.id.as_deref(),
            kind: msg.kind.as_attr(),
            from: msg.from.as_ref(),
            to: msg.to.as_ref(),
            body: msg.body.as_deref(),
            thread: msg.thread.as_deref(),
            offline,
            delay: msg.delay.as_ref().map(|d| DelayParts {
                from: d.from.as_deref(),
                stamp: d.stamp,
                current: d.current,
                code: d.code.as_deref(),
            }),
            stanza_ids: &msg.stanza_ids,
            receipt: msg.receipt.as_ref(),
            receipt_request: msg.receipt_request,
            displayed: msg.displayed.as_deref(),
        },
    );
}

/// A replay: the stored stanza addressed to the device, with its markers. The carbon's inner
/// message keeps its own `to` (the peer) and leaves the original time to `<forwarded>`.
fn write_replay(out: &mut String, r: &Replay, carbon: bool) {
    let delay = r
        .delay_from
        .as_deref()
        .filter(|_| !carbon)
        .map(|from| (from, r.logged_at));
    super::original::write_with_markers(
        out,
        &r.stored,
        (!carbon).then_some(&r.to),
        &super::original::Markers {
            offline: r.offline_marker.then_some(r.now),
            delay,
            stanza_id: Some((&r.stanza_id, &r.stanza_id_by)),
            request_receipt: r.request_receipt,
        },
    );
}

/// A typed message as a stanza with no `xmlns` on the outer element.
pub fn message(msg: &Message) -> String {
    let mut out = String::with_capacity(256);
    write_message(&mut out, msg, None);
    out
}

/// A typed message as a client stanza (`xmlns="jabber:client"` on the outer element), as a
/// server would hand it over inside `<forwarded>`.
pub fn client_message(msg: &Message) -> String {
    let mut out = String::with_capacity(256);
    write_message(&mut out, msg, Some(super::NS_CLIENT));
    out
}

/// Serialises one thing readtrack sends to the server, with no `xmlns` on the outer element.
pub fn outgoing(out: &Outgoing) -> String {
    write_outgoing(out, None)
}

/// Serialises one thing readtrack sends to the server as a command forwards it: the outer
/// element in `jabber:client`.
pub fn client_outgoing(out: &Outgoing) -> String {
    write_outgoing(out, Some(super::NS_CLIENT))
}

/// Serialises a stanza readtrack has a session written as it stands on the client's stream,
/// where `jabber:client` is the default namespace: no `xmlns` on the outer element (a
/// replay's stored form loses its own), as Prosody writes a c2s stanza. What the compact
/// `<deliver-bytes>` carries, for the module to write to the session unparsed.
pub fn client_stream(out: &Outgoing) -> String {
    let mut s = write_outgoing(out, None);
    if let Outgoing::Replay(_) = out {
        super::original::drop_default_namespace(&mut s);
    }
    s
}

fn open_message(s: &mut String, ns: Option<&str>) {
    s.push_str("<message");
    if let Some(ns) = ns {
        s.push_str(" xmlns=\"");
        s.push_str(ns);
        s.push('"');
    }
}

fn write_outgoing(out: &Outgoing, ns: Option<&str>) -> String {
    // A replay with its markers is the stanza plus about 300 bytes: one allocation, no regrowth.
    let mut s = String::with_capacity(match out {
        Outgoing::Replay(r) | Outgoing::SentCarbon { inner: r, .. } => r.stored.len() + 512,
        _ => 512,
    });
    match out {
        Outgoing::ServerAck { from, to, id, time } => {
            open_message(&mut s, ns);
            attr(&mut s, "id", id);
            s.push_str(" type=\"crs\"");
            attr(&mut s, "from", from);
            attr(&mut s, "to", &to.to_string());
            s.push_str("><body>");
            let body = format!("{{\"time\":\"{}\",\"msgType\":\"10013\"}}", time.rfc3339());
            push_text(&mut s, &body);
            s.push_str("</body></message>");
        }
        Outgoing::Bounce {
            from,
            to,
            id,
            body,
            time,
        } => {
            open_message(&mut s, ns);
            attr(&mut s, "id", id);
            s.push_str(" type=\"error\"");
            attr(&mut s, "from", from);
            attr(&mut s, "to", &to.to_string());
            s.push('>');
            if let Some(body) = body {
                text_element(&mut s, "body", body);
            }
            let _ = write!(
                s,
                "<delay xmlns=\"{NS_DELAY}\" current=\"{}\">501</delay></message>",
                time.rfc3339()
            );
        }
        Outgoing::Replay(replay) => write_replay(&mut s, replay, false),
        Outgoing::SentCarbon { from, to, inner } => {
            open_message(&mut s, ns);
            // XEP-0280: a carbon comes from the user's bare JID, whatever device sent it.
            attr(&mut s, "from", &from.bare_string());
            attr(&mut s, "to", &to.to_string());
            s.push_str(" type=\"chat\">");
            let _ = write!(
                s,
                "<sent xmlns=\"{NS_CARBONS}\"><forwarded xmlns=\"{NS_FORWARD}\"><delay xmlns=\"{NS_DELAY}\""
            );
            opt_attr(&mut s, "from", inner.delay_from.as_deref());
            attr(&mut s, "stamp", &inner.logged_at.rfc3339());
            s.push_str("/>");
            // The original time travels on <forwarded>, not twice.
            write_replay(&mut s, inner, true);
            s.push_str("</forwarded></sent></message>");
        }
    }
    s
}
