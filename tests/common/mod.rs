//! End-to-end harness: a throwaway Prosody on loopback, a minimal XMPP client and a raw XEP-0114
//! component connection. Real processes and real sockets; nothing here is mocked.
//!
//! Each [`Prosody`] lives in its own temp dir with its own free ports, so tests run in parallel.
//! One part a file: [`prosody`] (the server), [`stream`] (the harness's own stanza splitter and
//! XML connection), [`client`] (c2s), [`component`] (a raw XEP-0114 link), the shortcuts below.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backend;
pub mod client;
pub mod component;
pub mod daemon;
pub mod prosody;
pub mod stream;
pub mod xmltree;

use std::time::Duration;

pub use client::*;
pub use component::*;
pub use prosody::*;
pub use stream::*;

pub const DOMAIN: &str = "localhost";
pub const COMPONENT: &str = "readtrack.localhost";
pub const SECRET: &str = "s3cret-for-tests";
/// Default wait for something that should happen promptly on loopback.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to listen when proving that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(800);

// ---------------------------------------------------------------------------------------------
// Shortcuts shared by the end-to-end tests.

/// A JID a test writes out, known to be one.
pub fn jid(s: &str) -> readtrack::jid::Jid {
    readtrack::jid::Jid::parse(s).unwrap()
}

/// A Prosody with `users` registered, each with the password `pw`.
pub fn server_with(users: &[&str]) -> Prosody {
    server_from(ProsodyOpts::default(), users)
}

/// A Prosody started with `opts`, with `users` registered, each with the password `pw`.
pub fn server_from(opts: ProsodyOpts, users: &[&str]) -> Prosody {
    let p = Prosody::start(opts);
    for u in users {
        p.register(u, "pw");
    }
    p
}

/// Options with Prosody's admin shell loaded, through which a test reloads a module
/// ([`Prosody::reload_module`]).
pub fn with_admin_shell() -> ProsodyOpts {
    ProsodyOpts {
        extra_modules: vec!["admin_shell".into()],
        ..ProsodyOpts::default()
    }
}

/// A client logged in as `user` (password `pw`) that sent its initial presence, processed.
pub async fn online(p: &Prosody, user: &str, resource: &str) -> Client {
    let mut c = p.client(user, "pw", resource).await;
    c.send_presence().await;
    c.sync().await;
    c
}

/// A chat message as a client sends it.
pub fn chat(id: &str, to: &str, body: &str) -> String {
    format!("<message id='{id}' type='chat' to='{to}'><body>{body}</body></message>")
}

/// A seed receipt (`type='crs'`, status 200) for `id`, addressed to the server.
pub fn crs_receipt(id: &str) -> String {
    format!("<message id='{id}' type='crs' to='{DOMAIN}'><received xmlns='urn:xmpp:receipts'>200</received></message>")
}

/// A seed offline ack (`type='crs'`, `<offline/>`) for `id`, addressed to the server.
pub fn crs_offline_ack(id: &str) -> String {
    format!(
        "<message id='{id}' type='crs' to='{DOMAIN}'><offline xmlns='urn:xmpp:offline'/></message>"
    )
}
