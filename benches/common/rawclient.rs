//! A load client that is not the bottleneck: c2s over plain loopback, no XML library on the hot
//! path.
//!
//! The test harness's client (`tests/common`) splits every stanza into an owned `String` and
//! looks at it through string searches: right for assertions, but at thousands of messages per
//! second the clients' own work shows in the ratios a bench reports. This client:
//!
//! - logs in once (SASL PLAIN, resource binding, initial presence) with plain byte searches; the
//!   set-up is not measured and may be slow;
//! - sends stanzas as pre-built byte templates with only the counter spliced in, many per write
//!   ([`Template`]);
//! - reads into one growing buffer and hands out each complete `<message>` as a byte slice
//!   ([`RawConn::for_each_message`]): the scanner looks for `</message>` only in bytes it has not
//!   looked at yet, and a caller looks in the start tag for the one or two attributes it needs
//!   ([`start_tag`], [`attr`]).
//!
//! Limits, on purpose: a self-closing `<message/>` or a message nested in another (carbons,
//! forwarded) is not split out; the benches that use this client send and receive neither.
//! Attribute values are returned as written (no entity decoding); the benches' ids need none.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any one step of the log-in, or for one read on the hot path.
pub const STEP_WAIT: Duration = Duration::from_secs(30);

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        // The first byte by a plain scan (the compiler vectorises it), then the rest.
        let j = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = i + j;
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// The start tag of the element at the beginning of `stanza` (up to and including its `>`).
/// Attribute values may hold `>` only escaped in what Prosody writes, so the first `>` ends it.
pub fn start_tag(stanza: &[u8]) -> &[u8] {
    match stanza.iter().position(|&b| b == b'>') {
        Some(end) => &stanza[..=end],
        None => stanza,
    }
}

/// The value of attribute `name` in `tag` (a start tag), as written, in either quote.
pub fn attr<'a>(tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut i = 0;
    while let Some(j) = find(&tag[i..], name) {
        let at = i + j;
        let before = at.checked_sub(1).map(|k| tag[k]);
        let after = tag.get(at + name.len()..at + name.len() + 2);
        // A whole attribute name: whitespace before it, `=` and a quote after it.
        if before.is_some_and(|b| b.is_ascii_whitespace()) {
            if let Some([b'=', q @ (b'\'' | b'"')]) = after {
                let value = &tag[at + name.len() + 2..];
                let end = value.iter().position(|b| b == q)?;
                return Some(&value[..end]);
            }
        }
        i = at + 1;
    }
    None
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[k..]);
}

/// The number in decimal digits at the end of `s` (`p3m17` → 17).
pub fn trailing_u64(s: &[u8]) -> Option<u64> {
    let start = s.len() - s.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if start == s.len() {
        return None;
    }
    s[start..].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// A stanza as bytes with holes: `parts[0] hole parts[1] hole ... parts[n]`. Filling it is
/// copying the parts with what goes in the holes between them.
pub struct Template {
    parts: Vec<Vec<u8>>,
}

impl Template {
    /// `text` with `{}` marking each hole.
    pub fn new(text: &str) -> Template {
        Template {
            parts: text.split("{}").map(|p| p.as_bytes().to_vec()).collect(),
        }
    }

    /// Appends the stanza with every hole filled by `value`.
    pub fn push_same(&self, out: &mut Vec<u8>, value: &[u8]) {
        for (k, part) in self.parts.iter().enumerate() {
            if k > 0 {
                out.extend_from_slice(value);
            }
            out.extend_from_slice(part);
        }
    }

    /// Appends the stanza with every hole filled by the decimal digits of `n`.
    pub fn push_u64(&self, out: &mut Vec<u8>, n: u64) {
        for (k, part) in self.parts.iter().enumerate() {
            if k > 0 {
                push_u64(out, n);
            }
            out.extend_from_slice(part);
        }
    }
}

/// Standard base64 with padding (the SASL PLAIN token).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for k in 0..4 {
            out.push(if k <= chunk.len() {
                ABC[(n >> (18 - 6 * k) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The input of one connection and the incremental search over it for complete messages.
#[derive(Default)]
pub struct Scanner {
    /// What was read and not yet handed out starts at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// The search for the next `</message>` resumes here: the bytes before it hold none.
    scanned: usize,
}

impl Scanner {
    /// Appends input (what a read returned).
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room();
        self.buf.extend_from_slice(bytes);
    }

    /// Drops what was handed out, so the buffer does not grow with the stream.
    fn make_room(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.scanned = 0;
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos;
            self.pos = 0;
        }
    }

    /// What is read and not yet handed out.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks the first `n` pending bytes as handed out.
    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.scanned = self.scanned.max(self.pos);
    }

    /// Calls `f` with each complete `<message>...</message>` read so far, in order, and drops
    /// whatever came between them (presences, iq results). Returns how many there were, or the
    /// input where a `</message>` has no start tag before it.
    pub fn for_each_message(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, String> {
        const END: &[u8] = b"</message>";
        let mut count = 0;
        while let Some(e) = find(&self.buf[self.scanned..], END) {
            let end = self.scanned + e + END.len();
            let span = &self.buf[self.pos..end];
            let Some(start) = find(span, b"<message") else {
                return Err(String::from_utf8_lossy(span).into_owned());
            };
            f(&span[start..]);
            count += 1;
            self.pos = end;
            self.scanned = end;
        }
        // A `</message>` may be cut at the end of the input: look again from where it could
        // start.
        self.scanned = self
            .scanned
            .max(self.buf.len().saturating_sub(END.len() - 1));
        Ok(count)
    }

    /// Where the tag containing pending offset `at` ends (the offset after its `>`), if read.
    fn tag_end_after(&self, at: usize) -> Option<usize> {
        let p = self.pending();
        p[at..].iter().position(|&b| b == b'>').map(|e| at + e + 1)
    }
}

/// One logged-in c2s connection.
pub struct RawConn {
    stream: TcpStream,
    input: Scanner,
    /// The full JID the server bound.
    pub jid: String,
    syncs: u64,
    closed: bool,
}

impl RawConn {
    /// Connects to `127.0.0.1:port` and logs in as `user@domain/resource` (SASL PLAIN, bind).
    /// No presence yet: see [`RawConn::online`].
    pub async fn login(port: u16, domain: &str, user: &str, pass: &str, resource: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut c = RawConn {
            stream,
            input: Scanner::default(),
            jid: format!("{user}@{domain}/{resource} (logging in)"),
            syncs: 0,
            closed: false,
        };
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        );
        c.write(header.as_bytes()).await;
        let features = c.read_through(b"</stream:features>").await;
        assert!(
            find(&features, b"PLAIN").is_some(),
            "{user}: the server offers no SASL PLAIN: {}",
            String::from_utf8_lossy(&features)
        );
        let token = base64(format!("\0{user}\0{pass}").as_bytes());
        c.write(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            )
            .as_bytes(),
        )
        .await;
        // The server says nothing more until the stream restarts: the outcome is all there is.
        let outcome = c.read_through(b">").await;
        assert!(
            find(&outcome, b"<success").is_some(),
            "SASL PLAIN for {user}: {}",
            String::from_utf8_lossy(&outcome)
        );
        c.write(header.as_bytes()).await;
        c.read_through(b"</stream:features>").await;
        c.write(
            format!(
                "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{resource}</resource></bind></iq>"
            )
            .as_bytes(),
        )
        .await;
        let bound = c.read_through(b"</iq>").await;
        let jid = find(&bound, b"<jid>")
            .and_then(|s| {
                let rest = &bound[s + 5..];
                find(rest, b"</jid>").map(|e| &rest[..e])
            })
            .unwrap_or_else(|| panic!("bind for {user}: {}", String::from_utf8_lossy(&bound)));
        c.jid = String::from_utf8(jid.to_vec()).unwrap();
        c
    }

    /// [`RawConn::login`], then initial presence (what makes a device available to readtrack)
    /// and a round trip, so the server has handled both.
    pub async fn online(port: u16, domain: &str, user: &str, pass: &str, resource: &str) -> Self {
        let mut c = RawConn::login(port, domain, user, pass, resource).await;
        c.write(b"<presence/>").await;
        c.sync().await;
        c
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.jid));
    }

    /// Acknowledges what the socket has received at once rather than with the kernel's delayed
    /// ACK (Linux `TCP_QUICKACK`, which the kernel turns off again by itself: call it after each
    /// read). Prosody keeps Nagle's algorithm on by default, so a client that writes nothing for
    /// a while (a paced sender between messages) gets the server's next small write only once
    /// its ACK of the previous one went out: with delayed ACKs that is its own next message, and
    /// the round trip it measures would be the pacing interval.
    pub fn ack_at_once(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_QUICKACK: {}", std::io::Error::last_os_error());
    }

    /// Reads what the socket has (waiting up to [`STEP_WAIT`] for something). Panics on end of
    /// stream or timeout, with the unconsumed input: on loopback either means the run is broken.
    pub async fn fill(&mut self) {
        self.input.make_room();
        self.input.buf.reserve(64 * 1024);
        match tokio::time::timeout(STEP_WAIT, self.stream.read_buf(&mut self.input.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => self.fail("end of stream"),
            Ok(Err(e)) => self.fail(&format!("read: {e}")),
            Err(_) => self.fail(&format!("nothing read for {STEP_WAIT:?}")),
        }
    }

    fn fail(&self, what: &str) -> ! {
        let tail = self.input.pending();
        let tail = &tail[tail.len().saturating_sub(2000)..];
        panic!(
            "{}: {what}; unconsumed input: {}",
            self.jid,
            String::from_utf8_lossy(tail)
        )
    }

    /// [`Scanner::for_each_message`] over what was read so far.
    pub fn for_each_message(&mut self, f: impl FnMut(&[u8])) -> usize {
        match self.input.for_each_message(f) {
            Ok(n) => n,
            Err(span) => self.fail(&format!(
                "a </message> without its start tag (nested or self-closing?) in {span}"
            )),
        }
    }

    /// A round trip (XEP-0199 ping to the server): everything sent before it has been handled
    /// when it returns. What arrives before the answer is dropped.
    pub async fn sync(&mut self) {
        self.syncs += 1;
        let id = format!("rtsync-{}", self.syncs);
        self.write(
            format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>").as_bytes(),
        )
        .await;
        // The id with its closing quote, so `rtsync-1` does not match `rtsync-10`.
        let needles = [format!("{id}'"), format!("{id}\"")];
        loop {
            let p = self.input.pending();
            let hit = needles.iter().find_map(|n| find(p, n.as_bytes()));
            if let Some(end) = hit.and_then(|at| self.input.tag_end_after(at)) {
                // A ping result is `<iq .../>`; one with content ends at its `</iq>`.
                let end = if p[end - 2] == b'/' {
                    end
                } else {
                    match find(&p[end..], b"</iq>") {
                        Some(e) => end + e + b"</iq>".len(),
                        None => {
                            self.fill().await;
                            continue;
                        }
                    }
                };
                self.input.consume(end);
                return;
            }
            self.fill().await;
        }
    }

    /// Reads until `needle` is in the input, then consumes and returns everything up to the end
    /// of it. Set-up only.
    async fn read_through(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = find(self.input.pending(), needle) {
                let out = self.input.pending()[..at + needle.len()].to_vec();
                self.input.consume(out.len());
                return out;
            }
            self.fill().await;
        }
    }

    /// Ends the stream and waits (up to 5 s) for the server to end its own.
    pub async fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = self.stream.write_all(b"</stream:stream>").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
        }
        let _ = self.stream.shutdown().await;
    }
}
