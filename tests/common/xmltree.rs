//! XML compared as trees: namespaces resolved, attributes sorted, text merged, so two
//! serialisations of one stanza (attribute order, quotes, escapes) compare equal.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// An element with its namespace resolved, attributes (namespace, name, value) sorted, and
/// children; text runs are merged and kept only where not all whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element {
        ns: Option<String>,
        name: String,
        attrs: Vec<(Option<String>, String, String)>,
        children: Vec<Node>,
    },
    Text(String),
}

fn ns_of(r: ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(n) => Some(n.as_ref().to_string()),
        _ => None,
    }
}

pub fn tree(xml: &str) -> Node {
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Node> = Vec::new();
    loop {
        let (ns, event) = reader.read_resolved_event().unwrap();
        let ns = ns_of(ns);
        let open = |e: &quick_xml::events::BytesStart<'_>, reader: &NsReader<&[u8]>| {
            let mut attrs = Vec::new();
            for a in e.attributes() {
                let a = a.unwrap_or_else(|e| panic!("{e:?} in {xml:?}"));
                let key = a.key.as_ref().to_string();
                if key == "xmlns" || key.starts_with("xmlns:") {
                    continue; // declarations show in the resolved names
                }
                let (ans, local) = reader.resolver().resolve_attribute(a.key);
                let value = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .unwrap()
                    .into_owned();
                attrs.push((ns_of(ans), local.as_ref().to_string(), value));
            }
            attrs.sort();
            Node::Element {
                ns: ns.clone(),
                name: e.local_name().as_ref().to_string(),
                attrs,
                children: Vec::new(),
            }
        };
        match event {
            Event::Start(e) => stack.push(open(&e, &reader)),
            Event::Empty(e) => {
                let node = open(&e, &reader);
                match stack.last_mut() {
                    Some(Node::Element { children, .. }) => children.push(node),
                    _ => return node,
                }
            }
            Event::End(_) => {
                let node = stack.pop().unwrap();
                match stack.last_mut() {
                    Some(Node::Element { children, .. }) => children.push(node),
                    _ => return node,
                }
            }
            Event::Text(t) => push_text(&mut stack, &t.xml10_content()),
            Event::CData(c) => push_text(&mut stack, &c.xml10_content()),
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_xml_entity(&r)
                        .unwrap()
                        .to_string(),
                };
                push_text(&mut stack, &text);
            }
            Event::Eof => panic!("no element in {xml:?}"),
            _ => {}
        }
    }
}

fn push_text(stack: &mut [Node], text: &str) {
    if let Some(Node::Element { children, .. }) = stack.last_mut() {
        match children.last_mut() {
            Some(Node::Text(t)) => t.push_str(text),
            _ => children.push(Node::Text(text.to_string())),
        }
    }
}

/// Whitespace-only text between elements carries nothing.
pub fn normalised(node: Node) -> Node {
    match node {
        Node::Element {
            ns,
            name,
            attrs,
            children,
        } => Node::Element {
            ns,
            name,
            attrs,
            children: children
                .into_iter()
                .filter(|c| !matches!(c, Node::Text(t) if t.trim().is_empty()))
                .map(normalised)
                .collect(),
        },
        text => text,
    }
}
