//! The component link against an in-process fake XMPP server on loopback TCP. The fake server
//! checks what a real one would (stream header, handshake digest) with its own computation.

use std::sync::Arc;
use std::time::Duration;

use readtrack::component::{
    run_with_counters, ComponentConfig, ComponentError, LinkCounters, LinkEvent, LinkStats, Secret,
    SHUTDOWN_REASON,
};
use readtrack::stanza::{Frame, Framer, Limits};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const DOMAIN: &str = "readtrack.localhost";
const SECRET: &str = "s3cr3t-Hunter2";
const STREAM_ID: &str = "3BF96D75";
/// Upper bound for anything that should happen "at once"; never a synchronisation point.
const PATIENCE: Duration = Duration::from_secs(5);

fn expected_digest(stream_id: &str, secret: &str) -> String {
    Sha1::digest(format!("{stream_id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(addr: &str, secret: &str) -> ComponentConfig {
    ComponentConfig {
        addr: addr.to_string(),
        domain: DOMAIN.to_string(),
        secret: Secret::new(secret),
        limits: Limits::default(),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(160),
        connect_timeout: Duration::from_secs(2),
        keepalive: None,
        allow_remote: false,
    }
}

struct FakeServer {
    listener: TcpListener,
    addr: String,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        FakeServer { listener, addr }
    }

    async fn accept(&self) -> Conn {
        let (stream, _) = timeout(PATIENCE, self.listener.accept())
            .await
            .expect("the client did not connect")
            .unwrap();
        Conn {
            stream,
            framer: Framer::new(Limits::default()),
        }
    }

    /// Whether another connection arrives within `window` (a bound, not a synchronisation).
    async fn connects_within(&self, window: Duration) -> bool {
        timeout(window, self.listener.accept()).await.is_ok()
    }
}

struct Conn {
    stream: TcpStream,
    framer: Framer,
}

impl Conn {
    /// The next frame the client sent; `None` at end of stream.
    async fn frame(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = self.framer.next_frame().expect("client sent malformed XML") {
                return Some(frame);
            }
            let read = timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the client sent nothing")
                .unwrap();
            if read == 0 {
                return None;
            }
            self.framer.push(&chunk[..read]);
        }
    }

    async fn stanza(&mut self) -> String {
        match self.frame().await {
            Some(Frame::Stanza(stanza)) => stanza,
            other => panic!("expected a stanza from the client, got {other:?}"),
        }
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    /// Reads the client's header, checks it, answers with a header carrying `id`.
    async fn open_stream(&mut self, id: Option<&str>) {
        let Some(Frame::StreamOpen { attrs }) = self.frame().await else {
            panic!("the client did not open a stream");
        };
        let attr = |name: &str| {
            attrs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(attr("xmlns"), Some("jabber:component:accept"));
        assert_eq!(
            attr("xmlns:stream"),
            Some("http://etherx.jabber.org/streams")
        );
        assert_eq!(attr("to"), Some(DOMAIN));
        let id = id.map(|id| format!(" id='{id}'")).unwrap_or_default();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xml:lang='en'{id} from='{DOMAIN}' xmlns='jabber:component:accept'>"
        ))
        .await;
    }

    /// The hex digest of the client's `<handshake>`.
    async fn handshake_digest(&mut self) -> String {
        let stanza = self.stanza().await;
        stanza
            .strip_prefix("<handshake>")
            .and_then(|rest| rest.strip_suffix("</handshake>"))
            .unwrap_or_else(|| panic!("not a handshake: {stanza}"))
            .to_string()
    }

    /// A full successful handshake; `extra` is written in the same packet as `<handshake/>`.
    async fn accept_component(&mut self, extra: &str) {
        self.open_stream(Some(STREAM_ID)).await;
        assert_eq!(
            self.handshake_digest().await,
            expected_digest(STREAM_ID, SECRET)
        );
        self.send(&format!("<handshake/>{extra}")).await;
    }
}

struct Client {
    events: mpsc::Receiver<LinkEvent>,
    commands: mpsc::Sender<String>,
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<Result<(), ComponentError>>,
    counters: Arc<LinkCounters>,
}

impl Client {
    fn start(config: ComponentConfig) -> Client {
        let (events_tx, events) = mpsc::channel(16);
        let (commands, commands_rx) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let counters = Arc::new(LinkCounters::default());
        let handle = tokio::spawn(run_with_counters(
            config,
            events_tx,
            commands_rx,
            shutdown_rx,
            counters.clone(),
        ));
        Client {
            events,
            commands,
            shutdown,
            handle,
            counters,
        }
    }

    async fn event(&mut self) -> LinkEvent {
        timeout(PATIENCE, self.events.recv())
            .await
            .expect("no link event")
            .expect("the link ended")
    }

    async fn command(&self, stanza: &str) {
        self.commands.send(stanza.to_string()).await.unwrap();
    }

    /// Flips shutdown and returns how `run` ended and how long that took.
    async fn stop(self) -> (Result<(), ComponentError>, Duration, LinkStats) {
        let started = Instant::now();
        self.shutdown.send(true).unwrap();
        let result = timeout(PATIENCE, self.handle)
            .await
            .expect("run did not return")
            .unwrap();
        (result, started.elapsed(), self.counters.snapshot())
    }

    async fn wait_for(&self, what: &str, done: impl Fn(LinkStats) -> bool) {
        // Counters have no channel to wait on; polled, with an upper bound.
        let deadline = Instant::now() + PATIENCE;
        while !done(self.counters.snapshot()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn handshake_succeeds_and_stanzas_flow_both_ways() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    let inbound = "<message from='alice@localhost/phone' to='readtrack.localhost' id='m1'>\
                   <body>hi &amp; bye</body></message>";
    // In the same packet as the handshake reply: the framer's leftovers must not be lost.
    conn.accept_component(inbound).await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    assert_eq!(client.event().await, LinkEvent::Stanza(inbound.to_string()));
    let second = "<iq type='get' id='q1' from='localhost' to='readtrack.localhost'/>";
    conn.send(second).await;
    assert_eq!(client.event().await, LinkEvent::Stanza(second.to_string()));

    let outbound = "<message from='readtrack.localhost' to='localhost'><x xmlns='urn:example'>\
                    caf\u{e9}</x></message>";
    client.command(outbound).await;
    assert_eq!(conn.stanza().await, outbound);
    client.command("<presence/>").await;
    assert_eq!(conn.stanza().await, "<presence/>");

    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!(
        stats,
        LinkStats {
            attempts: 1,
            connections: 1,
            stanzas_in: 2,
            stanzas_out: 2,
            ..LinkStats::default()
        }
    );
}

#[tokio::test]
async fn a_wrong_secret_is_fatal_after_one_attempt() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, "wrong-secret-xyz"));
    let mut conn = server.accept().await;
    conn.open_stream(Some(STREAM_ID)).await;
    let digest = conn.handshake_digest().await;
    assert_ne!(digest, expected_digest(STREAM_ID, SECRET));
    assert_eq!(digest, expected_digest(STREAM_ID, "wrong-secret-xyz"));
    conn.send(
        "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         </stream:error></stream:stream>",
    )
    .await;

    let result = timeout(Duration::from_secs(1), &mut client.handle)
        .await
        .expect("run did not give up promptly")
        .unwrap();
    let err = result.unwrap_err();
    assert!(err.is_fatal());
    assert_eq!(
        err.to_string(),
        format!(
            "the server at {} refused the secret for component readtrack.localhost \
             (stream error not-authorized)",
            server.addr
        )
    );
    for printed in [err.to_string(), format!("{err:?}")] {
        assert!(!printed.contains("wrong-secret-xyz"), "{printed}");
    }
    assert_eq!(client.counters.snapshot().attempts, 1);
    // With a 20 ms backoff a retry would come within a few tens of milliseconds.
    assert!(!server.connects_within(Duration::from_millis(300)).await);
    // Never connected, so nothing was announced.
    assert_eq!(client.events.recv().await, None);
}

#[tokio::test]
async fn an_unknown_component_is_fatal_even_without_a_stream_id() {
    // Prosody's shape: a header without an id, then the stream error.
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.open_stream(None).await;
    conn.send(
        "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no such component</text>\
         </stream:error></stream:stream>",
    )
    .await;
    let err = timeout(Duration::from_secs(1), &mut client.handle)
        .await
        .expect("run did not give up promptly")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the server at {} does not serve component readtrack.localhost (stream error \
             host-unknown); declare it as a Component in the server's configuration",
            server.addr
        )
    );
    assert!(!server.connects_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn conflict_is_retried() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.open_stream(Some(STREAM_ID)).await;
    conn.handshake_digest().await;
    conn.send(
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
         </stream:stream>",
    )
    .await;
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!(
        (stats.attempts, stats.reconnects, stats.connections),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_stanza_is_reestablished() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    let whole = "<message to='bob@localhost' id='w1'><body>whole</body></message>";
    conn.accept_component(whole).await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    assert_eq!(client.event().await, LinkEvent::Stanza(whole.to_string()));
    conn.send("<message to='bob@localhost' id='half'><body>never fini")
        .await;
    drop(conn);
    // The exact sequence also proves the half stanza never surfaced.
    assert_eq!(
        client.event().await,
        LinkEvent::Disconnected {
            reason: format!(
                "the server at {} dropped the connection of component readtrack.localhost",
                server.addr
            )
        }
    );

    // Commands while away are dropped, not queued for the next connection.
    client.command("<message id='stale1'/>").await;
    client.command("<message id='stale2'/>").await;
    client
        .wait_for("two dropped commands", |s| s.dropped_commands == 2)
        .await;

    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let again = "<message to='bob@localhost' id='m2'><body>again</body></message>";
    conn.send(again).await;
    assert_eq!(client.event().await, LinkEvent::Stanza(again.to_string()));
    client.command("<message id='fresh'/>").await;
    assert_eq!(conn.stanza().await, "<message id='fresh'/>");

    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!(
        stats,
        LinkStats {
            attempts: 2,
            connections: 2,
            reconnects: 1,
            disconnects: 1,
            stanzas_in: 2,
            stanzas_out: 1,
            dropped_commands: 2,
            ..LinkStats::default()
        }
    );
}

#[tokio::test]
async fn a_stream_error_mid_session_disconnects_and_reconnects() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    conn.send(
        "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>going\ndown</text></stream:error>",
    )
    .await;
    assert_eq!(
        client.event().await,
        LinkEvent::Disconnected {
            reason: format!(
                "the server at {} ended the stream of component readtrack.localhost with \
                 stream error system-shutdown: \"going\\ndown\"",
                server.addr
            )
        }
    );
    // A polite client answers a stream error by closing its side of the stream.
    assert_eq!(conn.frame().await, Some(Frame::StreamClose));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    client.stop().await.0.unwrap();
}

#[tokio::test]
async fn the_server_closing_its_stream_is_a_disconnect() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    conn.send("</stream:stream>").await;
    assert_eq!(
        client.event().await,
        LinkEvent::Disconnected {
            reason: format!(
                "the server at {} closed the stream of component readtrack.localhost",
                server.addr
            )
        }
    );
    assert_eq!(conn.frame().await, Some(Frame::StreamClose));
    server.accept().await.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    client.stop().await.0.unwrap();
}

#[tokio::test]
async fn oversized_and_too_deep_stanzas_are_skipped_and_the_link_stays_up() {
    let server = FakeServer::start().await;
    let mut config = config(&server.addr, SECRET);
    config.limits = Limits {
        max_stanza_bytes: 512,
        max_depth: 16,
    };
    let mut client = Client::start(config);
    let mut conn = server.accept().await;
    let small = "<message id='small'><body>fits</body></message>";
    let big = format!(
        "<message id='big'><body>{}</body></message>",
        "x".repeat(2000)
    );
    let deep = format!(
        "<message>{}{}</message>",
        "<a>".repeat(20),
        "</a>".repeat(20)
    );
    conn.accept_component(&format!("{small}{big}{small}{deep}{small}"))
        .await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    for _ in 0..3 {
        assert_eq!(client.event().await, LinkEvent::Stanza(small.to_string()));
    }
    let stats = client.counters.snapshot();
    assert_eq!(
        (
            stats.stanzas_skipped,
            stats.framing_errors,
            stats.stanzas_in
        ),
        (2, 0, 3)
    );
    // Still the same stream: commands go out on it.
    client.command("<message id='out'/>").await;
    assert_eq!(conn.stanza().await, "<message id='out'/>");
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!((stats.connections, stats.disconnects), (1, 0));
}

#[tokio::test]
async fn malformed_xml_is_a_framing_error_and_a_new_stream() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    let small = "<message id='small'><body>fits</body></message>";
    conn.accept_component(&format!("{small}<message><body></message>"))
        .await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    assert_eq!(client.event().await, LinkEvent::Stanza(small.to_string()));
    match client.event().await {
        LinkEvent::Disconnected { reason } => assert!(
            reason.contains(
                "sent malformed XML to component readtrack.localhost: \
                 end tag </message> does not match <body> (at byte"
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.counters.snapshot().framing_errors, 1);
    let mut conn = server.accept().await;
    conn.accept_component(small).await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    assert_eq!(client.event().await, LinkEvent::Stanza(small.to_string()));
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!((stats.framing_errors, stats.connections), (1, 2));
}

#[tokio::test]
async fn a_handshake_reply_with_content_is_not_an_acceptance() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.open_stream(Some(STREAM_ID)).await;
    conn.handshake_digest().await;
    // Whoever sits on the port can echo anything; only <handshake/> means the digest passed.
    conn.send("<handshake>welcome</handshake>").await;
    // Refused, and retried like any other failed attempt: no Connected was announced.
    let mut again = server.accept().await;
    again.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!((stats.attempts, stats.connections), (2, 1));
}

#[tokio::test]
async fn a_non_loopback_address_is_refused_without_connecting() {
    let mut client = Client::start(config("192.0.2.1:5347", SECRET));
    let result = timeout(Duration::from_secs(1), &mut client.handle)
        .await
        .expect("run did not give up promptly")
        .unwrap();
    let err = result.unwrap_err();
    assert!(err.is_fatal());
    assert_eq!(
        err.to_string(),
        "refusing to connect component readtrack.localhost to 192.0.2.1:5347: not a loopback \
         address (the XEP-0114 link is plaintext; set [xmpp] allow_remote_connect only if the \
         path is protected otherwise)"
    );
    assert_eq!(client.events.recv().await, None);
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_retried() {
    let server = FakeServer::start().await;
    let mut config = config(&server.addr, SECRET);
    config.connect_timeout = Duration::from_millis(150);
    let mut client = Client::start(config);
    let _silent = server.accept().await;
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert_eq!((stats.attempts, stats.connections), (2, 1));
}

#[tokio::test]
async fn backoff_spaces_attempts_with_growing_capped_delays() {
    // A port nobody listens on: every attempt is refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut client = Client::start(config(&addr, SECRET));
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let attempts = client.counters.snapshot().attempts;
    // Nominal delays 20, 40, 80, then 160 ms each, jittered ±20% and capped at 160 ms: 15 to
    // 18 attempts fit in 2 s. Without backoff there would be ~100; doubling without the cap
    // would allow ~8; a slow machine can only lower the count, hence the generous lower bound.
    assert!(
        (11..=19).contains(&attempts),
        "{attempts} attempts in {window:?}"
    );
    assert!(
        client.events.try_recv().is_err(),
        "no event without a connection"
    );
    let (result, took, stats) = client.stop().await;
    result.unwrap();
    assert!(
        took < Duration::from_millis(500),
        "shutdown during backoff took {took:?}"
    );
    assert_eq!(stats.reconnects, stats.attempts - 1);
    assert_eq!(stats.connections, 0);
}

#[tokio::test]
async fn shutdown_closes_the_stream_and_returns_promptly() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let server_side = tokio::spawn(async move {
        assert_eq!(conn.frame().await, Some(Frame::StreamClose));
        // A stanza sent before our own close still reaches the caller.
        conn.send("<message id='last'/></stream:stream>").await;
        conn.frame().await
    });
    let mut events = std::mem::replace(&mut client.events, mpsc::channel(1).1);
    let (result, took, _) = client.stop().await;
    result.unwrap();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    assert_eq!(
        server_side.await.unwrap(),
        None,
        "the client closed the socket"
    );
    assert_eq!(
        events.recv().await,
        Some(LinkEvent::Stanza("<message id='last'/>".to_string()))
    );
    assert_eq!(
        events.recv().await,
        Some(LinkEvent::Disconnected {
            reason: SHUTDOWN_REASON.to_string()
        })
    );
    assert_eq!(events.recv().await, None);
}

#[tokio::test]
async fn shutdown_does_not_wait_long_for_a_silent_server() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let (result, took, _) = client.stop().await;
    result.unwrap();
    assert_eq!(conn.frame().await, Some(Frame::StreamClose));
    // The grace period for the server's close is one second.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "shutdown took {took:?}"
    );
}

#[tokio::test]
async fn an_idle_link_sends_a_whitespace_keepalive() {
    let server = FakeServer::start().await;
    let mut config = config(&server.addr, SECRET);
    config.keepalive = Some(Duration::from_millis(50));
    let mut client = Client::start(config);
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    let mut byte = [0u8; 1];
    timeout(PATIENCE, conn.stream.read_exact(&mut byte))
        .await
        .expect("no keepalive")
        .unwrap();
    assert_eq!(&byte, b" ");
    let (result, _, stats) = client.stop().await;
    result.unwrap();
    assert!(stats.keepalives >= 1);
    assert_eq!(stats.stanzas_out, 0);
}

#[tokio::test]
async fn a_connection_that_lasted_resets_the_backoff() {
    let server = FakeServer::start().await;
    let mut config = config(&server.addr, SECRET);
    config.backoff_max = Duration::from_millis(400);
    let mut client = Client::start(config);
    // Four connections dropped right after the handshake: nominal delays 20, 40, 80, 160 ms,
    // so the next one would be 320 ms (at least 256 ms with jitter) without a reset.
    for _ in 0..4 {
        let mut conn = server.accept().await;
        conn.accept_component("").await;
        assert_eq!(client.event().await, LinkEvent::Connected);
        drop(conn);
        assert!(matches!(
            client.event().await,
            LinkEvent::Disconnected { .. }
        ));
    }
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    // Holding the connection past backoff_max is the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(conn);
    let dropped_at = Instant::now();
    assert!(matches!(
        client.event().await,
        LinkEvent::Disconnected { .. }
    ));
    let _conn = server.accept().await;
    let gap = dropped_at.elapsed();
    // Reset: 16 to 24 ms. Timers never fire early, so no reset means at least 256 ms.
    assert!(
        gap < Duration::from_millis(200),
        "reconnected after {gap:?}"
    );
    client.stop().await.0.unwrap();
}

#[tokio::test]
async fn run_ends_when_nobody_takes_events() {
    let server = FakeServer::start().await;
    let mut client = Client::start(config(&server.addr, SECRET));
    let mut conn = server.accept().await;
    conn.accept_component("").await;
    assert_eq!(client.event().await, LinkEvent::Connected);
    client.events.close();
    conn.send("<message id='nobody-listens'/>").await;
    let result = timeout(PATIENCE, &mut client.handle)
        .await
        .expect("run did not end")
        .unwrap();
    result.unwrap();
    assert_eq!(conn.frame().await, Some(Frame::StreamClose));
    assert!(!server.connects_within(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_full_event_channel() {
    let server = FakeServer::start().await;
    let (events_tx, _events_never_read) = mpsc::channel(1);
    let (_commands, commands_rx) = mpsc::channel(1);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let counters = Arc::new(LinkCounters::default());
    let handle = tokio::spawn(run_with_counters(
        config(&server.addr, SECRET),
        events_tx,
        commands_rx,
        shutdown_rx,
        counters.clone(),
    ));
    let mut conn = server.accept().await;
    // Connected fills the channel, so the Disconnected that follows the drop cannot be sent.
    conn.accept_component("").await;
    drop(conn);
    let deadline = Instant::now() + PATIENCE;
    while counters.snapshot().disconnects == 0 {
        assert!(Instant::now() < deadline, "the drop was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.send(true).unwrap();
    timeout(Duration::from_secs(1), handle)
        .await
        .expect("run is stuck on the full event channel")
        .unwrap()
        .unwrap();
}
