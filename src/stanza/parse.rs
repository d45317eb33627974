//! One stanza (as cut by the framer) to typed values, with quick-xml's namespace-aware reader.
//!
//! Children are recognised by namespace and local name; an element in an unexpected namespace
//! is ignored like any unknown child, because XMPP lets any extension appear in a message.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::error::ParseError;
use super::{
    Delay, Message, MessageType, Receipt, StanzaId, NS_CLIENT, NS_COMPONENT, NS_DELAY, NS_MARKERS,
    NS_OFFLINE, NS_RECEIPTS, NS_SID,
};
use crate::jid::Jid;
use crate::time::Millis;

/// Namespace of the server-to-server stream; a message relayed from it is still a message.
const NS_SERVER: &str = "jabber:server";

/// The root element of a stanza, for routing it before a full parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaName {
    /// The name as written, prefix included (`stream:error`).
    pub qname: String,
    pub local: String,
    /// The namespace declared on the root element itself (`xmlns` or `xmlns:prefix`). A
    /// stanza inherits the stream's namespace otherwise, which the stanza text cannot show.
    pub ns: Option<String>,
}

fn malformed(err: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed(err.to_string())
}

/// Names the root element of `stanza` without parsing the rest.
pub fn stanza_name(stanza: &str) -> Result<StanzaName, ParseError> {
    let mut reader = quick_xml::Reader::from_str(stanza);
    loop {
        match reader.read_event().map_err(malformed)? {
            Event::Start(e) | Event::Empty(e) => {
                let qname = e.name().as_ref().to_string();
                let local = e.local_name().as_ref().to_string();
                let decl = match e.name().prefix() {
                    Some(prefix) => format!("xmlns:{}", prefix.as_ref()),
                    None => "xmlns".to_string(),
                };
                let [ns] = get_attrs(&e, [decl.as_str()])?;
                return Ok(StanzaName { qname, local, ns });
            }
            Event::Text(t) if t.as_ref().trim().is_empty() => {}
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => return Err(ParseError::Malformed("no element".to_string())),
            _ => return Err(ParseError::Malformed("text before the root element".into())),
        }
    }
}

/// Values of the named unprefixed attributes, unescaped and normalised as XML requires.
/// Duplicate attributes are an error (quick-xml's checked iterator).
fn get_attrs<const N: usize>(
    e: &BytesStart<'_>,
    names: [&str; N],
) -> Result<[Option<String>; N], ParseError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for attr in e.attributes() {
        let attr = attr.map_err(malformed)?;
        if let Some(i) = names.iter().position(|n| *n == attr.key.as_ref()) {
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(malformed)?;
            values[i] = Some(value.into_owned());
        }
    }
    Ok(values)
}

fn parse_jid(attr: &'static str, value: Option<String>) -> Result<Option<Jid>, ParseError> {
    value
        .map(|v| {
            Jid::parse(&v).map_err(|reason| ParseError::InvalidJid {
                attr,
                value: v.clone(),
                reason,
            })
        })
        .transpose()
}

fn parse_time(
    element: &'static str,
    attr: &'static str,
    value: Option<String>,
) -> Result<Option<Millis>, ParseError> {
    value
        .map(|v| {
            Millis::parse_rfc3339(&v).ok_or(ParseError::InvalidTimestamp {
                element,
                attr,
                value: v,
            })
        })
        .transpose()
}

fn required(
    element: &'static str,
    attr: &'static str,
    value: Option<String>,
) -> Result<String, ParseError> {
    value.ok_or(ParseError::MissingAttribute { element, attr })
}

fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// The character data directly inside an element whose start tag was just read (`empty` for
/// `<x/>`): text, CDATA and references resolved, line ends normalised; text of nested elements
/// is not included.
fn read_text(reader: &mut NsReader<&[u8]>, empty: bool) -> Result<String, ParseError> {
    let mut text = String::new();
    if empty {
        return Ok(text);
    }
    let mut depth = 0usize;
    loop {
        match reader.read_event().map_err(malformed)? {
            Event::Text(t) if depth == 0 => text.push_str(&t.xml10_content()),
            Event::CData(c) if depth == 0 => text.push_str(&c.xml10_content()),
            Event::GeneralRef(r) if depth == 0 => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) if is_xml_char(c) => c,
                    Ok(Some(_)) | Err(_) => {
                        return Err(ParseError::Malformed(format!(
                            "invalid character reference &{};",
                            &*r
                        )))
                    }
                    Ok(None) => match quick_xml::escape::resolve_xml_entity(&r) {
                        Some(s) => {
                            text.push_str(s);
                            continue;
                        }
                        None => {
                            return Err(ParseError::Malformed(format!(
                                "undefined entity &{};",
                                &*r
                            )))
                        }
                    },
                };
                text.push(resolved);
            }
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(text),
            Event::End(_) => depth -= 1,
            Event::Eof => return Err(unexpected_eof()),
            _ => {}
        }
    }
}

fn unexpected_eof() -> ParseError {
    ParseError::Malformed("unexpected end of input inside <message>".to_string())
}

/// Which known child an element is.
enum Child {
    Body,
    Thread,
    StanzaId,
    Delay,
    Offline,
    Received,
    Request,
    Displayed,
    Unknown,
}

fn classify(ns: &ResolveResult<'_>, local: &str, message_ns: &Option<String>) -> Child {
    let ns = match ns {
        ResolveResult::Bound(n) => Some(n.as_ref()),
        ResolveResult::Unbound => None,
        ResolveResult::Unknown(_) => return Child::Unknown,
    };
    if ns == message_ns.as_deref() {
        return match local {
            "body" => Child::Body,
            "thread" => Child::Thread,
            _ => Child::Unknown,
        };
    }
    match (ns, local) {
        (Some(NS_SID), "stanza-id") => Child::StanzaId,
        (Some(NS_DELAY), "delay") => Child::Delay,
        (Some(NS_OFFLINE), "offline") => Child::Offline,
        (Some(NS_RECEIPTS), "received") => Child::Received,
        (Some(NS_RECEIPTS), "request") => Child::Request,
        (Some(NS_MARKERS), "displayed") => Child::Displayed,
        _ => Child::Unknown,
    }
}

/// Parses one `<message>` stanza.
pub fn parse_message(stanza: &str) -> Result<Message, ParseError> {
    let mut reader = NsReader::from_str(stanza);
    let (message_ns, root_empty, mut msg) = loop {
        let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
        let (start, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::Text(t) if t.as_ref().trim().is_empty() => continue,
            Event::Decl(_) | Event::Comment(_) => continue,
            Event::Eof => return Err(ParseError::Malformed("no element".to_string())),
            _ => return Err(ParseError::Malformed("text before the root element".into())),
        };
        if start.local_name().as_ref() != "message" {
            return Err(ParseError::NotMessage(start.name().as_ref().to_string()));
        }
        let message_ns = match ns {
            ResolveResult::Unbound => None,
            ResolveResult::Bound(n)
                if [NS_CLIENT, NS_COMPONENT, NS_SERVER].contains(&n.as_ref()) =>
            {
                Some(n.as_ref().to_string())
            }
            ResolveResult::Bound(n) => {
                return Err(ParseError::ForeignNamespace(n.as_ref().to_string()))
            }
            ResolveResult::Unknown(_) => {
                return Err(ParseError::NotMessage(start.name().as_ref().to_string()))
            }
        };
        let [id, from, to, kind] = get_attrs(&start, ["id", "from", "to", "type"])?;
        let mut msg = Message::new(MessageType::from_attr(kind.as_deref()));
        msg.id = id;
        msg.from = parse_jid("from", from)?;
        msg.to = parse_jid("to", to)?;
        break (message_ns, empty, msg);
    };

    if !root_empty {
        loop {
            let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
            let (start, empty) = match event {
                Event::Start(e) => (e, false),
                Event::Empty(e) => (e, true),
                Event::End(_) => break,
                Event::Eof => return Err(unexpected_eof()),
                Event::GeneralRef(r) if r.resolve_char_ref().is_err() => {
                    return Err(ParseError::Malformed(format!(
                        "invalid character reference &{};",
                        &*r
                    )))
                }
                _ => continue,
            };
            let child = classify(&ns, start.local_name().as_ref(), &message_ns);
            match child {
                Child::Body | Child::Thread => {
                    let text = read_text(&mut reader, empty)?;
                    let slot = match child {
                        Child::Body => &mut msg.body,
                        _ => &mut msg.thread,
                    };
                    // Later bodies are translations (xml:lang); the first one is kept.
                    if slot.is_none() {
                        *slot = Some(text);
                    }
                }
                Child::StanzaId => {
                    let [id, by] = get_attrs(&start, ["id", "by"])?;
                    msg.stanza_ids.push(StanzaId {
                        id: required("stanza-id", "id", id)?,
                        by: required("stanza-id", "by", by)?,
                    });
                    skip(&mut reader, &start, empty)?;
                }
                Child::Delay => {
                    let [stamp, from, current] = get_attrs(&start, ["stamp", "from", "current"])?;
                    let delay = Delay {
                        stamp: parse_time("delay", "stamp", stamp)?,
                        from,
                        current: parse_time("delay", "current", current)?,
                        code: None,
                    };
                    let text = read_text(&mut reader, empty)?;
                    let code = text.trim();
                    if msg.delay.is_none() {
                        msg.delay = Some(Delay {
                            code: (!code.is_empty()).then(|| code.to_string()),
                            ..delay
                        });
                    }
                }
                Child::Offline => {
                    let [current] = get_attrs(&start, ["current"])?;
                    let current = parse_time("offline", "current", current)?;
                    msg.offline.get_or_insert(current);
                    skip(&mut reader, &start, empty)?;
                }
                Child::Received => {
                    let [id, status_attr] = get_attrs(&start, ["id", "type"])?;
                    let text = read_text(&mut reader, empty)?;
                    let receipt = match id {
                        Some(id) => Receipt::Xep0184 { id },
                        None => {
                            let status = match text.trim() {
                                "" => status_attr.unwrap_or_default(),
                                t => t.to_string(),
                            };
                            Receipt::SeedReceived {
                                id: msg.id.clone().ok_or(ParseError::ReceiptWithoutId)?,
                                status,
                            }
                        }
                    };
                    msg.receipt.get_or_insert(receipt);
                }
                Child::Request => {
                    msg.receipt_request = true;
                    skip(&mut reader, &start, empty)?;
                }
                Child::Displayed => {
                    let [id] = get_attrs(&start, ["id"])?;
                    let id = required("displayed", "id", id)?;
                    msg.displayed.get_or_insert(id);
                    skip(&mut reader, &start, empty)?;
                }
                Child::Unknown => skip(&mut reader, &start, empty)?,
            }
        }
    }

    loop {
        match reader.read_event().map_err(malformed)? {
            Event::Eof => break,
            Event::Text(t) if t.as_ref().trim().is_empty() => {}
            Event::Comment(_) => {}
            _ => {
                return Err(ParseError::Malformed(
                    "content after the root element".to_string(),
                ))
            }
        }
    }

    if msg.kind == MessageType::Crs && msg.offline.is_some() && msg.receipt.is_none() {
        let id = msg.id.clone().ok_or(ParseError::ReceiptWithoutId)?;
        msg.receipt = Some(Receipt::SeedOffline { id });
    }
    Ok(msg)
}

fn skip(
    reader: &mut NsReader<&[u8]>,
    start: &BytesStart<'_>,
    empty: bool,
) -> Result<(), ParseError> {
    if !empty {
        reader.read_to_end(start.name()).map_err(|e| match e {
            quick_xml::Error::IllFormed(quick_xml::errors::IllFormedError::MissingEndTag(_)) => {
                unexpected_eof()
            }
            e => malformed(e),
        })?;
    }
    Ok(())
}
