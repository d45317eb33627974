//! Cuts a byte stream into complete top-level stanzas.
//!
//! The framer is a resumable tokenizer: it remembers where it stopped (inside a tag, a quoted
//! attribute value, a comment, CDATA, a reference) so every byte is looked at once however the
//! stream is chunked. It only checks what framing needs (tag structure, quoting, nesting, names
//! of end tags, references, restricted XML); the stanza itself is parsed later by
//! [`super::parse`]. Incomplete input is `Ok(None)`, never an error.

use super::error::FrameError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    /// Above anything mod_readtrack emits with its own defaults (256 KiB of event, stanzas 20
    /// elements deep inside an event that adds 3): an event the module sent is never skipped.
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 1024 * 1024,
            max_depth: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `<stream:stream ...>` opened; attributes in document order, values unescaped.
    StreamOpen { attrs: Vec<(String, String)> },
    /// One complete top-level stanza (depth 1 inside a stream, or depth 0 without one), as text.
    Stanza(String),
    /// `</stream:stream>`.
    StreamClose,
    /// A top-level stanza over a limit, skipped without being buffered: `bytes` is its whole
    /// length, `depth` the deepest nesting in it. The stream goes on after it.
    Skipped { bytes: usize, depth: usize },
}

/// A stanza being skipped: only counts are kept, the bytes are dropped as they are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skip {
    /// Stream offset of the stanza's `<`.
    start: usize,
    depth: usize,
    max_depth: usize,
}

/// Where the tokenizer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Character data, or the space between top-level items.
    #[default]
    Content,
    /// After `<`.
    Lt,
    /// After `<!`: matching one of `--`, `[CDATA[`, `DOCTYPE`.
    Bang {
        want: BangKind,
        matched: u8,
    },
    Comment {
        dashes: u8,
    },
    CData {
        brackets: u8,
    },
    /// After `<?` at the very start: only the `xml` declaration is allowed.
    DeclTarget {
        matched: u8,
    },
    Decl {
        question: bool,
    },
    StartName,
    /// Inside a start tag between attributes; `need_space` right after a quoted value.
    TagSpace {
        need_space: bool,
    },
    AttrName,
    AfterAttrName,
    BeforeValue,
    AttrValue {
        quote: u8,
    },
    /// Saw `/` inside a start tag.
    EmptyEnd,
    EndName,
    EndSpace,
    /// After `&`; `quote` is 0 in character data, else the quote of the attribute value.
    Reference {
        quote: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BangKind {
    Comment,
    CData,
    Doctype,
}

impl BangKind {
    fn text(self) -> &'static [u8] {
        match self {
            BangKind::Comment => b"--",
            BangKind::CData => b"[CDATA[",
            BangKind::Doctype => b"DOCTYPE",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Stream {
    /// No `<stream:stream>` seen: top-level elements are stanzas.
    #[default]
    None,
    Open {
        name: Vec<u8>,
    },
    Closed,
}

/// Longest reference accepted before the `;`: room for the predefined names and for numeric
/// references with leading zeros, small enough that a stray `&` is reported near where it is.
const MAX_REFERENCE: usize = 32;

#[derive(Debug, Default)]
pub struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes dropped from the front of `buf`, so error offsets count from the stream start.
    consumed: usize,
    /// Next byte to tokenize.
    pos: usize,
    /// Start of the top-level item being assembled (stanza, header, comment); bytes before it
    /// are done with and may be dropped.
    item_start: usize,
    state: State,
    /// Name ranges (in `buf`) of the elements open inside the current stanza.
    open: Vec<(usize, usize)>,
    name_start: usize,
    name_end: usize,
    ref_start: usize,
    stream: Stream,
    /// Anything but whitespace seen: the XML declaration is no longer allowed.
    seen_markup: bool,
    /// An element seen: a `<stream:stream>` is no longer a stream header.
    seen_element: bool,
    /// A self-closed `<stream:stream/>` owes a [`Frame::StreamClose`].
    pending_close: bool,
    /// Set while the current stanza is over a limit. Skipping still runs the tokenizer, so a
    /// broken stream is found inside a skipped stanza too; only end tag names are not compared
    /// (that would need every open name kept, which is what skipping avoids).
    skip: Option<Skip>,
    error: Option<FrameError>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

fn is_name_char(b: u8) -> bool {
    NAME_CHARS[b as usize]
}

/// [`is_name_char`] of every byte, looked up: names are a good part of what the framer steps
/// over byte by byte.
static NAME_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'-' | b'.') || c >= 0x80;
        b += 1;
    }
    table
};

fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks the text between `&` and `;`.
fn check_reference(name: &[u8], offset: usize) -> Result<(), FrameError> {
    if let Some(num) = name.strip_prefix(b"#") {
        let value = match num.strip_prefix(b"x") {
            Some(hex) if !hex.is_empty() && hex.iter().all(u8::is_ascii_hexdigit) => {
                std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
            }
            None if !num.is_empty() && num.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(num)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
            }
            _ => None,
        };
        return match value {
            Some(c) if is_xml_char(c) => Ok(()),
            _ => Err(FrameError::InvalidCharRef {
                text: lossy(name),
                offset,
            }),
        };
    }
    match name {
        b"lt" | b"gt" | b"amp" | b"apos" | b"quot" => Ok(()),
        _ => Err(FrameError::UndefinedEntity {
            name: lossy(name),
            offset,
        }),
    }
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            limits,
            ..Framer::default()
        }
    }

    /// Appends bytes read from the stream. Call [`Framer::next_frame`] until it returns
    /// `Ok(None)` after each push: that is what keeps the buffer bounded by the stanza limit.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        // Dropping the finished prefix only when it is at least half the buffer keeps the
        // memmove amortised O(1) per byte.
        if self.item_start > 0 && self.item_start * 2 >= self.buf.len() {
            let cut = self.item_start;
            self.buf.drain(..cut);
            self.consumed += cut;
            self.item_start = 0;
            self.pos -= cut;
            // Only a skipped stanza drops bytes of a name being read; `MAX` then keeps
            // "first character of the name" false, which it is.
            self.name_start = self.name_start.checked_sub(cut).unwrap_or(usize::MAX);
            self.name_end = self.name_end.saturating_sub(cut);
            self.ref_start = self.ref_start.saturating_sub(cut);
            for (start, end) in &mut self.open {
                *start -= cut;
                *end -= cut;
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: what [`Framer::next_frame`] has not finished with.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        if self.pending_close {
            self.pending_close = false;
            return Ok(Some(Frame::StreamClose));
        }
        let mut result = self.scan();
        if matches!(result, Ok(None))
            && self.skip.is_none()
            && self.buf.len() - self.item_start > self.limits.max_stanza_bytes
            && self.in_stanza()
        {
            // The scan ran through plain text past the limit without a step to notice it; no
            // tag was passed over, so starting here is the same as starting at the limit.
            self.begin_skip();
        }
        result = match result {
            Ok(None) if self.skip.is_some() => {
                // Everything scanned can go, except a reference still being read.
                self.item_start = match self.state {
                    State::Reference { .. } => self.ref_start,
                    _ => self.pos,
                };
                Ok(None)
            }
            // A stanza never gets here over the limit (the scan skips it from there on); a
            // stream header, comment or declaration that long is not worth resyncing after.
            Ok(None) if self.buf.len() - self.item_start > self.limits.max_stanza_bytes => {
                Err(FrameError::TooLarge {
                    limit: self.limits.max_stanza_bytes,
                })
            }
            other => other,
        };
        if let Err(err) = &result {
            self.error = Some(err.clone());
            // Nothing buffered is of use any more.
            self.buf = Vec::new();
            self.open = Vec::new();
            self.pos = 0;
            self.item_start = 0;
        }
        result
    }

    fn at(&self, index: usize) -> usize {
        self.consumed + index
    }

    fn syntax(&self, reason: &'static str) -> FrameError {
        FrameError::Syntax {
            reason,
            offset: self.at(self.pos),
        }
    }

    /// Between top-level items: not inside a stanza, skipped or not.
    fn at_top(&self) -> bool {
        self.open.is_empty() && self.skip.is_none()
    }

    /// Inside a stanza (not a stream header, which may not be skipped: it is the stream).
    fn in_stanza(&self) -> bool {
        let header_possible = self.stream == Stream::None && !self.seen_element;
        match self.open.first() {
            Some(&(start, end)) => {
                !(self.open.len() == 1
                    && header_possible
                    && &self.buf[start..end] == b"stream:stream")
            }
            // The root's name is still being read: a stanza unless it may yet be the header.
            None => {
                self.state == State::StartName
                    && !(header_possible
                        && b"stream:stream".starts_with(&self.buf[self.name_start..self.pos]))
            }
        }
    }

    fn begin_skip(&mut self) {
        let depth = self.open.len();
        self.skip = Some(Skip {
            start: self.at(self.item_start),
            depth,
            max_depth: depth,
        });
        self.open.clear();
    }

    /// `pos` is past the `>` that closed a skipped stanza.
    fn end_skip(&mut self, skip: Skip) -> Frame {
        self.skip = None;
        self.item_start = self.pos;
        self.seen_markup = true;
        self.seen_element = true;
        Frame::Skipped {
            bytes: self.at(self.pos) - skip.start,
            depth: skip.max_depth,
        }
    }

    fn scan(&mut self) -> Result<Option<Frame>, FrameError> {
        while self.pos < self.buf.len() {
            // Checked before each step, not after a read: where skipping starts (and so what
            // is checked before it) must not depend on how the stream was cut into reads.
            if self.skip.is_none()
                && self.pos - self.item_start >= self.limits.max_stanza_bytes
                && self.in_stanza()
            {
                self.begin_skip();
            }
            let b = self.buf[self.pos];
            match self.state {
                State::Content => {
                    if self.at_top() {
                        if is_space(b) {
                            self.pos += 1;
                            self.item_start = self.pos;
                            continue;
                        }
                        if b != b'<' {
                            return Err(FrameError::TopLevelText {
                                offset: self.at(self.pos),
                            });
                        }
                        if self.stream == Stream::Closed {
                            return Err(FrameError::AfterStreamClose {
                                offset: self.at(self.pos),
                            });
                        }
                        self.item_start = self.pos;
                        self.state = State::Lt;
                    } else {
                        match memchr::memchr2(b'<', b'&', &self.buf[self.pos..]) {
                            None => {
                                self.pos = self.buf.len();
                                continue;
                            }
                            Some(i) => {
                                self.pos += i;
                                if self.buf[self.pos] == b'<' {
                                    self.state = State::Lt;
                                } else {
                                    self.ref_start = self.pos;
                                    self.state = State::Reference { quote: 0 };
                                }
                            }
                        }
                    }
                }
                State::Lt => match b {
                    b'/' => {
                        self.name_start = self.pos + 1;
                        self.state = State::EndName;
                    }
                    b'!' => {
                        self.state = State::Bang {
                            want: BangKind::Comment,
                            matched: 0,
                        }
                    }
                    b'?' => {
                        // Only the XML declaration, and only as the first thing in the stream.
                        if self.seen_markup || self.at(self.pos) != 1 {
                            return Err(FrameError::ProcessingInstruction {
                                offset: self.at(self.pos) - 1,
                            });
                        }
                        self.state = State::DeclTarget { matched: 0 };
                    }
                    _ if is_name_start(b) => {
                        self.name_start = self.pos;
                        self.state = State::StartName;
                    }
                    _ => return Err(self.syntax("invalid character after '<'")),
                },
                State::Bang { want, matched } => {
                    let want = if matched == 0 {
                        match b {
                            b'-' => BangKind::Comment,
                            b'[' if self.at_top() => {
                                return Err(FrameError::TopLevelText {
                                    offset: self.at(self.pos) - 2,
                                })
                            }
                            b'[' => BangKind::CData,
                            b'D' => BangKind::Doctype,
                            _ => {
                                return Err(
                                    self.syntax("'<!' must start a comment or a CDATA section")
                                )
                            }
                        }
                    } else {
                        want
                    };
                    let text = want.text();
                    if text[matched as usize] != b {
                        return Err(self.syntax("'<!' must start a comment or a CDATA section"));
                    }
                    let matched = matched + 1;
                    if matched as usize == text.len() {
                        self.state = match want {
                            BangKind::Comment => State::Comment { dashes: 0 },
                            BangKind::CData => State::CData { brackets: 0 },
                            BangKind::Doctype => {
                                return Err(FrameError::Doctype {
                                    offset: self.at(self.pos) + 1 - 2 - text.len(),
                                })
                            }
                        };
                    } else {
                        self.state = State::Bang { want, matched };
                    }
                }
                State::Comment { dashes } => {
                    if dashes == 0 {
                        match self.buf[self.pos..].iter().position(|&c| c == b'-') {
                            None => {
                                self.pos = self.buf.len();
                                continue;
                            }
                            Some(i) => self.pos += i,
                        }
                        self.state = State::Comment { dashes: 1 };
                    } else if b == b'-' {
                        if dashes == 2 {
                            return Err(self.syntax("'--' inside a comment"));
                        }
                        self.state = State::Comment { dashes: 2 };
                    } else if dashes == 2 {
                        if b != b'>' {
                            return Err(self.syntax("'--' inside a comment"));
                        }
                        self.state = State::Content;
                        if self.at_top() {
                            self.pos += 1;
                            self.seen_markup = true;
                            self.check_utf8(self.item_start, self.pos)?;
                            self.item_start = self.pos;
                            continue;
                        }
                    } else {
                        self.state = State::Comment { dashes: 0 };
                    }
                }
                State::CData { brackets } => {
                    if brackets == 0 {
                        match self.buf[self.pos..].iter().position(|&c| c == b']') {
                            None => {
                                self.pos = self.buf.len();
                                continue;
                            }
                            Some(i) => self.pos += i,
                        }
                        self.state = State::CData { brackets: 1 };
                    } else if b == b']' {
                        self.state = State::CData { brackets: 2 };
                    } else if b == b'>' && brackets == 2 {
                        self.state = State::Content;
                    } else {
                        self.state = State::CData { brackets: 0 };
                    }
                }
                State::DeclTarget { matched } => {
                    if matched < 3 {
                        if b != b"xml"[matched as usize] {
                            return Err(FrameError::ProcessingInstruction {
                                offset: self.at(self.item_start),
                            });
                        }
                        self.state = State::DeclTarget {
                            matched: matched + 1,
                        };
                    } else if is_space(b) {
                        self.state = State::Decl { question: false };
                    } else {
                        return Err(FrameError::ProcessingInstruction {
                            offset: self.at(self.item_start),
                        });
                    }
                }
                State::Decl { question } => {
                    if question && b == b'>' {
                        self.pos += 1;
                        self.seen_markup = true;
                        self.check_utf8(self.item_start, self.pos)?;
                        self.item_start = self.pos;
                        self.state = State::Content;
                        continue;
                    }
                    self.state = State::Decl {
                        question: b == b'?',
                    };
                }
                State::StartName => {
                    if self.skip_name_chars() {
                        continue;
                    }
                    if !is_name_char(b) {
                        if !(is_space(b) || b == b'/' || b == b'>') {
                            return Err(self.syntax("invalid character in element name"));
                        }
                        if let Some(skip) = &mut self.skip {
                            skip.depth += 1;
                            skip.max_depth = skip.max_depth.max(skip.depth);
                        } else {
                            self.open.push((self.name_start, self.pos));
                            if self.open.len() > self.limits.max_depth {
                                self.begin_skip();
                            }
                        }
                        match b {
                            b'/' => self.state = State::EmptyEnd,
                            b'>' => {
                                if let Some(frame) = self.start_tag_done(false)? {
                                    return Ok(Some(frame));
                                }
                                continue;
                            }
                            _ => self.state = State::TagSpace { need_space: false },
                        }
                    }
                }
                State::TagSpace { need_space } => match b {
                    _ if is_space(b) => self.state = State::TagSpace { need_space: false },
                    b'/' => self.state = State::EmptyEnd,
                    b'>' => {
                        if let Some(frame) = self.start_tag_done(false)? {
                            return Ok(Some(frame));
                        }
                        continue;
                    }
                    _ if is_name_start(b) && !need_space => self.state = State::AttrName,
                    _ if is_name_start(b) => {
                        return Err(self.syntax("missing whitespace between attributes"))
                    }
                    _ => return Err(self.syntax("invalid character in start tag")),
                },
                State::AttrName => {
                    if self.skip_name_chars() {
                        continue;
                    }
                    match b {
                        b'=' => self.state = State::BeforeValue,
                        _ if is_space(b) => self.state = State::AfterAttrName,
                        _ if is_name_char(b) => {}
                        _ => return Err(self.syntax("invalid character in attribute name")),
                    }
                }
                State::AfterAttrName => match b {
                    b'=' => self.state = State::BeforeValue,
                    _ if is_space(b) => {}
                    _ => return Err(self.syntax("attribute without a value")),
                },
                State::BeforeValue => match b {
                    b'"' | b'\'' => self.state = State::AttrValue { quote: b },
                    _ if is_space(b) => {}
                    _ => return Err(self.syntax("attribute value must be quoted")),
                },
                State::AttrValue { quote } => {
                    match memchr::memchr3(quote, b'<', b'&', &self.buf[self.pos..]) {
                        None => {
                            self.pos = self.buf.len();
                            continue;
                        }
                        Some(i) => self.pos += i,
                    }
                    match self.buf[self.pos] {
                        b'<' => return Err(self.syntax("'<' in attribute value")),
                        b'&' => {
                            self.ref_start = self.pos;
                            self.state = State::Reference { quote };
                        }
                        _ => self.state = State::TagSpace { need_space: true },
                    }
                }
                State::EmptyEnd => {
                    if b != b'>' {
                        return Err(self.syntax("expected '>' after '/' in a tag"));
                    }
                    if let Some(frame) = self.start_tag_done(true)? {
                        return Ok(Some(frame));
                    }
                    continue;
                }
                State::EndName => {
                    if self.pos > self.name_start && self.skip_name_chars() {
                        continue;
                    }
                    if !is_name_char(b) || (self.pos == self.name_start && !is_name_start(b)) {
                        if self.pos == self.name_start {
                            return Err(self.syntax("invalid character in element name"));
                        }
                        self.name_end = self.pos;
                        match b {
                            b'>' => {
                                if let Some(frame) = self.end_tag_done()? {
                                    return Ok(Some(frame));
                                }
                                continue;
                            }
                            _ if is_space(b) => self.state = State::EndSpace,
                            _ => return Err(self.syntax("invalid character in end tag")),
                        }
                    }
                }
                State::EndSpace => match b {
                    b'>' => {
                        if let Some(frame) = self.end_tag_done()? {
                            return Ok(Some(frame));
                        }
                        continue;
                    }
                    _ if is_space(b) => {}
                    _ => return Err(self.syntax("invalid character in end tag")),
                },
                State::Reference { quote } => {
                    if b == b';' {
                        check_reference(
                            &self.buf[self.ref_start + 1..self.pos],
                            self.at(self.ref_start),
                        )?;
                        self.state = if quote == 0 {
                            State::Content
                        } else {
                            State::AttrValue { quote }
                        };
                    } else if !(is_name_char(b) || b == b'#')
                        || self.pos - self.ref_start > MAX_REFERENCE
                    {
                        return Err(FrameError::Syntax {
                            reason: "'&' must start a reference ending in ';'",
                            offset: self.at(self.ref_start),
                        });
                    }
                }
            }
            self.pos += 1;
        }
        Ok(None)
    }

    /// Moves `pos` over the name characters from it on, as many steps of a name's state would
    /// (they change nothing else), stopping where the next step's check of the stanza limit
    /// could start skipping: so where skipping starts does not depend on the reads either.
    /// Whether it moved; the character after the name is then the next step's.
    fn skip_name_chars(&mut self) -> bool {
        let stop = match self.skip {
            None => self
                .buf
                .len()
                .min(self.item_start + self.limits.max_stanza_bytes),
            Some(_) => self.buf.len(),
        };
        let names = self.buf.get(self.pos..stop).unwrap_or_default();
        let len = names
            .iter()
            .position(|&c| !is_name_char(c))
            .unwrap_or(names.len());
        self.pos += len;
        len > 0
    }

    fn check_utf8(&self, start: usize, end: usize) -> Result<(), FrameError> {
        std::str::from_utf8(&self.buf[start..end])
            .map(|_| ())
            .map_err(|e| FrameError::InvalidUtf8 {
                offset: self.at(start + e.valid_up_to()),
            })
    }

    /// Takes `buf[item_start..pos]` as a finished item's text.
    fn take_item(&mut self) -> Result<String, FrameError> {
        let (start, end) = (self.item_start, self.pos);
        if end - start > self.limits.max_stanza_bytes {
            return Err(FrameError::TooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        self.check_utf8(start, end)?;
        self.item_start = end;
        // Checked just above, so this cannot fail; avoid a panic path anyway.
        String::from_utf8(self.buf[start..end].to_vec()).map_err(|_| FrameError::InvalidUtf8 {
            offset: self.at(start),
        })
    }

    /// `pos` is on the `>` of a start tag whose name is on top of `open`.
    fn start_tag_done(&mut self, empty: bool) -> Result<Option<Frame>, FrameError> {
        self.pos += 1;
        self.state = State::Content;
        if let Some(mut skip) = self.skip {
            if empty {
                skip.depth -= 1;
                if skip.depth == 0 {
                    return Ok(Some(self.end_skip(skip)));
                }
            }
            self.skip = Some(skip);
            return Ok(None);
        }
        if self.open.len() == 1 && !self.seen_element && self.stream == Stream::None {
            let (start, end) = self.open[0];
            if &self.buf[start..end] == b"stream:stream" {
                let name = self.buf[start..end].to_vec();
                let name_len = end - start;
                self.open.clear();
                let header = self.take_item()?;
                let attrs = header_attrs(&header, name_len, empty).map_err(|reason| {
                    FrameError::Syntax {
                        reason,
                        offset: self.at(self.pos) - header.len(),
                    }
                })?;
                self.stream = if empty {
                    self.pending_close = true;
                    Stream::Closed
                } else {
                    Stream::Open { name }
                };
                return Ok(Some(Frame::StreamOpen { attrs }));
            }
        }
        self.seen_markup = true;
        self.seen_element = true;
        if empty {
            self.open.pop();
            if self.open.is_empty() {
                return Ok(Some(Frame::Stanza(self.take_item()?)));
            }
        }
        Ok(None)
    }

    /// `pos` is on the `>` of an end tag named `buf[name_start..name_end]`.
    fn end_tag_done(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(mut skip) = self.skip {
            self.pos += 1;
            self.state = State::Content;
            skip.depth -= 1;
            if skip.depth == 0 {
                return Ok(Some(self.end_skip(skip)));
            }
            self.skip = Some(skip);
            return Ok(None);
        }
        let (found_start, found_end) = (self.name_start, self.name_end);
        let found = || lossy(&self.buf[found_start..found_end]);
        let tag_offset = self.at(self.name_start - 2);
        self.pos += 1;
        self.state = State::Content;
        match self.open.pop() {
            Some((start, end)) => {
                if self.buf[start..end] != self.buf[found_start..found_end] {
                    return Err(FrameError::MismatchedEndTag {
                        expected: lossy(&self.buf[start..end]),
                        found: found(),
                        offset: tag_offset,
                    });
                }
                if self.open.is_empty() {
                    return Ok(Some(Frame::Stanza(self.take_item()?)));
                }
                Ok(None)
            }
            None => match &self.stream {
                Stream::Open { name } if name[..] == self.buf[found_start..found_end] => {
                    self.check_utf8(self.item_start, self.pos)?;
                    self.item_start = self.pos;
                    self.stream = Stream::Closed;
                    Ok(Some(Frame::StreamClose))
                }
                _ => Err(FrameError::UnexpectedEndTag {
                    found: found(),
                    offset: tag_offset,
                }),
            },
        }
    }
}

/// Attributes of the stream header `<name attrs...>` (or `.../>`), values unescaped.
fn header_attrs(
    header: &str,
    name_len: usize,
    empty: bool,
) -> Result<Vec<(String, String)>, &'static str> {
    let inner_end = header.len() - if empty { 2 } else { 1 };
    let content = &header[1..inner_end];
    let start = quick_xml::events::BytesStart::from_content(content, name_len);
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|_| "invalid attribute in the stream header")?;
        let key = String::from(attr.key.as_ref());
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|_| "invalid attribute value in the stream header")?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(attrs)
}
