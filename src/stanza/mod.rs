//! Sans-IO stanza handling: [`framer`] cuts a byte stream into top-level stanzas, [`parse`] turns one
//! stanza into the typed values below, [`incoming`] reads a client's message inside a hook event
//! once (typed values and stored form together), [`write`] serialises everything readtrack emits.
//!
//! Nothing here touches a socket, the clock or the store: time comes in as [`Millis`].

pub mod error;
pub mod framer;
pub mod incoming;
pub mod original;
pub mod parse;
pub mod write;

pub use error::{FrameError, ParseError};
pub use framer::{Frame, Framer, Limits};
pub use incoming::{Incoming, Original};
pub use parse::{parse_message, stanza_name, StanzaName};

use crate::jid::Jid;
use crate::time::Millis;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_COMPONENT: &str = "jabber:component:accept";
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";
pub const NS_OFFLINE: &str = "urn:xmpp:offline";
pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// The `type` attribute of a `<message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageType {
    /// No `type` attribute, or `type="normal"`.
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
    /// The seed dialect's receipt/ack type.
    Crs,
    Other(String),
}

impl MessageType {
    pub fn from_attr(value: Option<&str>) -> MessageType {
        match value {
            None | Some("normal") => MessageType::Normal,
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            Some("crs") => MessageType::Crs,
            Some(other) => MessageType::Other(other.to_string()),
        }
    }

    /// The attribute value, `None` for [`MessageType::Normal`] (written without a `type`).
    pub fn as_attr(&self) -> Option<&str> {
        match self {
            MessageType::Normal => None,
            MessageType::Chat => Some("chat"),
            MessageType::Groupchat => Some("groupchat"),
            MessageType::Headline => Some("headline"),
            MessageType::Error => Some("error"),
            MessageType::Crs => Some("crs"),
            MessageType::Other(s) => Some(s),
        }
    }
}

/// XEP-0359 `<stanza-id xmlns="urn:xmpp:sid:0" id=".." by=".."/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaId {
    pub id: String,
    pub by: String,
}

/// XEP-0203 `<delay xmlns="urn:xmpp:delay" stamp=".." from=".."/>`. The seed dialect's bounce
/// reuses the element with a `current` attribute and the text `501`; both shapes land here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delay {
    pub stamp: Option<Millis>,
    pub from: Option<String>,
    /// Seed bounce: `current` attribute.
    pub current: Option<Millis>,
    /// Seed bounce: element text (`501`).
    pub code: Option<String>,
}

/// An acknowledgement of one message by the device that sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Seed: `<received xmlns="urn:xmpp:receipts">200</received>` or `<received .. type="200"/>`
    /// with no `id` attribute: it names the enclosing message's `id`.
    SeedReceived { id: String, status: String },
    /// Seed: a `type="crs"` message holding `<offline xmlns="urn:xmpp:offline"/>`: ack of a replay.
    SeedOffline { id: String },
    /// XEP-0184: `<received xmlns="urn:xmpp:receipts" id=".."/>`.
    Xep0184 { id: String },
}

impl Receipt {
    /// The id of the message being acknowledged.
    pub fn acked_id(&self) -> &str {
        match self {
            Receipt::SeedReceived { id, .. }
            | Receipt::SeedOffline { id }
            | Receipt::Xep0184 { id } => id,
        }
    }
}

/// One `<message>` stanza, typed. Unknown children are ignored by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Option<String>,
    pub from: Option<Jid>,
    pub to: Option<Jid>,
    pub kind: MessageType,
    /// Decoded text of `<body>` (entities and CDATA resolved).
    pub body: Option<String>,
    pub thread: Option<String>,
    pub stanza_ids: Vec<StanzaId>,
    pub delay: Option<Delay>,
    /// Seed `<offline xmlns="urn:xmpp:offline" current=".."/>` marker; `Some(None)` when the
    /// element has no `current` attribute (the shape of an offline ack).
    pub offline: Option<Option<Millis>>,
    /// A receipt carried by this message, if any.
    pub receipt: Option<Receipt>,
    /// XEP-0184 `<request xmlns="urn:xmpp:receipts"/>`.
    pub receipt_request: bool,
    /// XEP-0333 `<displayed xmlns="urn:xmpp:chat-markers:0" id=".."/>`.
    pub displayed: Option<String>,
}

impl Message {
    /// An empty message of the given type, for building stanzas in code and tests.
    pub fn new(kind: MessageType) -> Message {
        Message {
            id: None,
            from: None,
            to: None,
            kind,
            body: None,
            thread: None,
            stanza_ids: Vec::new(),
            delay: None,
            offline: None,
            receipt: None,
            receipt_request: false,
            displayed: None,
        }
    }
}

/// A logged message written again to one device: the stored stanza (see [`original`]) with
/// `to` set to the device and readtrack's markers added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Full JID of the device the replay is for.
    pub to: Jid,
    /// The message in its stored form ([`original::stored_form`]).
    pub stored: String,
    /// When readtrack logged the message.
    pub logged_at: Millis,
    /// The XEP-0359 id: the server archive's where it archived the message, else readtrack's
    /// own (UUID v7 text); `by` = the user's bare JID.
    pub stanza_id: String,
    pub stanza_id_by: String,
    /// Seed `<offline xmlns="urn:xmpp:offline" current=NOW/>`.
    pub offline_marker: bool,
    /// XEP-0203 `<delay xmlns="urn:xmpp:delay" from=DOMAIN stamp=logged_at/>`.
    pub delay_from: Option<String>,
    /// Time the replay is sent (the offline marker's `current`).
    pub now: Millis,
    /// Adds XEP-0184 `<request xmlns="urn:xmpp:receipts"/>`.
    pub request_receipt: bool,
}

impl Replay {
    /// The logged message itself, typed (its `to` is the peer for a message the user sent,
    /// none for one received): for checks and operator views, not the replay path.
    pub fn original(&self) -> Result<Message, ParseError> {
        parse_message(&self.stored)
    }
}

/// Everything readtrack writes to the XMPP server, typed. [`write::outgoing`] serialises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Seed server ack (`type="crs"`, body `{"time":..,"msgType":"10013"}`) from the domain.
    ServerAck {
        from: String,
        to: Jid,
        id: String,
        time: Millis,
    },
    /// Seed delay bounce (`type="error"`, original body, `<delay current=..>501</delay>`) from the domain.
    Bounce {
        from: String,
        to: Jid,
        id: String,
        body: Option<String>,
        time: Millis,
    },
    /// A logged message written to one device.
    Replay(Replay),
    /// XEP-0280 `<sent>` carbon of a message the user sent from another device, to `to`.
    SentCarbon { from: Jid, to: Jid, inner: Replay },
}
