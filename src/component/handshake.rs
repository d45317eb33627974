//! The XEP-0114 wire texts and the reading of the server's answers; no I/O here.

use quick_xml::events::Event;
use sha1::{Digest, Sha1};

use super::Secret;
use crate::stanza::stanza_name;

pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_COMPONENT: &str = "jabber:component:accept";
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// Our stream header. The domain is escaped because it comes from configuration, and a quote
/// in it would otherwise end the attribute.
pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='{NS_STREAM}' to='{}'>",
        escape_attr(domain)
    )
}

fn escape_attr(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Lowercase hex SHA-1 of stream id ‖ secret, as XEP-0114 section 3 defines the handshake.
pub fn handshake_digest(stream_id: &str, secret: &Secret) -> String {
    let mut hasher = Sha1::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(secret.expose().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub fn handshake_element(stream_id: &str, secret: &Secret) -> String {
    format!(
        "<handshake>{}</handshake>",
        handshake_digest(stream_id, secret)
    )
}

/// What the server's stream header tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHeader {
    pub id: Option<String>,
    /// The prefix the server bound to the streams namespace, so `<PREFIX:error>` can be
    /// recognised whatever the server chose.
    pub stream_prefix: String,
}

impl ServerHeader {
    pub fn from_attrs(attrs: &[(String, String)]) -> ServerHeader {
        let id = attrs
            .iter()
            .find(|(name, _)| name == "id")
            .map(|(_, value)| value.clone())
            .filter(|id| !id.is_empty());
        let stream_prefix = attrs
            .iter()
            .find_map(|(name, value)| {
                name.strip_prefix("xmlns:")
                    .filter(|_| value == NS_STREAM)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "stream".to_string());
        ServerHeader { id, stream_prefix }
    }

    /// Whether a top-level stanza is a stream error (a cheap look at its start tag, done for
    /// every stanza the server sends).
    pub fn is_stream_error(&self, stanza: &str) -> bool {
        let Some(rest) = stanza
            .strip_prefix('<')
            .and_then(|rest| rest.strip_prefix(self.stream_prefix.as_str()))
            .and_then(|rest| rest.strip_prefix(":error"))
        else {
            return false;
        };
        matches!(
            rest.bytes().next(),
            Some(b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>')
        )
    }
}

/// The defined condition and optional text of a `<stream:error>` (RFC 6120 section 4.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamErrorInfo {
    pub condition: String,
    pub text: Option<String>,
}

/// Reads a stream error's children. A malformed one still ends the stream, so it yields the
/// condition `undefined-condition` rather than an error of its own.
pub fn parse_stream_error(stanza: &str) -> StreamErrorInfo {
    let mut info = StreamErrorInfo {
        condition: String::new(),
        text: None,
    };
    let mut reader = quick_xml::Reader::from_str(stanza);
    let mut depth = 0usize;
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth == 2 {
                    let local = e.local_name().as_ref().to_string();
                    if local == "text" {
                        in_text = true;
                        info.text.get_or_insert_with(String::new);
                    } else if info.condition.is_empty() {
                        info.condition = local;
                    }
                }
            }
            Ok(Event::Empty(e)) if depth == 1 => {
                let local = e.local_name().as_ref().to_string();
                if local != "text" && info.condition.is_empty() {
                    info.condition = local;
                }
            }
            Ok(Event::End(_)) => {
                if depth == 2 {
                    in_text = false;
                }
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            Ok(Event::Text(t)) if in_text => {
                if let Some(text) = info.text.as_mut() {
                    text.push_str(&t.xml10_content());
                }
            }
            Ok(Event::GeneralRef(r)) if in_text => {
                let Some(text) = info.text.as_mut() else {
                    continue;
                };
                match r.resolve_char_ref() {
                    Ok(Some(c)) => text.push(c),
                    _ => {
                        if let Some(resolved) = quick_xml::escape::resolve_xml_entity(&r) {
                            text.push_str(resolved);
                        }
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if info.condition.is_empty() {
        info.condition = "undefined-condition".to_string();
    }
    info
}

/// The server's answer to our `<handshake>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted,
    StreamError(StreamErrorInfo),
    /// Anything else, named as written.
    Unexpected(String),
}

pub fn classify_reply(header: &ServerHeader, stanza: &str) -> Reply {
    if header.is_stream_error(stanza) {
        return Reply::StreamError(parse_stream_error(stanza));
    }
    // Only what XEP-0114 says the server answers: an empty <handshake/> in the stream's
    // namespace. Anything else (text in it, another namespace) did not come from a server
    // that checked our digest, so it is no sign of being accepted.
    match stanza_name(stanza) {
        Ok(name)
            if name.qname == "handshake"
                && name.ns.as_deref().map_or(true, |ns| ns == NS_COMPONENT) =>
        {
            if is_empty_element(stanza, "handshake") {
                Reply::Accepted
            } else {
                Reply::Unexpected("handshake with content".to_string())
            }
        }
        Ok(name) => Reply::Unexpected(name.qname),
        Err(_) => Reply::Unexpected("malformed element".to_string()),
    }
}

/// `<name .../>` or `<name ...></name>` with nothing but whitespace between, as framed (one
/// element, so the first `>` ends its start tag unless an attribute value holds one).
fn is_empty_element(stanza: &str, name: &str) -> bool {
    let mut reader = quick_xml::Reader::from_str(stanza);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Empty(_)) if depth == 0 => depth = usize::MAX,
            Ok(Event::Start(_)) if depth == 0 => depth = 1,
            Ok(Event::End(e)) if depth == 1 && e.name().as_ref() == name => depth = usize::MAX,
            Ok(Event::Text(t)) if t.as_ref().trim().is_empty() => {}
            Ok(Event::Eof) => return depth == usize::MAX,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn digest_is_lowercase_hex_sha1_of_id_then_secret() {
        // FIPS 180 test vector: SHA-1("abc"); the split shows the id comes first.
        assert_eq!(
            handshake_digest("a", &Secret::new("bc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            handshake_element("ab", &Secret::new("c")),
            "<handshake>a9993e364706816aba3e25717850c26c9cd0d89d</handshake>"
        );
    }

    #[test]
    fn header_escapes_the_domain() {
        assert_eq!(
            stream_header("readtrack.localhost"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='readtrack.localhost'>"
        );
        assert!(stream_header("a'b&c").ends_with("to='a&apos;b&amp;c'>"));
    }

    #[test]
    fn header_id_and_prefix() {
        let header = ServerHeader::from_attrs(&attrs(&[
            ("xmlns:s", NS_STREAM),
            ("xmlns", "jabber:component:accept"),
            ("id", "3BF96D75"),
        ]));
        assert_eq!(
            header,
            ServerHeader {
                id: Some("3BF96D75".into()),
                stream_prefix: "s".into()
            }
        );
        assert!(header.is_stream_error("<s:error><conflict/></s:error>"));
        assert!(!header.is_stream_error("<stream:error/>"));
        let header = ServerHeader::from_attrs(&attrs(&[("id", "")]));
        assert_eq!(header.id, None);
        assert_eq!(header.stream_prefix, "stream");
        assert!(header.is_stream_error("<stream:error/>"));
        assert!(!header.is_stream_error("<stream:errors/>"));
        assert!(!header.is_stream_error("<message/>"));
    }

    #[test]
    fn stream_error_condition_and_text() {
        let info = parse_stream_error(
            "<stream:error><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad &amp; wrong</text>\
             <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(
            info,
            StreamErrorInfo {
                condition: "not-authorized".into(),
                text: Some("bad & wrong".into())
            }
        );
        let info = parse_stream_error(
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'></host-unknown>\
             <app xmlns='urn:example'/></stream:error>",
        );
        assert_eq!(info.condition, "host-unknown");
        assert_eq!(info.text, None);
        assert_eq!(
            parse_stream_error("<stream:error/>").condition,
            "undefined-condition"
        );
    }

    #[test]
    fn replies() {
        let header = ServerHeader::from_attrs(&attrs(&[("xmlns:stream", NS_STREAM)]));
        assert_eq!(classify_reply(&header, "<handshake/>"), Reply::Accepted);
        assert_eq!(
            classify_reply(&header, "<handshake></handshake>"),
            Reply::Accepted
        );
        assert_eq!(
            classify_reply(
                &header,
                "<handshake xmlns='jabber:component:accept'></handshake>"
            ),
            Reply::Accepted
        );
        assert_eq!(
            classify_reply(&header, "<iq type='get'/>"),
            Reply::Unexpected("iq".into())
        );
        // Not what a server that checked the digest sends: no sign of being accepted.
        for reply in [
            "<handshake>ok</handshake>",
            "<handshake><x/></handshake>",
            "<handshake xmlns='urn:example'/>",
            "<h:handshake xmlns:h='jabber:component:accept'/>",
        ] {
            assert!(
                matches!(classify_reply(&header, reply), Reply::Unexpected(_)),
                "{reply} accepted"
            );
        }
        assert_eq!(
            classify_reply(
                &header,
                "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            ),
            Reply::StreamError(StreamErrorInfo {
                condition: "conflict".into(),
                text: None
            })
        );
    }
}
