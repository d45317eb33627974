//! Errors of the component link. Every text names the server address and the component domain,
//! because an operator reading one log line must know which connection it is about; none of them
//! can name the secret, because no variant holds it.

use std::io;
use std::time::Duration;

use crate::stanza::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("could not connect to the server at {addr} for component {domain}: {source}")]
    Connect {
        addr: String,
        domain: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the server at {addr} did not complete the handshake of component {domain} within {after:?}"
    )]
    Timeout {
        addr: String,
        domain: String,
        after: Duration,
    },
    #[error(
        "the server at {addr} refused the secret for component {domain} (stream error not-authorized)"
    )]
    NotAuthorized { addr: String, domain: String },
    #[error(
        "the server at {addr} does not serve component {domain} (stream error host-unknown); \
         declare it as a Component in the server's configuration"
    )]
    HostUnknown { addr: String, domain: String },
    #[error(
        "the server at {addr} already has a connection for component {domain} \
         (stream error conflict); is another instance running?"
    )]
    Conflict { addr: String, domain: String },
    #[error(
        "the server at {addr} ended the stream of component {domain} with stream error \
         {condition}{}", text_suffix(.text)
    )]
    StreamError {
        addr: String,
        domain: String,
        condition: String,
        text: Option<String>,
    },
    #[error(
        "the server at {addr} answered the handshake of component {domain} with <{element}> \
         instead of <handshake/>"
    )]
    UnexpectedReply {
        addr: String,
        domain: String,
        element: String,
    },
    #[error("the server at {addr} sent a stream header without an id to component {domain}")]
    MissingStreamId { addr: String, domain: String },
    #[error("the server at {addr} broke the stream protocol of component {domain}: {detail}")]
    Protocol {
        addr: String,
        domain: String,
        detail: &'static str,
    },
    #[error("the server at {addr} sent malformed XML to component {domain}: {source}")]
    Framing {
        addr: String,
        domain: String,
        #[source]
        source: FrameError,
    },
    #[error("the server at {addr} closed the stream of component {domain}")]
    ServerClosed { addr: String, domain: String },
    #[error("the server at {addr} dropped the connection of component {domain}")]
    ConnectionLost { addr: String, domain: String },
    #[error("I/O error on the connection of component {domain} to the server at {addr}: {source}")]
    Io {
        addr: String,
        domain: String,
        #[source]
        source: io::Error,
    },
}

/// Stream error texts come from the server; quoting them with `{:?}` keeps a stray newline or
/// control character from forging extra log lines.
fn text_suffix(text: &Option<String>) -> String {
    match text {
        Some(text) => format!(": {text:?}"),
        None => String::new(),
    }
}

impl ComponentError {
    /// Errors that retrying cannot fix: the server's configuration or ours is wrong, and
    /// reconnecting in a loop would only flood both logs.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ComponentError::NotAuthorized { .. } | ComponentError::HostUnknown { .. }
        )
    }
}
