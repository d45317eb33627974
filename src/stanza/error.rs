//! Errors of the stanza layer. Every message is asserted verbatim by the tests, so operators can
//! grep logs for them; `offset` is always a byte offset from the start of the stream.

/// Why the framer refused the stream. All of these are fatal for the stream (XMPP answers them
/// with a `<not-well-formed/>`, `<restricted-xml/>` or `<policy-violation/>` stream error): once
/// returned, the framer keeps returning the same error. A stanza over a limit is not one of
/// them: it is skipped ([`super::Frame::Skipped`]) and the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Something between stanzas (the stream header, a comment) over the stanza limit.
    #[error("stanza exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("DOCTYPE is not allowed (at byte {offset})")]
    Doctype { offset: usize },
    #[error("processing instruction is not allowed (at byte {offset})")]
    ProcessingInstruction { offset: usize },
    #[error("undefined entity &{name}; (at byte {offset})")]
    UndefinedEntity { name: String, offset: usize },
    #[error("invalid character reference &{text}; (at byte {offset})")]
    InvalidCharRef { text: String, offset: usize },
    #[error("invalid UTF-8 (at byte {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("end tag </{found}> does not match <{expected}> (at byte {offset})")]
    MismatchedEndTag {
        expected: String,
        found: String,
        offset: usize,
    },
    #[error("end tag </{found}> closes no open element (at byte {offset})")]
    UnexpectedEndTag { found: String, offset: usize },
    #[error("text outside a stanza (at byte {offset})")]
    TopLevelText { offset: usize },
    #[error("data after the end of the stream (at byte {offset})")]
    AfterStreamClose { offset: usize },
    #[error("malformed XML: {reason} (at byte {offset})")]
    Syntax { reason: &'static str, offset: usize },
}

/// Why one stanza could not be turned into a typed value. Only that stanza is dropped; the
/// stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The root element, as written (`iq`, `stream:error`, ...).
    #[error("not a message stanza: <{0}>")]
    NotMessage(String),
    #[error("not a message stanza: <message> in namespace \"{0}\"")]
    ForeignNamespace(String),
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("invalid JID in attribute \"{attr}\": {reason}")]
    InvalidJid {
        attr: &'static str,
        value: String,
        reason: crate::jid::JidError,
    },
    #[error("message has a receipt but no id")]
    ReceiptWithoutId,
    #[error("<{element}> has no \"{attr}\" attribute")]
    MissingAttribute {
        element: &'static str,
        attr: &'static str,
    },
    #[error("invalid timestamp in <{element}> attribute \"{attr}\": \"{value}\"")]
    InvalidTimestamp {
        element: &'static str,
        attr: &'static str,
        value: String,
    },
}
