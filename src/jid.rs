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
    #[error("JID {0:?} cannot be prepared (stringprep): {1}")]
    Unprepared(String, String),
}

/// A JID, bare or full, as the server prepared it (ASCII letters of the local and domain parts
/// lowered; see [`Jid::prepare`] for a JID a person typed).
///
/// Held as its text (`local@domain/resource`) plus where the parts are, so a parsed JID is one
/// allocation. Comparison, hashing, `Debug` and serde behave as for the struct of three
/// optional strings it was before (the store's records keep that encoding).
#[derive(Clone, PartialEq, Eq)]
pub struct Jid {
    text: String,
    /// Length of the local part; the domain starts after it and its `@`, or at 0 without one.
    local_len: Option<usize>,
    /// End of the domain; a resource, if any, starts after the `/` there.
    domain_end: usize,
    has_resource: bool,
}

/// The serialised shape of a [`Jid`].
#[derive(Serialize, Deserialize)]
#[serde(rename = "Jid")]
struct JidParts<'a> {
    #[serde(borrow)]
    local: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    domain: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    resource: Option<std::borrow::Cow<'a, str>>,
}

impl Serialize for Jid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JidParts {
            local: self.local().map(Into::into),
            domain: self.domain().into(),
            resource: self.resource().map(Into::into),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Jid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = JidParts::deserialize(deserializer)?;
        Ok(Jid::from_parts(
            parts.local.as_deref(),
            &parts.domain,
            parts.resource.as_deref(),
        ))
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jid")
            .field("local", &self.local())
            .field("domain", &self.domain())
            .field("resource", &self.resource())
            .finish()
    }
}

impl std::hash::Hash for Jid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.local().hash(state);
        self.domain().hash(state);
        self.resource().hash(state);
    }
}

impl Ord for Jid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.local(), self.domain(), self.resource()).cmp(&(
            other.local(),
            other.domain(),
            other.resource(),
        ))
    }
}

impl PartialOrd for Jid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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

/// [`ASCII_CLASS`] bits: what a byte is forbidden in, and whether lowering changes it. For
/// ASCII, "control, or whitespace other than ' '" is exactly the C0 controls and DEL.
const CONTROL: u8 = 1;
/// `"&'/:<>@` and space, forbidden in a localpart.
const BAD_LOCAL: u8 = 2;
/// `@`, space, `"<>&'`, forbidden in a domain.
const BAD_DOMAIN: u8 = 4;
const UPPER: u8 = 8;

static ASCII_CLASS: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        let mut class = 0;
        if c < 0x20 || c == 0x7f {
            class |= CONTROL;
        }
        if matches!(
            c,
            b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@' | b' '
        ) {
            class |= BAD_LOCAL;
        }
        if matches!(c, b'@' | b' ' | b'"' | b'<' | b'>' | b'&' | b'\'') {
            class |= BAD_DOMAIN;
        }
        if c.is_ascii_uppercase() {
            class |= UPPER;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// Appends `part` with its ASCII letters lowered, and nothing else changed. A JID from the
/// server is already prepared (nodeprep, nameprep): lowering ASCII is what preparation does to
/// ASCII, and every other character is left as the server kept it. Unicode lowercasing would
/// differ from stringprep's case folding for some characters (letters newer than Unicode 3.2,
/// which stringprep leaves alone), and that user's sessions would never match again.
fn push_lower(out: &mut String, part: &str) {
    let start = out.len();
    out.push_str(part);
    out[start..].make_ascii_lowercase();
}

/// `local@domain/resource` into its parts: the resource is what follows the first `/`, the
/// local part what precedes the first `@` before it.
fn split(text: &str) -> (Option<&str>, &str, Option<&str>) {
    // Byte loops, not `str::find`: a JID is short, and its separators are ASCII (no byte of a
    // multi-byte character is one), so the positions are char boundaries.
    let (head, resource) = match text.bytes().position(|b| b == b'/') {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    match head.bytes().position(|b| b == b'@') {
        Some(i) => (Some(&head[..i]), &head[i + 1..], resource),
        None => (None, head, resource),
    }
}

impl Jid {
    /// Prepares a JID a person typed (CLI arguments, configuration) with XMPP's stringprep
    /// profiles, as the server prepares JIDs (RFC 6122: nodeprep, nameprep, resourceprep), then
    /// parses it. JIDs the server hands over are already prepared: [`Jid::parse`] them.
    pub fn prepare(text: &str) -> Result<Jid, JidError> {
        let (local, domain, resource) = split(text);
        let refused = |what: &str| JidError::Unprepared(text.to_string(), what.to_string());
        let mut prepared = String::with_capacity(text.len());
        if let Some(local) = local {
            prepared.push_str(&stringprep::nodeprep(local).map_err(|e| refused(&e.to_string()))?);
            prepared.push('@');
        }
        let domain = domain.trim_end_matches('.');
        prepared.push_str(&stringprep::nameprep(domain).map_err(|e| refused(&e.to_string()))?);
        if let Some(resource) = resource {
            prepared.push('/');
            prepared.push_str(
                &stringprep::resourceprep(resource).map_err(|e| refused(&e.to_string()))?,
            );
        }
        Jid::parse(&prepared)
    }

    pub fn parse(text: &str) -> Result<Jid, JidError> {
        if text.is_empty() {
            return Err(JidError::Empty);
        }
        let (local, domain, resource) = split(text);
        if local == Some("") {
            return Err(JidError::EmptyLocal(text.to_string()));
        }
        if domain.is_empty() {
            return Err(JidError::EmptyDomain(text.to_string()));
        }
        if resource == Some("") {
            return Err(JidError::EmptyResource(text.to_string()));
        }
        if text.is_ascii() {
            return Jid::parse_ascii(text, local, domain, resource);
        }
        for part in [local.unwrap_or(""), domain, resource.unwrap_or("")] {
            check_part(part, text)?;
        }
        // The forbidden separators are ASCII, and no byte of a multi-byte UTF-8 character is.
        let class = |b: u8| ASCII_CLASS.get(b as usize).copied().unwrap_or(0);
        if local.is_some_and(|l| l.bytes().any(|b| class(b) & BAD_LOCAL != 0))
            || domain.bytes().any(|b| class(b) & BAD_DOMAIN != 0)
        {
            return Err(JidError::Forbidden(text.to_string()));
        }
        let domain = domain.trim_end_matches('.');
        let mut out = String::with_capacity(text.len());
        let local_len = local.map(|l| {
            push_lower(&mut out, l);
            out.push('@');
            out.len() - 1
        });
        push_lower(&mut out, domain);
        let domain_end = out.len();
        if let Some(r) = resource {
            out.push('/');
            out.push_str(r);
        }
        Ok(Jid {
            text: out,
            local_len,
            domain_end,
            has_resource: resource.is_some(),
        })
    }

    /// [`Jid::parse`] after the split, for an ASCII `text`: one table lookup per byte answers
    /// every check, and the result is `text` itself unless something needs lowering or
    /// trimming. The checks are made in the same order, so the same error comes out.
    fn parse_ascii(
        text: &str,
        local: Option<&str>,
        domain: &str,
        resource: Option<&str>,
    ) -> Result<Jid, JidError> {
        let class = |part: &str| part.bytes().fold(0, |acc, b| acc | ASCII_CLASS[b as usize]);
        let (local_class, domain_class, resource_class) = (
            class(local.unwrap_or("")),
            class(domain),
            class(resource.unwrap_or("")),
        );
        for (part, class) in [
            (local.unwrap_or(""), local_class),
            (domain, domain_class),
            (resource.unwrap_or(""), resource_class),
        ] {
            if part.len() > 1023 {
                return Err(JidError::TooLong(text.to_string()));
            }
            if class & CONTROL != 0 {
                return Err(JidError::Forbidden(text.to_string()));
            }
        }
        if local_class & BAD_LOCAL != 0 || domain_class & BAD_DOMAIN != 0 {
            return Err(JidError::Forbidden(text.to_string()));
        }
        let local_len = local.map(str::len);
        let domain_start = local_len.map_or(0, |n| n + 1);
        if domain.ends_with('.') {
            // Rare: rebuild without the trailing dots.
            let mut out = String::with_capacity(text.len());
            if let Some(l) = local {
                out.push_str(l);
                out.push('@');
            }
            out.push_str(domain.trim_end_matches('.'));
            let domain_end = out.len();
            if let Some(r) = resource {
                out.push('/');
                out.push_str(r);
            }
            out[..domain_end].make_ascii_lowercase();
            return Ok(Jid {
                text: out,
                local_len,
                domain_end,
                has_resource: resource.is_some(),
            });
        }
        let domain_end = domain_start + domain.len();
        let mut out = text.to_string();
        if (local_class | domain_class) & UPPER != 0 {
            out[..domain_end].make_ascii_lowercase();
        }
        Ok(Jid {
            text: out,
            local_len,
            domain_end,
            has_resource: resource.is_some(),
        })
    }

    /// A JID of parts taken as they are (no validation, no lowercasing).
    fn from_parts(local: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
        let mut text = String::with_capacity(
            local.map_or(0, |l| l.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1),
        );
        let local_len = local.map(|l| {
            text.push_str(l);
            text.push('@');
            l.len()
        });
        text.push_str(domain);
        let domain_end = text.len();
        if let Some(r) = resource {
            text.push('/');
            text.push_str(r);
        }
        Jid {
            text,
            local_len,
            domain_end,
            has_resource: resource.is_some(),
        }
    }

    pub fn local(&self) -> Option<&str> {
        self.local_len.map(|n| &self.text[..n])
    }
    pub fn domain(&self) -> &str {
        &self.text[self.local_len.map_or(0, |n| n + 1)..self.domain_end]
    }
    pub fn resource(&self) -> Option<&str> {
        self.has_resource.then(|| &self.text[self.domain_end + 1..])
    }
    pub fn is_full(&self) -> bool {
        self.has_resource
    }

    /// The same JID without its resource.
    pub fn to_bare(&self) -> Jid {
        Jid {
            text: self.text[..self.domain_end].to_string(),
            local_len: self.local_len,
            domain_end: self.domain_end,
            has_resource: false,
        }
    }

    pub fn with_resource(&self, resource: &str) -> Jid {
        let mut text = String::with_capacity(self.domain_end + 1 + resource.len());
        text.push_str(&self.text[..self.domain_end]);
        text.push('/');
        text.push_str(resource);
        Jid {
            text,
            local_len: self.local_len,
            domain_end: self.domain_end,
            has_resource: true,
        }
    }

    /// The bare JID as text (`user@domain`).
    pub fn bare_string(&self) -> String {
        self.text[..self.domain_end].to_string()
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
        f.write_str(&self.text)
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

    #[test]
    fn a_jid_from_the_server_is_taken_as_prepared() {
        // Cherokee capitals are letters in Unicode 3.2 (stringprep's tables) without a case
        // mapping there; Unicode lowercasing maps them since Unicode 8. The server keeps them.
        let j = Jid::parse("\u{13A0}\u{13A1}@localhost/r").unwrap();
        assert_eq!(j.local(), Some("\u{13A0}\u{13A1}"));
        // ASCII letters are lowered, as nodeprep and nameprep lower them.
        assert_eq!(
            Jid::parse("Bob@LocalHost/Phone").unwrap().to_string(),
            "bob@localhost/Phone"
        );
        // Non-ASCII is never changed, even where a lowercase exists.
        assert_eq!(
            Jid::parse("Östen@localhost").unwrap().local(),
            Some("Östen")
        );
    }

    #[test]
    fn a_jid_a_person_typed_is_prepared_as_the_server_prepares_it() {
        let prepared = |s: &str| Jid::prepare(s).unwrap().to_string();
        assert_eq!(prepared("ÖSTEN@LocalHost"), "östen@localhost");
        // Case folding: ß folds to "ss"; final sigma to sigma.
        assert_eq!(prepared("Straße@localhost"), "strasse@localhost");
        assert_eq!(prepared("ΛΌΓΟΣ@localhost"), "λόγοσ@localhost");
        // Compatibility forms (NFKC): fullwidth letters are their ASCII letters.
        assert_eq!(prepared("ｆｕｌｌ@localhost"), "full@localhost");
        // IDNA domains keep their Unicode form, lowered by nameprep.
        assert_eq!(prepared("bob@BÜCHER.example"), "bob@bücher.example");
        // The resource keeps its case (resourceprep folds nothing).
        assert_eq!(prepared("bob@localhost/Phone"), "bob@localhost/Phone");
        // A letter stringprep has no mapping for stays as it is, as on the server.
        assert_eq!(prepared("\u{13A0}@localhost"), "\u{13A0}@localhost");
        // Prohibited characters are refused with the reason.
        let err = Jid::prepare("a\u{FFFC}b@localhost")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be prepared"), "{err}");
    }

    use super::*;
    use proptest::prelude::*;

    /// `Jid::parse` before its ASCII fast paths, kept to check they change nothing.
    fn reference_parse(text: &str) -> Result<OldJid, JidError> {
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
        Ok(OldJid {
            local: local.map(str::to_ascii_lowercase),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            resource: resource.map(str::to_string),
        })
    }

    /// The layout `Jid` had, with derived traits: the reference for serde, order and `Debug`.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename = "Jid")]
    struct OldJid {
        local: Option<String>,
        domain: String,
        resource: Option<String>,
    }

    impl OldJid {
        fn of(jid: &Jid) -> OldJid {
            OldJid {
                local: jid.local().map(str::to_string),
                domain: jid.domain().to_string(),
                resource: jid.resource().map(str::to_string),
            }
        }
        fn display(&self) -> String {
            let mut s = String::new();
            if let Some(l) = &self.local {
                s.push_str(l);
                s.push('@');
            }
            s.push_str(&self.domain);
            if let Some(r) = &self.resource {
                s.push('/');
                s.push_str(r);
            }
            s
        }
    }

    fn new_parse(text: &str) -> Result<OldJid, JidError> {
        Jid::parse(text).map(|j| {
            let old = OldJid::of(&j);
            assert_eq!(j.to_string(), old.display());
            assert_eq!(format!("Old{j:?}"), format!("{old:?}"));
            assert_eq!(format!("Old{j:#?}"), format!("{old:#?}"));
            old
        })
    }

    #[test]
    fn same_encoding_order_and_hash_as_the_three_string_struct() {
        use std::hash::{BuildHasher, RandomState};
        let jids = [
            "a@b", "b", "a@b/c", "A@B/C", "b/c/d@e", "Ä@ß/Σ", "x@y./z", "x@y",
        ]
        .map(|t| Jid::parse(t).unwrap());
        let hasher = RandomState::new();
        let config = bincode::config::standard();
        for j in &jids {
            let old = OldJid::of(j);
            let bytes = bincode::serde::encode_to_vec(j, config).unwrap();
            assert_eq!(bytes, bincode::serde::encode_to_vec(&old, config).unwrap());
            let (back, _): (Jid, usize) =
                bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(&back, j);
            let json = serde_json::to_string(j).unwrap();
            assert_eq!(json, serde_json::to_string(&old).unwrap());
            assert_eq!(&serde_json::from_str::<Jid>(&json).unwrap(), j);
            assert_eq!(hasher.hash_one(j), hasher.hash_one(&old));
            assert_eq!(
                OldJid::of(&j.to_bare()),
                OldJid {
                    resource: None,
                    ..old.clone()
                }
            );
            assert_eq!(
                OldJid::of(&j.with_resource("r/1")),
                OldJid {
                    resource: Some("r/1".into()),
                    ..old.clone()
                }
            );
            assert_eq!(
                j.bare_string(),
                OldJid {
                    resource: None,
                    ..old.clone()
                }
                .display()
            );
            assert_eq!(j.is_full(), old.resource.is_some());
            for k in &jids {
                assert_eq!(j.cmp(k), old.cmp(&OldJid::of(k)), "{j} {k}");
                assert_eq!(j == k, old == OldJid::of(k));
            }
        }
        // Whatever the store holds comes back part for part, even what `parse` would refuse.
        for odd in [
            OldJid {
                local: Some(String::new()),
                domain: String::new(),
                resource: Some(String::new()),
            },
            OldJid {
                local: Some("a@b".into()),
                domain: "c/d".into(),
                resource: None,
            },
        ] {
            let bytes = bincode::serde::encode_to_vec(&odd, config).unwrap();
            let (back, _): (Jid, usize) =
                bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(OldJid::of(&back), odd);
            assert_eq!(back.to_string(), odd.display());
        }
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
            assert_eq!(new_parse(text), reference_parse(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn fast_paths_match_the_reference(
            text in "[aAzZ09@/. \"&'<>:\t\n\u{7f}\u{85}\u{a0}ÅåΣςİßK\u{212A}\u{2028}\u{1F600}]{0,16}"
        ) {
            prop_assert_eq!(new_parse(&text), reference_parse(&text));
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
