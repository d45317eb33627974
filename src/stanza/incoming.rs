//! A client's `<message>` read once, where it stands in the hook event that carries it.
//!
//! One pass of one reader over the event yields everything the service and the engine need of
//! the message: the typed values ([`Message`], exactly as [`super::parse_message`] reads them,
//! and the header alone where only a child is refused, as
//! [`super::parse::parse_message_header`]), and an [`Original`]: the text as the server
//! serialised it with the layout its stored forms are cut from (as
//! [`super::original::stored_form`] writes them), so logging it reads nothing again.
//!
//! The message is read as if it stood alone: declarations of the event around it are not seen
//! (a stored form must stand alone, and a replay is written out of context).

use std::borrow::Cow;
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};

use super::error::ParseError;
use super::original::{Class, Stored};
use super::parse::{
    append, classify, get_attrs_in, is_xml_char, malformed, parse_jid, parse_time, required,
    unexpected_eof, Child, Events, Resolved, NS_SERVER,
};
use super::{Delay, Message, MessageType, Receipt, StanzaId, NS_CLIENT, NS_COMPONENT, NS_SID};

const END_TAG: &str = "</message>";

/// A routed message as the server serialised it, and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    text: String,
    /// Why it has no stored form, if it has none.
    layout: Result<Layout, ParseError>,
}

/// The pieces a stored form is put together from; ranges are byte offsets into the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// `<message` and its attributes as the stored form writes them, without the closing `>`.
    head: String,
    /// Where ` to=".."` is in `head`.
    to: Option<Range<usize>>,
    /// Between the start tag and the end tag (empty for `<message/>`).
    content: Range<usize>,
    /// Top-level `<stanza-id xmlns="urn:xmpp:sid:0">` elements with a `by`, and that `by`.
    stanza_ids: Vec<(Range<usize>, String)>,
    class: Class,
}

impl Original {
    /// Reads a message on its own (built in code, or handed over as text).
    pub fn read(text: String) -> Original {
        Incoming::read(&text).original
    }

    /// The message as the server serialised it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// The stored form for the log of `user` (bare JID): `to` dropped unless `keep_to`, the
    /// `<stanza-id by=USER>` elements dropped (see [`super::original`]). Concatenation only.
    pub fn stored_form(&self, user: &str, keep_to: bool) -> Result<Stored, ParseError> {
        let layout = self.layout.as_ref().map_err(Clone::clone)?;
        let mut out = String::with_capacity(self.text.len() + 16);
        match (&layout.to, keep_to) {
            (Some(to), false) => {
                out.push_str(&layout.head[..to.start]);
                out.push_str(&layout.head[to.end..]);
            }
            _ => out.push_str(&layout.head),
        }
        out.push('>');
        let mut at = layout.content.start;
        for (span, by) in &layout.stanza_ids {
            if by.eq_ignore_ascii_case(user) {
                out.push_str(&self.text[at..span.start]);
                at = span.end;
            }
        }
        out.push_str(&self.text[at..layout.content.end]);
        out.push_str(END_TAG);
        Ok(Stored {
            text: out,
            class: layout.class,
        })
    }
}

/// What one pass over a client's message yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Typed, strictly: as [`super::parse_message`].
    pub parsed: Result<Message, ParseError>,
    /// The top element's `id`, `from`, `to` and `type` alone, when `parsed` refused a child
    /// only ([`ParseError::is_about_a_child`]).
    pub header: Option<Box<Message>>,
    pub original: Original,
}

impl Incoming {
    /// Reads a message that stands alone: one element, nothing but whitespace, comments and
    /// an XML declaration around it.
    pub fn read(text: &str) -> Incoming {
        let failed = |typed: ParseError, stored: ParseError| Incoming {
            parsed: Err(typed),
            header: None,
            original: Original {
                text: text.to_string(),
                layout: Err(stored),
            },
        };
        let mut events = Events::new(text);
        // Before the root the two readers differ a little: the stored form passes processing
        // instructions and names a DOCTYPE; each keeps its own first refusal.
        let (mut typed_err, mut stored_err) = (None, None);
        let (start, empty, at) = loop {
            let at = events.position();
            let event = match events.next() {
                Ok(event) => event,
                Err(e) => {
                    return failed(
                        typed_err.unwrap_or_else(|| e.clone()),
                        stored_err.unwrap_or(e),
                    )
                }
            };
            let before_root = || ParseError::Malformed("text before the root element".into());
            match event {
                Event::Start(e) => break (e, false, at),
                Event::Empty(e) => break (e, true, at),
                Event::Text(t) if t.as_ref().trim().is_empty() => {}
                Event::Decl(_) | Event::Comment(_) => {}
                Event::PI(_) => {
                    typed_err.get_or_insert_with(before_root);
                }
                Event::DocType(_) => {
                    typed_err.get_or_insert_with(before_root);
                    stored_err.get_or_insert(ParseError::Malformed("DTD not allowed".into()));
                }
                Event::Eof => {
                    let none = ParseError::Malformed("no element".into());
                    return failed(
                        typed_err.unwrap_or_else(|| none.clone()),
                        stored_err.unwrap_or(none),
                    );
                }
                _ => {
                    return failed(
                        typed_err.unwrap_or_else(before_root),
                        stored_err.unwrap_or_else(before_root),
                    )
                }
            }
            if let (Some(typed), Some(stored)) = (&typed_err, &stored_err) {
                return failed(typed.clone(), stored.clone());
            }
        };
        let mut read = read_message(&mut events, &start, empty, at);
        if let Some(e) = typed_err {
            read.parsed = Err(e);
            read.header = None;
        }
        if let Some(e) = stored_err {
            read.layout = Err(e);
        }
        if let Some(broken) = read.broken.take() {
            read.parsed = read.parsed.and(Err(broken.clone()));
            read.layout = read.layout.and(Err(broken));
            let end = read.end;
            return read.finish(&text[at..end]);
        }
        let after = loop {
            match events.next() {
                Ok(Event::Eof) => break Ok(()),
                Ok(Event::Text(t)) if t.as_ref().trim().is_empty() => {}
                Ok(Event::Comment(_)) => {}
                Ok(_) => {
                    break Err(ParseError::Malformed(
                        "content after the root element".into(),
                    ))
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = after {
            if read.parsed.is_ok() {
                read.parsed = Err(e.clone());
            }
            read.layout = read.layout.and(Err(e));
        }
        let end = read.end;
        read.finish(&text[at..end])
    }

    /// The message leniently: typed, or its header where only a child was refused.
    pub fn lenient(self) -> (Result<Message, ParseError>, Original) {
        let message = match (self.parsed, self.header) {
            (Err(e), Some(header)) if e.is_about_a_child() => Ok(*header),
            (parsed, _) => parsed,
        };
        (message, self.original)
    }
}

/// Where an inherited namespace is written into a message's text, and how: as the module
/// writes a message's namespace in the forms where it names one.
const INHERITED_AT: &str = "<message";
const INHERITED_XMLNS: &str = " xmlns='jabber:client'";

/// A message read to its end tag, before its text is taken.
pub(crate) struct Read {
    parsed: Result<Message, ParseError>,
    header: Option<Box<Message>>,
    layout: Result<Layout, ParseError>,
    /// A DOCTYPE inside the message (refused by the stored form; the typed reader ignores it).
    pub(crate) doctype: bool,
    /// The XML broke here, before the message's end tag: neither reader gets further (each
    /// keeps an earlier error of its own).
    pub(crate) broken: Option<ParseError>,
    /// Where the message ends in the input (where it broke, if it did).
    pub(crate) end: usize,
    /// The message's tag names no namespace: it inherited `jabber:client`
    /// ([`read_message`]), which its text and stored form get, right after `<message`.
    inherited: bool,
}

impl Read {
    /// `text` is the message's text, from its start tag to its end tag, as it came.
    pub(crate) fn finish(mut self, text: &str) -> Incoming {
        let text = if self.inherited {
            debug_assert!(text.starts_with(INHERITED_AT), "{text}");
            let rest = &text[INHERITED_AT.len()..];
            let mut with = String::with_capacity(text.len() + INHERITED_XMLNS.len());
            with.push_str(INHERITED_AT);
            with.push_str(INHERITED_XMLNS);
            with.push_str(rest);
            if let Ok(layout) = &mut self.layout {
                let shift = |r: &mut Range<usize>| {
                    r.start += INHERITED_XMLNS.len();
                    r.end += INHERITED_XMLNS.len();
                };
                shift(&mut layout.content);
                for (span, _) in &mut layout.stanza_ids {
                    shift(span);
                }
            }
            with
        } else {
            text.to_string()
        };
        // As the typed reader does last: a seed offline ack is a receipt of its own id.
        if let Ok(msg) = &mut self.parsed {
            if msg.kind == MessageType::Crs && msg.offline.is_some() && msg.receipt.is_none() {
                match msg.id.clone() {
                    Some(id) => msg.receipt = Some(Receipt::SeedOffline { id }),
                    None => {
                        self.header = Some(Box::new(header_of(msg)));
                        self.parsed = Err(ParseError::ReceiptWithoutId);
                    }
                }
            }
        }
        Incoming {
            parsed: self.parsed,
            header: self.header,
            original: Original {
                text,
                layout: self.layout,
            },
        }
    }
}

fn header_of(msg: &Message) -> Message {
    Message {
        id: msg.id.clone(),
        from: msg.from.clone(),
        to: msg.to.clone(),
        ..Message::new(msg.kind.clone())
    }
}

/// A top-level child the typed reader is in.
enum Open<'i> {
    /// Nothing to collect until its end.
    Skip,
    Body(Cow<'i, str>),
    Thread(Cow<'i, str>),
    Delay {
        stamp: Option<crate::time::Millis>,
        from: Option<String>,
        current: Option<crate::time::Millis>,
        text: Cow<'i, str>,
    },
    Received {
        id: Option<String>,
        status: Option<String>,
        text: Cow<'i, str>,
    },
}

impl<'i> Open<'i> {
    fn text(&mut self) -> Option<&mut Cow<'i, str>> {
        match self {
            Open::Skip => None,
            Open::Body(t) | Open::Thread(t) => Some(t),
            Open::Delay { text, .. } | Open::Received { text, .. } => Some(text),
        }
    }
}

/// Typed reading, stopped at its first error (the header is kept for a child's).
struct Typed<'i> {
    result: Result<Message, ParseError>,
    header: Option<Box<Message>>,
    message_ns: Option<&'static str>,
    open: Open<'i>,
}

impl<'i> Typed<'i> {
    fn fail(&mut self, e: ParseError) {
        if let Ok(msg) = &self.result {
            if e.is_about_a_child() {
                self.header = Some(Box::new(header_of(msg)));
            }
            self.result = Err(e);
        }
    }

    /// A top-level child starts.
    fn start(&mut self, events: &Events<'i>, e: &BytesStart<'i>) {
        let Ok(msg) = &mut self.result else { return };
        let child = classify(
            events.resolve(e.name()),
            e.local_name().as_ref(),
            self.message_ns,
        );
        let opened: Result<Open<'i>, ParseError> = (|| {
            Ok(match child {
                Child::Body => Open::Body(Cow::Borrowed("")),
                Child::Thread => Open::Thread(Cow::Borrowed("")),
                Child::StanzaId => {
                    let [id, by] = get_attrs_in(events, e, ["id", "by"])?;
                    msg.stanza_ids.push(StanzaId {
                        id: required("stanza-id", "id", id)?,
                        by: required("stanza-id", "by", by)?,
                    });
                    Open::Skip
                }
                Child::Delay => {
                    let [stamp, from, current] =
                        get_attrs_in(events, e, ["stamp", "from", "current"])?;
                    Open::Delay {
                        stamp: parse_time("delay", "stamp", stamp.as_deref())?,
                        current: parse_time("delay", "current", current.as_deref())?,
                        from: from.map(Cow::into_owned),
                        text: Cow::Borrowed(""),
                    }
                }
                Child::Offline => {
                    let [current] = get_attrs_in(events, e, ["current"])?;
                    let current = parse_time("offline", "current", current.as_deref())?;
                    msg.offline.get_or_insert(current);
                    Open::Skip
                }
                Child::Received => {
                    let [id, status] = get_attrs_in(events, e, ["id", "type"])?;
                    Open::Received {
                        id: id.map(Cow::into_owned),
                        status: status.map(Cow::into_owned),
                        text: Cow::Borrowed(""),
                    }
                }
                Child::Request => {
                    msg.receipt_request = true;
                    Open::Skip
                }
                Child::Displayed => {
                    let [id] = get_attrs_in(events, e, ["id"])?;
                    let id = required("displayed", "id", id)?;
                    msg.displayed.get_or_insert(id);
                    Open::Skip
                }
                Child::Unknown => Open::Skip,
            })
        })();
        match opened {
            Ok(open) => self.open = open,
            Err(e) => self.fail(e),
        }
    }

    /// The top-level child ends.
    fn end(&mut self) {
        let open = std::mem::replace(&mut self.open, Open::Skip);
        let Ok(msg) = &mut self.result else { return };
        match open {
            Open::Skip => {}
            // Later bodies are translations (xml:lang); the first one is kept.
            Open::Body(text) => {
                msg.body.get_or_insert_with(|| text.into_owned());
            }
            Open::Thread(text) => {
                msg.thread.get_or_insert_with(|| text.into_owned());
            }
            Open::Delay {
                stamp,
                from,
                current,
                text,
            } => {
                let code = text.trim();
                if msg.delay.is_none() {
                    msg.delay = Some(Delay {
                        stamp,
                        from,
                        current,
                        code: (!code.is_empty()).then(|| code.to_string()),
                    });
                }
            }
            Open::Received { id, status, text } => {
                let receipt = match id {
                    Some(id) => Receipt::Xep0184 { id },
                    None => {
                        let status = match text.trim() {
                            "" => status.unwrap_or_default(),
                            t => t.to_string(),
                        };
                        match msg.id.clone() {
                            Some(id) => Receipt::SeedReceived { id, status },
                            None => return self.fail(ParseError::ReceiptWithoutId),
                        }
                    }
                };
                msg.receipt.get_or_insert(receipt);
            }
        }
    }

    /// Character data directly inside the open child, as `read_text` takes it.
    fn text(&mut self, event: Event<'i>) {
        if self.result.is_err() {
            return;
        }
        let Some(text) = self.open.text() else { return };
        let piece = match event {
            Event::Text(t) => t.xml10_content(),
            Event::CData(c) => c.xml10_content(),
            Event::GeneralRef(r) => match r.resolve_char_ref() {
                Ok(Some(c)) if is_xml_char(c) => {
                    text.to_mut().push(c);
                    return;
                }
                Ok(Some(_)) | Err(_) => {
                    let e = format!("invalid character reference &{};", &*r);
                    return self.fail(ParseError::Malformed(e));
                }
                Ok(None) => match quick_xml::escape::resolve_xml_entity(&r) {
                    Some(s) => Cow::Borrowed(s),
                    None => {
                        let e = format!("undefined entity &{};", &*r);
                        return self.fail(ParseError::Malformed(e));
                    }
                },
            },
            _ => return,
        };
        append(text, piece);
    }
}

/// Every element of a stored form must stand alone: each prefix of its name and attributes
/// bound inside the message, each attribute well-formed.
fn stands_alone(events: &Events<'_>, e: &BytesStart<'_>) -> Result<(), ParseError> {
    let unbound = |prefix: &str| {
        ParseError::Malformed(format!("prefix {prefix:?} is not bound inside the message"))
    };
    let prefix_of = |name: quick_xml::name::QName<'_>| {
        name.prefix()
            .map(|p| p.into_inner().to_string())
            .unwrap_or_default()
    };
    if let Resolved::Unknown = events.resolve(e.name()) {
        return Err(unbound(&prefix_of(e.name())));
    }
    // The common tag: a few well-formed attributes, none twice (what quick-xml's checked
    // iterator accepts there), so only a prefixed name needs a look.
    if let Some(attrs) = events.split_attrs_of(e.attributes_raw()) {
        for (key, _) in attrs.iter() {
            let key = quick_xml::name::QName(key);
            if key.prefix().is_some() {
                if let Resolved::Unknown = events.resolve_attribute(key) {
                    return Err(unbound(&prefix_of(key)));
                }
            }
        }
        return Ok(());
    }
    for attr in e.attributes().with_checks(true) {
        let attr = attr.map_err(malformed)?;
        if let Resolved::Unknown = events.resolve_attribute(attr.key) {
            return Err(unbound(&prefix_of(attr.key)));
        }
    }
    Ok(())
}

/// The `by` of a `<stanza-id>`, unescaped.
fn by_attribute(e: &BytesStart<'_>) -> Result<Option<String>, ParseError> {
    match e.try_get_attribute("by").map_err(malformed)? {
        Some(a) => Ok(Some(
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(malformed)?
                .into_owned(),
        )),
        None => Ok(None),
    }
}

/// The start tag as the stored form writes it: `<message` and the attributes, each with its
/// raw (still escaped) value, and where `to` is among them.
fn head(
    events: &Events<'_>,
    start: &BytesStart<'_>,
    inherited: bool,
) -> Result<(String, Option<Range<usize>>), ParseError> {
    let mut out = String::with_capacity(start.len() + 32);
    let mut to = None;
    out.push_str("<message");
    if inherited {
        super::original::push_raw_attr(&mut out, "xmlns", NS_CLIENT);
    }
    let mut push = |key: &str, raw: &str| {
        let at = out.len();
        super::original::push_raw_attr(&mut out, key, raw);
        if key == "to" {
            to = Some(at..out.len());
        }
    };
    // The common tag: the pairs quick-xml's checked iterator would give, without it.
    if let Some(pairs) = events.split_attrs_of(start.attributes_raw()) {
        for &(key, raw) in pairs.iter() {
            push(key, raw);
        }
        return Ok((out, to));
    }
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(malformed)?;
        push(attr.key.as_ref(), &attr.value);
    }
    Ok((out, to))
}

/// Reads the `<message>` whose start tag `events` just returned (`at` is where that tag
/// starts) to its end tag, or to where the XML breaks ([`Read::broken`]). What the typed
/// reader or the stored form refuse is kept in the result, each reader's first refusal.
pub(crate) fn read_message<'i>(
    events: &mut Events<'i>,
    start: &BytesStart<'i>,
    empty: bool,
    at: usize,
) -> Read {
    // The only declaration from outside that a message keeps: a default namespace of
    // `jabber:client` it inherits (a hook event's `<f:forwarded xmlns="jabber:client">` around
    // Prosody's bytes, which name no namespace). Its text and stored form then say it.
    let inherited = start.name().as_ref() == "message"
        && !events.declares_default()
        && matches!(events.resolve(start.name()), Resolved::Bound(NS_CLIENT));
    let floor = events.set_floor(events.level());
    if inherited {
        events.inherit_default(NS_CLIENT);
    }
    let result = read_from(events, start, empty, at, inherited);
    events.set_floor(floor);
    result
}

fn read_from<'i>(
    events: &mut Events<'i>,
    start: &BytesStart<'i>,
    empty: bool,
    at: usize,
    inherited: bool,
) -> Read {
    let ns = events.resolve(start.name());
    // Typed: the top element, as `parse_message` reads it.
    let mut typed = Typed {
        result: Ok(Message::new(MessageType::Normal)),
        header: None,
        message_ns: None,
        open: Open::Skip,
    };
    let root: Result<Message, ParseError> = (|| {
        if start.local_name().as_ref() != "message" {
            return Err(ParseError::NotMessage(start.name().as_ref().to_string()));
        }
        typed.message_ns = match &ns {
            Resolved::Unbound => None,
            Resolved::Bound(n) => Some(
                [NS_CLIENT, NS_COMPONENT, NS_SERVER]
                    .into_iter()
                    .find(|known| known == n)
                    .ok_or_else(|| ParseError::ForeignNamespace(n.to_string()))?,
            ),
            Resolved::Unknown => {
                return Err(ParseError::NotMessage(start.name().as_ref().to_string()))
            }
        };
        let [id, from, to, kind] = get_attrs_in(events, start, ["id", "from", "to", "type"])?;
        let mut msg = Message::new(MessageType::from_attr(kind.as_deref()));
        msg.id = id.map(Cow::into_owned);
        msg.from = parse_jid("from", from.as_deref())?;
        msg.to = parse_jid("to", to.as_deref())?;
        Ok(msg)
    })();
    typed.result = root;
    // Stored: the top element, as `stored_form` writes it.
    let mut layout: Result<Layout, ParseError> = (|| {
        if start.name().as_ref() != "message" {
            return Err(ParseError::NotMessage(start.name().as_ref().to_string()));
        }
        match ns {
            Resolved::Bound(NS_CLIENT) => {}
            Resolved::Bound(other) => return Err(ParseError::ForeignNamespace(other.to_string())),
            _ => return Err(ParseError::ForeignNamespace("(none)".to_string())),
        }
        let (head, to) = head(events, start, inherited)?;
        Ok(Layout {
            head,
            to,
            content: 0..0,
            stanza_ids: Vec::new(),
            class: Class::default(),
        })
    })();
    let content_start = events.position() - at;
    let mut doctype = false;
    if empty {
        if let Ok(layout) = &mut layout {
            layout.content = content_start..content_start;
        }
        return Read {
            parsed: typed.result,
            header: typed.header,
            layout,
            doctype,
            broken: None,
            end: events.position(),
            inherited,
        };
    }
    let mut depth = 0usize;
    // A `<stanza-id by>` being read: where it started, and its `by`.
    let mut dropping: Option<(usize, String)> = None;
    let mut broken = None;
    loop {
        let before = events.position() - at;
        let (event, refused) = match events.next_scoped() {
            Ok(read) => read,
            Err(e) => {
                broken = Some(e);
                break;
            }
        };
        if let Some(refused) = refused {
            // A declaration the scope refuses: the stored form reads every element, the typed
            // reader only the top-level children and what it takes the text of.
            if depth == 0 || typed.open.text().is_some() {
                typed.fail(refused.clone());
            }
            if layout.is_ok() {
                layout = Err(refused);
            }
        }
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let child_empty = matches!(event, Event::Empty(_));
                if let Ok(l) = &mut layout {
                    let checked = stands_alone(events, e).and_then(|()| {
                        if depth > 0 {
                            return Ok(());
                        }
                        let ns = match events.resolve(e.name()) {
                            Resolved::Bound(n) => Some(n),
                            _ => None,
                        };
                        l.class.add(ns, e.local_name().as_ref());
                        if e.local_name().as_ref() == "stanza-id" && ns == Some(NS_SID) {
                            if let Some(by) = by_attribute(e)? {
                                if child_empty {
                                    l.stanza_ids.push((before..events.position() - at, by));
                                } else {
                                    dropping = Some((before, by));
                                }
                            }
                        }
                        Ok(())
                    });
                    if let Err(e) = checked {
                        layout = Err(e);
                    }
                }
                if depth == 0 {
                    typed.start(events, e);
                    if child_empty {
                        typed.end();
                    }
                }
                if !child_empty {
                    depth += 1;
                }
            }
            Event::End(_) if depth == 0 => {
                if let Ok(l) = &mut layout {
                    l.content = content_start..before;
                }
                break;
            }
            Event::End(_) => {
                depth -= 1;
                if depth == 0 {
                    if let (Some((from, by)), Ok(l)) = (dropping.take(), &mut layout) {
                        l.stanza_ids.push((from..events.position() - at, by));
                    }
                    typed.end();
                }
            }
            Event::GeneralRef(ref r) if depth == 0 && r.resolve_char_ref().is_err() => {
                let e = format!("invalid character reference &{};", &**r);
                typed.fail(ParseError::Malformed(e));
            }
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if depth == 1 => {
                typed.text(event)
            }
            Event::DocType(_) => {
                doctype = true;
                if layout.is_ok() {
                    layout = Err(ParseError::Malformed("DTD not allowed".into()));
                }
            }
            Event::Eof => {
                broken = Some(unexpected_eof());
                break;
            }
            _ => {}
        }
    }
    Read {
        parsed: typed.result,
        header: typed.header,
        layout,
        doctype,
        broken,
        end: events.position(),
        inherited,
    }
}
