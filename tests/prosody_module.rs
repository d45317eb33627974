//! mod_readtrack against a real Prosody on loopback, observed through a raw XEP-0114 component.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let p = Prosody::start(ProsodyOpts::default());
    p.register("alice", "pw");
    let mut comp = p.connect_component().await;
    let snap = comp
        .expect("snapshot", WAIT, |s| s.contains("snapshot"))
        .await;
    eprintln!("{snap}");
    let mut a = p.client("alice", "pw", "phone").await;
    assert_eq!(a.jid, "alice@localhost/phone");
    a.send_presence().await;
    let ev = comp
        .expect("available", WAIT, |s| s.contains("available"))
        .await;
    eprintln!("{ev}");
    a.close().await;
    let ev = comp
        .expect("unavailable", WAIT, |s| s.contains("unavailable"))
        .await;
    eprintln!("{ev}");
}
