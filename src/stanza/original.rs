//! The message as the server routed it: how readtrack stores it and how a replay is written
//! from it.
//!
//! A replay must be the stanza that was sent: an OMEMO payload, a file link, a marker request, a
//! reaction, every child and namespace, `xml:lang` included. So the log keeps the stanza itself,
//! in a *stored form* that makes a replay a matter of concatenation:
//!
//! - the top element is `<message xmlns="jabber:client" ...>...</message>` (unprefixed, with an
//!   end tag even when the original was empty);
//! - a received message has no `to`: the replay writes the device's full JID there; a message
//!   the user sent keeps its `to` (the peer), as the carbon a replay wraps it in must show;
//! - `<stanza-id xmlns="urn:xmpp:sid:0" by=USER>` elements are dropped: only the user's server
//!   may set one (XEP-0359), and a replay adds the real one;
//! - everything else is kept byte for byte.
//!
//! Sans-IO: text in, text out.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::write::{jid_attr, push_attr_value, time_attr};
use super::{ParseError, NS_CLIENT, NS_DELAY, NS_OFFLINE, NS_RECEIPTS, NS_SID};
use crate::jid::Jid;
use crate::time::Millis;

const END_TAG: &str = "</message>";

const NS_HINTS: &str = "urn:xmpp:hints";
const NS_EME: &str = "urn:xmpp:eme:0";
const NS_CONFERENCE: &str = "jabber:x:conference";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_JINGLE_MESSAGE: [&str; 2] = ["urn:xmpp:jingle-message:0", "urn:xmpp:jingle-message:1"];

/// What a message's top-level children say about it: what the server's archive would decide
/// (Prosody mod_mam's `should_store`), and what a replay must add or leave out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Class {
    pub body: bool,
    pub subject: bool,
    /// `<store xmlns="urn:xmpp:hints"/>`.
    pub store_hint: bool,
    /// `<no-store/>` or `<no-permanent-store/>` (XEP-0334).
    pub no_store_hint: bool,
    /// XEP-0380 `<encryption xmlns="urn:xmpp:eme:0"/>`.
    pub encrypted: bool,
    /// XEP-0184 `<request/>`.
    pub asks_receipt: bool,
    /// XEP-0184 `<received/>`: the message is a receipt.
    pub receipt: bool,
    /// Any XEP-0333 element; `marker` also counts only a marker other than `<markable/>`.
    pub any_marker: bool,
    pub marker: bool,
    /// A direct (XEP-0249) or mediated MUC invitation.
    pub invite: bool,
    /// XEP-0353 jingle message (call set-up).
    pub jingle: bool,
}

impl Class {
    /// Content a person reads, or that must be kept whatever it is (the store hint).
    fn content(&self) -> bool {
        self.store_hint || self.body || self.subject || self.encrypted || self.invite || self.jingle
    }

    /// mod_mam's rule for a chat or normal message: what the server's archive would keep.
    pub fn archivable(&self) -> bool {
        !self.no_store_hint
            && (self.content() || self.asks_receipt || self.receipt || self.any_marker)
    }

    /// A receipt or chat marker with nothing else to show: nobody receipts it, and it is not
    /// an unread message.
    pub fn signal(&self) -> bool {
        !self.content() && (self.receipt || self.marker)
    }

    pub(super) fn add(&mut self, ns: Option<&str>, local: &str) {
        match (ns.unwrap_or(""), local) {
            (NS_CLIENT, "body") => self.body = true,
            (NS_CLIENT, "subject") => self.subject = true,
            (NS_HINTS, "store") => self.store_hint = true,
            (NS_HINTS, "no-store" | "no-permanent-store") => self.no_store_hint = true,
            (NS_EME, "encryption") => self.encrypted = true,
            (NS_RECEIPTS, "request") => self.asks_receipt = true,
            (NS_RECEIPTS, "received") => self.receipt = true,
            (super::NS_MARKERS, l) => {
                self.any_marker = true;
                self.marker |= l != "markable";
            }
            (NS_CONFERENCE, "x") | (NS_MUC_USER, "x") => self.invite = true,
            (ns, _) if NS_JINGLE_MESSAGE.contains(&ns) => self.jingle = true,
            _ => {}
        }
    }
}

/// A message in its stored form, with what its children say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub text: String,
    pub class: Class,
}

fn malformed(err: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed(err.to_string())
}

/// The start tag without `to` (when `keep_to` is false), as `<message` plus its attributes,
/// each with its raw (still escaped) value. `xmlns` is kept: it must be `jabber:client`.
fn start_tag(start: &BytesStart<'_>, keep_to: bool, out: &mut String) -> Result<(), ParseError> {
    out.push_str("<message");
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(malformed)?;
        let key: &str = attr.key.as_ref();
        if key == "to" && !keep_to {
            continue;
        }
        push_raw_attr(out, key, &attr.value);
    }
    out.push('>');
    Ok(())
}

/// Writes ` key="raw"` with the value as it stood in the input (still escaped).
pub(crate) fn push_raw_attr(out: &mut String, key: &str, raw: &str) {
    // A raw value cannot hold its own quote unescaped, so the other quote always fits.
    let quote = if raw.contains('"') { '\'' } else { '"' };
    out.push(' ');
    out.push_str(key);
    out.push('=');
    out.push(quote);
    out.push_str(raw);
    out.push(quote);
}

/// The stored form of a routed message (see the module documentation). `user` is the bare JID
/// of the user whose log it goes into: `<stanza-id by>` naming it are dropped. Fails, naming
/// why, on anything that is not one well-formed `<message xmlns="jabber:client">` that stands
/// alone (a prefix bound outside it, a DTD, trailing content).
pub fn stored_form(stanza: &str, user: &str, keep_to: bool) -> Result<Stored, ParseError> {
    let mut class = Class::default();
    let mut reader = NsReader::from_str(stanza);
    let mut out = String::with_capacity(stanza.len() + 16);
    let owned = |ns: ResolveResult<'_>| match ns {
        ResolveResult::Bound(n) => Some(n.as_ref().to_string()),
        _ => None,
    };
    let (start, empty) = loop {
        match reader.read_resolved_event().map_err(malformed)? {
            (ns, Event::Start(e)) => break ((owned(ns), e.into_owned()), false),
            (ns, Event::Empty(e)) => break ((owned(ns), e.into_owned()), true),
            (_, Event::Text(t)) if t.as_ref().trim().is_empty() => {}
            (_, Event::Decl(_) | Event::Comment(_) | Event::PI(_)) => {}
            (_, Event::DocType(_)) => return Err(ParseError::Malformed("DTD not allowed".into())),
            (_, Event::Eof) => return Err(ParseError::Malformed("no element".into())),
            _ => return Err(ParseError::Malformed("text before the root element".into())),
        }
    };
    let (ns, start) = start;
    if start.name().as_ref() != "message" {
        return Err(ParseError::NotMessage(start.name().as_ref().to_string()));
    }
    if ns.as_deref() != Some(NS_CLIENT) {
        return Err(ParseError::ForeignNamespace(
            ns.unwrap_or_else(|| "(none)".to_string()),
        ));
    }
    start_tag(&start, keep_to, &mut out)?;
    if !empty {
        // Every element is read (not skipped): what is stored is replayed verbatim later, so
        // it must be well-formed to the last attribute and stand alone (every prefix bound).
        let mut depth = 0usize;
        let mut copied_to = reader.buffer_position() as usize;
        // Where a dropped child started, until its end tag.
        let mut dropping: Option<usize> = None;
        loop {
            let before = reader.buffer_position() as usize;
            let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
            let (e, child_empty) = match event {
                Event::Start(e) => (e, false),
                Event::Empty(e) => (e, true),
                Event::End(_) if depth == 0 => {
                    out.push_str(&stanza[copied_to..before]);
                    break;
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some(start) = dropping.take() {
                            out.push_str(&stanza[copied_to..start]);
                            copied_to = reader.buffer_position() as usize;
                        }
                    }
                    continue;
                }
                Event::DocType(_) => return Err(ParseError::Malformed("DTD not allowed".into())),
                Event::Eof => {
                    return Err(ParseError::Malformed(
                        "unexpected end of input inside <message>".into(),
                    ))
                }
                _ => continue,
            };
            let ns = match ns {
                ResolveResult::Bound(n) => Some(n.as_ref().to_string()),
                ResolveResult::Unbound => None,
                ResolveResult::Unknown(prefix) => {
                    return Err(ParseError::Malformed(format!(
                        "prefix {prefix:?} is not bound inside the message"
                    )))
                }
            };
            for attr in e.attributes().with_checks(true) {
                let attr = attr.map_err(malformed)?;
                if let (ResolveResult::Unknown(prefix), _) =
                    reader.resolver().resolve_attribute(attr.key)
                {
                    return Err(ParseError::Malformed(format!(
                        "prefix {prefix:?} is not bound inside the message"
                    )));
                }
            }
            if depth == 0 {
                class.add(ns.as_deref(), e.local_name().as_ref());
                let drop = e.local_name().as_ref() == "stanza-id"
                    && ns.as_deref() == Some(NS_SID)
                    && by_names(&e, user)?;
                if drop && child_empty {
                    out.push_str(&stanza[copied_to..before]);
                    copied_to = reader.buffer_position() as usize;
                } else if drop {
                    dropping = Some(before);
                }
            }
            if !child_empty {
                depth += 1;
            }
        }
    }
    out.push_str(END_TAG);
    loop {
        match reader.read_event().map_err(malformed)? {
            Event::Eof => break,
            Event::Text(t) if t.as_ref().trim().is_empty() => {}
            Event::Comment(_) => {}
            _ => {
                return Err(ParseError::Malformed(
                    "content after the root element".into(),
                ))
            }
        }
    }
    Ok(Stored { text: out, class })
}

/// Whether a `<stanza-id>` names `user` as its `by` (compared as the server prepared both: bare
/// JIDs, domain case-insensitive).
fn by_names(e: &BytesStart<'_>, user: &str) -> Result<bool, ParseError> {
    match e.try_get_attribute("by").map_err(malformed)? {
        Some(a) => {
            let by = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(malformed)?;
            Ok(by.eq_ignore_ascii_case(user))
        }
        None => Ok(false),
    }
}

/// What a replay adds to the stored stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers<'a> {
    /// Seed `<offline xmlns="urn:xmpp:offline" current=NOW/>` (devices that speak the seed).
    pub offline: Option<Millis>,
    /// XEP-0203 `<delay xmlns="urn:xmpp:delay" from=.. stamp=../>`.
    pub delay: Option<(&'a str, Millis)>,
    /// XEP-0359 `<stanza-id xmlns="urn:xmpp:sid:0" id=.. by=../>`: the archive's id where there
    /// is one.
    pub stanza_id: Option<(&'a str, &'a str)>,
    /// XEP-0184 `<request xmlns="urn:xmpp:receipts"/>`.
    pub request_receipt: bool,
}

/// Writes a stored stanza with `to` set to the device (when given) and the markers added at
/// the end. The stanza keeps `xmlns="jabber:client"`, as a forwarded stanza must.
pub fn write_with_markers(out: &mut String, stored: &str, to: Option<&Jid>, m: &Markers<'_>) {
    let head = "<message";
    let body = stored
        .strip_prefix(head)
        .and_then(|s| s.strip_suffix(END_TAG))
        // The stored form is readtrack's own; anything else was never logged.
        .unwrap_or(stored);
    out.push_str(head);
    if let Some(to) = to {
        jid_attr(out, "to", to);
    }
    out.push_str(body);
    if let Some(current) = m.offline {
        out.push_str("<offline xmlns=\"");
        out.push_str(NS_OFFLINE);
        out.push('"');
        time_attr(out, "current", current);
        out.push_str("/>");
    }
    if let Some((from, stamp)) = m.delay {
        out.push_str("<delay xmlns=\"");
        out.push_str(NS_DELAY);
        out.push_str("\" from=\"");
        push_attr_value(out, from);
        out.push('"');
        time_attr(out, "stamp", stamp);
        out.push_str("/>");
    }
    if let Some((id, by)) = m.stanza_id {
        out.push_str("<stanza-id xmlns=\"");
        out.push_str(NS_SID);
        out.push_str("\" id=\"");
        push_attr_value(out, id);
        out.push_str("\" by=\"");
        push_attr_value(out, by);
        out.push_str("\"/>");
    }
    if m.request_receipt {
        out.push_str("<request xmlns=\"");
        out.push_str(NS_RECEIPTS);
        out.push_str("\"/>");
    }
    out.push_str(END_TAG);
}

/// Removes the `xmlns` attribute (the default namespace declaration) from the start tag of
/// `stanza`, a `<message` this module wrote (a replay from a stored form): written to a client's
/// stream, whose default namespace is `jabber:client`, the message leaves it implicit, as the
/// server writes its own. Prefixed declarations stay. Nothing changes if there is none.
pub(crate) fn drop_default_namespace(stanza: &mut String) {
    let bytes = stanza.as_bytes();
    let mut at = "<message".len();
    while at < bytes.len() {
        let attr_start = at;
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let name_start = at;
        while at < bytes.len() && !matches!(bytes[at], b'=' | b'>' | b'/') {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            return; // the end of the start tag
        }
        let name = stanza[name_start..at].trim_end();
        at += 1;
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let Some(&quote) = bytes.get(at).filter(|q| matches!(q, b'"' | b'\'')) else {
            return;
        };
        let Some(len) = stanza[at + 1..].find(quote as char) else {
            return;
        };
        at += len + 2;
        if name == "xmlns" {
            stanza.replace_range(attr_start..at, "");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str = "bob@example.com";

    #[test]
    fn the_default_namespace_goes_from_the_start_tag_alone_wherever_it_stands() {
        for (written, on_stream) in [
            (
                "<message to=\"b@x/p\" xmlns=\"jabber:client\" id=\"1\"><body xmlns=\"jabber:client\"/></message>",
                "<message to=\"b@x/p\" id=\"1\"><body xmlns=\"jabber:client\"/></message>",
            ),
            // A value that looks like markup or like the attribute, another quote, a prefix.
            (
                "<message id='a>xmlns=\"q\"' xmlns:x=\"urn:x\" xmlns = 'jabber:client'><x:y/></message>",
                "<message id='a>xmlns=\"q\"' xmlns:x=\"urn:x\"><x:y/></message>",
            ),
            (
                "<message xmlns=\"jabber:client\"/>",
                "<message/>",
            ),
            // None: unchanged, however the tag ends.
            ("<message id=\"1\"><body>xmlns=\"a\"</body></message>", "<message id=\"1\"><body>xmlns=\"a\"</body></message>"),
            ("<message id=\"1\"/>", "<message id=\"1\"/>"),
        ] {
            let mut stanza = written.to_string();
            drop_default_namespace(&mut stanza);
            assert_eq!(stanza, on_stream);
        }
    }

    #[test]
    fn stored_form_drops_to_and_forged_stanza_ids_and_keeps_everything_else() {
        let routed = "<message xmlns='jabber:client' xml:lang='en' id='m1' type='chat' \
            from='alice@example.com/phone' to='bob@example.com'>\
            <body>hi &amp; bye</body>\
            <stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@example.com'/>\
            <stanza-id xmlns='urn:xmpp:sid:0' id='kept' by='room@muc.example.com'/>\
            <encrypted xmlns='eu.siacs.conversations.axolotl'><payload>AAA=</payload></encrypted>\
            </message>";
        let stored = stored_form(routed, BOB, false).unwrap().text;
        // Only the start tag is written anew (without `to`); the children are the bytes sent.
        assert_eq!(
            stored,
            "<message xmlns=\"jabber:client\" xml:lang=\"en\" id=\"m1\" type=\"chat\" \
             from=\"alice@example.com/phone\">\
             <body>hi &amp; bye</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='kept' by='room@muc.example.com'/>\
             <encrypted xmlns='eu.siacs.conversations.axolotl'><payload>AAA=</payload></encrypted>\
             </message>"
        );
    }

    #[test]
    fn a_sent_message_keeps_its_to_and_an_empty_message_gets_an_end_tag() {
        let routed = "<message xmlns=\"jabber:client\" from=\"bob@example.com/a\" to=\"alice@example.com\"/>";
        assert_eq!(
            stored_form(routed, BOB, true).unwrap().text,
            "<message xmlns=\"jabber:client\" from=\"bob@example.com/a\" to=\"alice@example.com\"></message>"
        );
    }

    #[test]
    fn stored_form_rejects_what_cannot_stand_alone() {
        let err = |xml: &str| stored_form(xml, BOB, false).unwrap_err().to_string();
        assert!(err("<message><body>x</body></message>").contains("(none)"));
        assert!(err("<x:message xmlns:x='jabber:client'/>").contains("x:message"));
        assert!(err("<message xmlns='jabber:client'><a:b/></message>").contains("a"));
        assert!(
            err("<message xmlns='jabber:client'/><message xmlns='jabber:client'/>")
                .contains("after the root")
        );
        assert!(err("<message xmlns='jabber:client'><body>x</body>").contains("end"));
    }

    #[test]
    fn a_replay_sets_to_and_appends_markers() {
        let stored = stored_form(
            "<message xmlns='jabber:client' id='m1' from='alice@example.com/p'><body>x</body></message>",
            BOB,
            false,
        )
        .unwrap()
        .text;
        let mut out = String::new();
        let to = Jid::parse("bob@example.com/laptop").unwrap();
        write_with_markers(
            &mut out,
            &stored,
            Some(&to),
            &Markers {
                offline: None,
                delay: Some(("example.com", Millis(0))),
                stanza_id: Some(("arch-1", BOB)),
                request_receipt: true,
            },
        );
        assert_eq!(
            out,
            "<message to=\"bob@example.com/laptop\" xmlns=\"jabber:client\" id=\"m1\" \
             from=\"alice@example.com/p\"><body>x</body>\
             <delay xmlns=\"urn:xmpp:delay\" from=\"example.com\" stamp=\"1970-01-01T00:00:00.000Z\"/>\
             <stanza-id xmlns=\"urn:xmpp:sid:0\" id=\"arch-1\" by=\"bob@example.com\"/>\
             <request xmlns=\"urn:xmpp:receipts\"/></message>"
        );
    }
}
