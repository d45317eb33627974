//! The hook vocabulary (`urn:readtrack:hook:0`) spoken between the server module
//! (`contrib/prosody/mod_readtrack.lua`) and readtrack, documented in `schema/hooks.xsd`.
//!
//! Events travel as `<message from=HOST to=COMPONENT>` with one child in the hook namespace;
//! commands as `<message from=COMPONENT to=HOST>`. A user stanza inside either is wrapped in a
//! XEP-0297 `<forwarded>` and must be in `jabber:client`: the module relies on that namespace to
//! tell the inner stanza from the wrapper, and a `<message>` without it would inherit
//! `urn:xmpp:forward:0` from `<forwarded>`.
//!
//! An event is read in one pass: the client message inside it is read where it stands
//! ([`crate::stanza::incoming`]), typed and laid out for its stored form, and kept as the exact
//! bytes received. A command's inner stanza is readtrack's own output, written in `jabber:client`
//! by [`crate::stanza::write::client_outgoing`], and is wrapped as it is; a replay to a module
//! that executes `<deliver-bytes>` carries it instead in one attribute, as written for the
//! client's stream ([`crate::stanza::write::client_stream`]). Sans-IO: text in, values out, and
//! back.

use std::borrow::Cow;

use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};

use crate::jid::{Jid, JidError};
use crate::stanza::incoming::{self, Incoming};
use crate::stanza::parse::{self, Events, Resolved};
use crate::stanza::{Message, MessageType, ParseError, Receipt, NS_CLIENT, NS_FORWARD};

pub const NS_HOOK: &str = "urn:readtrack:hook:0";

/// One available session, as listed by `<snapshot>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Full JID of the session.
    pub jid: Jid,
    /// A stable client id, when the server knows one (SASL2 `<user-agent id>`).
    pub device_id: Option<String>,
    /// The server's id of this connection, unique for the server's lifetime: it tells a
    /// session that continued across a reconnect of readtrack from a new one that reused the
    /// resource meanwhile.
    pub session_id: Option<String>,
}

/// Where one `<snapshot>` stanza is in its snapshot. A module older than pages sends the whole
/// snapshot in one stanza without these attributes: page 1, last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPage {
    /// From 1.
    pub number: u32,
    pub last: bool,
    /// The module executes the compact [`HookCommand::Ack`] (the page's `executes` names
    /// `ack`). A module older than it says nothing and gets the whole `<send>` form.
    pub executes_ack: bool,
    /// The module executes the compact [`HookCommand::Bounce`] (`executes` names `bounce`);
    /// otherwise a bounce goes as the whole `<send>`.
    pub executes_bounce: bool,
    /// The module executes the compact [`HookCommand::DeliverBytes`] (`executes` names
    /// `deliver-bytes`); otherwise a replay goes as the whole `<deliver>`.
    pub executes_deliver_bytes: bool,
}

impl SnapshotPage {
    pub const WHOLE: SnapshotPage = SnapshotPage {
        number: 1,
        last: true,
        executes_ack: false,
        executes_bounce: false,
        executes_deliver_bytes: false,
    };
}

/// What the server module reports (module → component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// A session sent its initial presence: replay to it starts now.
    Available {
        jid: Jid,
        device_id: Option<String>,
        /// As in [`SessionInfo`].
        session_id: Option<String>,
    },
    /// A session went away (unavailable presence or resource unbind).
    Unavailable {
        jid: Jid,
        /// As in [`SessionInfo`]: which connection of that resource went away.
        session_id: Option<String>,
    },
    /// A message to the local user `to` was routed and written to exactly `sessions` (full JIDs;
    /// empty when none was online, in which case the server did not store it offline).
    Routed {
        to: Jid,
        /// The MAM `<stanza-id>` the server archived it under, if any.
        archive_id: Option<String>,
        sessions: Vec<Jid>,
        /// Sessions a carbon of it was written to (`<carbon jid>`): the recipient's other
        /// sessions (received carbons) and, for `sent="true"`, the sender's (sent carbons).
        carbons: Vec<Jid>,
        /// The routed `<message xmlns="jabber:client">`, read where it stood in the event.
        message: Incoming,
        /// Sent by the local session its `from` names: this event also stands for that
        /// session's [`HookEvent::Sent`], which the module then does not send (`sent="true"`).
        /// Once readtrack accepts `routed-signal` ([`HookCommand::Accepts`]), also for a receipt
        /// or marker written to a session of its addressee: the event then stands for its
        /// [`HookEvent::Signal`], read from the routed message itself.
        sent: bool,
        /// The number under which the module holds this message, taken from the server's
        /// offline handling (no session got it), until readtrack confirms it durable
        /// ([`HookCommand::Durable`]); numbered upwards, never reused within the server's
        /// process (across connections too). None from a module that keeps no claims.
        claim: Option<u64>,
    },
    /// A stanza a local client sent (its own message, a receipt, a marker), as text, and the
    /// sender's other sessions a carbon of it was written to.
    Sent {
        message: Incoming,
        carbons: Vec<Jid>,
    },
    /// All available sessions, sent when the component (re)connects, in pages of a bounded
    /// number of sessions (so no stanza grows with the number of sessions): the snapshot is
    /// the sessions of pages 1 to the one marked `last`, in order.
    Snapshot {
        page: SnapshotPage,
        sessions: Vec<SessionInfo>,
    },
    /// The module executed the command that carried this `id` (or had already: it executes one
    /// id once).
    Done { id: String },
    /// The same for several commands at once: the ids of one command message (the wire's
    /// `<done ids>`, space-separated), sent only once readtrack accepts `done-list`
    /// ([`HookCommand::Accepts`]).
    DoneList { ids: Vec<String> },
    /// Answer to [`HookCommand::Pace`]: everything written to session `jid` up to that command
    /// has left the server's send buffer for the connection (issue 14: replay flow control).
    Drained { jid: Jid, token: u64 },
    /// A receipt or chat marker a local client sent, with nothing else in it (what
    /// [`crate::stanza::original::Class::signal`] calls a signal), in the compact form: what
    /// [`HookEvent::Sent`] would carry, as the values readtrack reads of it rather than the
    /// client's whole stanza. The module sends it once readtrack has accepted it
    /// ([`HookCommand::Accepts`]); a signal is never logged, so there is nothing to keep.
    Signal { message: Message },
    /// The server's token of the account of `user` (bare JID; the wire's `jid`), told before
    /// the first event about that user on each connection. Another token for a known user: the
    /// account was deleted and created again meanwhile (possibly outside the running server).
    Account { user: Jid, token: String },
    /// The server deleted the account of `user` (bare JID; the wire's `jid`).
    UserDeleted { user: Jid },
}

/// What readtrack asks the server module to do (component → host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCommand {
    /// Write `stanza_xml` to exactly the session `to`, or drop it if that session is gone.
    Deliver { to: Jid, stanza_xml: String },
    /// Route `stanza_xml` as the host (server acks and bounces, `from` = the domain); the
    /// wire's `<send>`, the engine's [`crate::engine::Output::SendAsHost`].
    SendAsHost { stanza_xml: String },
    /// Hand a message readtrack could not log back to the server's own offline storage for
    /// the local user `to` (bare), as if readtrack were not there.
    StoreOffline { to: Jid, stanza_xml: String },
    /// Answer with [`HookEvent::Drained`] carrying `token` once what was written to session `to`
    /// so far has left the server (its send buffer drained); nothing if the session goes away.
    Pace { to: Jid, token: u64 },
    /// The event forms this readtrack reads beyond the first vocabulary (`signal`,
    /// `done-list`, `claims`, `routed-signal`, `inherited-namespace`), told once per connection
    /// before any other command; a module older than compact events ignores it, and one that
    /// knows them sends them only after being told (`claims`: it numbers the messages it takes from offline handling and holds
    /// them until [`HookCommand::Durable`]).
    Accepts { events: String },
    /// The claims of this connection numbered `from` to `upto` ([`HookEvent::Routed`]'s
    /// `claim`) are durable in readtrack's log or were handed back with
    /// [`HookCommand::StoreOffline`] before this command, except those in `returned`
    /// (inclusive ranges), which readtrack did not log (their event was refused, or never
    /// arrived): the module hands those to the server's offline storage from its own copy.
    /// Either way the module forgets them. Sent only after the commit that made them durable.
    Durable {
        from: u64,
        upto: u64,
        returned: Vec<(u64, u64)>,
    },
    /// The seed server ack (10013) from the host to the session `to`, in the compact form the
    /// module fills into a template instead of parsing a whole `<message>`; sent only once the
    /// module said it executes it ([`SnapshotPage::executes_ack`]). `message_id` is the acked
    /// message's id (the command's own `id` attribute is the `<done>` id, as for every command);
    /// `time` is the RFC 3339 time of the ack's body.
    Ack {
        to: Jid,
        message_id: String,
        time: String,
    },
    /// The seed delay bounce (501) from the host to the session `to`, compact as
    /// [`HookCommand::Ack`]: the module fills a template with the bounced message's id, its
    /// body (none: the bounce has no `<body>`; the wire's `body` attribute) and the RFC 3339
    /// `time` of `<delay current>`.
    /// Sent only once the module said it executes it ([`SnapshotPage::executes_bounce`]).
    Bounce {
        to: Jid,
        message_id: String,
        body: Option<String>,
        time: String,
    },
    /// [`HookCommand::Deliver`] in the compact form (the wire's `<deliver-bytes>`): the stanza
    /// as written on the client's stream ([`crate::stanza::write::client_stream`]: no `xmlns`
    /// on it), carried in an attribute, which Prosody's parser hands the module as one string
    /// (the whole `<deliver>` cost it a table per element and a serialisation again), beside
    /// what the module decides on: the stanza's `from` (the blocklist) and `id` (what was
    /// written to the session). Sent only once the module said it executes it
    /// ([`SnapshotPage::executes_deliver_bytes`]); built with [`HookCommand::deliver_bytes`].
    DeliverBytes {
        to: Jid,
        from: Option<String>,
        message_id: Option<String>,
        stanza_xml: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("malformed hook stanza: {0}")]
    Xml(String),
    #[error("hook stanza is <{0}>, expected <message>")]
    NotMessage(String),
    #[error("hook message from {from:?} is not from {expected:?}")]
    WrongSender {
        from: Option<String>,
        expected: String,
    },
    #[error("hook message has no element in urn:readtrack:hook:0")]
    NoHookElement,
    #[error("unknown hook event <{0}>")]
    UnknownEvent(String),
    #[error("unknown hook command <{0}>")]
    UnknownCommand(String),
    #[error("<{element}> has no {attr} attribute")]
    MissingAttribute { element: String, attr: &'static str },
    #[error("<{element} {attr}>: {source}")]
    BadJid {
        element: String,
        attr: &'static str,
        source: JidError,
    },
    #[error("<{element} {attr}> must be a bare JID, got {value:?}")]
    NotBare {
        element: String,
        attr: &'static str,
        value: String,
    },
    #[error(
        "<{0}> has no <forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\">"
    )]
    MissingForwarded(String),
}

fn local_name(e: &BytesStart) -> String {
    e.local_name().as_ref().to_string()
}

fn xml_err(e: impl std::fmt::Display) -> HookError {
    HookError::Xml(e.to_string())
}

/// The attributes of one element, read once: looking each name up with
/// `BytesStart::try_get_attribute` scanned the element again per name (a `<signal>` is read
/// for eight names). A lookup answers as that scan would: the first attribute of the name
/// before the first malformed one, else that one's error, else none.
///
/// The common tag (a few well-formed attributes, none twice) is split by
/// [`parse::split_attrs`] without quick-xml's iterator, which gives the same pairs there.
struct Attrs<'a> {
    element: &'a BytesStart<'a>,
    read: Read<'a>,
}

enum Read<'a> {
    /// Name and raw value, as [`parse::split_attrs`] splits them.
    Few(Cow<'a, [(&'a str, &'a str)]>),
    /// Read by quick-xml's unchecked iterator, up to the first malformed attribute.
    Scanned {
        read: Vec<quick_xml::events::attributes::Attribute<'a>>,
        broken: Option<quick_xml::events::attributes::AttrError>,
    },
}

impl<'a> Attrs<'a> {
    fn of(element: &'a BytesStart<'a>) -> Attrs<'a> {
        let split = parse::split_attrs(element.attributes_raw());
        Attrs::split(
            element,
            split.map(|(pairs, count)| Cow::Owned(pairs[..count].to_vec())),
        )
    }

    /// The attributes of the tag `events` just read, as split when it was read.
    fn of_read(events: &'a Events<'_>, element: &'a BytesStart<'a>) -> Attrs<'a> {
        Attrs::split(element, events.split_attrs_of(element.attributes_raw()))
    }

    fn split(
        element: &'a BytesStart<'a>,
        split: Option<Cow<'a, [(&'a str, &'a str)]>>,
    ) -> Attrs<'a> {
        if let Some(pairs) = split {
            return Attrs {
                element,
                read: Read::Few(pairs),
            };
        }
        let mut read = Vec::new();
        let mut broken = None;
        for a in element.attributes().with_checks(false) {
            match a {
                Ok(a) => read.push(a),
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        Attrs {
            element,
            read: Read::Scanned { read, broken },
        }
    }

    /// The raw (still escaped) value of the attribute `name`.
    fn get(&self, name: &str) -> Result<Option<&str>, HookError> {
        match &self.read {
            Read::Few(pairs) => Ok(pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|&(_, value)| value)),
            Read::Scanned { read, broken } => match read.iter().find(|a| a.key.as_ref() == name) {
                Some(a) => Ok(Some(&a.value)),
                None => match broken {
                    Some(e) => Err(xml_err(e)),
                    None => Ok(None),
                },
            },
        }
    }
}

/// The value of the attribute `name`, unescaped and normalised as XML requires
/// (`Attribute::normalized_value`, which changes nothing in a value without tabs, line ends
/// or references).
fn attr(e: &Attrs, name: &str) -> Result<Option<String>, HookError> {
    let Some(raw) = e.get(name)? else {
        return Ok(None);
    };
    if !raw
        .bytes()
        .any(|b| matches!(b, b'\t' | b'\r' | b'\n' | b'&'))
    {
        return Ok(Some(raw.to_string()));
    }
    let a = quick_xml::events::attributes::Attribute {
        key: quick_xml::name::QName(name),
        value: Cow::Borrowed(raw),
    };
    Ok(Some(
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(xml_err)?
            .into_owned(),
    ))
}

fn required(e: &Attrs, name: &'static str) -> Result<String, HookError> {
    attr(e, name)?.ok_or_else(|| HookError::MissingAttribute {
        element: local_name(e.element),
        attr: name,
    })
}

fn jid_attr(e: &Attrs, name: &'static str) -> Result<Jid, HookError> {
    Jid::parse(&required(e, name)?).map_err(|source| HookError::BadJid {
        element: local_name(e.element),
        attr: name,
        source,
    })
}

/// The `token` of `<pace>` and `<drained>`: a decimal u64.
fn token_attr(e: &Attrs, element: &str) -> Result<u64, HookError> {
    let text = attr(e, "token")?.ok_or_else(|| HookError::MissingAttribute {
        element: element.to_string(),
        attr: "token",
    })?;
    text.parse()
        .map_err(|_| HookError::Xml(format!("<{element} token> must be a number, got {text:?}")))
}

/// An optional decimal u64 attribute (`<routed claim>`).
fn number_attr(e: &Attrs, element: &str, name: &str) -> Result<Option<u64>, HookError> {
    attr(e, name)?
        .map(|text| {
            text.parse().map_err(|_| {
                HookError::Xml(format!("<{element} {name}> must be a number, got {text:?}"))
            })
        })
        .transpose()
}

/// A required decimal u64 attribute.
fn required_number(e: &Attrs, element: &str, name: &'static str) -> Result<u64, HookError> {
    number_attr(e, element, name)?.ok_or_else(|| HookError::MissingAttribute {
        element: element.to_string(),
        attr: name,
    })
}

/// `<durable return>`: space-separated claim numbers and inclusive ranges `a-b` (a <= b).
fn claim_ranges(text: &str) -> Result<Vec<(u64, u64)>, HookError> {
    let bad = || {
        HookError::Xml(format!(
            "<durable return> must list numbers and ranges a-b, got {text:?}"
        ))
    };
    text.split_ascii_whitespace()
        .map(|item| {
            let (first, last) = item.split_once('-').unwrap_or((item, item));
            let first: u64 = first.parse().map_err(|_| bad())?;
            let last: u64 = last.parse().map_err(|_| bad())?;
            if first > last {
                return Err(bad());
            }
            Ok((first, last))
        })
        .collect()
}

fn claim_ranges_xml(ranges: &[(u64, u64)]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        })
        .collect();
    items.join(" ")
}

fn full_jid_attr(e: &Attrs, name: &'static str) -> Result<Jid, HookError> {
    let jid = jid_attr(e, name)?;
    if !jid.is_full() {
        return Err(HookError::BadJid {
            element: local_name(e.element),
            attr: name,
            source: JidError::NotFull(jid.to_string()),
        });
    }
    Ok(jid)
}

fn bare_jid_attr(e: &Attrs, name: &'static str) -> Result<Jid, HookError> {
    let jid = jid_attr(e, name)?;
    if jid.is_full() {
        return Err(HookError::NotBare {
            element: local_name(e.element),
            attr: name,
            value: jid.to_string(),
        });
    }
    Ok(jid)
}

/// A child element of the one being walked, with where its text starts in the input.
struct Child<'i> {
    ns_hook: bool,
    ns_forward: bool,
    ns_client: bool,
    start: BytesStart<'i>,
    empty: bool,
    offset: usize,
}

/// What a hook element holds: sessions, carbons, the forwarded message.
type HookContent<T> = (Vec<SessionInfo>, Vec<Jid>, Option<T>);

/// Walks a hook stanza once, front to back, with the stanza layer's reader: the inner message
/// of an event is read by [`incoming::read_message`] where it stands, so nothing is tokenised
/// twice. Every event read is checked as a hook stanza must be (one element, no DTD, no text
/// around it, complete), so a truncated or padded stanza fails as it did when that check was a
/// pass of its own.
struct Walker<'i> {
    text: &'i str,
    events: Events<'i>,
    /// Elements open.
    depth: usize,
    /// Top-level elements seen.
    elements: usize,
    /// The XML broke here: nothing after it is read (an event of a batch after a broken one).
    failed: Option<HookError>,
}

fn broken_xml(e: ParseError) -> HookError {
    match e {
        ParseError::Malformed(why) => HookError::Xml(why),
        e => HookError::Xml(e.to_string()),
    }
}

impl<'i> Walker<'i> {
    fn new(text: &'i str) -> Walker<'i> {
        Walker {
            text,
            events: Events::new(text),
            depth: 0,
            elements: 0,
            failed: None,
        }
    }

    fn next(&mut self) -> Result<Event<'i>, HookError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let event = match self.events.next() {
            Ok(event) => event,
            Err(e) => return Err(self.fail(broken_xml(e))),
        };
        match &event {
            Event::Start(_) => {
                if self.depth == 0 {
                    self.elements += 1;
                }
                self.depth += 1;
            }
            Event::Empty(_) if self.depth == 0 => self.elements += 1,
            Event::End(_) => self.depth -= 1, // the reader refuses an unmatched end tag
            Event::Text(t) if self.depth == 0 && !t.as_ref().trim().is_empty() => {
                return Err(HookError::Xml("text outside the stanza".into()))
            }
            Event::DocType(_) => return Err(HookError::Xml("DTD not allowed".into())),
            Event::Eof => self.complete()?,
            _ => {}
        }
        Ok(event)
    }

    fn complete(&self) -> Result<(), HookError> {
        match (self.depth, self.elements) {
            (0, 1) => Ok(()),
            (0, n) => Err(HookError::Xml(format!(
                "{n} top-level elements, expected 1"
            ))),
            (open, _) => Err(HookError::Xml(format!("{open} element(s) not closed"))),
        }
    }

    /// Reads the rest of the stanza, which must complete it.
    fn rest(&mut self) -> Result<(), HookError> {
        while !matches!(self.next()?, Event::Eof) {}
        Ok(())
    }

    /// The next child element of the current element, or `None` at its end tag (or at the end
    /// of input when walking the top level).
    fn next_child(&mut self) -> Result<Option<Child<'i>>, HookError> {
        loop {
            let offset = self.events.position();
            let (start, empty) = match self.next()? {
                Event::Start(s) => (s, false),
                Event::Empty(s) => (s, true),
                Event::End(_) | Event::Eof => return Ok(None),
                _ => continue, // text, comments, declarations carry nothing here
            };
            let ns = self.events.resolve(start.name());
            let is = |want: &str| matches!(ns, Resolved::Bound(n) if n == want);
            return Ok(Some(Child {
                ns_hook: is(NS_HOOK),
                ns_forward: is(NS_FORWARD),
                ns_client: is(NS_CLIENT),
                start,
                empty,
                offset,
            }));
        }
    }

    /// The XML broke: `e`, and again for every read after it.
    fn fail(&mut self, e: HookError) -> HookError {
        self.failed = Some(e.clone());
        e
    }

    /// Reads on until no more than `depth` elements are open.
    fn close_to(&mut self, depth: usize) -> Result<(), HookError> {
        while self.depth > depth {
            self.next()?;
        }
        Ok(())
    }

    /// Consumes the rest of `child` (its content and end tag); returns its whole text.
    fn finish(&mut self, child: &Child<'i>) -> Result<&'i str, HookError> {
        if !child.empty {
            self.close_to(self.depth - 1)?;
        }
        Ok(&self.text[child.offset..self.events.position()])
    }

    /// Reads the user's message `child` to its end, typed and laid out in the same pass.
    fn read_message(&mut self, child: &Child<'i>) -> Result<Incoming, HookError> {
        let read =
            incoming::read_message(&mut self.events, &child.start, child.empty, child.offset);
        if read.doctype {
            return Err(self.fail(HookError::Xml("DTD not allowed".into())));
        }
        if let Some(broken) = &read.broken {
            let e = if *broken == parse::unexpected_eof() {
                HookError::Xml(format!("{} element(s) not closed", self.events.level()))
            } else {
                broken_xml(broken.clone())
            };
            return Err(self.fail(e));
        }
        if !child.empty {
            self.depth -= 1; // its end tag was read by the message reader
        }
        let text = &self.text[child.offset..read.end];
        Ok(read.finish(text))
    }

    /// Inside `<forwarded>`: the `<message xmlns="jabber:client">`, if present, taken by `take`.
    fn forwarded_message<T>(
        &mut self,
        forwarded: &Child<'i>,
        take: &mut impl FnMut(&mut Self, &Child<'i>) -> Result<T, HookError>,
    ) -> Result<Option<T>, HookError> {
        let mut found = None;
        if forwarded.empty {
            return Ok(None);
        }
        while let Some(c) = self.next_child()? {
            if found.is_none() && c.ns_client && c.start.local_name().as_ref() == "message" {
                found = Some(take(self, &c)?);
            } else {
                self.finish(&c)?;
            }
        }
        Ok(found)
    }

    /// Walks the children of a hook element: `<session>`s, `<carbon>`s and one `<forwarded>`,
    /// whose message `take` reads.
    fn hook_content<T>(
        &mut self,
        element: &Child<'i>,
        mut take: impl FnMut(&mut Self, &Child<'i>) -> Result<T, HookError>,
    ) -> Result<HookContent<T>, HookError> {
        let mut sessions = Vec::new();
        let mut carbons = Vec::new();
        let mut message = None;
        if element.empty {
            return Ok((sessions, carbons, message));
        }
        while let Some(c) = self.next_child()? {
            if c.ns_hook && c.start.local_name().as_ref() == "carbon" {
                carbons.push(full_jid_attr(
                    &Attrs::of_read(&self.events, &c.start),
                    "jid",
                )?);
                self.finish(&c)?;
            } else if c.ns_hook && c.start.local_name().as_ref() == "session" {
                let a = Attrs::of_read(&self.events, &c.start);
                sessions.push(SessionInfo {
                    jid: full_jid_attr(&a, "jid")?,
                    device_id: attr(&a, "device-id")?,
                    session_id: attr(&a, "session-id")?,
                });
                self.finish(&c)?;
            } else if c.ns_forward
                && c.start.local_name().as_ref() == "forwarded"
                && message.is_none()
            {
                message = self.forwarded_message(&c, &mut take)?;
            } else {
                self.finish(&c)?;
            }
        }
        Ok((sessions, carbons, message))
    }

    /// The text of a forwarded message, as it is (commands carry readtrack's own output).
    fn message_text(&mut self, child: &Child<'i>) -> Result<String, HookError> {
        Ok(self.finish(child)?.to_string())
    }

    /// Opens the outer `<message>`, checks its sender and returns its hook child.
    fn open(&mut self, expected_from: &str) -> Result<Child<'i>, HookError> {
        let outer = self
            .next_child()?
            .ok_or_else(|| HookError::Xml("no element".into()))?;
        let name = local_name(&outer.start);
        if name != "message" || outer.ns_hook || outer.ns_forward || outer.empty {
            return Err(HookError::NotMessage(name));
        }
        let from = attr(&Attrs::of_read(&self.events, &outer.start), "from")?;
        let same = from
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case(expected_from));
        if !same {
            return Err(HookError::WrongSender {
                from,
                expected: expected_from.to_string(),
            });
        }
        self.next_hook_child()?.ok_or(HookError::NoHookElement)
    }

    /// The next child in the hook namespace of the current element, past any other.
    fn next_hook_child(&mut self) -> Result<Option<Child<'i>>, HookError> {
        while let Some(c) = self.next_child()? {
            if c.ns_hook {
                return Ok(Some(c));
            }
            self.finish(&c)?;
        }
        Ok(None)
    }
}

impl HookEvent {
    /// Parses one event `<message>` (as framed from the component stream). `host` is the XMPP
    /// domain the module runs on: events from anyone else are refused.
    pub fn parse(stanza: &str, host: &str) -> Result<HookEvent, HookError> {
        let mut w = Walker::new(stanza);
        let el = w.open(host)?;
        let event = Self::parse_element(&mut w, &el)?;
        w.rest()?;
        Ok(event)
    }

    /// Every event of one event `<message>`, in order: one, or several once readtrack accepts
    /// `batched` (the module then writes the events of one turn in one message). An event that
    /// does not read is an `Err` in its place and the others stand; the whole is an `Err` only
    /// where the message itself is not one (its sender, its XML). XML that breaks after some
    /// events read ends the list with the error.
    pub fn parse_batch(
        stanza: &str,
        host: &str,
    ) -> Result<Vec<Result<HookEvent, HookError>>, HookError> {
        let mut w = Walker::new(stanza);
        let mut next = Some(w.open(host)?);
        let mut events = Vec::with_capacity(1);
        while let Some(el) = next {
            let outside = w.depth - usize::from(!el.empty);
            events.push(Self::parse_element(&mut w, &el));
            if w.failed.is_some() {
                return Ok(events); // its error is the event's
            }
            // Past what an event that did not read left of its element.
            next = match w.close_to(outside).and_then(|()| w.next_hook_child()) {
                Ok(next) => next,
                Err(e) => {
                    events.push(Err(e));
                    return Ok(events);
                }
            };
        }
        if let Err(e) = w.rest() {
            events.push(Err(e));
        }
        Ok(events)
    }

    fn parse_element<'i>(w: &mut Walker<'i>, el: &Child<'i>) -> Result<HookEvent, HookError> {
        let name = local_name(&el.start);
        let a = Attrs::of_read(&w.events, &el.start);
        let event = match name.as_str() {
            "available" => HookEvent::Available {
                jid: full_jid_attr(&a, "jid")?,
                device_id: attr(&a, "device-id")?,
                session_id: attr(&a, "session-id")?,
            },
            "unavailable" => HookEvent::Unavailable {
                jid: full_jid_attr(&a, "jid")?,
                session_id: attr(&a, "session-id")?,
            },
            "routed" => {
                let to = bare_jid_attr(&a, "to")?;
                let archive_id = attr(&a, "archive-id")?;
                let sent = match attr(&a, "sent")?.as_deref() {
                    None | Some("false") | Some("0") => false,
                    Some("true") | Some("1") => true,
                    Some(other) => {
                        return Err(HookError::Xml(format!(
                            "<routed sent> must be a boolean, got {other:?}"
                        )))
                    }
                };
                let claim = number_attr(&a, &name, "claim")?;
                let (sessions, carbons, message) = w.hook_content(el, Walker::read_message)?;
                HookEvent::Routed {
                    to,
                    archive_id,
                    sent,
                    claim,
                    sessions: sessions.into_iter().map(|s| s.jid).collect(),
                    carbons,
                    message: message.ok_or(HookError::MissingForwarded(name))?,
                }
            }
            "sent" => {
                let (_, carbons, message) = w.hook_content(el, Walker::read_message)?;
                HookEvent::Sent {
                    message: message.ok_or(HookError::MissingForwarded(name))?,
                    carbons,
                }
            }
            "snapshot" => {
                let number = match attr(&a, "page")?.as_deref() {
                    None => 1,
                    Some(text) => {
                        text.parse::<u32>()
                            .ok()
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| {
                                HookError::Xml(format!(
                                    "<snapshot page> must be a number from 1, got {text:?}"
                                ))
                            })?
                    }
                };
                let last = match attr(&a, "last")?.as_deref() {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(other) => {
                        return Err(HookError::Xml(format!(
                            "<snapshot last> must be a boolean, got {other:?}"
                        )))
                    }
                };
                let executes = attr(&a, "executes")?.unwrap_or_default();
                let executes = |command| executes.split_ascii_whitespace().any(|c| c == command);
                HookEvent::Snapshot {
                    page: SnapshotPage {
                        number,
                        last,
                        executes_ack: executes("ack"),
                        executes_bounce: executes("bounce"),
                        executes_deliver_bytes: executes("deliver-bytes"),
                    },
                    sessions: w.hook_content(el, Walker::message_text)?.0,
                }
            }
            "account" => HookEvent::Account {
                user: bare_jid_attr(&a, "jid")?,
                token: required(&a, "token")?,
            },
            "user-deleted" => HookEvent::UserDeleted {
                user: bare_jid_attr(&a, "jid")?,
            },
            "done" => match (attr(&a, "id")?, attr(&a, "ids")?) {
                (Some(id), _) => HookEvent::Done { id },
                (None, Some(ids)) if !ids.trim().is_empty() => HookEvent::DoneList {
                    ids: ids.split_ascii_whitespace().map(String::from).collect(),
                },
                _ => {
                    return Err(HookError::MissingAttribute {
                        element: name.clone(),
                        attr: "id",
                    })
                }
            },
            "drained" => HookEvent::Drained {
                jid: full_jid_attr(&a, "jid")?,
                token: token_attr(&a, &name)?,
            },
            "signal" => HookEvent::Signal {
                message: signal(&a)?,
            },
            _ => return Err(HookError::UnknownEvent(name)),
        };
        Ok(event)
    }

    /// Serialises the event as the module would send it; for tests and for other server modules.
    pub fn to_xml(&self, host: &str, component: &str) -> String {
        let body = match self {
            HookEvent::Available {
                jid,
                device_id,
                session_id,
            } => format!(
                "<available xmlns=\"{NS_HOOK}\" jid=\"{}\"{}{}/>",
                escape(jid.to_string()),
                opt_attr("device-id", device_id.as_deref()),
                opt_attr("session-id", session_id.as_deref())
            ),
            HookEvent::Unavailable { jid, session_id } => format!(
                "<unavailable xmlns=\"{NS_HOOK}\" jid=\"{}\"{}/>",
                escape(jid.to_string()),
                opt_attr("session-id", session_id.as_deref())
            ),
            HookEvent::Routed {
                to,
                archive_id,
                sessions,
                carbons,
                message,
                sent,
                claim,
            } => {
                let sessions: String = sessions
                    .iter()
                    .map(|s| format!("<session jid=\"{}\"/>", escape(s.to_string())))
                    .chain(carbons_xml(carbons))
                    .collect();
                format!(
                    "<routed xmlns=\"{NS_HOOK}\" to=\"{}\"{}{}{}>{sessions}{}</routed>",
                    escape(to.to_string()),
                    opt_attr("archive-id", archive_id.as_deref()),
                    if *sent { " sent=\"true\"" } else { "" },
                    claim.map_or_else(String::new, |n| format!(" claim=\"{n}\"")),
                    forwarded(message.original.text())
                )
            }
            HookEvent::Sent { message, carbons } => {
                format!(
                    "<sent xmlns=\"{NS_HOOK}\">{}{}</sent>",
                    carbons_xml(carbons).collect::<String>(),
                    forwarded(message.original.text())
                )
            }
            HookEvent::Snapshot { page, sessions } => {
                let sessions: String = sessions
                    .iter()
                    .map(|s| {
                        format!(
                            "<session jid=\"{}\"{}{}/>",
                            escape(s.jid.to_string()),
                            opt_attr("device-id", s.device_id.as_deref()),
                            opt_attr("session-id", s.session_id.as_deref())
                        )
                    })
                    .collect();
                let mut attrs = if page.number == 1 && page.last {
                    String::new()
                } else {
                    format!(" page=\"{}\" last=\"{}\"", page.number, page.last)
                };
                let executes: Vec<&str> = [
                    (page.executes_ack, "ack"),
                    (page.executes_bounce, "bounce"),
                    (page.executes_deliver_bytes, "deliver-bytes"),
                ]
                .into_iter()
                .filter_map(|(yes, command)| yes.then_some(command))
                .collect();
                if !executes.is_empty() {
                    attrs.push_str(&format!(" executes=\"{}\"", executes.join(" ")));
                }
                let page = attrs;
                format!("<snapshot xmlns=\"{NS_HOOK}\"{page}>{sessions}</snapshot>")
            }
            HookEvent::Done { id } => {
                format!("<done xmlns=\"{NS_HOOK}\" id=\"{}\"/>", escape(id.as_str()))
            }
            HookEvent::DoneList { ids } => {
                format!(
                    "<done xmlns=\"{NS_HOOK}\" ids=\"{}\"/>",
                    escape(ids.join(" "))
                )
            }
            HookEvent::Signal { message } => signal_xml(message),
            HookEvent::Account { user, token } => format!(
                "<account xmlns=\"{NS_HOOK}\" jid=\"{}\" token=\"{}\"/>",
                escape(user.to_string()),
                escape(token.as_str())
            ),
            HookEvent::UserDeleted { user } => format!(
                "<user-deleted xmlns=\"{NS_HOOK}\" jid=\"{}\"/>",
                escape(user.to_string())
            ),
            HookEvent::Drained { jid, token } => format!(
                "<drained xmlns=\"{NS_HOOK}\" jid=\"{}\" token=\"{token}\"/>",
                escape(jid.to_string())
            ),
        };
        envelope(host, component, &body)
    }
}

impl HookCommand {
    /// Serialises the command as the `<message>` readtrack sends on its component stream.
    /// `stanza_xml` must be one `<message xmlns="jabber:client">` (what
    /// [`crate::stanza::write::client_outgoing`] writes): it is wrapped, not read again.
    pub fn to_xml(&self, component: &str, host: &str) -> String {
        self.to_xml_with_id(component, host, None)
    }

    /// As [`HookCommand::to_xml`], with an `id` the module confirms with a `<done id>` event
    /// once it has executed the command (and uses to execute a repeated command only once).
    pub fn to_xml_with_id(&self, component: &str, host: &str, id: Option<&str>) -> String {
        envelope(component, host, &self.element_xml(id))
    }

    /// The command element alone (`<deliver>` or `<send>`), for a [`CommandBatch`].
    pub fn element_xml(&self, id: Option<&str>) -> String {
        let id = opt_attr("id", id);
        match self {
            HookCommand::Deliver { to, stanza_xml } => format!(
                "<deliver xmlns=\"{NS_HOOK}\" to=\"{}\"{id}>{}</deliver>",
                escape(to.to_string()),
                forwarded(stanza_xml)
            ),
            HookCommand::SendAsHost { stanza_xml } => {
                format!(
                    "<send xmlns=\"{NS_HOOK}\"{id}>{}</send>",
                    forwarded(stanza_xml)
                )
            }
            HookCommand::StoreOffline { to, stanza_xml } => format!(
                "<store-offline xmlns=\"{NS_HOOK}\" to=\"{}\"{id}>{}</store-offline>",
                escape(to.to_string()),
                forwarded(stanza_xml)
            ),
            HookCommand::Pace { to, token } => format!(
                "<pace xmlns=\"{NS_HOOK}\" to=\"{}\" token=\"{token}\"{id}/>",
                escape(to.to_string())
            ),
            HookCommand::Accepts { events } => format!(
                "<accepts xmlns=\"{NS_HOOK}\" events=\"{}\"{id}/>",
                escape(events.as_str())
            ),
            HookCommand::Durable {
                from,
                upto,
                returned,
            } => {
                let returned = if returned.is_empty() {
                    String::new()
                } else {
                    format!(" return=\"{}\"", claim_ranges_xml(returned))
                };
                format!(
                    "<durable xmlns=\"{NS_HOOK}\" from=\"{from}\" upto=\"{upto}\"{returned}{id}/>"
                )
            }
            HookCommand::Ack {
                to,
                message_id,
                time,
            } => format!(
                "<ack xmlns=\"{NS_HOOK}\" to=\"{}\" message-id=\"{}\" time=\"{}\"{id}/>",
                escape(to.to_string()),
                escape(message_id.as_str()),
                escape(time.as_str())
            ),
            HookCommand::Bounce {
                to,
                message_id,
                body,
                time,
            } => {
                let mut out = format!(
                    "<bounce xmlns=\"{NS_HOOK}\" to=\"{}\" message-id=\"{}\" time=\"{}\"{id}",
                    escape(to.to_string()),
                    escape(message_id.as_str()),
                    escape(time.as_str())
                );
                // An attribute, not an element: Prosody's parser hands a module an attribute
                // as one string, text as a callback per piece between references (a JSON
                // body's every &quot;), which cost four times the rest of the bounce. Line
                // ends and tabs are written as references, which survive normalisation.
                if let Some(body) = body {
                    out.push_str(" body=\"");
                    crate::stanza::write::push_attr_value(&mut out, body);
                    out.push('"');
                }
                out.push_str("/>");
                out
            }
            HookCommand::DeliverBytes {
                to,
                from,
                message_id,
                stanza_xml,
            } => {
                let mut out = format!(
                    "<deliver-bytes xmlns=\"{NS_HOOK}\" to=\"{}\"{}{}{id} stanza='",
                    escape(to.to_string()),
                    opt_attr("from", from.as_deref()),
                    opt_attr("message-id", message_id.as_deref()),
                );
                // In single quotes: readtrack writes a stanza's attributes in double quotes,
                // which then stay as they are (and `>` too), so the command is little longer
                // than the stanza. Line ends and tabs as references, which attribute
                // normalisation keeps.
                crate::stanza::write::push_single_quoted_attr_value(&mut out, stanza_xml);
                out.push_str("'/>");
                out
            }
        }
    }

    /// The compact [`HookCommand::DeliverBytes`] of `stanza_xml`, a stanza readtrack wrote for
    /// the client's stream: its `from` and `id` read from its start tag.
    pub fn deliver_bytes(to: Jid, stanza_xml: String) -> Result<HookCommand, HookError> {
        let mut reader = quick_xml::Reader::from_str(&stanza_xml);
        let (from, message_id) = loop {
            match reader.read_event().map_err(xml_err)? {
                Event::Start(e) | Event::Empty(e) => {
                    let a = Attrs::of(&e);
                    break (attr(&a, "from")?, attr(&a, "id")?);
                }
                Event::Eof => return Err(HookError::Xml("no element in the stanza".into())),
                _ => {}
            }
        };
        Ok(HookCommand::DeliverBytes {
            to,
            from,
            message_id,
            stanza_xml,
        })
    }

    /// Parses a command `<message>`, as the server module receives it from `component`: its
    /// first command (see [`HookCommand::parse_batch`] for all of them).
    /// The returned `stanza_xml` is the inner message verbatim, `xmlns="jabber:client"` included.
    pub fn parse(stanza: &str, component: &str) -> Result<HookCommand, HookError> {
        let mut w = Walker::new(stanza);
        let el = w.open(component)?;
        let command = Self::parse_element(&mut w, &el)?;
        w.rest()?;
        Ok(command)
    }

    /// Every command of a command `<message>`, in document order (as the module executes them).
    pub fn parse_batch(stanza: &str, component: &str) -> Result<Vec<HookCommand>, HookError> {
        let mut w = Walker::new(stanza);
        let first = w.open(component)?;
        let mut commands = vec![Self::parse_element(&mut w, &first)?];
        while let Some(c) = w.next_child()? {
            if c.ns_hook {
                commands.push(Self::parse_element(&mut w, &c)?);
            } else {
                w.finish(&c)?;
            }
        }
        w.rest()?;
        Ok(commands)
    }

    fn parse_element<'i>(w: &mut Walker<'i>, el: &Child<'i>) -> Result<HookCommand, HookError> {
        let name = local_name(&el.start);
        let a = Attrs::of(&el.start);
        let command = match name.as_str() {
            "deliver" => {
                let to = full_jid_attr(&a, "to")?;
                let (_, _, message) = w.hook_content(el, Walker::message_text)?;
                HookCommand::Deliver {
                    to,
                    stanza_xml: message.ok_or(HookError::MissingForwarded(name))?,
                }
            }
            "send" => {
                let (_, _, message) = w.hook_content(el, Walker::message_text)?;
                HookCommand::SendAsHost {
                    stanza_xml: message.ok_or(HookError::MissingForwarded(name))?,
                }
            }
            "store-offline" => {
                let to = bare_jid_attr(&a, "to")?;
                let (_, _, message) = w.hook_content(el, Walker::message_text)?;
                HookCommand::StoreOffline {
                    to,
                    stanza_xml: message.ok_or(HookError::MissingForwarded(name))?,
                }
            }
            "pace" => {
                let command = HookCommand::Pace {
                    to: full_jid_attr(&a, "to")?,
                    token: token_attr(&a, &name)?,
                };
                w.finish(el)?;
                command
            }
            "accepts" => {
                let command = HookCommand::Accepts {
                    events: required(&a, "events")?,
                };
                w.finish(el)?;
                command
            }
            "durable" => {
                let from = required_number(&a, &name, "from")?;
                let upto = required_number(&a, &name, "upto")?;
                if from > upto {
                    return Err(HookError::Xml(format!(
                        "<durable from> must not be above upto, got {from} > {upto}"
                    )));
                }
                let command = HookCommand::Durable {
                    from,
                    upto,
                    returned: claim_ranges(&attr(&a, "return")?.unwrap_or_default())?,
                };
                w.finish(el)?;
                command
            }
            "ack" => {
                let command = HookCommand::Ack {
                    to: full_jid_attr(&a, "to")?,
                    message_id: required(&a, "message-id")?,
                    time: required(&a, "time")?,
                };
                w.finish(el)?;
                command
            }
            "bounce" => {
                let command = HookCommand::Bounce {
                    to: full_jid_attr(&a, "to")?,
                    message_id: required(&a, "message-id")?,
                    time: required(&a, "time")?,
                    body: attr(&a, "body")?,
                };
                w.finish(el)?;
                command
            }
            "deliver-bytes" => {
                let command = HookCommand::DeliverBytes {
                    to: full_jid_attr(&a, "to")?,
                    from: attr(&a, "from")?,
                    message_id: attr(&a, "message-id")?,
                    stanza_xml: required(&a, "stanza")?,
                };
                w.finish(el)?;
                command
            }
            _ => return Err(HookError::UnknownCommand(name)),
        };
        Ok(command)
    }
}

/// Command elements packed into as few `<message>` stanzas as the limits allow; the module
/// executes a message's commands in document order, so order is kept. One stanza per command
/// cost Prosody more than the command itself (routing, its per-stanza logging), most of all in
/// a replay of thousands of messages.
pub struct CommandBatch {
    open: String,
    buf: String,
    count: usize,
}

impl CommandBatch {
    /// Bytes of command elements per stanza: far below Prosody's component stanza limit
    /// (`component_stanza_size_limit`, 512 KiB by default). A larger single command still goes,
    /// alone.
    pub const MAX_BYTES: usize = 64 * 1024;
    /// Commands per stanza.
    pub const MAX_COMMANDS: usize = 256;

    pub fn new(component: &str, host: &str) -> CommandBatch {
        CommandBatch {
            open: envelope_open(component, host),
            buf: String::new(),
            count: 0,
        }
    }

    /// Adds one command element (from [`HookCommand::element_xml`]). Returns the stanza
    /// completed first when this element would not fit in it.
    pub fn push(&mut self, element: &str) -> Option<String> {
        let full = self.count > 0
            && (self.count >= Self::MAX_COMMANDS
                || self.buf.len() + element.len() > Self::MAX_BYTES);
        let done = if full { self.finish() } else { None };
        if self.count == 0 {
            self.buf.push_str(&self.open);
        }
        self.buf.push_str(element);
        self.count += 1;
        done
    }

    /// The stanza holding what was pushed since the last one, if anything was.
    pub fn finish(&mut self) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        self.count = 0;
        self.buf.push_str("</message>");
        Some(std::mem::take(&mut self.buf))
    }
}

/// The values of a `<signal>`: the client message's `id`, `from`, `to` and `type`, and what
/// it acknowledges, as [`crate::stanza::parse_message`] reads them of the whole stanza.
fn signal(e: &Attrs) -> Result<Message, HookError> {
    let optional_jid = |name: &'static str| -> Result<Option<Jid>, HookError> {
        attr(e, name)?
            .map(|v| {
                Jid::parse(&v).map_err(|source| HookError::BadJid {
                    element: "signal".into(),
                    attr: name,
                    source,
                })
            })
            .transpose()
    };
    let mut message = Message::new(MessageType::from_attr(attr(e, "type")?.as_deref()));
    message.id = attr(e, "id")?;
    message.from = Some(full_jid_attr(e, "from")?);
    message.to = optional_jid("to")?;
    message.displayed = attr(e, "displayed")?;
    let own_id = || {
        message.id.clone().ok_or(HookError::MissingAttribute {
            element: "signal".into(),
            attr: "id",
        })
    };
    message.receipt = match attr(e, "receipt")?.as_deref() {
        None => None,
        Some("xep0184") => Some(Receipt::Xep0184 {
            id: required(e, "receipt-id")?,
        }),
        Some("seed") => Some(Receipt::SeedReceived {
            id: own_id()?,
            status: attr(e, "status")?.unwrap_or_default(),
        }),
        Some("seed-offline") => {
            message.offline = Some(None);
            Some(Receipt::SeedOffline { id: own_id()? })
        }
        Some(other) => {
            return Err(HookError::Xml(format!(
                "<signal receipt> must be xep0184, seed or seed-offline, got {other:?}"
            )))
        }
    };
    if message.receipt.is_none() && message.displayed.is_none() {
        return Err(HookError::Xml(
            "<signal> carries neither a receipt nor a displayed marker".into(),
        ));
    }
    Ok(message)
}

fn signal_xml(m: &Message) -> String {
    let jid = |j: &Option<Jid>| j.as_ref().map(Jid::to_string);
    let (receipt, receipt_id, status) = match &m.receipt {
        None => (None, None, None),
        Some(Receipt::Xep0184 { id }) => (Some("xep0184"), Some(id.as_str()), None),
        Some(Receipt::SeedReceived { status, .. }) => (Some("seed"), None, Some(status.as_str())),
        Some(Receipt::SeedOffline { .. }) => (Some("seed-offline"), None, None),
    };
    format!(
        "<signal xmlns=\"{NS_HOOK}\"{}{}{}{}{}{}{}{}/>",
        opt_attr("from", jid(&m.from).as_deref()),
        opt_attr("to", jid(&m.to).as_deref()),
        opt_attr("id", m.id.as_deref()),
        opt_attr("type", m.kind.as_attr()),
        opt_attr("receipt", receipt),
        opt_attr("receipt-id", receipt_id),
        opt_attr("status", status.filter(|s| !s.is_empty())),
        opt_attr("displayed", m.displayed.as_deref()),
    )
}

fn carbons_xml(carbons: &[Jid]) -> impl Iterator<Item = String> + '_ {
    carbons
        .iter()
        .map(|c| format!("<carbon jid=\"{}\"/>", escape(c.to_string())))
}

fn opt_attr(name: &str, value: Option<&str>) -> String {
    value.map_or_else(String::new, |v| format!(" {name}=\"{}\"", escape(v)))
}

fn envelope(from: &str, to: &str, body: &str) -> String {
    format!("{}{body}</message>", envelope_open(from, to))
}

/// The outer `<message>` start tag of an event or command stanza. No namespace on it: on a
/// component stream `jabber:client` is not routed.
fn envelope_open(from: &str, to: &str) -> String {
    format!("<message from=\"{}\" to=\"{}\">", escape(from), escape(to))
}

/// The stanza is written by readtrack's own writer, which puts `xmlns="jabber:client"` on it
/// (or was read in that namespace): wrapping it is concatenation.
fn forwarded(stanza_xml: &str) -> String {
    format!("<forwarded xmlns=\"{NS_FORWARD}\">{stanza_xml}</forwarded>")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "localhost";
    const COMP: &str = "readtrack.localhost";

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    proptest::proptest! {
        /// Attributes read once answer every name as a scan per name did
        /// (`BytesStart::try_get_attribute`), malformed attributes included.
        #[test]
        fn attributes_read_once_answer_as_a_scan_per_name(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                " id='a'", " id=\"b\"", " to='x@y/z'", " from='p&amp;q'", " type='chat'",
                " id", " to=", " =v", " x='unclosed", " a:b='1'", " xmlns='urn:x'", "\t\nid='c'",
                " to='&bogus;'", " from=\"a\nb\"", " to = 'spaced'", " from='&#9;t'",
                " p1='1'", " p2='2'", " p3='3'", " xmlns:a='urn:a'",
            ]), 0..11),
        ) {
            let text = format!("signal{}", pieces.concat());
            let start = BytesStart::from_content(text.as_str(), "signal".len());
            // Split on its own, and as the tag an event reader just read (split when read).
            let tag = format!("<{text}/>");
            let mut events = Events::new(&tag);
            let read = match events.next() {
                Ok(Event::Empty(read)) => Some(read),
                _ => None, // refused by the reader (a broken declaration): nothing to look up
            };
            let mut all = vec![Attrs::of(&start)];
            if let Some(read) = &read {
                all.push(Attrs::of_read(&events, read));
            }
            for (attrs, name) in all.iter().flat_map(|attrs| {
                ["id", "to", "from", "type", "x", "a:b", "xmlns", "absent"].map(|name| (attrs, name))
            }) {
                let scanned = start
                    .try_get_attribute(name)
                    .map_err(xml_err)
                    .and_then(|a| a.map(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(xml_err)
                            .map(|v| v.into_owned())
                    }).transpose());
                let read = attr(attrs, name);
                proptest::prop_assert_eq!(
                    format!("{scanned:?}"),
                    format!("{read:?}"),
                    "{} in {:?}", name, text
                );
            }
        }
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/hooks/{name}.xml",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_available_from_prosody() {
        // Exactly what Prosody 0.12 wrote on the component stream in tests/prosody_module.rs.
        let xml = "<message from='localhost' to='readtrack.localhost'><available jid='alice@localhost/phone' xmlns='urn:readtrack:hook:0'/></message>";
        assert_eq!(
            HookEvent::parse(xml, HOST).unwrap(),
            HookEvent::Available {
                jid: jid("alice@localhost/phone"),
                device_id: None,
                session_id: None,
            }
        );
    }

    #[test]
    fn parses_fixtures() {
        assert_eq!(
            HookEvent::parse(&fixture("available"), HOST).unwrap(),
            HookEvent::Available {
                jid: jid("bob@localhost/Spark 2.6.3#android"),
                device_id: Some("a1b2c3".into()),
                session_id: Some("tzQ4Mn0OZ1Tb-8wJ".into()),
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("unavailable"), HOST).unwrap(),
            HookEvent::Unavailable {
                jid: jid("bob@localhost/phone"),
                session_id: Some("Ve2j_0kTvYk1HQxp".into()),
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("routed"), HOST).unwrap(),
            HookEvent::Routed {
                to: jid("bob@localhost"),
                archive_id: Some("NgaSxP0KLmjNp2nP".into()),
                sessions: vec![jid("bob@localhost/phone"), jid("bob@localhost/laptop")],
                carbons: vec![],
                message: Incoming::read("<message xmlns='jabber:client' id='V4NkR-38' type='chat' from='alice@localhost/Spark 2.6.3' to='bob@localhost'>\n        <body>{&quot;cnt&quot;:&quot;hello&quot;,&quot;msgTypec&quot;:&quot;10000&quot;}</body>\n        <thread>P2J5R2</thread>\n      </message>"),
                sent: true,
                claim: None,
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("routed-offline"), HOST).unwrap(),
            HookEvent::Routed {
                to: jid("bob@localhost"),
                archive_id: None,
                sessions: vec![],
                carbons: vec![],
                message: Incoming::read("<message xmlns='jabber:client' id='m2' type='chat' from='alice@localhost/phone' to='bob@localhost'><body>later</body></message>"),
                sent: false,
                claim: None,
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("sent-receipt"), HOST).unwrap(),
            HookEvent::Sent {
                message: Incoming::read("<message xmlns='jabber:client' id='V4NkR-38' type='crs' from='bob@localhost/phone' to='localhost'><received xmlns='urn:xmpp:receipts'>200</received></message>"),
                carbons: vec![],
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("snapshot"), HOST).unwrap(),
            HookEvent::Snapshot {
                page: SnapshotPage::WHOLE,
                sessions: vec![
                    SessionInfo {
                        jid: jid("alice@localhost/phone"),
                        device_id: None,
                        session_id: Some("Ve2j_0kTvYk1HQxp".into()),
                    },
                    SessionInfo {
                        jid: jid("bob@localhost/laptop"),
                        device_id: Some("dev-7".into()),
                        session_id: None,
                    },
                ]
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("snapshot-empty"), HOST).unwrap(),
            HookEvent::Snapshot {
                page: SnapshotPage::WHOLE,
                sessions: vec![]
            }
        );
        assert_eq!(
            HookEvent::parse(&fixture("snapshot-page"), HOST).unwrap(),
            HookEvent::Snapshot {
                page: SnapshotPage {
                    number: 2,
                    last: false,
                    executes_ack: true,
                    executes_bounce: true,
                    executes_deliver_bytes: true,
                },
                sessions: vec![SessionInfo {
                    jid: jid("carol@localhost/tablet"),
                    device_id: None,
                    session_id: Some("kq81Hs0aPz2mXw7e".into()),
                }]
            }
        );
        assert_eq!(
            HookCommand::parse(&fixture("deliver"), COMP).unwrap(),
            HookCommand::Deliver {
                to: jid("bob@localhost/laptop"),
                stanza_xml: "<message xmlns=\"jabber:client\" id=\"HncqL-65\" type=\"chat\" from=\"alice@localhost/phone\" to=\"bob@localhost\"><body>hi</body><offline xmlns=\"urn:xmpp:offline\" current=\"2013-12-25T06:26:45.501Z\"/></message>".into(),
            }
        );
        assert_eq!(
            HookCommand::parse(&fixture("send"), COMP).unwrap(),
            HookCommand::SendAsHost {
                stanza_xml: "<message xmlns=\"jabber:client\" id=\"V4NkR-38\" type=\"crs\" from=\"localhost\" to=\"alice@localhost/phone\"><body>{\"time\":\"2013-11-20T06:42:23.761Z\",\"msgType\":\"10013\"}</body></message>".into(),
            }
        );
    }

    #[test]
    fn a_command_is_written_around_its_stanza_and_reads_back_as_it_was() {
        let deliver = HookCommand::Deliver {
            to: jid("bob@localhost/phone"),
            stanza_xml: "<message xmlns=\"jabber:client\" id=\"a&amp;1\" from=\"alice@localhost/x\" to=\"bob@localhost\"><body>1 &lt; 2</body></message>".into(),
        };
        let xml = deliver.to_xml(COMP, HOST);
        assert_eq!(
            xml,
            "<message from=\"readtrack.localhost\" to=\"localhost\"><deliver xmlns=\"urn:readtrack:hook:0\" to=\"bob@localhost/phone\"><forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\" id=\"a&amp;1\" from=\"alice@localhost/x\" to=\"bob@localhost\"><body>1 &lt; 2</body></message></forwarded></deliver></message>"
        );
        let parsed = HookCommand::parse(&xml, COMP).unwrap();
        assert_eq!(parsed, deliver);
        assert_eq!(parsed.to_xml(COMP, HOST), xml);

        // The writer names jabber:client on what it writes: the server ack reads back in it.
        let ack = crate::stanza::write::client_outgoing(&crate::stanza::Outgoing::ServerAck {
            from: HOST.into(),
            to: jid("alice@localhost/a"),
            id: "x".into(),
            time: crate::time::Millis(0),
        });
        assert!(
            ack.starts_with("<message xmlns=\"jabber:client\" id=\"x\" type=\"crs\""),
            "{ack}"
        );
        let send = HookCommand::SendAsHost { stanza_xml: ack };
        assert_eq!(
            HookCommand::parse(&send.to_xml(COMP, HOST), COMP).unwrap(),
            send
        );
    }

    #[test]
    fn event_round_trip() {
        let events = [
            HookEvent::Available {
                jid: jid("a@localhost/r"),
                device_id: Some("d\"1".into()),
                session_id: Some("s'&<1".into()),
            },
            HookEvent::Unavailable {
                jid: jid("a@localhost/r"),
                session_id: None,
            },
            HookEvent::Unavailable {
                jid: jid("a@localhost/r"),
                session_id: Some("x_-9".into()),
            },
            HookEvent::Routed {
                to: jid("b@localhost"),
                archive_id: Some("x1".into()),
                sessions: vec![jid("b@localhost/1"), jid("b@localhost/2")],
                carbons: vec![jid("b@localhost/3"), jid("a@localhost/x")],
                message: Incoming::read("<message xmlns=\"jabber:client\" type=\"chat\"><body>hi</body></message>"),
                sent: true,
                claim: None,
            },
            HookEvent::Routed {
                to: jid("b@localhost"),
                archive_id: None,
                sessions: vec![],
                carbons: vec![],
                message: Incoming::read("<message xmlns=\"jabber:client\"><body>hi</body></message>"),
                sent: false,
                claim: Some(u64::MAX),
            },
            HookEvent::Sent {
                message: Incoming::read("<message xmlns=\"jabber:client\" type=\"crs\" to=\"localhost\"><offline xmlns=\"urn:xmpp:offline\"/></message>"),
                carbons: vec![jid("a@localhost/other")],
            },
            HookEvent::Account {
                user: jid("b@localhost"),
                token: "k&1".into(),
            },
            HookEvent::UserDeleted {
                user: jid("b@localhost"),
            },
            HookEvent::Snapshot {
                page: SnapshotPage::WHOLE,
                sessions: vec![
                    SessionInfo {
                        jid: jid("a@localhost/r"),
                        device_id: None,
                        session_id: None,
                    },
                    SessionInfo {
                        jid: jid("a@localhost/s"),
                        device_id: Some("d2".into()),
                        session_id: Some("abc".into()),
                    },
                ],
            },
            HookEvent::Snapshot {
                page: SnapshotPage::WHOLE,
                sessions: vec![],
            },
            HookEvent::Snapshot {
                page: SnapshotPage {
                    number: 7,
                    last: false,
                    executes_ack: true,
                    executes_bounce: true,
                    executes_deliver_bytes: true,
                },
                sessions: vec![],
            },
            HookEvent::Snapshot {
                page: SnapshotPage {
                    number: 8,
                    last: true,
                    executes_ack: false,
                    executes_bounce: false,
                    executes_deliver_bytes: false,
                },
                sessions: vec![],
            },
        ];
        let signals = ["signal-receipt", "signal-seed"].map(|f| {
            let event = HookEvent::parse(&fixture(f), HOST).unwrap();
            assert!(matches!(event, HookEvent::Signal { .. }), "{event:?}");
            event
        });
        for event in events.into_iter().chain(signals) {
            let xml = event.to_xml(HOST, COMP);
            assert_eq!(HookEvent::parse(&xml, HOST).unwrap(), event, "{xml}");
        }
    }

    #[test]
    fn ignores_other_children_and_whitespace() {
        let xml = "<message from='localhost' to='readtrack.localhost'>\n  <x xmlns='other'><y/></x>\n  <unavailable xmlns='urn:readtrack:hook:0' jid='a@localhost/r'><extra/></unavailable>\n</message>";
        assert_eq!(
            HookEvent::parse(xml, HOST).unwrap(),
            HookEvent::Unavailable {
                jid: jid("a@localhost/r"),
                session_id: None,
            }
        );
    }

    /// The hook element of a fixture, verbatim (fixtures declare its namespace on it).
    fn hook_element(xml: &str) -> String {
        let mut w = Walker::new(xml);
        let _outer = w.next_child().unwrap().unwrap();
        while let Some(c) = w.next_child().unwrap() {
            let text = w.finish(&c).unwrap();
            if c.ns_hook {
                return text.to_string();
            }
        }
        panic!("no hook element in {xml}");
    }

    fn xmllint(doc: &str) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("doc.xml");
        std::fs::write(&file, doc).unwrap();
        let schema = format!("{}/schema/hooks.xsd", env!("CARGO_MANIFEST_DIR"));
        std::process::Command::new("xmllint")
            .args(["--noout", "--schema", &schema])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("xmllint ({e}): install it: apt-get install -y libxml2-utils")
            })
    }

    #[test]
    fn done_event_and_command_ids_round_trip() {
        let done = HookEvent::parse(&fixture("done"), "localhost").unwrap();
        assert_eq!(
            done,
            HookEvent::Done {
                id: "bounce-1-7".into()
            }
        );
        assert_eq!(
            HookEvent::parse(
                &done.to_xml("localhost", "readtrack.localhost"),
                "localhost"
            )
            .unwrap(),
            done
        );
        let err = HookEvent::parse(
            "<message from='localhost' to='readtrack.localhost'><done xmlns='urn:readtrack:hook:0'/></message>",
            "localhost",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "<done> has no id attribute");
        let list = HookEvent::parse(&fixture("done-list"), "localhost").unwrap();
        assert_eq!(
            list,
            HookEvent::DoneList {
                ids: vec![
                    "bounce-1-7".into(),
                    "bounce-1-8".into(),
                    "bounce-4-2".into()
                ]
            }
        );
        assert_eq!(
            HookEvent::parse(
                &list.to_xml("localhost", "readtrack.localhost"),
                "localhost"
            )
            .unwrap(),
            list
        );
        let err = HookEvent::parse(
            "<message from='localhost' to='readtrack.localhost'><done xmlns='urn:readtrack:hook:0' ids=' '/></message>",
            "localhost",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "<done> has no id attribute");

        let command = HookCommand::parse(&fixture("send-bounce"), "readtrack.localhost").unwrap();
        let HookCommand::SendAsHost { stanza_xml } = &command else {
            panic!("{command:?}")
        };
        let written = HookCommand::SendAsHost {
            stanza_xml: stanza_xml.clone(),
        }
        .to_xml_with_id("readtrack.localhost", "localhost", Some("bounce-1-7"));
        assert_eq!(
            written,
            fixture("send-bounce").trim_end().replace('\'', "\"")
        );
    }

    #[test]
    fn fixtures_validate_against_schema() {
        let dir = format!("{}/tests/fixtures/hooks", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 25, "fixtures in {dir}");
        for path in names {
            let element = hook_element(&std::fs::read_to_string(&path).unwrap());
            let out = xmllint(&element);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The schema does reject things: a missing jid, a bare session JID, an unknown element.
        for bad in [
            "<available xmlns='urn:readtrack:hook:0'/>",
            "<snapshot xmlns='urn:readtrack:hook:0'><session jid='a@localhost'/></snapshot>",
            "<routed xmlns='urn:readtrack:hook:0' to='b@localhost'/>",
            "<ping xmlns='urn:readtrack:hook:0'/>",
            "<signal xmlns='urn:readtrack:hook:0' id='x' receipt='seed'/>",
            "<signal xmlns='urn:readtrack:hook:0' from='a@localhost/r' receipt='other'/>",
            "<durable xmlns='urn:readtrack:hook:0' from='1' upto='9' return='3-'/>",
            "<durable xmlns='urn:readtrack:hook:0' upto='9'/>",
            "<routed xmlns='urn:readtrack:hook:0' to='b@localhost' claim='-1'><forwarded xmlns='urn:xmpp:forward:0'/></routed>",
        ] {
            assert!(!xmllint(bad).status.success(), "schema accepted {bad}");
        }
    }

    /// A message read where it stands in an event is the message read on its own: the
    /// declarations of the event around it are not seen, and nothing is lost or added.
    fn in_event_as_alone(message: &str) -> usize {
        let mut events = 0;
        for wrapper in [
            "<routed xmlns='urn:readtrack:hook:0' to='bob@localhost'><session jid='bob@localhost/r'/><forwarded xmlns='urn:xmpp:forward:0'>{}</forwarded></routed>",
            "<h:sent xmlns:h='urn:readtrack:hook:0' xmlns:c='jabber:client' xmlns:r='urn:xmpp:receipts'><forwarded xmlns='urn:xmpp:forward:0'>{}</forwarded></h:sent>",
        ] {
            let xml = wrap(&wrapper.replace("{}", message));
            let read = match HookEvent::parse(&xml, HOST) {
                Ok(HookEvent::Routed { message, .. } | HookEvent::Sent { message, .. }) => message,
                Ok(other) => panic!("{other:?}"),
                // Not a jabber:client <message> standing there, or broken XML: no event.
                Err(_) => continue,
            };
            assert_eq!(read, Incoming::read(read.original.text()), "{xml}");
            events += 1;
        }
        events
    }

    /// A message that names no namespace, read inside `<f:forwarded xmlns="jabber:client">`
    /// (Prosody's bytes as a session was written them): it reads as the same message naming
    /// `jabber:client` itself does, alone and in the usual form, text and stored form included.
    /// Only the default namespace comes from outside, never a prefix. Returns 1 where the
    /// inherited form made an event that the usual form made too.
    fn inherited_as_usual(message: &str) -> usize {
        let read = |wrapper: &str, message: &str| match HookEvent::parse(
            &wrap(&wrapper.replace("{}", message)),
            HOST,
        ) {
            Ok(HookEvent::Routed { message, .. }) => Some(message),
            Ok(other) => panic!("{other:?}"),
            Err(_) => None,
        };
        let Some(inherited) = read(
            "<routed xmlns='urn:readtrack:hook:0' to='bob@localhost'><session jid='bob@localhost/r'/><f:forwarded xmlns:f='urn:xmpp:forward:0' xmlns='jabber:client'>{}</f:forwarded></routed>",
            message,
        ) else {
            return 0;
        };
        // An error's position counts in the bytes as they came, which have no namespace.
        let same = |a: &Incoming, b: &Incoming| {
            let unplaced = |i: &Incoming| {
                let text = format!("{i:?}");
                let mut out = String::with_capacity(text.len());
                let mut rest = text.as_str();
                while let Some(at) = rest.find("position ") {
                    out.push_str(&rest[..at + 9]);
                    rest = rest[at + 9..].trim_start_matches(|c: char| c.is_ascii_digit());
                }
                out + rest
            };
            assert_eq!(unplaced(a), unplaced(b), "{message}");
        };
        same(&inherited, &Incoming::read(inherited.original.text()));
        if inherited.original.text() == message.trim() {
            return 0; // the message names its own namespace: nothing was inherited
        }
        let usual = read(
            "<routed xmlns='urn:readtrack:hook:0' to='bob@localhost'><session jid='bob@localhost/r'/><forwarded xmlns='urn:xmpp:forward:0'>{}</forwarded></routed>",
            &message.replacen("<message", "<message xmlns='jabber:client'", 1),
        );
        match usual {
            Some(usual) => {
                same(&inherited, &usual);
                1
            }
            None => 0,
        }
    }

    #[test]
    fn a_message_reads_the_same_in_an_event_as_alone() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let (mut count, mut events, mut inherited) = (0, 0, 0);
        for dir in [
            "fuzz/corpus/parse_message",
            "tests/fixtures/stanzas",
            "tests/fixtures",
        ] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                    // With the namespace an event requires, where the input lacks one.
                    events += in_event_as_alone(&text);
                    events += in_event_as_alone(&text.replacen(
                        "<message",
                        "<message xmlns='jabber:client'",
                        1,
                    ));
                    inherited += inherited_as_usual(&text);
                    count += 1;
                }
            }
        }
        assert!(count > 100, "only {count} inputs");
        assert!(events > 100, "only {events} of {count} inputs made events");
        assert!(
            inherited > 100,
            "only {inherited} of {count} inputs read as inherited"
        );
        assert_eq!(
            inherited_as_usual("<message id='1'><f:forwarded/><body>a</body></message>"),
            1
        );
        assert_eq!(inherited_as_usual("<message><body>a</body><stanza-id xmlns='urn:xmpp:sid:0' id='s' by='bob@localhost'/></message>"), 1);
        assert_eq!(inherited_as_usual("<message/>"), 1);
        // Prefixes bound by the event only: unbound inside the message, as alone.
        assert_eq!(in_event_as_alone("<message xmlns='jabber:client' id='1'><r:received id='x'/><c:body>t</c:body></message>"), 2);
        assert_eq!(in_event_as_alone("<message xmlns='jabber:client'><body>a</body><stanza-id xmlns='urn:xmpp:sid:0' id='s' by='bob@localhost'/></message>"), 2);
    }

    /// What the service makes of a client's stanza sent whole, and of its compact form.
    fn sent_as(event: &str) -> crate::engine::Input {
        match crate::service::from_server(event, HOST) {
            Ok(crate::service::FromServer::Input(input, _)) => *input,
            Ok(_) => panic!("not an input: {event}"),
            Err(e) => panic!("{e}: {event}"),
        }
    }

    #[test]
    fn a_signal_gives_the_engine_what_the_whole_stanza_gives() {
        let cases = [
            (
                "<message xmlns='jabber:client' id='r-17' type='chat' from='bob@localhost/phone' to='alice@localhost'><received xmlns='urn:xmpp:receipts' id='V4NkR-38'/></message>",
                "from='bob@localhost/phone' to='alice@localhost' id='r-17' type='chat' receipt='xep0184' receipt-id='V4NkR-38'",
            ),
            (
                "<message xmlns='jabber:client' id='V4NkR-38' type='crs' from='bob@localhost/phone' to='localhost'><received xmlns='urn:xmpp:receipts'> 200 </received></message>",
                "from='bob@localhost/phone' to='localhost' id='V4NkR-38' type='crs' receipt='seed' status='200'",
            ),
            (
                "<message xmlns='jabber:client' id='V4NkR-38' type='crs' from='bob@localhost/phone' to='localhost'><received xmlns='urn:xmpp:receipts'/></message>",
                "from='bob@localhost/phone' to='localhost' id='V4NkR-38' type='crs' receipt='seed'",
            ),
            (
                "<message xmlns='jabber:client' id='o1' type='crs' from='bob@localhost/phone' to='localhost'><offline xmlns='urn:xmpp:offline'/></message>",
                "from='bob@localhost/phone' to='localhost' id='o1' type='crs' receipt='seed-offline'",
            ),
            (
                "<message xmlns='jabber:client' id='d1' from='bob@localhost/phone' to='alice@localhost'><displayed xmlns='urn:xmpp:chat-markers:0' id='m9'/><store xmlns='urn:xmpp:hints'/></message>",
                "from='bob@localhost/phone' to='alice@localhost' id='d1' displayed='m9'",
            ),
        ];
        for (stanza, compact) in cases {
            let whole = sent_as(&wrap(&format!(
                "<sent xmlns='urn:readtrack:hook:0'><forwarded xmlns='urn:xmpp:forward:0'>{stanza}</forwarded></sent>"
            )));
            let signal = sent_as(&wrap(&format!(
                "<signal xmlns='urn:readtrack:hook:0' {compact}/>"
            )));
            let (
                crate::engine::Input::Sent { message: a, .. },
                crate::engine::Input::Sent { message: b, .. },
            ) = (&whole, &signal)
            else {
                panic!("{whole:?} / {signal:?}")
            };
            // A store hint is content: that stanza must go whole; the rest are the same values.
            if stanza.contains("urn:xmpp:hints") {
                assert_eq!(a.displayed, b.displayed, "{stanza}");
            } else {
                assert_eq!(a, b, "{stanza}");
            }
        }
        assert_eq!(
            event_err(&wrap("<signal xmlns='urn:readtrack:hook:0' from='b@localhost/p' type='crs' receipt='seed'/>")),
            "<signal> has no id attribute"
        );
        assert_eq!(
            event_err(&wrap(
                "<signal xmlns='urn:readtrack:hook:0' from='b@localhost/p' id='1'/>"
            )),
            "malformed hook stanza: <signal> carries neither a receipt nor a displayed marker"
        );
        assert_eq!(
            event_err(&wrap("<signal xmlns='urn:readtrack:hook:0' from='b@localhost' receipt='xep0184' receipt-id='1'/>")),
            "<signal from>: JID \"b@localhost\" has no resource, but a full JID is needed"
        );
        assert_eq!(
            HookCommand::parse(&fixture("accepts"), COMP).unwrap(),
            HookCommand::Accepts {
                events: "signal".into()
            }
        );
    }

    /// `routed-signal`: a receipt or marker written to its addressee's session comes as its
    /// `<routed sent='true'>` alone, and the engine gets from it, as the sender's side of the
    /// routed input, the values the separate `<signal>` gave (which then does not come).
    #[test]
    fn a_routed_signal_gives_the_engine_what_the_signal_gives() {
        let cases = [
            (
                "<message xmlns='jabber:client' id='r-17' type='chat' to='alice@localhost/Spark 2.6.3' from='bob@localhost/phone'><received xmlns='urn:xmpp:receipts' id='V4NkR-38'/><stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='Jq3hZbR9uYk0Lw2s'/></message>",
                "from='bob@localhost/phone' to='alice@localhost/Spark 2.6.3' id='r-17' type='chat' receipt='xep0184' receipt-id='V4NkR-38'",
            ),
            (
                "<message xmlns='jabber:client' id='r-18' from='bob@localhost/phone' to='alice@localhost'><received xmlns='urn:xmpp:receipts' id='V4NkR-39'/></message>",
                "from='bob@localhost/phone' to='alice@localhost' id='r-18' receipt='xep0184' receipt-id='V4NkR-39'",
            ),
            (
                "<message xmlns='jabber:client' id='d1' type='chat' from='bob@localhost/phone' to='alice@localhost'><markable xmlns='urn:xmpp:chat-markers:0'/><displayed xmlns='urn:xmpp:chat-markers:0' id='m9'/></message>",
                "from='bob@localhost/phone' to='alice@localhost' id='d1' type='chat' displayed='m9'",
            ),
        ];
        for (stanza, compact) in cases {
            let routed = sent_as(&wrap(&format!(
                "<routed xmlns='urn:readtrack:hook:0' to='alice@localhost' sent='true'><session jid='alice@localhost/Spark 2.6.3'/><forwarded xmlns='urn:xmpp:forward:0'>{stanza}</forwarded></routed>"
            )));
            let signal = sent_as(&wrap(&format!(
                "<signal xmlns='urn:readtrack:hook:0' {compact}/>"
            )));
            let (
                crate::engine::Input::Routed {
                    message: a, sent, ..
                },
                crate::engine::Input::Sent { message: b, .. },
            ) = (&routed, &signal)
            else {
                panic!("{routed:?} / {signal:?}")
            };
            assert!(sent, "{stanza}");
            assert_eq!(
                (
                    &a.kind,
                    &a.id,
                    &a.from,
                    &a.to,
                    &a.receipt,
                    &a.displayed,
                    &a.offline
                ),
                (
                    &b.kind,
                    &b.id,
                    &b.from,
                    &b.to,
                    &b.receipt,
                    &b.displayed,
                    &b.offline
                ),
                "{stanza}"
            );
        }
        match HookEvent::parse(&fixture("routed-signal"), HOST).unwrap() {
            HookEvent::Routed { sent, message, .. } => {
                assert!(sent);
                let message = message.parsed.unwrap();
                assert_eq!(
                    message.receipt,
                    Some(Receipt::Xep0184 {
                        id: "V4NkR-38".into()
                    })
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// `batched`: the events of one message are every fixture's event, in order, each as it
    /// reads alone; one that does not read stands alone and the others still read; XML that
    /// breaks ends the list; a message from elsewhere is no batch at all.
    #[test]
    fn a_batch_reads_as_its_events_alone() {
        let names = [
            "available",
            "routed",
            "routed-inherited",
            "sent-receipt",
            "unavailable",
            "done-list",
            "routed-offline",
        ];
        let mut batch = format!("<message from='{HOST}' to='readtrack.localhost'>");
        let mut alone = Vec::new();
        for name in names {
            let xml = fixture(name);
            alone.push(HookEvent::parse(&xml, HOST).unwrap());
            batch.push_str(&hook_element(&xml));
            batch.push_str("<other xmlns='urn:example'/> ");
        }
        batch.push_str("</message>");
        let read: Vec<_> = HookEvent::parse_batch(&batch, HOST)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, alone);

        let ok = "<available xmlns='urn:readtrack:hook:0' jid='a@localhost/r'/>";
        let bad =
            "<available xmlns='urn:readtrack:hook:0' jid='a@localhost'><x><y/></x></available>";
        let unknown = "<ping xmlns='urn:readtrack:hook:0'>text<x/></ping>";
        let xml = format!("<message from='{HOST}' to='c'>{ok}{bad}{unknown}{ok}</message>");
        let read = HookEvent::parse_batch(&xml, HOST).unwrap();
        assert_eq!(read.len(), 4, "{read:?}");
        assert_eq!(read[0], read[3]);
        assert!(
            read[0].is_ok() && read[1].is_err() && read[2].is_err(),
            "{read:?}"
        );

        let broken = format!("<message from='{HOST}' to='c'>{ok}<routed xmlns='urn:readtrack:hook:0' to='b@localhost'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</forwarded></routed>{ok}</message>");
        let read = HookEvent::parse_batch(&broken, HOST).unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
        assert!(read[0].is_ok() && read[1].is_err(), "{read:?}");

        let elsewhere = format!("<message from='evil.example' to='c'>{ok}{ok}</message>");
        assert!(HookEvent::parse_batch(&elsewhere, HOST).is_err());
        // One event, as before: the same as `parse`.
        let one = fixture("routed");
        assert_eq!(
            HookEvent::parse_batch(&one, HOST).unwrap(),
            vec![HookEvent::parse(&one, HOST)]
        );
    }

    /// `inherited-namespace`: Prosody's bytes, which name no namespace, inside a
    /// `<f:forwarded xmlns="jabber:client">`, are the message of the usual form: the same text
    /// (with the namespace written in), the same stored form, the same event.
    #[test]
    fn a_routed_message_that_inherits_its_namespace_is_the_usual_message() {
        let usual = fixture("routed");
        let inherited = fixture("routed-inherited");
        let (usual, inherited) = (
            HookEvent::parse(&usual, HOST).unwrap(),
            HookEvent::parse(&inherited, HOST).unwrap(),
        );
        assert_eq!(inherited, usual);
        let (HookEvent::Routed { message, .. }, HookEvent::Routed { message: was, .. }) =
            (&inherited, &usual)
        else {
            panic!("{inherited:?}");
        };
        let text = message.original.text();
        assert!(
            text.starts_with("<message xmlns='jabber:client' id='V4NkR-38'"),
            "{text}"
        );
        assert_eq!(
            message.original.stored_form("bob@localhost", false),
            was.original.stored_form("bob@localhost", false)
        );
        assert!(message.original.stored_form("bob@localhost", false).is_ok());
        // A prefix of the event is not the message's, and another default is not inherited.
        let prefixed = |xml: String| xml.replace("body>", "f:body>");
        for (xml, stands_alone) in [
            (prefixed(fixture("routed-inherited")), false),
            (
                prefixed(fixture("routed-inherited")).replacen(
                    "<message id=",
                    "<message xmlns:f='urn:xmpp:forward:0' id=",
                    1,
                ),
                true,
            ),
        ] {
            let HookEvent::Routed { message, .. } = HookEvent::parse(&xml, HOST).unwrap() else {
                panic!("{xml}");
            };
            let stored = message.original.stored_form("bob@localhost", false);
            assert_eq!(stored.is_ok(), stands_alone, "{xml}: {stored:?}");
        }
        let other = fixture("routed-inherited")
            .replace("xmlns='jabber:client'>", "xmlns='urn:example:other'>");
        assert!(
            !matches!(HookEvent::parse(&other, HOST), Ok(HookEvent::Routed { .. })),
            "a message in another namespace is no routed message"
        );
    }

    #[test]
    fn a_claim_number_rides_on_routed_and_durable_names_what_is_done() {
        match HookEvent::parse(&fixture("routed-claimed"), HOST).unwrap() {
            HookEvent::Routed {
                claim, sessions, ..
            } => {
                assert_eq!(claim, Some(42));
                assert!(sessions.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let durable = HookCommand::Durable {
            from: 40,
            upto: 52,
            returned: vec![(43, 43), (47, 48)],
        };
        assert_eq!(
            HookCommand::parse(&fixture("durable"), COMP).unwrap(),
            durable
        );
        assert_eq!(
            durable.to_xml(COMP, HOST),
            fixture("durable").trim_end().replace('\'', "\"")
        );
        let none_returned = HookCommand::Durable {
            from: 1,
            upto: 1,
            returned: vec![],
        };
        assert_eq!(
            none_returned.element_xml(None),
            "<durable xmlns=\"urn:readtrack:hook:0\" from=\"1\" upto=\"1\"/>"
        );
        let command_err = |element: &str| {
            HookCommand::parse(
                &format!("<message from='{COMP}' to='{HOST}'>{element}</message>"),
                COMP,
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            command_err("<durable xmlns='urn:readtrack:hook:0' from='5' upto='4'/>"),
            "malformed hook stanza: <durable from> must not be above upto, got 5 > 4"
        );
        assert_eq!(
            command_err("<durable xmlns='urn:readtrack:hook:0' from='1' upto='9' return='3 6-5'/>"),
            "malformed hook stanza: <durable return> must list numbers and ranges a-b, got \"3 6-5\""
        );
        assert_eq!(
            command_err("<durable xmlns='urn:readtrack:hook:0' upto='9'/>"),
            "<durable> has no from attribute"
        );
        assert_eq!(
            HookEvent::parse(
                &wrap("<routed xmlns='urn:readtrack:hook:0' to='b@localhost' claim='-1'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='a@localhost/r'><body>x</body></message></forwarded></routed>"),
                HOST
            )
            .unwrap_err()
            .to_string(),
            "malformed hook stanza: <routed claim> must be a number, got \"-1\""
        );
    }

    #[test]
    fn the_compact_ack_reads_and_writes_the_fixture_form() {
        let ack = HookCommand::Ack {
            to: jid("alice@localhost/Spark 2.6.3"),
            message_id: "V4NkR-38".into(),
            time: "2013-11-20T06:42:23.761Z".into(),
        };
        assert_eq!(HookCommand::parse(&fixture("ack"), COMP).unwrap(), ack);
        assert_eq!(
            HookCommand::parse(&ack.to_xml(COMP, HOST), COMP).unwrap(),
            ack
        );
        let escaped = HookCommand::Ack {
            to: jid("alice@localhost/a'b<c"),
            message_id: "x\"&y".into(),
            time: "2013-11-20T06:42:23.761Z".into(),
        };
        assert_eq!(
            HookCommand::parse(&escaped.to_xml_with_id(COMP, HOST, Some("k1")), COMP).unwrap(),
            escaped
        );
        assert_eq!(
            HookCommand::parse(
                "<message from='readtrack.localhost' to='localhost'><ack xmlns='urn:readtrack:hook:0' to='alice@localhost/p' time='2013-11-20T06:42:23.761Z'/></message>",
                COMP
            )
            .unwrap_err()
            .to_string(),
            "<ack> has no message-id attribute"
        );
    }

    #[test]
    fn a_snapshot_says_whether_its_module_executes_acks() {
        let old = "<message from='localhost' to='readtrack.localhost'><snapshot xmlns='urn:readtrack:hook:0' page='1' last='true'/></message>";
        let HookEvent::Snapshot { page, .. } = HookEvent::parse(old, HOST).unwrap() else {
            panic!("not a snapshot");
        };
        assert!(!page.executes_ack);
        let new = old.replace("last='true'", "last='true' executes='pace ack'");
        let HookEvent::Snapshot { page, .. } = HookEvent::parse(&new, HOST).unwrap() else {
            panic!("not a snapshot");
        };
        assert!(page.executes_ack);
        assert!(!page.executes_bounce, "{new}");
        let newer = old.replace("last='true'", "last='true' executes='ack bounce'");
        let HookEvent::Snapshot { page, .. } = HookEvent::parse(&newer, HOST).unwrap() else {
            panic!("not a snapshot");
        };
        assert!(page.executes_ack && page.executes_bounce);
        assert!(
            HookEvent::Snapshot {
                page,
                sessions: vec![]
            }
            .to_xml(HOST, COMP)
            .contains(" executes=\"ack bounce\""),
            "the snapshot does not say both"
        );
        assert!(!page.executes_deliver_bytes, "{newer}");
        let newest = old.replace(
            "last='true'",
            "last='true' executes='ack bounce deliver-bytes'",
        );
        let HookEvent::Snapshot { page, .. } = HookEvent::parse(&newest, HOST).unwrap() else {
            panic!("not a snapshot");
        };
        assert!(page.executes_ack && page.executes_bounce && page.executes_deliver_bytes);
        assert!(HookEvent::Snapshot {
            page,
            sessions: vec![]
        }
        .to_xml(HOST, COMP)
        .contains(" executes=\"ack bounce deliver-bytes\""));
    }

    #[test]
    fn a_compact_deliver_carries_the_stanza_as_one_attribute_and_reads_back_as_written() {
        let stanza = "<message to=\"bob@localhost/laptop\" id=\"HncqL-65\" type=\"chat\" from=\"alice@localhost/phone\"><body>hi &amp; bye</body><offline xmlns=\"urn:xmpp:offline\" current=\"2013-12-25T06:26:45.501Z\"/></message>";
        let command =
            HookCommand::deliver_bytes(jid("bob@localhost/laptop"), stanza.into()).unwrap();
        assert_eq!(
            command,
            HookCommand::DeliverBytes {
                to: jid("bob@localhost/laptop"),
                from: Some("alice@localhost/phone".into()),
                message_id: Some("HncqL-65".into()),
                stanza_xml: stanza.into(),
            }
        );
        assert_eq!(
            HookCommand::parse(&fixture("deliver-bytes"), COMP).unwrap(),
            command
        );
        // Written as the fixture: in single quotes, the stanza's own double quotes and `>` kept.
        assert_eq!(
            command.to_xml(COMP, HOST),
            fixture("deliver-bytes").trim_end()
        );
        // Markup, both quotes, references, line ends and tabs (attribute normalisation would
        // turn literal ones into spaces), non-ASCII; a message without from or id.
        for stanza in [
            "<message from='a&apos;b@localhost/x\"y' id='1 &lt; 2'><body>a\r\n\tb &amp;amp; \"c\" 'd' &lt;e&gt; é 😀</body></message>",
            "<message><body>\n</body></message>",
        ] {
            let command = HookCommand::deliver_bytes(jid("bob@localhost/p"), stanza.into()).unwrap();
            let xml = command.to_xml_with_id(COMP, HOST, Some("r-1"));
            assert_eq!(HookCommand::parse(&xml, COMP).unwrap(), command, "{xml}");
            assert!(!xml.contains('\n'), "{xml}");
        }
        let HookCommand::DeliverBytes {
            from, message_id, ..
        } = HookCommand::deliver_bytes(
            jid("bob@localhost/p"),
            "<message from='a&apos;b@localhost/x\"y' id='1 &lt; 2'/>".into(),
        )
        .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(from.as_deref(), Some("a'b@localhost/x\"y"));
        assert_eq!(message_id.as_deref(), Some("1 < 2"));
        assert_eq!(
            HookCommand::parse(
                "<message from='readtrack.localhost' to='localhost'><deliver-bytes xmlns='urn:readtrack:hook:0' to='bob@localhost/p'/></message>",
                COMP
            )
            .unwrap_err()
            .to_string(),
            "<deliver-bytes> has no stanza attribute"
        );
    }

    #[test]
    fn a_compact_bounce_reads_back_as_written_with_or_without_a_body() {
        let bounce = HookCommand::parse(&fixture("bounce"), COMP).unwrap();
        assert_eq!(
            bounce,
            HookCommand::Bounce {
                to: jid("alice@localhost/Spark 2.6.3"),
                message_id: "V4NkR-38".into(),
                body: Some(
                    r#"{"time":"2013-11-20T06:41:36.102Z","cnt":"hello","msgTypec":"10000","mtype":"0"}"#
                        .into()
                ),
                time: "2013-11-20T07:05:44.445Z".into(),
            }
        );
        for body in [None, Some(""), Some("a < b & c\r\n\t'\"")] {
            let command = HookCommand::Bounce {
                to: jid("alice@localhost/a'b<c"),
                message_id: "x\"&y".into(),
                body: body.map(String::from),
                time: "2013-11-20T07:05:44.445Z".into(),
            };
            let xml = command.to_xml_with_id(COMP, HOST, Some("bounce-2-9"));
            assert_eq!(HookCommand::parse(&xml, COMP).unwrap(), command, "{xml}");
            assert_eq!(xml.contains(" body="), body.is_some(), "{xml}");
        }
        assert_eq!(
            HookCommand::parse(
                "<message from='readtrack.localhost' to='localhost'><bounce xmlns='urn:readtrack:hook:0' to='alice@localhost/p' message-id='m'/></message>",
                COMP
            )
            .unwrap_err()
            .to_string(),
            "<bounce> has no time attribute"
        );
    }

    fn event_err(xml: &str) -> String {
        HookEvent::parse(xml, HOST).unwrap_err().to_string()
    }

    fn wrap(inner: &str) -> String {
        format!("<message from='localhost' to='readtrack.localhost'>{inner}</message>")
    }

    #[test]
    fn invalid_events() {
        assert_eq!(
            event_err(&wrap("<ping xmlns='urn:readtrack:hook:0'/>")),
            "unknown hook event <ping>"
        );
        assert_eq!(
            event_err(&wrap("<available xmlns='urn:readtrack:hook:0'/>")),
            "<available> has no jid attribute"
        );
        assert_eq!(
            event_err(&wrap(
                "<available xmlns='urn:readtrack:hook:0' jid='@localhost/r'/>"
            )),
            "<available jid>: JID \"@localhost/r\" has an empty localpart before '@'"
        );
        assert_eq!(
            event_err(&wrap(
                "<unavailable xmlns='urn:readtrack:hook:0' jid='a@localhost'/>"
            )),
            "<unavailable jid>: JID \"a@localhost\" has no resource, but a full JID is needed"
        );
        assert_eq!(
            event_err(&wrap(
                "<routed xmlns='urn:readtrack:hook:0' to='b@localhost/r'/>"
            )),
            "<routed to> must be a bare JID, got \"b@localhost/r\""
        );
        assert_eq!(
            event_err(&wrap("<routed xmlns='urn:readtrack:hook:0' to='b@localhost'><session jid='b@localhost'/></routed>")),
            "<session jid>: JID \"b@localhost\" has no resource, but a full JID is needed"
        );
        // The inner message must be in jabber:client, or it is the forward namespace's <message>.
        assert_eq!(
            event_err(&wrap("<sent xmlns='urn:readtrack:hook:0'><forwarded xmlns='urn:xmpp:forward:0'><message/></forwarded></sent>")),
            "<sent> has no <forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\">"
        );
        assert_eq!(
            event_err(&wrap("<body>hi</body>")),
            "hook message has no element in urn:readtrack:hook:0"
        );
        assert_eq!(
            event_err("<message from='alice@localhost/r' to='readtrack.localhost'><available xmlns='urn:readtrack:hook:0' jid='a@localhost/r'/></message>"),
            "hook message from Some(\"alice@localhost/r\") is not from \"localhost\""
        );
        assert_eq!(
            event_err("<message to='readtrack.localhost'><available xmlns='urn:readtrack:hook:0' jid='a@localhost/r'/></message>"),
            "hook message from None is not from \"localhost\""
        );
        assert_eq!(
            event_err("<iq from='localhost' type='get'><query/></iq>"),
            "hook stanza is <iq>, expected <message>"
        );
        assert_eq!(
            event_err(&wrap("<available xmlns='urn:readtrack:hook:0' jid='a@localhost/r'>")),
            "malformed hook stanza: ill-formed document: expected `</available>`, but `</message>` was found"
        );
        assert_eq!(
            event_err("<message from='localhost'><available xmlns='urn:readtrack:hook:0' jid='a@localhost/r'/>"),
            "malformed hook stanza: 1 element(s) not closed"
        );
        assert_eq!(
            event_err(&format!("{}<x/>", fixture("snapshot-empty"))),
            "malformed hook stanza: 2 top-level elements, expected 1"
        );
    }

    #[test]
    fn invalid_commands() {
        assert_eq!(
            HookCommand::parse(&fixture("deliver"), "evil.localhost")
                .unwrap_err()
                .to_string(),
            "hook message from Some(\"readtrack.localhost\") is not from \"evil.localhost\""
        );
        assert_eq!(
            HookCommand::parse(
                "<message from='readtrack.localhost' to='localhost'><kick xmlns='urn:readtrack:hook:0'/></message>",
                COMP
            )
            .unwrap_err()
            .to_string(),
            "unknown hook command <kick>"
        );
    }

    fn ack(n: usize, pad: usize) -> HookCommand {
        HookCommand::SendAsHost {
            stanza_xml: format!(
                "<message xmlns=\"jabber:client\" id=\"m{n}\" type=\"crs\" from=\"localhost\" to=\"alice@localhost/a\"><body>{}</body></message>",
                "x".repeat(pad)
            ),
        }
    }

    /// Every stanza a batch produced, parsed back into its commands.
    fn unbatch(stanzas: &[String]) -> Vec<Vec<HookCommand>> {
        stanzas
            .iter()
            .map(|s| HookCommand::parse_batch(s, COMP).unwrap())
            .collect()
    }

    #[test]
    fn a_batch_keeps_every_command_in_order_within_its_limits() {
        let commands: Vec<HookCommand> = (0..600).map(|n| ack(n, 10)).collect();
        let mut batch = CommandBatch::new(COMP, HOST);
        let mut stanzas: Vec<String> = commands
            .iter()
            .filter_map(|c| batch.push(&c.element_xml(None)))
            .collect();
        stanzas.extend(batch.finish());
        assert_eq!(batch.finish(), None, "finish empties the batch");
        let parsed = unbatch(&stanzas);
        assert_eq!(
            parsed.iter().map(Vec::len).collect::<Vec<_>>(),
            [256, 256, 88],
            "at most MAX_COMMANDS per stanza"
        );
        assert_eq!(parsed.concat(), commands);

        // Large commands: the byte limit splits them, and one over the limit goes alone.
        let big: Vec<HookCommand> = [30_000, 30_000, 30_000, 100_000, 10]
            .iter()
            .enumerate()
            .map(|(n, &pad)| ack(n, pad))
            .collect();
        let mut stanzas: Vec<String> = big
            .iter()
            .filter_map(|c| batch.push(&c.element_xml(Some("x1"))))
            .collect();
        stanzas.extend(batch.finish());
        let parsed = unbatch(&stanzas);
        assert_eq!(
            parsed.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 1, 1, 1]
        );
        assert!(stanzas[..2]
            .iter()
            .all(|s| s.len() <= CommandBatch::MAX_BYTES + 100));
        assert_eq!(parsed.concat(), big);
        // Each command keeps its own id.
        assert_eq!(stanzas[0].matches(" id=\"x1\"").count(), 2);
    }

    #[test]
    fn parse_takes_the_first_command_and_parse_batch_all() {
        let xml = format!(
            "<message from=\"{COMP}\" to=\"{HOST}\">{}<other xmlns=\"urn:example\"/>{}</message>",
            ack(1, 1).element_xml(None),
            ack(2, 1).element_xml(Some("c2"))
        );
        assert_eq!(HookCommand::parse(&xml, COMP).unwrap(), ack(1, 1));
        assert_eq!(
            HookCommand::parse_batch(&xml, COMP).unwrap(),
            vec![ack(1, 1), ack(2, 1)]
        );
        // One bad command fails the whole message: nothing half-understood.
        let bad = xml.replace(
            "</message>",
            "<nope xmlns=\"urn:readtrack:hook:0\"/></message>",
        );
        assert!(matches!(
            HookCommand::parse_batch(&bad, COMP),
            Err(HookError::UnknownCommand(n)) if n == "nope"
        ));
    }

    #[test]
    fn pace_and_drained_carry_a_session_and_a_token_both_ways() {
        let event = HookEvent::parse(&fixture("drained"), HOST).unwrap();
        assert_eq!(
            event,
            HookEvent::Drained {
                jid: jid("bob@localhost/phone"),
                token: 17
            }
        );
        assert_eq!(HookEvent::parse(&event.to_xml(HOST, COMP), HOST), Ok(event));
        let command = HookCommand::parse(&fixture("pace"), COMP).unwrap();
        assert_eq!(
            command,
            HookCommand::Pace {
                to: jid("bob@localhost/phone"),
                token: 17
            }
        );
        assert_eq!(
            HookCommand::parse(&command.to_xml(COMP, HOST), COMP),
            Ok(command)
        );
        assert_eq!(
            event_err(&wrap(
                "<drained xmlns='urn:readtrack:hook:0' jid='bob@localhost/phone' token='x'/>"
            )),
            "malformed hook stanza: <drained token> must be a number, got \"x\""
        );
        assert_eq!(
            event_err(&wrap(
                "<drained xmlns='urn:readtrack:hook:0' jid='bob@localhost/phone'/>"
            )),
            "<drained> has no token attribute"
        );
        assert_eq!(
            event_err(&wrap(
                "<drained xmlns='urn:readtrack:hook:0' jid='bob@localhost' token='1'/>"
            )),
            HookEvent::parse(
                &wrap("<available xmlns='urn:readtrack:hook:0' jid='bob@localhost'/>"),
                HOST
            )
            .unwrap_err()
            .to_string()
            .replace("available", "drained"),
            "a drained session is a full JID"
        );
    }
}
