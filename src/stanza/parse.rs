//! One stanza (as cut by the framer) to typed values, with quick-xml's plain reader and the
//! few namespace declarations a stanza has tracked here.
//!
//! Children are recognised by namespace and local name; an element in an unexpected namespace
//! is ignored like any unknown child, because XMPP lets any extension appear in a message.
//!
//! The namespace handling is exactly that of quick-xml's `NsReader` (same bindings, same
//! scoping, same errors at the same events), without its per-stanza set-up: most start tags
//! declare nothing, and a tag whose text has no `xmlns` is not looked at.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceError, PrefixDeclaration, QName, DEFAULT_MAX_NAMESPACE_BINDINGS};
use quick_xml::Reader;

use super::error::ParseError;
use super::{
    Delay, Message, MessageType, Receipt, StanzaId, NS_CLIENT, NS_COMPONENT, NS_DELAY, NS_MARKERS,
    NS_OFFLINE, NS_RECEIPTS, NS_SID,
};
use crate::jid::Jid;
use crate::time::Millis;

/// Namespace of the server-to-server stream; a message relayed from it is still a message.
pub(super) const NS_SERVER: &str = "jabber:server";

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

pub(crate) fn malformed(err: impl std::fmt::Display) -> ParseError {
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
                return Ok(StanzaName {
                    qname,
                    local,
                    ns: ns.map(Cow::into_owned),
                });
            }
            Event::Text(t) if t.as_ref().trim().is_empty() => {}
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => return Err(ParseError::Malformed("no element".to_string())),
            _ => return Err(ParseError::Malformed("text before the root element".into())),
        }
    }
}

/// Values of the named unprefixed attributes, unescaped and normalised as XML requires, borrowed
/// from the tag when nothing needed changing. Duplicate attributes are an error (quick-xml's
/// checked iterator).
pub(super) fn get_attrs<'a, const N: usize>(
    e: &'a BytesStart<'_>,
    names: [&str; N],
) -> Result<[Option<Cow<'a, str>>; N], ParseError> {
    let split = split_attrs(e.attributes_raw());
    get_split_attrs(
        e,
        split.as_ref().map(|(pairs, count)| &pairs[..*count]),
        names,
    )
}

/// [`get_attrs`] of the tag `events` just read, split once ([`Events::split_attrs_of`]).
pub(super) fn get_attrs_in<'a, const N: usize>(
    events: &'a Events<'_>,
    e: &'a BytesStart<'_>,
    names: [&str; N],
) -> Result<[Option<Cow<'a, str>>; N], ParseError> {
    get_split_attrs(
        e,
        events.split_attrs_of(e.attributes_raw()).as_deref(),
        names,
    )
}

/// [`get_attrs`] given what [`split_attrs`] made of `e`'s attributes.
fn get_split_attrs<'a, const N: usize>(
    e: &'a BytesStart<'_>,
    split: Option<&[(&'a str, &'a str)]>,
    names: [&str; N],
) -> Result<[Option<Cow<'a, str>>; N], ParseError> {
    let mut values: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
    if let Some(attrs) = split {
        for &(key, value) in attrs {
            if let Some(i) = names.iter().position(|n| *n == key) {
                values[i] = Some(
                    if value
                        .bytes()
                        .any(|b| matches!(b, b'\t' | b'\r' | b'\n' | b'&'))
                    {
                        quick_xml::events::attributes::Attribute {
                            key: QName(key),
                            value: Cow::Borrowed(value),
                        }
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(malformed)?
                    } else {
                        // What normalisation returns for a value without those bytes.
                        Cow::Borrowed(value)
                    },
                );
            }
        }
        return Ok(values);
    }
    for attr in e.attributes() {
        let attr = attr.map_err(malformed)?;
        if let Some(i) = names.iter().position(|n| *n == attr.key.as_ref()) {
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(malformed)?;
            values[i] = Some(value);
        }
    }
    Ok(values)
}

/// Attributes [`split_attrs`] handles; a tag with more goes the general way.
pub(crate) const FEW_ATTRS: usize = 8;

/// What [`split_attrs`] returns: `(name, raw value)` pairs and how many there are.
pub(crate) type Pairs<'a> = ([(&'a str, &'a str); FEW_ATTRS], usize);

/// The `(name, raw value)` pairs of a tag's attribute text, for the common tag: at most
/// [`FEW_ATTRS`] attributes, each `name = "value"` or `'value'` around XML whitespace, no name
/// twice. This is the grammar quick-xml's checked attribute iterator accepts, so where this
/// returns pairs that iterator returns the same pairs without error. Anything else (including
/// every input that iterator reports an error for) is `None`, to be read by quick-xml itself.
#[inline]
pub(crate) fn split_attrs(raw: &str) -> Option<Pairs<'_>> {
    let mut pairs = [("", ""); FEW_ATTRS];
    split_attrs_into(raw, &mut pairs).map(|count| (pairs, count))
}

/// [`split_attrs`] into `pairs`, returning how many there are.
fn split_attrs_into<'a>(
    raw: &'a str,
    pairs: &mut [(&'a str, &'a str); FEW_ATTRS],
) -> Option<usize> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let bytes = raw.as_bytes();
    let mut count = 0;
    let mut i = 0;
    loop {
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() {
            return Some(count);
        }
        // The first byte is part of the name whatever it is, as in quick-xml.
        let key_start = i;
        i += 1;
        while i < bytes.len() && bytes[i] != b'=' && !is_space(bytes[i]) {
            i += 1;
        }
        let key_end = i;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() || bytes[i] != b'=' {
            return None;
        }
        i += 1;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        let quote = *bytes.get(i).filter(|b| matches!(b, b'"' | b'\''))?;
        let value_start = i + 1;
        let value_len = memchr::memchr(quote, &bytes[value_start..])?;
        i = value_start + value_len + 1;
        // All the delimiters are ASCII, so these are char boundaries.
        let key = &raw[key_start..key_end];
        if count == FEW_ATTRS || pairs[..count].iter().any(|(k, _)| *k == key) {
            return None;
        }
        pairs[count] = (key, &raw[value_start..value_start + value_len]);
        count += 1;
    }
}

pub(super) fn parse_jid(
    attr: &'static str,
    value: Option<&str>,
) -> Result<Option<Jid>, ParseError> {
    value
        .map(|v| {
            Jid::parse(v).map_err(|reason| ParseError::InvalidJid {
                attr,
                value: v.to_string(),
                reason,
            })
        })
        .transpose()
}

pub(super) fn parse_time(
    element: &'static str,
    attr: &'static str,
    value: Option<&str>,
) -> Result<Option<Millis>, ParseError> {
    value
        .map(|v| {
            Millis::parse_rfc3339(v).ok_or_else(|| ParseError::InvalidTimestamp {
                element,
                attr,
                value: v.to_string(),
            })
        })
        .transpose()
}

pub(super) fn required(
    element: &'static str,
    attr: &'static str,
    value: Option<Cow<'_, str>>,
) -> Result<String, ParseError> {
    value
        .map(Cow::into_owned)
        .ok_or(ParseError::MissingAttribute { element, attr })
}

pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// The namespace the `xml` prefix is always bound to.
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace the `xmlns` prefix is always bound to.
const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// `part` (text of an event read from `input`) as a slice of `input`, so it can outlive the
/// event. The plain reader over a `&str` always borrows its events from the input; a copy is
/// made only if that ever stops being so.
fn in_input<'i>(input: &'i str, part: &str) -> Cow<'i, str> {
    let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    match start
        .checked_add(part.len())
        .and_then(|end| input.get(start..end))
    {
        Some(s) if s.as_ptr() == part.as_ptr() => Cow::Borrowed(s),
        _ => Cow::Owned(part.to_string()),
    }
}

/// One `xmlns` / `xmlns:prefix` declaration in scope.
struct Binding<'i> {
    /// Empty for the default namespace. (`xmlns:=".."` also lands here, as in quick-xml.)
    prefix: Cow<'i, str>,
    /// As written (not unescaped); empty undoes an outer declaration.
    ns: Cow<'i, str>,
    /// Depth of the declaring element (the root is 1).
    level: u16,
}

/// The namespace of an element name.
pub(crate) enum Resolved<'a> {
    /// No prefix and no default namespace in scope.
    Unbound,
    Bound(&'a str),
    /// A prefix that is not declared (or was undeclared).
    Unknown,
}

/// quick-xml's plain reader plus the namespace scoping of its `NsReader`: declarations are
/// added when a start (or empty) tag is read, and dropped on the read after its end.
pub(crate) struct Events<'i> {
    input: &'i str,
    reader: Reader<&'i [u8]>,
    /// In declaration order, so innermost last. The reserved `xml` and `xmlns` bindings are not
    /// stored (nothing can redeclare them); [`Events::resolve`] falls back to them.
    bindings: Vec<Binding<'i>>,
    level: u16,
    /// The last event was an end tag or an empty element: its scope ends before the next read.
    pending_pop: bool,
    /// Declarations of elements above this depth are not seen by [`Events::resolve`]: a
    /// message read inside a hook event resolves its names as if it stood alone.
    floor: u16,
    /// The attributes of the start tag last read, split when it was read (for its
    /// declarations) and kept for the readers of its attributes ([`Events::split_attrs_of`]):
    /// where its attribute text is in the input, its length, and the split (the pairs and
    /// how many, none where [`split_attrs`] gives none).
    last_split: (usize, usize, Option<usize>),
    last_pairs: [(&'i str, &'i str); FEW_ATTRS],
}

impl<'i> Events<'i> {
    pub(crate) fn new(input: &'i str) -> Events<'i> {
        Events {
            input,
            reader: Reader::from_str(input),
            bindings: Vec::new(),
            level: 0,
            pending_pop: false,
            floor: 0,
            last_split: (usize::MAX, 0, None),
            last_pairs: [("", ""); FEW_ATTRS],
        }
    }

    pub(crate) fn next(&mut self) -> Result<Event<'i>, ParseError> {
        match self.next_scoped()? {
            (_, Some(refused)) => Err(refused),
            (event, None) => Ok(event),
        }
    }

    /// As [`Events::next`], except that a declaration the scope refuses is returned beside
    /// its event rather than instead of it, for a reader that goes on (and judges whether the
    /// element concerned it).
    pub(crate) fn next_scoped(&mut self) -> Result<(Event<'i>, Option<ParseError>), ParseError> {
        if self.pending_pop {
            self.pending_pop = false;
            self.pop();
        }
        let event = self.reader.read_event().map_err(malformed)?;
        let refused = match &event {
            Event::Start(e) => self.push(e).err(),
            Event::Empty(e) => {
                let refused = self.push(e).err();
                self.pending_pop = true;
                refused
            }
            Event::End(_) => {
                self.pending_pop = true;
                None
            }
            _ => None,
        };
        Ok((event, refused))
    }

    /// Opens the scope of a start tag with the declarations among its attributes.
    fn push(&mut self, e: &BytesStart<'_>) -> Result<(), ParseError> {
        self.level = self
            .level
            .checked_add(1)
            .ok_or_else(|| malformed(NamespaceError::TooDeeplyNested(u16::MAX as usize)))?;
        let raw = e.attributes_raw();
        // Split once here, for the declarations and for whoever reads the attributes next.
        // The plain reader over a `&str` gives tags borrowed from the input, which is what
        // the split is kept for.
        let count = match in_input(self.input, raw) {
            Cow::Borrowed(raw) => {
                let count = split_attrs_into(raw, &mut self.last_pairs);
                self.last_split = (raw.as_ptr() as usize, raw.len(), count);
                count
            }
            Cow::Owned(_) => {
                self.last_split = (usize::MAX, 0, None);
                None
            }
        };
        // A declaration's name starts with `xmlns`; without it there is nothing to add.
        if !raw.contains("xmlns") {
            return Ok(());
        }
        // The common tag: the pairs quick-xml's iterator would give, without it.
        if let Some(count) = count {
            for i in 0..count {
                let (key, value) = self.last_pairs[i];
                if let Some(decl) = QName(key).as_namespace_binding() {
                    self.add(decl, value).map_err(malformed)?;
                }
            }
            return Ok(());
        }
        // Unchecked, and stopping at the first broken attribute, as quick-xml does.
        for attr in e.attributes().with_checks(false) {
            let Ok(attr) = attr else { break };
            if let Some(decl) = attr.key.as_namespace_binding() {
                self.add(decl, &attr.value).map_err(malformed)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, decl: PrefixDeclaration<'_>, ns: &str) -> Result<(), NamespaceError> {
        let prefix = match decl {
            PrefixDeclaration::Default => "",
            PrefixDeclaration::Named("xml") if ns == NS_XML => return Ok(()),
            PrefixDeclaration::Named("xml") => {
                return Err(NamespaceError::InvalidXmlPrefixBind(ns.to_string()))
            }
            PrefixDeclaration::Named("xmlns") => {
                return Err(NamespaceError::InvalidXmlnsPrefixBind(ns.to_string()))
            }
            PrefixDeclaration::Named(prefix) if ns == NS_XML => {
                return Err(NamespaceError::InvalidPrefixForXml(prefix.to_string()))
            }
            PrefixDeclaration::Named(prefix) if ns == NS_XMLNS => {
                return Err(NamespaceError::InvalidPrefixForXmlns(prefix.to_string()))
            }
            PrefixDeclaration::Named(prefix) => prefix,
        };
        if self.bindings.len() >= DEFAULT_MAX_NAMESPACE_BINDINGS {
            return Err(NamespaceError::TooManyBindings(
                DEFAULT_MAX_NAMESPACE_BINDINGS,
            ));
        }
        self.bindings.push(Binding {
            prefix: in_input(self.input, prefix),
            ns: in_input(self.input, ns),
            level: self.level,
        });
        Ok(())
    }

    /// [`split_attrs`] of `raw`, the attribute text of a tag: taken from the start tag last
    /// read when `raw` is its text (the same place in the same input, so the same bytes), so
    /// a tag's attributes are split once however many readers look at them.
    pub(crate) fn split_attrs_of<'a>(
        &'a self,
        raw: &'a str,
    ) -> Option<Cow<'a, [(&'a str, &'a str)]>> {
        let (at, len, count) = self.last_split;
        if raw.as_ptr() as usize == at && raw.len() == len {
            return count.map(|count| Cow::Borrowed(&self.last_pairs[..count]));
        }
        split_attrs(raw).map(|(pairs, count)| Cow::Owned(pairs[..count].to_vec()))
    }

    /// Closes the innermost scope.
    fn pop(&mut self) {
        self.level = self.level.saturating_sub(1);
        while self.bindings.last().is_some_and(|b| b.level > self.level) {
            self.bindings.pop();
        }
    }

    /// Depth of the element last opened (the root is 1).
    pub(crate) fn level(&self) -> u16 {
        self.level
    }

    /// Where the next event starts, in bytes from the start of the input.
    pub(crate) fn position(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    /// Declarations made above depth `floor` are ignored from now on (see [`Events::floor`]);
    /// returns the floor it replaces.
    pub(crate) fn set_floor(&mut self, floor: u16) -> u16 {
        std::mem::replace(&mut self.floor, floor)
    }

    /// The element last opened declares a default namespace of its own (`xmlns=".."`).
    pub(crate) fn declares_default(&self) -> bool {
        self.bindings
            .iter()
            .rev()
            .take_while(|b| b.level == self.level)
            .any(|b| b.prefix.is_empty())
    }

    /// Declares `ns` as the default namespace of the element last opened, as if its tag said
    /// so: a message read above a floor keeps the default namespace it inherits (see
    /// [`super::incoming::read_message`]). Dropped with the element's scope.
    pub(crate) fn inherit_default(&mut self, ns: &'static str) {
        self.bindings.push(Binding {
            prefix: Cow::Borrowed(""),
            ns: Cow::Borrowed(ns),
            level: self.level,
        });
    }

    fn visible(&self) -> impl Iterator<Item = &Binding<'i>> {
        let floor = self.floor;
        self.bindings
            .iter()
            .rev()
            .take_while(move |b| b.level >= floor)
    }

    /// The namespace of an attribute name: as an element's, except that an unprefixed
    /// attribute is in no namespace whatever the default.
    pub(crate) fn resolve_attribute(&self, name: QName<'_>) -> Resolved<'_> {
        match name.prefix() {
            None => Resolved::Unbound,
            Some(_) => self.resolve(name),
        }
    }

    /// The namespace of an element name in the current scope.
    pub(crate) fn resolve(&self, name: QName<'_>) -> Resolved<'_> {
        fn bound(ns: &str) -> Option<&str> {
            (!ns.is_empty()).then_some(ns)
        }
        match name.prefix().map(|p| p.into_inner()) {
            None => match self.visible().find(|b| b.prefix.is_empty()) {
                Some(b) => bound(&b.ns).map_or(Resolved::Unbound, Resolved::Bound),
                None => Resolved::Unbound,
            },
            // An empty prefix (`<:x>`) names no declaration.
            Some("") => Resolved::Unknown,
            Some(prefix) => match self.visible().find(|b| b.prefix == prefix) {
                Some(b) => bound(&b.ns).map_or(Resolved::Unknown, Resolved::Bound),
                None => match prefix {
                    "xml" => Resolved::Bound(NS_XML),
                    "xmlns" => Resolved::Bound(NS_XMLNS),
                    _ => Resolved::Unknown,
                },
            },
        }
    }

    /// Reads past the end tag of `start`, which was just read, and closes its scope.
    fn skip(&mut self, start: &BytesStart<'_>, empty: bool) -> Result<(), ParseError> {
        if !empty {
            self.reader.read_to_end(start.name()).map_err(|e| match e {
                quick_xml::Error::IllFormed(quick_xml::errors::IllFormedError::MissingEndTag(
                    _,
                )) => unexpected_eof(),
                e => malformed(e),
            })?;
            self.pop();
        }
        Ok(())
    }
}

/// Appends `piece` to `text`, copying only when both are non-empty.
pub(super) fn append<'i>(text: &mut Cow<'i, str>, piece: Cow<'i, str>) {
    if text.is_empty() {
        *text = piece;
    } else if !piece.is_empty() {
        text.to_mut().push_str(&piece);
    }
}

/// The character data directly inside an element whose start tag was just read (`empty` for
/// `<x/>`): text, CDATA and references resolved, line ends normalised; text of nested elements
/// is not included. Borrowed from the stanza when it is one piece needing no decoding.
fn read_text<'i>(events: &mut Events<'i>, empty: bool) -> Result<Cow<'i, str>, ParseError> {
    let mut text = Cow::Borrowed("");
    if empty {
        return Ok(text);
    }
    let mut depth = 0usize;
    loop {
        match events.next()? {
            Event::Text(t) if depth == 0 => append(&mut text, t.xml10_content()),
            Event::CData(c) if depth == 0 => append(&mut text, c.xml10_content()),
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
                            append(&mut text, Cow::Borrowed(s));
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
                text.to_mut().push(resolved);
            }
            Event::Start(_) => depth += 1,
            Event::End(_) if depth == 0 => return Ok(text),
            Event::End(_) => depth -= 1,
            Event::Eof => return Err(unexpected_eof()),
            _ => {}
        }
    }
}

pub(crate) fn unexpected_eof() -> ParseError {
    ParseError::Malformed("unexpected end of input inside <message>".to_string())
}

/// Which known child an element is.
pub(super) enum Child {
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

pub(super) fn classify(ns: Resolved<'_>, local: &str, message_ns: Option<&str>) -> Child {
    let ns = match ns {
        Resolved::Bound(n) => Some(n),
        Resolved::Unbound => None,
        Resolved::Unknown => return Child::Unknown,
    };
    if ns == message_ns {
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

impl ParseError {
    /// The stanza is well-formed XML but one of the children readtrack reads is not as the XEP
    /// says (a `<stanza-id>` without `by`, a `<delay>` with a stamp no clock can read...). The
    /// server accepted it all the same: see [`parse_message_header`].
    pub fn is_about_a_child(&self) -> bool {
        matches!(
            self,
            ParseError::ReceiptWithoutId
                | ParseError::MissingAttribute { .. }
                | ParseError::InvalidTimestamp { .. }
        )
    }
}

/// A message's top element only: `id`, `from`, `to`, `type`, its children left alone. For a
/// message the server accepted whose children [`parse_message`] refuses: it is still logged and
/// replayed as it was (its stored form is checked on its own), it only acknowledges nothing.
pub fn parse_message_header(stanza: &str) -> Result<Message, ParseError> {
    let mut events = Events::new(stanza);
    loop {
        let start = match events.next()? {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Text(t) if t.as_ref().trim().is_empty() => continue,
            Event::Decl(_) | Event::Comment(_) => continue,
            Event::Eof => return Err(ParseError::Malformed("no element".to_string())),
            _ => return Err(ParseError::Malformed("text before the root element".into())),
        };
        if start.local_name().as_ref() != "message" {
            return Err(ParseError::NotMessage(start.name().as_ref().to_string()));
        }
        let [id, from, to, kind] = get_attrs(&start, ["id", "from", "to", "type"])?;
        let mut msg = Message::new(MessageType::from_attr(kind.as_deref()));
        msg.id = id.map(Cow::into_owned);
        msg.from = parse_jid("from", from.as_deref())?;
        msg.to = parse_jid("to", to.as_deref())?;
        return Ok(msg);
    }
}

/// Parses one `<message>` stanza.
pub fn parse_message(stanza: &str) -> Result<Message, ParseError> {
    let mut events = Events::new(stanza);
    let (message_ns, root_empty, mut msg) = loop {
        let (start, empty) = match events.next()? {
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
        let message_ns = match events.resolve(start.name()) {
            Resolved::Unbound => None,
            Resolved::Bound(n) => match [NS_CLIENT, NS_COMPONENT, NS_SERVER]
                .into_iter()
                .find(|known| *known == n)
            {
                Some(known) => Some(known),
                None => return Err(ParseError::ForeignNamespace(n.to_string())),
            },
            Resolved::Unknown => {
                return Err(ParseError::NotMessage(start.name().as_ref().to_string()))
            }
        };
        let [id, from, to, kind] = get_attrs(&start, ["id", "from", "to", "type"])?;
        let mut msg = Message::new(MessageType::from_attr(kind.as_deref()));
        msg.id = id.map(Cow::into_owned);
        msg.from = parse_jid("from", from.as_deref())?;
        msg.to = parse_jid("to", to.as_deref())?;
        break (message_ns, empty, msg);
    };

    if !root_empty {
        loop {
            let (start, empty) = match events.next()? {
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
            let child = classify(
                events.resolve(start.name()),
                start.local_name().as_ref(),
                message_ns,
            );
            match child {
                Child::Body | Child::Thread => {
                    let text = read_text(&mut events, empty)?;
                    let slot = match child {
                        Child::Body => &mut msg.body,
                        _ => &mut msg.thread,
                    };
                    // Later bodies are translations (xml:lang); the first one is kept.
                    if slot.is_none() {
                        *slot = Some(text.into_owned());
                    }
                }
                Child::StanzaId => {
                    let [id, by] = get_attrs(&start, ["id", "by"])?;
                    msg.stanza_ids.push(StanzaId {
                        id: required("stanza-id", "id", id)?,
                        by: required("stanza-id", "by", by)?,
                    });
                    events.skip(&start, empty)?;
                }
                Child::Delay => {
                    let [stamp, from, current] = get_attrs(&start, ["stamp", "from", "current"])?;
                    let stamp = parse_time("delay", "stamp", stamp.as_deref())?;
                    let current = parse_time("delay", "current", current.as_deref())?;
                    let text = read_text(&mut events, empty)?;
                    let code = text.trim();
                    if msg.delay.is_none() {
                        msg.delay = Some(Delay {
                            stamp,
                            from: from.map(Cow::into_owned),
                            current,
                            code: (!code.is_empty()).then(|| code.to_string()),
                        });
                    }
                }
                Child::Offline => {
                    let [current] = get_attrs(&start, ["current"])?;
                    let current = parse_time("offline", "current", current.as_deref())?;
                    msg.offline.get_or_insert(current);
                    events.skip(&start, empty)?;
                }
                Child::Received => {
                    let [id, status_attr] = get_attrs(&start, ["id", "type"])?;
                    let text = read_text(&mut events, empty)?;
                    let receipt = match id {
                        Some(id) => Receipt::Xep0184 {
                            id: id.into_owned(),
                        },
                        None => {
                            let status = match text.trim() {
                                "" => status_attr.map(Cow::into_owned).unwrap_or_default(),
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
                    events.skip(&start, empty)?;
                }
                Child::Displayed => {
                    let [id] = get_attrs(&start, ["id"])?;
                    let id = required("displayed", "id", id)?;
                    msg.displayed.get_or_insert(id);
                    events.skip(&start, empty)?;
                }
                Child::Unknown => events.skip(&start, empty)?,
            }
        }
    }

    loop {
        match events.next()? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The parser as it was with quick-xml's `NsReader`, kept as the oracle the faster one must
    /// agree with on every input, errors included.
    mod reference {
        use quick_xml::events::{BytesStart, Event};
        use quick_xml::name::ResolveResult;
        use quick_xml::NsReader;

        use crate::jid::Jid;
        use crate::stanza::error::ParseError;
        use crate::stanza::{
            Delay, Message, MessageType, Receipt, StanzaId, NS_CLIENT, NS_COMPONENT, NS_DELAY,
            NS_MARKERS, NS_OFFLINE, NS_RECEIPTS, NS_SID,
        };
        use crate::time::Millis;

        const NS_SERVER: &str = "jabber:server";

        fn malformed(err: impl std::fmt::Display) -> ParseError {
            ParseError::Malformed(err.to_string())
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
        pub(super) fn parse_message(stanza: &str) -> Result<Message, ParseError> {
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
                            let [stamp, from, current] =
                                get_attrs(&start, ["stamp", "from", "current"])?;
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
                    quick_xml::Error::IllFormed(
                        quick_xml::errors::IllFormedError::MissingEndTag(_),
                    ) => unexpected_eof(),
                    e => malformed(e),
                })?;
            }
            Ok(())
        }
    }

    fn same(text: &str) {
        assert_eq!(
            parse_message(text),
            reference::parse_message(text),
            "{text:?}"
        );
        same_in_one_pass(text);
    }

    /// The one pass of [`crate::stanza::incoming`] yields what the separate readers do: the
    /// typed message (or the header where only a child is refused) and every stored form.
    fn same_in_one_pass(text: &str) {
        let once = crate::stanza::Incoming::read(text);
        let typed = parse_message(text);
        assert_eq!(once.parsed, typed, "typed: {text:?}");
        match &typed {
            Err(e) if e.is_about_a_child() => assert_eq!(
                once.header.as_deref(),
                parse_message_header(text).as_ref().ok(),
                "header: {text:?}"
            ),
            _ => assert_eq!(once.header, None, "header: {text:?}"),
        }
        for user in ["bob@example.com", "b@c", "B@C"] {
            for keep_to in [false, true] {
                assert_eq!(
                    once.original.stored_form(user, keep_to),
                    crate::stanza::original::stored_form(text, user, keep_to),
                    "stored form for {user}, keep_to {keep_to}: {text:?}"
                );
            }
        }
    }

    /// Every fixture and fuzz corpus input, whole and as the framer cuts it.
    #[test]
    fn agrees_with_the_reference_on_the_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("tests/fixtures"), root.join("fuzz/corpus")];
        let mut count = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                same(&String::from_utf8_lossy(&data));
                let mut framer = crate::stanza::Framer::new(Default::default());
                framer.push(&data);
                while let Ok(Some(frame)) = framer.next_frame() {
                    if let crate::stanza::Frame::Stanza(s) = frame {
                        same(&s);
                    }
                }
                count += 1;
            }
        }
        assert!(count > 1000, "only {count} inputs");
    }

    #[test]
    fn agrees_with_the_reference_on_namespaces() {
        let long: String = (0..130)
            .map(|i| format!(r#" xmlns:p{i}="urn:{i}""#))
            .collect();
        let cases = [
            r#"<message xmlns="jabber:client"><body>a</body></message>"#,
            r#"<message xmlns="jabber:server"><body>a</body></message>"#,
            r#"<message xmlns="jabber:component:accept"><body>a</body></message>"#,
            r#"<message xmlns="jabber&#58;client"><body>a</body></message>"#,
            r#"<c:message xmlns:c="jabber:client"><c:body>a</c:body><body>b</body></c:message>"#,
            r#"<c:message xmlns:c="jabber:client" xmlns="jabber:client"><body>b</body></c:message>"#,
            r#"<c:message><body>b</body></c:message>"#,
            r#"<:message xmlns="jabber:client"/>"#,
            r#"<message xmlns:="jabber:client"><body>x</body></message>"#,
            r#"<message xmlns:="urn:x"/>"#,
            r#"<message xmlns=""><body>x</body></message>"#,
            r#"<message xmlns="jabber:client"><body xmlns="">x</body></message>"#,
            r#"<message xmlns="jabber:client"><x xmlns=""><body>x</body></x><body>y</body></message>"#,
            r#"<message><r:received xmlns:r="urn:xmpp:receipts" id="1"/></message>"#,
            r#"<message><r:received xmlns:r="" id="1"/></message>"#,
            r#"<message xmlns:r="urn:xmpp:receipts"><x xmlns:r=""/><r:request/></message>"#,
            r#"<message xmlns:r="urn:xmpp:receipts"><x xmlns:r=""><r:request/></x><r:request/></message>"#,
            r#"<message><received xmlns="urn:xmpp:receipts" id="1"/><request xmlns="urn:xmpp:receipts"/></message>"#,
            r#"<message><xml:body>x</xml:body><xmlns:body>y</xmlns:body></message>"#,
            r#"<message xmlns:xml="http://www.w3.org/XML/1998/namespace"/>"#,
            r#"<message xmlns:xml="urn:x"/>"#,
            r#"<message xmlns:xmlns="urn:x"/>"#,
            r#"<message xmlns:p="http://www.w3.org/XML/1998/namespace"/>"#,
            r#"<message xmlns:p="http://www.w3.org/2000/xmlns/"/>"#,
            r#"<message xmlns="http://www.w3.org/2000/xmlns/"/>"#,
            r#"<message><body><x xmlns:xml="bad"/>t</body></message>"#,
            r#"<message><body>t</body><x><y xmlns:xml="bad"/></x></message>"#,
            r#"<message/><x xmlns:xml="bad"/>"#,
            r#"<message/><x xmlns="a">"#,
            r#"<message id="1" id="2" xmlns:xml="bad"/>"#,
            r#"<message xmlns:xml="bad" id="1" id="2"/>"#,
            r#"<message id=1 xmlns:xml="bad"/>"#,
            r#"<message xmlnsfoo="x" xmlns-x="y"><body>a</body></message>"#,
            r#"<message a="xmlns"><body>a</body></message>"#,
            r#"<message xmlns:a="urn:a" xmlns:a="urn:b"><a:x/></message>"#,
            r#"<message xmlns="jabber:client" xmlns="urn:foo"/>"#,
            r#"<message><a:b:body xmlns:a="jabber:client">x</a:b:body></message>"#,
            r#"<message><delay xmlns="urn:xmpp:delay" stamp="2013-11-20T06:41:36Z" from="d">  501 </delay></message>"#,
            r#"<message><stanza-id xmlns='urn:xmpp:sid:0' id='a&amp;b' by='x&#x9;y'/></message>"#,
            r#"<message id="m"><received xmlns="urn:xmpp:receipts" type="2&lt;00"/></message>"#,
            r#"<message id="m"><received xmlns="urn:xmpp:receipts">a<x/>b&amp;<![CDATA[c]]></received></message>"#,
            r#"<message><body>a</body><body>b</body><thread>c&#65;</thread></message>"#,
            r#"<message><body/><body>b</body></message>"#,
            r#"<message><body></body><body>b</body></message>"#,
            r#"<message><body>&lt;</body></message>"#,
            r#"<message><body>&lt;&gt;&#x1F600;x</body></message>"#,
        ];
        for text in cases {
            same(text);
        }
        same(&format!("<message{long}/>"));
        same(&format!("<message><x{long}/></message>"));
        same(&format!("<message><body>t</body><x{long}>"));
        let nested: String = (0..70)
            .map(|i| format!(r#"<x xmlns:q{i}="urn:{i}" xmlns:r{i}="urn:{i}">"#))
            .collect();
        same(&format!("<message><body>{nested}</body></message>"));
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "<message",
            "<c:message",
            "<message/>",
            "</message>",
            "<body>",
            "</body>",
            "<body/>",
            "<thread>",
            "</thread>",
            "<x>",
            "</x>",
            "<x/>",
            ">",
            "/>",
            " ",
            "\r\n",
            "text",
            " id=\"m1\"",
            " id='m2'",
            " type=\"crs\"",
            " type=\"chat\"",
            " from=\"A@B.c/R\"",
            " to=\"a@\"",
            " to=\"x@y\"",
            " xmlns=\"jabber:client\"",
            " xmlns=\"urn:foo\"",
            " xmlns=\"\"",
            " xmlns:c=\"jabber:client\"",
            " xmlns:c=\"\"",
            " xmlns:r=\"urn:xmpp:receipts\"",
            " xmlns:xml=\"u\"",
            " xmlns:=\"u\"",
            "<r:received",
            "</r:received>",
            "<received xmlns=\"urn:xmpp:receipts\"",
            "</received>",
            "<request xmlns=\"urn:xmpp:receipts\"/>",
            "<offline xmlns=\"urn:xmpp:offline\"",
            "</offline>",
            " current=\"soon\"",
            " current=\"2013-11-20T06:41:36Z\"",
            "<delay xmlns=\"urn:xmpp:delay\"",
            "</delay>",
            " stamp=\"2013-11-20T06:41:36.1Z\"",
            "<stanza-id xmlns=\"urn:xmpp:sid:0\"",
            " by=\"b\"",
            "<displayed xmlns=\"urn:xmpp:chat-markers:0\"",
            "</displayed>",
            "&amp;",
            "&#65;",
            "&#1;",
            "&nbsp;",
            "&",
            "<![CDATA[a]]>",
            "<!-- c -->",
            "<?xml version=\"1.0\"?>",
            "<!DOCTYPE x>",
            "<?pi x?>",
            "\"",
            "'",
            "=",
            "<",
            "</",
            ":",
        ])
    }

    /// Well-formed messages built from known and unknown children, in and out of namespaces.
    fn message() -> impl Strategy<Value = String> {
        let attrs = prop::sample::subsequence(
            vec![
                r#" id="m1""#,
                r#" type="crs""#,
                r#" from="Alice@Example.COM/Spark 2.6.3""#,
                r#" to="bob@example.com""#,
                r#" xmlns="jabber:client""#,
                r#" xmlns:c="jabber:client""#,
                r#" xmlns:r="urn:xmpp:receipts""#,
            ],
            0..=7,
        );
        let child = prop::sample::select(vec![
            "<body>hello</body>",
            "<body>a&amp;b\r\n<![CDATA[<c>]]>&#x1F600;</body>",
            "<c:body>prefixed</c:body>",
            "<body xmlns=\"urn:other\">other</body>",
            "<thread>t1</thread>",
            "<thread/>",
            "<r:request/>",
            "<r:received id=\"x\"/>",
            "<received xmlns=\"urn:xmpp:receipts\"> 200 </received>",
            "<received xmlns=\"urn:xmpp:receipts\" type=\"200\"/>",
            "<offline xmlns=\"urn:xmpp:offline\"/>",
            "<offline xmlns=\"urn:xmpp:offline\" current=\"2013-11-20T06:41:36Z\"/>",
            "<delay xmlns=\"urn:xmpp:delay\" stamp=\"2013-11-20T06:41:36Z\" from=\"d\">501</delay>",
            "<stanza-id xmlns=\"urn:xmpp:sid:0\" id=\"s\" by=\"b@c\"/>",
            "<displayed xmlns=\"urn:xmpp:chat-markers:0\" id=\"d\"/>",
            "<x xmlns=\"urn:x\"><body>inner</body><r:request/></x>",
            "<x xmlns:r=\"\"><r:request/></x>",
            "<r:x xmlns:r=\"\"/>",
            "<!-- note -->",
            "\n  ",
        ]);
        (attrs, prop::collection::vec(child, 0..6)).prop_map(|(attrs, children)| {
            let root = if attrs.iter().any(|a| a.contains("xmlns:c")) {
                "c:message"
            } else {
                "message"
            };
            format!("<{root}{}>{}</{root}>", attrs.concat(), children.concat())
        })
    }

    /// The split kept by [`Events`] answers for the tag it was made of and no other: asked
    /// for any other attribute text (an earlier tag, a copy), it splits that text.
    #[test]
    fn a_tags_split_is_kept_for_that_tag_only() {
        let text = "<a x='1' y=\"2\"><b z='3'/><b z='3'/><c x='1' x='2'/></a>";
        let mut events = Events::new(text);
        let Ok(Event::Start(a)) = events.next() else {
            panic!("<a>")
        };
        let a_pairs = [("x", "1"), ("y", "2")];
        assert_eq!(
            events.split_attrs_of(a.attributes_raw()).as_deref(),
            Some(&a_pairs[..])
        );
        let Ok(Event::Empty(b)) = events.next() else {
            panic!("<b/>")
        };
        assert_eq!(
            events.split_attrs_of(a.attributes_raw()).as_deref(),
            Some(&a_pairs[..])
        );
        assert_eq!(
            events.split_attrs_of(b.attributes_raw()).as_deref(),
            Some(&[("z", "3")][..])
        );
        let copy = String::from(" z='4'");
        assert_eq!(
            events.split_attrs_of(&copy).as_deref(),
            Some(&[("z", "4")][..])
        );
        let Ok(Event::Empty(b2)) = events.next() else {
            panic!("second <b/>")
        };
        assert_eq!(
            events.split_attrs_of(b2.attributes_raw()).as_deref(),
            Some(&[("z", "3")][..])
        );
        let Ok(Event::Empty(c)) = events.next() else {
            panic!("<c/>")
        };
        // Twice the same name: not split, left to quick-xml's iterator.
        assert_eq!(events.split_attrs_of(c.attributes_raw()), None);
        assert_eq!(
            events.split_attrs_of(b.attributes_raw()).as_deref(),
            Some(&[("z", "3")][..])
        );
    }

    #[test]
    fn split_attrs_takes_the_first_byte_into_the_name_as_quick_xml_does() {
        // quick-xml reads `=""` as a name `=""` lacking its `=`, not as an empty name.
        assert!(split_attrs(r#"="""#).is_none());
        let (pairs, count) = split_attrs(r#" a = 'x"y' b="" "#).unwrap();
        assert_eq!(&pairs[..count], &[("a", r#"x"y"#), ("b", "")]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Where `split_attrs` answers, quick-xml's checked iterator gives the same pairs and no
        /// error; where that iterator accepts a few attributes, `split_attrs` answers.
        #[test]
        fn split_attrs_agrees_with_quick_xml(raw in "[ab:= \t\r\n\"'&<>x]{0,24}") {
            let tag = BytesStart::from_content(format!("t{raw}"), 1);
            let theirs: Result<Vec<(String, String)>, _> = tag
                .attributes()
                .map(|a| a.map(|a| (a.key.as_ref().to_string(), a.value.into_owned())))
                .collect();
            match split_attrs(tag.attributes_raw()) {
                Some((pairs, count)) => {
                    let ours: Vec<(String, String)> = pairs[..count]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    prop_assert_eq!(theirs, Ok(ours));
                }
                None => prop_assert!(
                    theirs.as_ref().map_or(true, |t| t.len() > FEW_ATTRS),
                    "{:?}",
                    theirs
                ),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn agrees_with_the_reference_on_generated_messages(text in message()) {
            prop_assert_eq!(parse_message(&text), reference::parse_message(&text), "{:?}", text);
            same_in_one_pass(&text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_the_reference_on_generated_stanzas(
            pieces in prop::collection::vec(piece(), 0..24)
        ) {
            let text = pieces.concat();
            prop_assert_eq!(parse_message(&text), reference::parse_message(&text), "{:?}", text);
            same_in_one_pass(&text);
        }
    }
}
