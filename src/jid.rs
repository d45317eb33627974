//! JIDs (RFC 7622, simplified: no stringprep beyond lowercasing local and domain parts) and the
//! rule that turns a resource into a device key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error("empty JID")]
    Empty,
    #[error("JID {0:?} has an empty localpart before '@'")]
    EmptyLocal(String),
    #[error("JID {0:?} has an empty domain")]
    EmptyDomain(String),
    #[error("JID {0:?} has an empty resource after '/'")]
    EmptyResource(String),
    #[error("JID {0:?} contains a forbidden character")]
    Forbidden(String),
    #[error("JID {0:?} has a part longer than 1023 bytes")]
    TooLong(String),
    #[error("JID {0:?} has no resource, but a full JID is needed")]
    NotFull(String),
}

/// A JID, bare or full. Local and domain parts are stored lowercased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

fn check_part(part: &str, whole: &str) -> Result<(), JidError> {
    if part.len() > 1023 {
        return Err(JidError::TooLong(whole.to_string()));
    }
    // For ASCII the rule below is exactly "a C0 control or DEL": the ASCII whitespace other than
    // ' ' (tab, LF, VT, FF, CR) is all control characters.
    let forbidden = if part.is_ascii() {
        part.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        part.chars()
            .any(|c| c.is_control() || c.is_whitespace() && c != ' ')
    };
    if forbidden {
        return Err(JidError::Forbidden(whole.to_string()));
    }
    Ok(())
}

/// `part` lowercased, as `str::to_lowercase` does; ASCII (the usual case) without the Unicode
/// tables and without a second pass when there is nothing to lower.
fn lowercase(part: &str) -> String {
    if !part.is_ascii() {
        return part.to_lowercase();
    }
    let mut lower = part.to_string();
    if lower.bytes().any(|b| b.is_ascii_uppercase()) {
        lower.make_ascii_lowercase();
    }
    lower
}

impl Jid {
    pub fn parse(text: &str) -> Result<Jid, JidError> {
        if text.is_empty() {
            return Err(JidError::Empty);
        }
        let (head, resource) = match text.find('/') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let (local, domain) = match head.find('@') {
            Some(i) => (Some(&head[..i]), &head[i + 1..]),
            None => (None, head),
        };
        if local == Some("") {
            return Err(JidError::EmptyLocal(text.to_string()));
        }
        if domain.is_empty() {
            return Err(JidError::EmptyDomain(text.to_string()));
        }
        if resource == Some("") {
            return Err(JidError::EmptyResource(text.to_string()));
        }
        for part in [local.unwrap_or(""), domain, resource.unwrap_or("")] {
            check_part(part, text)?;
        }
        // The forbidden separators are ASCII, and no byte of a multi-byte UTF-8 character is.
        let bad_local = |b: u8| {
            matches!(
                b,
                b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@' | b' '
            )
        };
        let bad_domain = |b: u8| matches!(b, b'@' | b' ' | b'"' | b'<' | b'>' | b'&' | b'\'');
        if local.is_some_and(|l| l.bytes().any(bad_local)) || domain.bytes().any(bad_domain) {
            return Err(JidError::Forbidden(text.to_string()));
        }
        Ok(Jid {
            local: local.map(lowercase),
            domain: lowercase(domain.trim_end_matches('.')),
            resource: resource.map(str::to_string),
        })
    }

    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }
    pub fn is_full(&self) -> bool {
        self.resource.is_some()
    }

    /// The same JID without its resource.
    pub fn to_bare(&self) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }

    pub fn with_resource(&self, resource: &str) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: Some(resource.to_string()),
        }
    }

    /// The bare JID as text (`user@domain`).
    pub fn bare_string(&self) -> String {
        match &self.local {
            Some(l) => format!("{l}@{}", self.domain),
            None => self.domain.clone(),
        }
    }
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

/// How a device key is derived from a resource (config `[devices] key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKeyRule {
    /// The whole resource is the device key.
    #[default]
    Resource,
    /// The text after the last `#` (`Spark 2.6.3#android` → `android`), else the whole resource.
    AfterHash,
}

impl DeviceKeyRule {
    /// The device key of a session. A stable client id from the server (SASL2 `<user-agent id>`)
    /// wins over the resource because resources are often randomised per login.
    pub fn device_key(self, resource: &str, stable_id: Option<&str>) -> String {
        if let Some(id) = stable_id.filter(|id| !id.is_empty()) {
            return id.to_string();
        }
        match self {
            DeviceKeyRule::Resource => resource.to_string(),
            DeviceKeyRule::AfterHash => match resource.rfind('#') {
                Some(i) if i + 1 < resource.len() => resource[i + 1..].to_string(),
                _ => resource.to_string(),
            },
        }
    }
}

impl FromStr for DeviceKeyRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resource" => Ok(DeviceKeyRule::Resource),
            "after-hash" => Ok(DeviceKeyRule::AfterHash),
            other => Err(format!(
                "unknown device key rule {other:?} (expected \"resource\" or \"after-hash\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `Jid::parse` before its ASCII fast paths, kept to check they change nothing.
    fn reference_parse(text: &str) -> Result<Jid, JidError> {
        fn check_part(part: &str, whole: &str) -> Result<(), JidError> {
            if part.len() > 1023 {
                return Err(JidError::TooLong(whole.to_string()));
            }
            if part
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() && c != ' ')
            {
                return Err(JidError::Forbidden(whole.to_string()));
            }
            Ok(())
        }
        if text.is_empty() {
            return Err(JidError::Empty);
        }
        let (head, resource) = match text.find('/') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let (local, domain) = match head.find('@') {
            Some(i) => (Some(&head[..i]), &head[i + 1..]),
            None => (None, head),
        };
        if local == Some("") {
            return Err(JidError::EmptyLocal(text.to_string()));
        }
        if domain.is_empty() {
            return Err(JidError::EmptyDomain(text.to_string()));
        }
        if resource == Some("") {
            return Err(JidError::EmptyResource(text.to_string()));
        }
        for part in [local.unwrap_or(""), domain, resource.unwrap_or("")] {
            check_part(part, text)?;
        }
        if local.is_some_and(|l| l.contains(['"', '&', '\'', '/', ':', '<', '>', '@', ' ']))
            || domain.contains(['@', ' ', '"', '<', '>', '&', '\''])
        {
            return Err(JidError::Forbidden(text.to_string()));
        }
        Ok(Jid {
            local: local.map(str::to_lowercase),
            domain: domain.trim_end_matches('.').to_lowercase(),
            resource: resource.map(str::to_string),
        })
    }

    #[test]
    fn fast_paths_match_the_reference_on_edge_cases() {
        let long = "x".repeat(1024);
        let cases = [
            "Bob@Example.COM./Res",
            "ÅSA@Bücher.Example/Ω",
            "ΣΑΣ@example.com",
            "İstanbul@EXAMPLE.tr",
            "a@b\u{7f}",
            "a@b/\u{85}",
            "a@b/\u{a0}",
            "a@b/x\u{2028}",
            "a\tb@c",
            "a b@c",
            "a@b c",
            "a@b/c d",
            "a:b@c",
            "a@b:c/\"'<>&",
            "...",
            "a@.",
            "/x",
            "@",
            "a@b@c/d@e",
            &format!("{long}@b"),
            &format!("\"@{long}"),
            &format!("a@b/{long}"),
            &format!("Ä{long}@b"),
        ];
        for text in cases {
            assert_eq!(Jid::parse(text), reference_parse(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn fast_paths_match_the_reference(
            text in "[aAzZ09@/. \"&'<>:\t\n\u{7f}\u{85}\u{a0}ÅåΣςİßK\u{212A}\u{2028}\u{1F600}]{0,16}"
        ) {
            prop_assert_eq!(Jid::parse(&text), reference_parse(&text));
        }
    }

    #[test]
    fn parses_seed_resources_with_spaces_and_hash() {
        let j = Jid::parse("Bob@Example.com/Spark 2.6.3#android").unwrap();
        assert_eq!(j.local(), Some("bob"));
        assert_eq!(j.domain(), "example.com");
        assert_eq!(j.resource(), Some("Spark 2.6.3#android"));
        assert_eq!(j.to_string(), "bob@example.com/Spark 2.6.3#android");
        assert_eq!(j.bare_string(), "bob@example.com");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Jid::parse("").unwrap_err().to_string(), "empty JID");
        assert_eq!(
            Jid::parse("@x").unwrap_err().to_string(),
            "JID \"@x\" has an empty localpart before '@'"
        );
        assert_eq!(
            Jid::parse("a@").unwrap_err().to_string(),
            "JID \"a@\" has an empty domain"
        );
        assert_eq!(
            Jid::parse("a@b/").unwrap_err().to_string(),
            "JID \"a@b/\" has an empty resource after '/'"
        );
        assert!(Jid::parse("a@b@c").is_err());
        assert!(Jid::parse("a\nb@c").is_err());
    }

    #[test]
    fn device_key_rules() {
        assert_eq!(
            DeviceKeyRule::AfterHash.device_key("Spark 2.6.3#android", None),
            "android"
        );
        assert_eq!(
            DeviceKeyRule::AfterHash.device_key("laptop", None),
            "laptop"
        );
        assert_eq!(
            DeviceKeyRule::AfterHash.device_key("trailing#", None),
            "trailing#"
        );
        assert_eq!(
            DeviceKeyRule::Resource.device_key("Spark 2.6.3#android", None),
            "Spark 2.6.3#android"
        );
        assert_eq!(
            DeviceKeyRule::Resource.device_key("random123", Some("uuid-1")),
            "uuid-1"
        );
    }
}
