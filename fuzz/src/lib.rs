//! The properties the fuzz targets check, one function per target. This file is also compiled
//! into `tests/fuzz_corpus.rs` (through `#[path]`), so CI replays every committed corpus file
//! through exactly the code the fuzzer ran: a crash found here is a failing test there.
//!
//! Each function panics (with a message saying which property broke) on a violation, and only
//! then. It must stay cheap: the fuzzer calls it millions of times.

use readtrack::hooks::{HookCommand, HookEvent};
use readtrack::stanza::{parse_message, stanza_name, Frame, FrameError, Framer, Incoming, Limits};

/// The XMPP domain and component the hook vocabulary is checked against (the test harness's).
pub const HOST: &str = "localhost";
pub const COMPONENT: &str = "readtrack.localhost";

/// Small limits, so the fuzzer reaches the size and depth checks with short inputs.
pub const SMALL: Limits = Limits {
    max_stanza_bytes: 512,
    max_depth: 8,
};

/// What one way of feeding the framer produced: the frames in order, then how it ended.
#[derive(Debug, PartialEq)]
pub struct Framed {
    pub frames: Vec<Frame>,
    pub end: Result<(), FrameError>,
}

/// Pushes `input` cut at `cuts` (ascending offsets), draining frames after every push as the
/// component link does.
pub fn frame_with_cuts(limits: Limits, input: &[u8], cuts: &[usize]) -> Framed {
    let mut framer = Framer::new(limits);
    let mut frames = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
    for end in ends {
        framer.push(&input[start..end]);
        start = end;
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    // An error is final: the framer must keep returning it, whatever comes next.
                    framer.push(b"<more/>");
                    assert_eq!(framer.next_frame(), Err(e.clone()), "error not sticky");
                    return Framed {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
    }
    Framed {
        frames,
        end: Ok(()),
    }
}

/// Cut points derived from `seed`: a small xorshift, so one fuzz input names one split.
fn cuts_from(seed: u64, len: usize) -> Vec<usize> {
    let mut x = seed | 1;
    let mut at = 0;
    let mut cuts = Vec::new();
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at += 1 + (x % 17) as usize;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

/// Framer target. The first 8 bytes choose the split points, the rest is the stream.
///
/// Properties: no panic; every stanza is within the limits (size in bytes, and it was framed at
/// all only if its depth was within the limit), and every skipped one is over one of them;
/// every stanza is a piece of the input, in order; the result does not depend on how the stream
/// was chunked (one push, one byte per push, a seeded split), skipped stanzas included, except
/// that a stream whose header or top-level comment runs past the size limit may be refused
/// with `TooLarge` before a later error is seen.
pub fn check_framer(data: &[u8]) {
    let (seed, input) = match data.split_first_chunk::<8>() {
        Some((seed, rest)) => (u64::from_le_bytes(*seed), rest),
        None => (0, data),
    };
    for limits in [SMALL, Limits::default()] {
        let whole = frame_with_cuts(limits, input, &[]);
        check_frames(limits, input, &whole);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        let split = cuts_from(seed, input.len());
        for (how, other) in [
            (
                "one byte per push",
                frame_with_cuts(limits, input, &bytewise),
            ),
            ("seeded split", frame_with_cuts(limits, input, &split)),
        ] {
            check_frames(limits, input, &other);
            same_outcome(&whole, &other, how);
        }
    }
}

fn same_outcome(whole: &Framed, other: &Framed, how: &str) {
    let too_large = |f: &Framed| matches!(f.end, Err(FrameError::TooLarge { .. }));
    if too_large(whole) || too_large(other) {
        // Where the limit is noticed depends on the chunking; what came before must not.
        let n = whole.frames.len().min(other.frames.len());
        assert_eq!(whole.frames[..n], other.frames[..n], "{how}: frames differ");
        assert!(
            whole.end.is_err() && other.end.is_err(),
            "{how}: only one refused"
        );
    } else {
        assert_eq!(whole, other, "{how}: differs from a single push");
    }
}

fn check_frames(limits: Limits, input: &[u8], framed: &Framed) {
    let mut from = 0;
    for frame in &framed.frames {
        if let Frame::Skipped { bytes, depth } = frame {
            assert!(
                *bytes > limits.max_stanza_bytes || *depth > limits.max_depth,
                "a stanza of {bytes} bytes and depth {depth} was skipped within the limits"
            );
            assert!(
                *bytes >= 4 && *bytes <= input.len() - from,
                "skipped {bytes} bytes"
            );
            from += bytes;
        }
        if let Frame::Stanza(text) = frame {
            assert!(
                text.len() <= limits.max_stanza_bytes,
                "stanza of {} bytes passed a limit of {}",
                text.len(),
                limits.max_stanza_bytes
            );
            assert!(text.starts_with('<') && text.ends_with('>'), "{text:?}");
            let at = find(&input[from..], text.as_bytes())
                .unwrap_or_else(|| panic!("stanza is not a piece of the input: {text:?}"));
            from += at + text.len();
        }
    }
    if let Err(e) = &framed.end {
        // Every error names a place in the stream, and the place exists.
        let offset = match e {
            FrameError::TooLarge { .. } => None,
            FrameError::Doctype { offset }
            | FrameError::ProcessingInstruction { offset }
            | FrameError::UndefinedEntity { offset, .. }
            | FrameError::InvalidCharRef { offset, .. }
            | FrameError::InvalidUtf8 { offset }
            | FrameError::MismatchedEndTag { offset, .. }
            | FrameError::UnexpectedEndTag { offset, .. }
            | FrameError::TopLevelText { offset }
            | FrameError::AfterStreamClose { offset }
            | FrameError::Syntax { offset, .. } => Some(*offset),
        };
        if let Some(offset) = offset {
            assert!(
                offset < input.len(),
                "{e} points past the input ({})",
                input.len()
            );
        }
        assert!(!e.to_string().is_empty());
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Message parser target: any text, then the pieces the framer would cut from the same bytes
/// (what the service really parses is a framed stanza). Property: no panic, whatever the input.
pub fn check_parse_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    parse_one(&text);
    let framed = frame_with_cuts(Limits::default(), data, &[]);
    for frame in framed.frames {
        if let Frame::Stanza(stanza) = frame {
            parse_one(&stanza);
        }
    }
}

fn parse_one(text: &str) {
    let name = stanza_name(text);
    let parsed = parse_message(text);
    // A message the parser accepts has a root that `stanza_name` (the service's router) agrees
    // is a <message>: the two must not disagree on what the stanza is.
    if parsed.is_ok() {
        let name = name.unwrap_or_else(|e| panic!("parsed as a message, unnamed ({e}): {text:?}"));
        assert_eq!(name.local, "message", "{text:?}");
    }
}

/// Hook vocabulary target: the text as an event from the host and as a command from the
/// component. Properties: no panic; a parsed event or command serialises back to text that
/// parses to the same value (what readtrack writes, the module reads, and the reverse); the
/// user message inside an event is what the service then parses.
pub fn check_hooks(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(event) = HookEvent::parse(&text, HOST) {
        let xml = event.to_xml(HOST, COMPONENT);
        assert_eq!(
            HookEvent::parse(&xml, HOST).as_ref(),
            Ok(&event),
            "event does not survive a round trip through {xml:?}"
        );
        match &event {
            HookEvent::Routed { message, .. } | HookEvent::Sent { message, .. } => {
                // Read where it stood, the message is what it is read alone.
                let text = message.original.text();
                assert_eq!(message, &Incoming::read(text), "{text:?} read in the event");
                assert_eq!(message.parsed, parse_message(text), "{text:?}");
            }
            _ => {}
        }
    }
    check_hook_batch(&text);
    if let Ok(command) = HookCommand::parse(&text, COMPONENT) {
        let xml = command.to_xml(COMPONENT, HOST);
        assert_eq!(
            HookCommand::parse(&xml, COMPONENT).as_ref(),
            Ok(&command),
            "command does not survive a round trip through {xml:?}"
        );
    }
}

/// Several events in one message (`batched`): the first is what [`HookEvent::parse`] reads, and
/// the events that read, written again side by side in one message, read back the same.
fn check_hook_batch(text: &str) {
    let Ok(batch) = HookEvent::parse_batch(text, HOST) else {
        assert!(HookEvent::parse(text, HOST).is_err(), "{text:?}");
        return;
    };
    assert!(!batch.is_empty(), "{text:?}");
    if let Ok(event) = HookEvent::parse(text, HOST) {
        assert_eq!(batch[0].as_ref(), Ok(&event), "{text:?}");
    }
    let events: Vec<&HookEvent> = batch.iter().filter_map(|e| e.as_ref().ok()).collect();
    if events.is_empty() {
        return;
    }
    let open = format!("<message from='{HOST}' to='{COMPONENT}'>");
    let mut xml = open.clone();
    for event in &events {
        let one = event.to_xml(HOST, COMPONENT);
        let start = one.find('>').map_or(0, |i| i + 1);
        let end = one.rfind("</message>").unwrap_or(one.len());
        xml.push_str(&one[start..end]);
    }
    xml.push_str("</message>");
    let again = HookEvent::parse_batch(&xml, HOST).expect("a batch of events is a message");
    let again: Vec<_> = again.iter().map(|e| e.as_ref().ok()).collect();
    let expected: Vec<_> = events.iter().map(|e| Some(*e)).collect();
    assert_eq!(
        again, expected,
        "events do not survive a round trip through {xml:?}"
    );
}
