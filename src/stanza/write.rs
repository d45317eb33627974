//! Serialises what readtrack emits.
//!
//! The outer element never carries `xmlns`: it goes out on a `jabber:component:accept` stream,
//! where a `jabber:client` outer element would not be routed. Only a message forwarded inside
//! a carbon names `jabber:client`, as XEP-0297 requires.

use std::fmt::Write as _;

use super::{
    Message, Outgoing, Receipt, Replay, NS_CARBONS, NS_CLIENT, NS_DELAY, NS_FORWARD, NS_MARKERS,
    NS_OFFLINE, NS_RECEIPTS, NS_SID,
};
use crate::time::Millis;

fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Copies `text` to `out`, replacing each char for which `escape` gives a replacement. Runs
/// that need no escaping (nearly all text) are copied as one slice rather than char by char:
/// the replay path writes ten thousand stanzas per login.
fn push_escaped(out: &mut String, text: &str, escape: impl Fn(char) -> Option<&'static str>) {
    // Every char `escape` replaces has a byte flagged here: the markup characters, C0 controls
    // (tab and line ends included), and 0xEF, the lead byte of U+FFFE and U+FFFF. Text with
    // none of them is copied whole.
    let flagged = |b: u8| b < 0x20 || matches!(b, b'<' | b'>' | b'&' | b'"' | 0xEF);
    if !text.bytes().any(flagged) {
        out.push_str(text);
        return;
    }
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if let Some(replacement) = escape(c) {
            out.push_str(&text[start..i]);
            out.push_str(replacement);
            start = i + c.len_utf8();
        }
    }
    out.push_str(&text[start..]);
}

/// Escapes character data. `\r` becomes a reference because a literal one would be turned into
/// `\n` by the receiver's line-end normalisation. Characters XML cannot carry at all (most C0
/// controls) become U+FFFD so the output is always well-formed.
fn push_text(out: &mut String, text: &str) {
    push_escaped(out, text, |c| match c {
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
fn push_attr_value(out: &mut String, value: &str) {
    push_escaped(out, value, |c| match c {
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

fn write_message(out: &mut String, msg: &Message, xmlns: Option<&str>) {
    out.push_str("<message");
    opt_attr(out, "xmlns", xmlns);
    opt_attr(out, "id", msg.id.as_deref());
    opt_attr(out, "type", msg.kind.as_attr());
    opt_attr(
        out,
        "from",
        msg.from.as_ref().map(|j| j.to_string()).as_deref(),
    );
    opt_attr(out, "to", msg.to.as_ref().map(|j| j.to_string()).as_deref());
    out.push('>');
    if let Some(body) = &msg.body {
        text_element(out, "body", body);
    }
    if let Some(thread) = &msg.thread {
        text_element(out, "thread", thread);
    }
    // A typed offline ack may come without the marker field set; it still needs the element.
    let offline = match (&msg.offline, &msg.receipt) {
        (Some(current), _) => Some(*current),
        (None, Some(Receipt::SeedOffline { .. })) => Some(None),
        (None, _) => None,
    };
    if let Some(current) = offline {
        let _ = write!(out, "<offline xmlns=\"{NS_OFFLINE}\"");
        opt_attr(out, "current", current.map(Millis::rfc3339).as_deref());
        out.push_str("/>");
    }
    if let Some(delay) = &msg.delay {
        let _ = write!(out, "<delay xmlns=\"{NS_DELAY}\"");
        opt_attr(out, "from", delay.from.as_deref());
        opt_attr(out, "stamp", delay.stamp.map(Millis::rfc3339).as_deref());
        opt_attr(
            out,
            "current",
            delay.current.map(Millis::rfc3339).as_deref(),
        );
        match &delay.code {
            Some(code) => {
                out.push('>');
                push_text(out, code);
                out.push_str("</delay>");
            }
            None => out.push_str("/>"),
        }
    }
    for sid in &msg.stanza_ids {
        let _ = write!(out, "<stanza-id xmlns=\"{NS_SID}\"");
        attr(out, "id", &sid.id);
        attr(out, "by", &sid.by);
        out.push_str("/>");
    }
    match &msg.receipt {
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
    if msg.receipt_request {
        let _ = write!(out, "<request xmlns=\"{NS_RECEIPTS}\"/>");
    }
    if let Some(id) = &msg.displayed {
        let _ = write!(out, "<displayed xmlns=\"{NS_MARKERS}\"");
        attr(out, "id", id);
        out.push_str("/>");
    }
    out.push_str("</message>");
}

/// A typed message as a stanza with no `xmlns` on the outer element.
pub fn message(msg: &Message) -> String {
    let mut out = String::with_capacity(256);
    write_message(&mut out, msg, None);
    out
}

/// The message a replay writes: original sender, id, type, body and thread, addressed to the
/// device, with the markers the replay asks for.
pub fn replay_message(replay: &Replay) -> Message {
    let mut msg = Message::new(replay.kind.clone());
    msg.id = replay.id.clone();
    msg.from = Some(replay.from.clone());
    msg.to = Some(replay.to.clone());
    msg.body = replay.body.clone();
    msg.thread = replay.thread.clone();
    msg.offline = replay.offline_marker.then_some(Some(replay.now));
    msg.delay = replay.delay_from.as_ref().map(|from| super::Delay {
        stamp: Some(replay.logged_at),
        from: Some(from.clone()),
        current: None,
        code: None,
    });
    msg.stanza_ids = vec![super::StanzaId {
        id: replay.stanza_id.clone(),
        by: replay.stanza_id_by.clone(),
    }];
    msg.receipt_request = replay.request_receipt;
    msg
}

/// Serialises one thing readtrack sends to the server.
pub fn outgoing(out: &Outgoing) -> String {
    // A replay with its markers is about 500 bytes: one allocation, no regrowth.
    let mut s = String::with_capacity(768);
    match out {
        Outgoing::ServerAck { from, to, id, time } => {
            s.push_str("<message");
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
            s.push_str("<message");
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
        Outgoing::Replay(replay) => write_message(&mut s, &replay_message(replay), None),
        Outgoing::SentCarbon { from, to, inner } => {
            s.push_str("<message");
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
            let mut msg = replay_message(inner);
            msg.delay = None;
            write_message(&mut s, &msg, Some(NS_CLIENT));
            s.push_str("</forwarded></sent></message>");
        }
    }
    s
}
