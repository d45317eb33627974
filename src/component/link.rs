//! One connection: connect and handshake, then a reader and a writer running as separate
//! tasks. They are separate so that a server slow to read our commands never stops us from
//! reading its stanzas, and a caller slow to take events never stops our commands.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{lookup_host, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

use super::handshake::{
    classify_reply, handshake_element, parse_stream_error, stream_header, Reply, ServerHeader,
    StreamErrorInfo, STREAM_CLOSE,
};
use super::{bump, ComponentConfig, ComponentError, LinkCounters, LinkEvent};
use crate::stanza::{Frame, FrameError, Framer, Limits};
use crate::time::Millis;
use crate::warnlimit::{self, Warning};

/// How long a polite close may take: our `</stream:stream>`, and the server's in reply.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 8 * 1024;

/// Address and domain, carried by every error.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
    pub domain: String,
}

impl Peer {
    pub fn of(config: &ComponentConfig) -> Peer {
        Peer {
            addr: config.addr.clone(),
            domain: config.domain.clone(),
        }
    }

    fn io(&self, source: io::Error) -> ComponentError {
        ComponentError::Io {
            addr: self.addr.clone(),
            domain: self.domain.clone(),
            source,
        }
    }

    fn protocol(&self, detail: &'static str) -> ComponentError {
        ComponentError::Protocol {
            addr: self.addr.clone(),
            domain: self.domain.clone(),
            detail,
        }
    }

    fn server_closed(&self) -> ComponentError {
        ComponentError::ServerClosed {
            addr: self.addr.clone(),
            domain: self.domain.clone(),
        }
    }

    fn read_failure(&self, failure: ReadFailure) -> ComponentError {
        match failure {
            ReadFailure::Eof => ComponentError::ConnectionLost {
                addr: self.addr.clone(),
                domain: self.domain.clone(),
            },
            ReadFailure::Io(source) => self.io(source),
            ReadFailure::Framing(source) => ComponentError::Framing {
                addr: self.addr.clone(),
                domain: self.domain.clone(),
                source,
            },
        }
    }

    fn stream_error(&self, info: StreamErrorInfo) -> ComponentError {
        let (addr, domain) = (self.addr.clone(), self.domain.clone());
        match info.condition.as_str() {
            "not-authorized" => ComponentError::NotAuthorized { addr, domain },
            "host-unknown" => ComponentError::HostUnknown { addr, domain },
            "conflict" => ComponentError::Conflict { addr, domain },
            _ => ComponentError::StreamError {
                addr,
                domain,
                condition: info.condition,
                text: info.text,
            },
        }
    }
}

pub enum ReadFailure {
    Eof,
    Io(io::Error),
    Framing(FrameError),
}

/// The framer fed from the socket.
pub struct FrameReader {
    read: OwnedReadHalf,
    framer: Framer,
    chunk: Box<[u8]>,
    limits: Limits,
}

impl FrameReader {
    fn new(read: OwnedReadHalf, limits: Limits) -> FrameReader {
        FrameReader {
            read,
            framer: Framer::new(limits),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            limits,
        }
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// The next frame; the framer is drained before the socket is read again, which is what
    /// keeps its buffer bounded by the stanza limit.
    async fn next(&mut self, counters: &LinkCounters) -> Result<Frame, ReadFailure> {
        loop {
            match self.framer.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(err) => {
                    bump(&counters.framing_errors);
                    return Err(ReadFailure::Framing(err));
                }
            }
            let read = self
                .read
                .read(&mut self.chunk)
                .await
                .map_err(ReadFailure::Io)?;
            if read == 0 {
                return Err(ReadFailure::Eof);
            }
            self.framer.push(&self.chunk[..read]);
        }
    }
}

/// A connection whose handshake succeeded. The framer may already hold stanzas that arrived
/// right behind `<handshake/>`, so it travels with the socket.
pub struct Established {
    pub frames: FrameReader,
    pub write: OwnedWriteHalf,
    pub header: ServerHeader,
}

/// Connects and authenticates, all within `connect_timeout`: a server that accepts TCP and
/// then says nothing must not hold the supervisor forever.
pub async fn establish(
    config: &ComponentConfig,
    counters: &LinkCounters,
) -> Result<Established, ComponentError> {
    let peer = Peer::of(config);
    match timeout(config.connect_timeout, handshake(config, &peer, counters)).await {
        Ok(result) => result,
        Err(_) => Err(ComponentError::Timeout {
            addr: peer.addr,
            domain: peer.domain,
            after: config.connect_timeout,
        }),
    }
}

async fn handshake(
    config: &ComponentConfig,
    peer: &Peer,
    counters: &LinkCounters,
) -> Result<Established, ComponentError> {
    let connect_error = |source| ComponentError::Connect {
        addr: peer.addr.clone(),
        domain: peer.domain.clone(),
        source,
    };
    let mut addrs: Vec<SocketAddr> = lookup_host(config.addr.as_str())
        .await
        .map_err(connect_error)?
        .collect();
    if !config.allow_remote {
        // The stream is plaintext and its handshake a hash anyone on the path can replay
        // against the same stream id: it may only cross the loopback interface.
        addrs.retain(|a| a.ip().is_loopback());
        if addrs.is_empty() {
            return Err(ComponentError::NotLoopback {
                addr: peer.addr.clone(),
                domain: peer.domain.clone(),
            });
        }
    }
    let stream = TcpStream::connect(&addrs[..])
        .await
        .map_err(connect_error)?;
    // Stanzas are small and each is written whole; Nagle would only add latency to acks.
    stream.set_nodelay(true).map_err(|e| peer.io(e))?;
    let (read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(read, config.limits);
    write
        .write_all(stream_header(&config.domain).as_bytes())
        .await
        .map_err(|e| peer.io(e))?;
    let header = match frames
        .next(counters)
        .await
        .map_err(|f| peer.read_failure(f))?
    {
        Frame::StreamOpen { attrs } => ServerHeader::from_attrs(&attrs),
        Frame::Stanza(_) | Frame::Skipped { .. } => {
            return Err(peer.protocol("a stanza before the stream header"))
        }
        Frame::StreamClose => return Err(peer.server_closed()),
    };
    let Some(stream_id) = header.id.clone() else {
        // Prosody refuses an unknown component with a header that has no id, followed by the
        // stream error; that error says more than the missing id.
        return Err(match frames.next(counters).await {
            Ok(Frame::Stanza(stanza)) if header.is_stream_error(&stanza) => {
                peer.stream_error(parse_stream_error(&stanza))
            }
            _ => ComponentError::MissingStreamId {
                addr: peer.addr.clone(),
                domain: peer.domain.clone(),
            },
        });
    };
    write
        .write_all(handshake_element(&stream_id, &config.secret).as_bytes())
        .await
        .map_err(|e| peer.io(e))?;
    match frames
        .next(counters)
        .await
        .map_err(|f| peer.read_failure(f))?
    {
        Frame::Stanza(stanza) => match classify_reply(&header, &stanza) {
            Reply::Accepted => Ok(Established {
                frames,
                write,
                header,
            }),
            Reply::StreamError(info) => Err(peer.stream_error(info)),
            Reply::Unexpected(element) => Err(ComponentError::UnexpectedReply {
                addr: peer.addr.clone(),
                domain: peer.domain.clone(),
                element,
            }),
        },
        Frame::Skipped { .. } => Err(peer.protocol("an oversized reply to the handshake")),
        Frame::StreamClose => Err(peer.server_closed()),
        Frame::StreamOpen { .. } => Err(peer.protocol("a second stream header")),
    }
}

pub enum ReaderEnd {
    Lost(ComponentError),
    /// Nobody takes events any more.
    EventsClosed,
}

/// Forwards stanzas until the stream ends. Stream errors are the stream's business, not the
/// caller's, so they end the connection instead of being forwarded.
pub async fn read_stanzas(
    mut frames: FrameReader,
    header: ServerHeader,
    events: mpsc::Sender<LinkEvent>,
    peer: Peer,
    counters: Arc<LinkCounters>,
) -> ReaderEnd {
    loop {
        let frame = match frames.next(&counters).await {
            Ok(frame) => frame,
            Err(failure) => {
                let err = peer.read_failure(failure);
                if let ComponentError::Framing { .. } = err {
                    // After malformed XML nothing later in the stream can be trusted to be
                    // framed right, so the only way on is a new stream.
                    tracing::error!(error = %err, "dropping the component connection to start a new stream");
                }
                return ReaderEnd::Lost(err);
            }
        };
        match frame {
            Frame::Stanza(stanza) if header.is_stream_error(&stanza) => {
                return ReaderEnd::Lost(peer.stream_error(parse_stream_error(&stanza)));
            }
            Frame::Stanza(stanza) => {
                bump(&counters.stanzas_in);
                if events.send(LinkEvent::Stanza(stanza)).await.is_err() {
                    return ReaderEnd::EventsClosed;
                }
            }
            Frame::Skipped { bytes, depth } => {
                // One user's stanza over a limit (mod_component forwards anything addressed
                // to the component; a message the module did not budget): the stream itself is
                // fine, and dropping it would lose every event behind this one.
                bump(&counters.stanzas_skipped);
                if warnlimit::admit(Warning::StanzaSkipped, Millis::now()) {
                    tracing::warn!(
                        bytes,
                        depth,
                        max_bytes = frames.limits().max_stanza_bytes,
                        max_depth = frames.limits().max_depth,
                        "skipped a stanza from the server over the size or depth limit"
                    );
                }
            }
            Frame::StreamClose => return ReaderEnd::Lost(peer.server_closed()),
            Frame::StreamOpen { .. } => {
                return ReaderEnd::Lost(peer.protocol("a second stream header"))
            }
        }
    }
}

/// How the writer is to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Write `</stream:stream>` first (bounded by [`CLOSE_GRACE`]).
    Close,
    /// The socket is dead or the stream is broken beyond closing: just stop.
    Drop,
}

/// The writer gives the command receiver back, so it outlives the connection.
pub struct WriterDone {
    pub commands: mpsc::Receiver<String>,
    pub result: io::Result<()>,
}

pub async fn write_commands(
    mut write: OwnedWriteHalf,
    mut commands: mpsc::Receiver<String>,
    mut stop: oneshot::Receiver<Stop>,
    keepalive: Option<Duration>,
    counters: Arc<LinkCounters>,
) -> WriterDone {
    let mut commands_open = true;
    let idle = sleep(keepalive.unwrap_or_default());
    tokio::pin!(idle);
    loop {
        let (payload, is_keepalive) = tokio::select! {
            biased;
            mode = &mut stop => {
                if mode.unwrap_or(Stop::Drop) == Stop::Close {
                    let _ = timeout(CLOSE_GRACE, write.write_all(STREAM_CLOSE.as_bytes())).await;
                }
                return WriterDone { commands, result: Ok(()) };
            }
            command = commands.recv(), if commands_open => match command {
                Some(stanza) => (stanza, false),
                None => {
                    commands_open = false;
                    continue;
                }
            },
            _ = &mut idle, if keepalive.is_some() => (" ".to_string(), true),
        };
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => None,
            result = write.write_all(payload.as_bytes()) => Some(result),
        };
        match outcome {
            Some(Ok(())) => {
                bump(if is_keepalive {
                    &counters.keepalives
                } else {
                    &counters.stanzas_out
                });
                if let Some(period) = keepalive {
                    idle.as_mut().reset(Instant::now() + period);
                }
            }
            Some(Err(err)) => {
                if !is_keepalive {
                    bump(&counters.dropped_commands);
                }
                return WriterDone {
                    commands,
                    result: Err(err),
                };
            }
            None => {
                // Stopped halfway through a write: a close tag after half a stanza would be
                // malformed, so the connection is dropped without one.
                if !is_keepalive {
                    bump(&counters.dropped_commands);
                }
                return WriterDone {
                    commands,
                    result: Ok(()),
                };
            }
        }
    }
}
