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
    #[error(
        "refusing to connect component {domain} to {addr}: not a loopback address (the \
         XEP-0114 link is plaintext; set [xmpp] allow_remote_connect only if the path is \
         protected otherwise)"
    )]
    NotLoopback { addr: String, domain: String },
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
            ComponentError::NotAuthorized { .. }
                | ComponentError::HostUnknown { .. }
                | ComponentError::NotLoopback { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<(ComponentError, &'static str)> {
        let addr = || "127.0.0.1:5347".to_string();
        let domain = || "readtrack.localhost".to_string();
        vec![
            (
                ComponentError::Connect {
                    addr: addr(),
                    domain: domain(),
                    source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
                },
                "could not connect to the server at 127.0.0.1:5347 for component \
                 readtrack.localhost: refused",
            ),
            (
                ComponentError::Timeout {
                    addr: addr(),
                    domain: domain(),
                    after: Duration::from_millis(1500),
                },
                "the server at 127.0.0.1:5347 did not complete the handshake of component \
                 readtrack.localhost within 1.5s",
            ),
            (
                ComponentError::NotAuthorized {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 refused the secret for component \
                 readtrack.localhost (stream error not-authorized)",
            ),
            (
                ComponentError::HostUnknown {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 does not serve component readtrack.localhost \
                 (stream error host-unknown); declare it as a Component in the server's \
                 configuration",
            ),
            (
                ComponentError::Conflict {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 already has a connection for component \
                 readtrack.localhost (stream error conflict); is another instance running?",
            ),
            (
                ComponentError::StreamError {
                    addr: addr(),
                    domain: domain(),
                    condition: "policy-violation".into(),
                    text: None,
                },
                "the server at 127.0.0.1:5347 ended the stream of component readtrack.localhost \
                 with stream error policy-violation",
            ),
            (
                ComponentError::StreamError {
                    addr: addr(),
                    domain: domain(),
                    condition: "system-shutdown".into(),
                    text: Some("bye\nnow".into()),
                },
                "the server at 127.0.0.1:5347 ended the stream of component readtrack.localhost \
                 with stream error system-shutdown: \"bye\\nnow\"",
            ),
            (
                ComponentError::UnexpectedReply {
                    addr: addr(),
                    domain: domain(),
                    element: "iq".into(),
                },
                "the server at 127.0.0.1:5347 answered the handshake of component \
                 readtrack.localhost with <iq> instead of <handshake/>",
            ),
            (
                ComponentError::MissingStreamId {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 sent a stream header without an id to component \
                 readtrack.localhost",
            ),
            (
                ComponentError::Protocol {
                    addr: addr(),
                    domain: domain(),
                    detail: "a second stream header",
                },
                "the server at 127.0.0.1:5347 broke the stream protocol of component \
                 readtrack.localhost: a second stream header",
            ),
            (
                ComponentError::Framing {
                    addr: addr(),
                    domain: domain(),
                    source: FrameError::TooLarge { limit: 512 },
                },
                "the server at 127.0.0.1:5347 sent malformed XML to component \
                 readtrack.localhost: stanza exceeds 512 bytes",
            ),
            (
                ComponentError::ServerClosed {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 closed the stream of component readtrack.localhost",
            ),
            (
                ComponentError::ConnectionLost {
                    addr: addr(),
                    domain: domain(),
                },
                "the server at 127.0.0.1:5347 dropped the connection of component \
                 readtrack.localhost",
            ),
            (
                ComponentError::Io {
                    addr: addr(),
                    domain: domain(),
                    source: io::Error::new(io::ErrorKind::BrokenPipe, "broken pipe"),
                },
                "I/O error on the connection of component readtrack.localhost to the server at \
                 127.0.0.1:5347: broken pipe",
            ),
        ]
    }

    #[test]
    fn exact_texts() {
        for (err, text) in texts() {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn only_configuration_errors_are_fatal() {
        let fatal: Vec<String> = texts()
            .into_iter()
            .filter(|(err, _)| err.is_fatal())
            .map(|(_, text)| text.split(" (").next().unwrap().to_string())
            .collect();
        assert_eq!(
            fatal,
            vec![
                "the server at 127.0.0.1:5347 refused the secret for component readtrack.localhost",
                "the server at 127.0.0.1:5347 does not serve component readtrack.localhost",
            ]
        );
    }
}
