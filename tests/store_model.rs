//! Model-based test of the store: random operations run against the store (sled, or PostgreSQL
//! with `READTRACK_TEST_BACKEND=postgres`: tests/common/backend.rs) and against a plain
//! `BTreeMap` model, with the database closed and reopened at random points. After every
//! operation, everything readable through the store's API must equal the model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use readtrack::store::{
    DeliveryRecord, DeviceNo, DeviceRecord, Location, MessageRecord, ReceiptState, Seq, Store,
    StoreOptions, Timer, UserId,
};

#[path = "common/backend.rs"]
mod backend;

const USERS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];
const IDS: [&str; 3] = ["V4NkR-38", "HncqL-65", "gJE6T-2"];

#[derive(Debug, Clone)]
enum Op {
    MarkRead {
        user: usize,
        upto: Seq,
    },
    DeleteOldest {
        user: usize,
    },
    EnsureUser(usize),
    Append {
        user: usize,
        id: Option<usize>,
        deadline: Option<u64>,
        live: Vec<DeviceNo>,
        sent: bool,
    },
    PutDevice {
        user: usize,
        device: DeviceNo,
        acked_upto: Seq,
        session: u64,
    },
    RemoveDevice {
        user: usize,
        device: DeviceNo,
    },
    Ack {
        user: usize,
        device: DeviceNo,
        seq: Seq,
    },
    FireTimers {
        now: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..3usize).prop_map(Op::EnsureUser),
        4 => (0..3usize, proptest::option::of(0..3usize), proptest::option::of(0..100u64), proptest::collection::vec(0..3u32, 0..3), any::<bool>())
            .prop_map(|(user, id, deadline, live, sent)| Op::Append { user, id, deadline, live, sent }),
        1 => (0..3usize, 0..3u32, 0..10u64, 0..4u64).prop_map(|(user, device, acked_upto, session)| Op::PutDevice { user, device, acked_upto, session }),
        1 => (0..3usize, 0..3u32).prop_map(|(user, device)| Op::RemoveDevice { user, device }),
        2 => (0..3usize, 0..3u32, 1..12u64).prop_map(|(user, device, seq)| Op::Ack { user, device, seq }),
        1 => (0..120u64).prop_map(|now| Op::FireTimers { now }),
        1 => Just(Op::Reopen),
        1 => (0..3usize, 0..14u64).prop_map(|(user, upto)| Op::MarkRead { user, upto }),
        1 => (0..3usize).prop_map(|user| Op::DeleteOldest { user }),
    ]
}

#[derive(Default, Debug)]
struct Model {
    users: BTreeMap<String, UserId>,
    heads: BTreeMap<UserId, Seq>,
    messages: BTreeMap<(UserId, Seq), MessageRecord>,
    devices: BTreeMap<(UserId, DeviceNo), DeviceRecord>,
    deliveries: BTreeMap<(UserId, DeviceNo, Seq), DeliveryRecord>,
    timers: BTreeSet<(u64, UserId, Seq)>,
    /// (user, peer) → (read_upto, last_seq, last_at)
    conversations: BTreeMap<(UserId, String), (Seq, Seq, u64)>,
}

const PEER_RECEIVED: &str = "alice@example.com";
const PEER_SENT: &str = "dave@example.com";

fn device_record(acked_upto: Seq, session: u64) -> DeviceRecord {
    DeviceRecord {
        key: "d".into(),
        resource: "r".into(),
        acked_upto,
        acked_above: vec![],
        session,
        online: session % 2 == 1,
        first_seen: 1,
        last_seen: 2,
        replayed: Default::default(),
        session_id: (session % 3 != 0).then(|| format!("c2s{session:x}")),
        speaks_seed: session % 5 == 0,
    }
}

struct Harness {
    /// Holds a sled store's folder for the test's length.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
    location: Location,
    store: Option<Store>,
    model: Model,
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.store.take());
        backend::drop_location(&self.location);
    }
}

impl Harness {
    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn user(&self, index: usize) -> Option<UserId> {
        self.model.users.get(USERS[index]).copied()
    }

    fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::EnsureUser(u) => {
                let id = self.store().ensure_user(USERS[u]).unwrap();
                let next = self.model.users.len() as u64 + 1;
                let expected = *self.model.users.entry(USERS[u].to_string()).or_insert(next);
                self.model.heads.entry(expected).or_insert(0);
                assert_eq!(id, expected);
            }
            Op::Append {
                user,
                id,
                deadline,
                live,
                sent,
            } => {
                let Some(uid) = self.user(user) else { return };
                // A sent message has no receipt timer and no live delivery (as the engine logs it).
                let (deadline, live) = if sent {
                    (None, vec![])
                } else {
                    (deadline, live)
                };
                let receipt = deadline.map_or(ReceiptState::NotRequired, |deadline| {
                    ReceiptState::Waiting { deadline }
                });
                // seq 0: the store assigns it, and the model checks which.
                let new = MessageRecord {
                    seq: 0,
                    stanza_id: 7,
                    msg_id: id.map(|i| IDS[i].to_string()),
                    from: if sent {
                        "bob@example.com/me".into()
                    } else {
                        "alice@example.com/x".into()
                    },
                    sent,
                    to: sent.then(|| format!("{PEER_SENT}/y")),
                    kind: Some("chat".into()),
                    stanza: format!(
                        "<message xmlns=\"jabber:client\" type=\"chat\"><body>{}</body></message>",
                        (Some("b & <c>".into()))
                            .map(|b: String| b.replace('&', "&amp;").replace('<', "&lt;"))
                            .unwrap_or_default()
                    ),
                    signal: false,
                    asks_receipt: false,
                    logged_at: 5,
                    system: false,
                    receipt,
                    archive_id: None,
                };
                let live: BTreeSet<DeviceNo> = live.into_iter().collect();
                let deliveries: Vec<_> = live
                    .iter()
                    .map(|d| (*d, DeliveryRecord { session: 1, at: 5 }))
                    .collect();
                let seq = self
                    .store()
                    .append_message(uid, new.clone(), &deliveries)
                    .unwrap();
                let head = self.model.heads.get_mut(&uid).unwrap();
                *head += 1;
                assert_eq!(seq, *head);
                self.model
                    .messages
                    .insert((uid, seq), MessageRecord { seq, ..new });
                let peer = if sent { PEER_SENT } else { PEER_RECEIVED };
                let conv = self
                    .model
                    .conversations
                    .entry((uid, peer.to_string()))
                    .or_insert((0, 0, 0));
                conv.1 = seq;
                conv.2 = 5;
                if let Some(d) = deadline {
                    self.model.timers.insert((d, uid, seq));
                }
                for (d, rec) in deliveries {
                    self.model.deliveries.insert((uid, d, seq), rec);
                }
            }
            Op::PutDevice {
                user,
                device,
                acked_upto,
                session,
            } => {
                let Some(uid) = self.user(user) else { return };
                let record = device_record(acked_upto, session);
                self.store().put_device(uid, Some(device), &record).unwrap();
                self.model.devices.insert((uid, device), record);
            }
            Op::RemoveDevice { user, device } => {
                let Some(uid) = self.user(user) else { return };
                self.store().remove_device(uid, device).unwrap();
                self.model.devices.remove(&(uid, device));
                self.model
                    .deliveries
                    .retain(|(u, d, _), _| !(*u == uid && *d == device));
            }
            Op::Ack { user, device, seq } => {
                let Some(uid) = self.user(user) else { return };
                let mut record = self
                    .model
                    .devices
                    .get(&(uid, device))
                    .cloned()
                    .unwrap_or_else(|| device_record(0, 0));
                record.ack(seq);
                let mut settled = Vec::new();
                if let Some(m) = self.model.messages.get_mut(&(uid, seq)) {
                    if let ReceiptState::Waiting { deadline } = m.receipt {
                        m.receipt = ReceiptState::Acked;
                        self.model.timers.remove(&(deadline, uid, seq));
                        settled.push((
                            Timer {
                                deadline,
                                user: uid,
                                seq,
                            },
                            m.clone(),
                        ));
                    }
                }
                self.store()
                    .apply_ack(uid, device, &record, &[seq], &settled)
                    .unwrap();
                self.model.devices.insert((uid, device), record);
                self.model.deliveries.remove(&(uid, device, seq));
            }
            Op::FireTimers { now } => {
                let due = self.store().due_timers(now, usize::MAX).unwrap();
                let expected: Vec<_> = self
                    .model
                    .timers
                    .iter()
                    .filter(|t| t.0 <= now)
                    .copied()
                    .collect();
                assert_eq!(
                    due.iter()
                        .map(|t| (t.deadline, t.user, t.seq))
                        .collect::<Vec<_>>(),
                    expected
                );
                for t in due {
                    let mut m = self.model.messages.get(&(t.user, t.seq)).cloned().unwrap();
                    m.receipt = ReceiptState::Bounced;
                    self.store().settle_timer(t, Some(&m)).unwrap();
                    self.model.messages.insert((t.user, t.seq), m);
                    self.model.timers.remove(&(t.deadline, t.user, t.seq));
                }
            }
            Op::MarkRead { user, upto } => {
                let Some(uid) = self.user(user) else { return };
                let newly = self.store().mark_read(uid, PEER_RECEIVED, upto).unwrap();
                let expected = match self
                    .model
                    .conversations
                    .get_mut(&(uid, PEER_RECEIVED.to_string()))
                {
                    Some(conv) if upto.min(conv.1) > conv.0 => {
                        let upto = upto.min(conv.1);
                        let from = conv.0;
                        conv.0 = upto;
                        self.model
                            .messages
                            .range((uid, from + 1)..=(uid, upto))
                            .filter(|(_, m)| !m.sent)
                            .count() as u64
                    }
                    _ => 0,
                };
                assert_eq!(newly, expected);
            }
            Op::DeleteOldest { user } => {
                let Some(uid) = self.user(user) else { return };
                let Some(m) = self
                    .model
                    .messages
                    .range((uid, 0)..=(uid, u64::MAX))
                    .next()
                    .map(|(_, m)| m.clone())
                else {
                    return;
                };
                self.store().delete_message(uid, &m, &[0, 1, 2]).unwrap();
                self.model.messages.remove(&(uid, m.seq));
                self.model
                    .deliveries
                    .retain(|(u, _, s), _| !(*u == uid && *s == m.seq));
                if let ReceiptState::Waiting { deadline } = m.receipt {
                    self.model.timers.remove(&(deadline, uid, m.seq));
                }
            }
            Op::Reopen => {
                self.store().flush().unwrap();
                drop(self.store.take());
                self.store =
                    Some(Store::open_location(&self.location, &StoreOptions::default()).unwrap());
            }
        }
    }

    fn check(&self) {
        let store = self.store();
        assert_eq!(store.user_count(), self.model.users.len());
        for (jid, uid) in &self.model.users {
            assert_eq!(store.user_id(jid).unwrap(), Some(*uid));
            assert_eq!(store.user(*uid).unwrap().head, self.model.heads[uid]);
            let logged: Vec<_> = store.messages_after(*uid, 0).map(Result::unwrap).collect();
            let modelled: Vec<_> = self
                .model
                .messages
                .range((*uid, 0)..=(*uid, u64::MAX))
                .map(|(_, m)| m.clone())
                .collect();
            assert_eq!(logged, modelled);
            assert_eq!(
                store.user(*uid).unwrap().log_bytes,
                modelled.iter().map(|m| m.stanza.len() as u64).sum::<u64>(),
                "the user's running byte total is the sum of the stored stanzas"
            );
            let head = self.model.heads[uid];
            for id in IDS {
                for after in [0, head / 3, head / 2 + 1, head] {
                    let by_id = |newest_first| -> Vec<Seq> {
                        store
                            .messages_by_msgid(
                                *uid,
                                id,
                                after,
                                newest_first,
                                usize::MAX,
                                &std::cell::Cell::new(0),
                            )
                            .unwrap()
                            .map(|m| m.unwrap().seq)
                            .collect()
                    };
                    let mut expected: Vec<Seq> = modelled
                        .iter()
                        .filter(|m| m.seq > after && m.msg_id.as_deref() == Some(id))
                        .map(|m| m.seq)
                        .collect();
                    assert_eq!(by_id(false), expected, "id index of {id} after {after}");
                    expected.reverse();
                    assert_eq!(by_id(true), expected, "newest first: {id} after {after}");
                }
            }
            let devices = store.devices(*uid).unwrap();
            let expected: Vec<_> = self
                .model
                .devices
                .range((*uid, 0)..=(*uid, u32::MAX))
                .map(|((_, d), r)| (*d, r.clone()))
                .collect();
            assert_eq!(devices, expected);
            for d in 0..3 {
                // Point reads and searches see what the scan sees (the device cache included).
                assert_eq!(
                    store.device(*uid, d).unwrap(),
                    self.model.devices.get(&(*uid, d)).cloned()
                );
            }
            for acked in [0, 1, 5] {
                let found = store.find_device(*uid, |r| r.acked_upto >= acked).unwrap();
                let first = expected
                    .iter()
                    .find(|(_, r)| r.acked_upto >= acked)
                    .cloned();
                assert_eq!(found, first, "first device acked to {acked}");
            }
            for d in 0..3 {
                let deliveries = store.deliveries(*uid, d, u64::MAX).unwrap();
                let expected: Vec<_> = self
                    .model
                    .deliveries
                    .range((*uid, d, 0)..=(*uid, d, u64::MAX))
                    .map(|((_, _, s), r)| (*s, *r))
                    .collect();
                assert_eq!(deliveries, expected);
            }
        }
        assert_eq!(store.timer_count(), self.model.timers.len());
        for uid in self.model.users.values() {
            let mut stored: Vec<(String, u64, u64, u64)> = self
                .store()
                .conversations(*uid)
                .unwrap()
                .into_iter()
                .map(|c| (c.peer, c.read_upto, c.last_seq, c.unread))
                .collect();
            stored.sort();
            let modelled: Vec<(String, u64, u64, u64)> = self
                .model
                .conversations
                .range((*uid, String::new())..)
                .take_while(|((u, _), _)| u == uid)
                .map(|((_, peer), (read_upto, last_seq, _))| {
                    let unread = if peer == PEER_RECEIVED {
                        self.model
                            .messages
                            .range((*uid, read_upto + 1)..=(*uid, u64::MAX))
                            .filter(|(_, m)| !m.sent)
                            .count() as u64
                    } else {
                        0
                    };
                    (peer.clone(), *read_upto, *last_seq, unread)
                })
                .collect();
            assert_eq!(stored, modelled, "conversations of user {uid}");
        }
        assert_eq!(
            store.next_deadline().unwrap(),
            self.model.timers.first().map(|t| t.0)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let location = backend::test_location(dir.path());
        let store = Store::open_location(&location, &StoreOptions::default()).unwrap();
        let mut h = Harness { dir, location, store: Some(store), model: Model::default() };
        for op in &ops {
            h.apply(op);
            h.check();
        }
    }
}

/// The store keeps the decoded devices of recent users: every kind of write to a device within
/// one commit (a new record, an ack, a removal, a purge, another user's write) must show in the
/// next read of every kind, before and after the flush.
#[test]
fn device_reads_see_every_write_within_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let location = backend::test_location(dir.path());
    let store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    let (alice, bob) = (
        store.ensure_user(USERS[0]).unwrap(),
        store.ensure_user(USERS[1]).unwrap(),
    );
    let named = |key: &str, acked_upto: Seq| DeviceRecord {
        key: key.into(),
        ..device_record(acked_upto, 1)
    };
    let phone = store.put_device(alice, None, &named("phone", 0)).unwrap();
    let laptop = store.put_device(alice, None, &named("laptop", 0)).unwrap();
    let by_key = |key: &str| {
        store
            .find_device(alice, |d| d.key == key)
            .unwrap()
            .map(|(no, d)| (no, d.acked_upto))
    };
    // Read (and so cached) before each write below.
    assert_eq!(by_key("phone"), Some((phone, 0)));
    assert_eq!(store.devices(alice).unwrap().len(), 2);

    // An ack stores the device's new record.
    let mut acked = named("phone", 0);
    acked.ack(1);
    store.apply_ack(alice, phone, &acked, &[], &[]).unwrap();
    assert_eq!(by_key("phone"), Some((phone, 1)));
    assert_eq!(store.device(alice, phone).unwrap(), Some(acked.clone()));

    // A record stored again under the same number, and a new device.
    store
        .put_device(alice, Some(laptop), &named("laptop", 7))
        .unwrap();
    assert_eq!(by_key("laptop"), Some((laptop, 7)));
    let tablet = store.put_device(alice, None, &named("tablet", 3)).unwrap();
    assert_eq!(by_key("tablet"), Some((tablet, 3)));
    assert_eq!(
        store
            .devices(alice)
            .unwrap()
            .iter()
            .map(|(no, d)| (*no, d.key.as_str()))
            .collect::<Vec<_>>(),
        vec![(phone, "phone"), (laptop, "laptop"), (tablet, "tablet")]
    );

    // Another user's write changes nothing of alice's.
    store.put_device(bob, None, &named("phone", 9)).unwrap();
    assert_eq!(by_key("phone"), Some((phone, 1)));

    // A removal (a write without a record) is seen by every read.
    store.remove_device(alice, laptop).unwrap();
    assert_eq!(by_key("laptop"), None);
    assert_eq!(store.device(alice, laptop).unwrap(), None);
    assert_eq!(store.devices(alice).unwrap().len(), 2);

    // Flushed, the same; then a purge takes every device of the user.
    store.flush().unwrap();
    assert_eq!(by_key("phone"), Some((phone, 1)));
    assert_eq!(by_key("laptop"), None);
    store.purge_user(alice).unwrap();
    assert_eq!(store.devices(alice).unwrap(), vec![]);
    assert_eq!(by_key("phone"), None);
    assert_eq!(store.device(alice, phone).unwrap(), None);
    assert_eq!(
        store
            .find_device(bob, |d| d.key == "phone")
            .unwrap()
            .map(|(_, d)| d.acked_upto),
        Some(9)
    );
    drop(store);
    backend::drop_location(&location);
}

/// The store keeps the ids of recently looked up JIDs: a purge and a new user under the same
/// JID within one commit must show in the next lookup.
#[test]
fn user_ids_follow_a_purge_and_a_new_account_within_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let location = backend::test_location(dir.path());
    let store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    assert_eq!(store.user_id(USERS[0]).unwrap(), None);
    let first = store.ensure_user(USERS[0]).unwrap();
    assert_eq!(store.user_id(USERS[0]).unwrap(), Some(first));
    assert_eq!(store.ensure_user(USERS[0]).unwrap(), first);
    store.purge_user(first).unwrap();
    assert_eq!(store.user_id(USERS[0]).unwrap(), None);
    let second = store.ensure_user(USERS[0]).unwrap();
    assert_ne!(second, first);
    assert_eq!(store.user_id(USERS[0]).unwrap(), Some(second));
    store.flush().unwrap();
    assert_eq!(store.user_id(USERS[0]).unwrap(), Some(second));
    assert_eq!(store.user_id(USERS[1]).unwrap(), None);
    drop(store);
    backend::drop_location(&location);
}

#[test]
fn user_records_follow_every_write_within_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let location = backend::test_location(dir.path());
    let store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    let alice = store.ensure_user(USERS[0]).unwrap();
    // Each step reads the record first (so the store may remember it), writes, reads again.
    let check = |what: &str, expect: &dyn Fn(&readtrack::store::UserRecord) -> bool| {
        let record = store.user(alice).unwrap();
        assert!(expect(&record), "{what}: {record:?}");
    };
    check("new", &|u| u.head == 0 && u.next_device == 0);
    let first = received("m1", "bob@example.com/phone", "one", 1);
    let seq = store.append_message(alice, first, &[]).unwrap();
    check("appended", &|u| u.head == 1 && u.log_bytes > 0);
    store.put_device(alice, None, &device_record(0, 1)).unwrap();
    check("a device numbered", &|u| u.next_device == 1 && u.head == 1);
    store.set_account(alice, "token-1").unwrap();
    check("account", &|u| u.account.as_deref() == Some("token-1"));
    store.flush().unwrap();
    check("flushed", &|u| {
        u.account.as_deref() == Some("token-1") && u.next_device == 1
    });
    let logged = store.message(alice, seq).unwrap().unwrap();
    store.delete_message(alice, &logged, &[]).unwrap();
    check("deleted", &|u| u.first_seq == 2 && u.log_bytes == 0);
    store.purge_user(alice).unwrap();
    assert!(matches!(
        store.user(alice),
        Err(readtrack::store::StoreError::UnknownUser(_))
    ));
    store.flush().unwrap();
    drop(store);
    backend::drop_location(&location);
}

#[test]
fn refuses_a_store_of_another_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let raw = raw_open(&path);
        raw.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        raw.flush().unwrap();
    }
    let err = Store::open(&path, &StoreOptions::default())
        .err()
        .expect("must refuse");
    assert_eq!(
        err.to_string(),
        format!("store at {} has schema version 99, this readtrack reads version {}; refusing to touch it", path.display(), readtrack::store::SCHEMA_VERSION)
    );
}

#[test]
fn refuses_a_foreign_sled_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let raw = raw_open(&path);
        raw.open_tree("jid_userid")
            .unwrap()
            .insert("x", "y")
            .unwrap();
        raw.flush().unwrap();
    }
    let err = Store::open(&path, &StoreOptions::default())
        .err()
        .expect("must refuse");
    assert_eq!(
        err.to_string(),
        format!(
            "store at {} holds data but no schema version; it was not written by readtrack",
            path.display()
        )
    );
}

#[test]
fn second_process_lock_is_reported_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let _first = Store::open(&path, &StoreOptions::default()).unwrap();
    let err = Store::open(&path, &StoreOptions::default())
        .err()
        .expect("sled allows one opener");
    assert_eq!(
        err.to_string(),
        format!(
            "store at {} is in use by another process (sled allows one); \
             if readtrack serve runs, use the CLI through its admin socket",
            path.display()
        )
    );
}

/// `userdevice_cursor` as schema 2 wrote it: the layout a store upgraded from 2 holds.
#[derive(serde::Serialize)]
struct DeviceRecordV2 {
    key: String,
    resource: String,
    acked_upto: Seq,
    acked_above: Vec<Seq>,
    session: u64,
    online: bool,
    first_seen: u64,
    last_seen: u64,
}

/// `userdevice_cursor` as schema 3 wrote it (schema 2's fields, then the replay range).
#[derive(serde::Serialize)]
struct DeviceRecordV3 {
    v2: DeviceRecordV2,
    replayed: readtrack::store::ReplayRange,
}

/// `userdevice_cursor` as schema 4 wrote it (schema 3's fields, then the session id).
#[derive(serde::Serialize)]
struct DeviceRecordV4 {
    v3: DeviceRecordV3,
    session_id: Option<String>,
}

/// `userseq_message` as schemas 2 to 4 wrote it: typed fields, body and thread.
#[derive(serde::Serialize)]
struct MessageRecordV4<'a> {
    seq: Seq,
    stanza_id: u128,
    msg_id: Option<&'a str>,
    from: &'a str,
    kind: Option<&'a str>,
    body: Option<&'a str>,
    thread: Option<&'a str>,
    logged_at: u64,
    system: bool,
    receipt: ReceiptState,
    archive_id: Option<&'a str>,
    sent: bool,
    to: Option<&'a str>,
}

/// A device record in the layout of schema `version` (2, 3 or 4).
fn old_device_bytes(d: &DeviceRecord, version: u32) -> Vec<u8> {
    let v2 = DeviceRecordV2 {
        key: d.key.clone(),
        resource: d.resource.clone(),
        acked_upto: d.acked_upto,
        acked_above: d.acked_above.clone(),
        session: d.session,
        online: d.online,
        first_seen: d.first_seen,
        last_seen: d.last_seen,
    };
    let config = bincode::config::standard();
    match version {
        2 => bincode::serde::encode_to_vec(&v2, config).unwrap(),
        3 => bincode::serde::encode_to_vec(
            &DeviceRecordV3 {
                v2,
                replayed: d.replayed,
            },
            config,
        )
        .unwrap(),
        4 => bincode::serde::encode_to_vec(
            &DeviceRecordV4 {
                v3: DeviceRecordV3 {
                    v2,
                    replayed: d.replayed,
                },
                session_id: d.session_id.clone(),
            },
            config,
        )
        .unwrap(),
        v => panic!("no layout for schema {v}"),
    }
}

#[test]
fn a_schema_2_store_is_upgraded_in_place_and_keeps_everything() {
    upgrade_keeps_everything(2);
}

#[test]
fn a_schema_3_store_is_upgraded_in_place_and_keeps_everything() {
    upgrade_keeps_everything(3);
}

#[test]
fn a_schema_4_store_is_upgraded_in_place_and_keeps_everything() {
    upgrade_keeps_everything(4);
}

fn upgrade_keeps_everything(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // Older schemas knew no seed flag; before 4 no session id; schema 2 no replay range.
    let mut phone = device_record(3, 5);
    phone.acked_above = vec![5, 9];
    phone.speaks_seed = false;
    if version < 4 {
        phone.session_id = None;
    }
    if version >= 3 {
        phone.replayed = readtrack::store::ReplayRange {
            session: 5,
            upto: 8,
            max_upto: 9,
        };
    }
    let mut laptop = device_record(0, 2);
    laptop.session_id = None;
    laptop.speaks_seed = false;
    let (uid, seq) = {
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let uid = store.ensure_user("bob@example.com").unwrap();
        let p = store.put_device(uid, None, &phone).unwrap();
        store.put_device(uid, None, &laptop).unwrap();
        let m = received("m1", "alice@example.com/x", "hi", 5);
        let seq = store
            .append_message(uid, m, &[(p, DeliveryRecord { session: 5, at: 6 })])
            .unwrap();
        store.flush().unwrap();
        (uid, seq)
    };
    // Turn it into an old store: device records in the old layout, the old version.
    {
        let raw = raw_open(&path);
        let cursors = raw.open_tree("userdevice_cursor").unwrap();
        for (k, d) in [(0u32, &phone), (1, &laptop)] {
            let mut key = uid.to_be_bytes().to_vec();
            key.extend_from_slice(&k.to_be_bytes());
            let bytes = old_device_bytes(d, version);
            assert!(cursors.insert(key, bytes).unwrap().is_some());
        }
        raw.open_tree("meta")
            .unwrap()
            .insert("schema_version", &version.to_be_bytes())
            .unwrap();
        // The log entry and the counters in their old layouts (the counters without the
        // hand-back count; bincode's varints: one byte per zero counter).
        let old = MessageRecordV4 {
            seq,
            stanza_id: 5,
            msg_id: Some("m1"),
            from: "alice@example.com/x",
            kind: Some("chat"),
            body: Some("hi"),
            thread: None,
            logged_at: 5,
            system: false,
            receipt: ReceiptState::NotRequired,
            archive_id: None,
            sent: false,
            to: None,
        };
        let mut log_key = uid.to_be_bytes().to_vec();
        log_key.extend_from_slice(&seq.to_be_bytes());
        raw.open_tree("userseq_message")
            .unwrap()
            .insert(
                log_key,
                bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap(),
            )
            .unwrap();
        raw.open_tree("meta")
            .unwrap()
            .insert("counters", vec![0u8; 10])
            .unwrap();
        // The user record had no account token.
        #[derive(serde::Serialize)]
        struct UserRecordV4<'a> {
            jid: &'a str,
            head: Seq,
            first_seq: Seq,
            next_device: u32,
        }
        let v4 = UserRecordV4 {
            jid: "bob@example.com",
            head: seq,
            first_seq: 1,
            next_device: 2,
        };
        raw.open_tree("userid_user")
            .unwrap()
            .insert(
                uid.to_be_bytes(),
                bincode::serde::encode_to_vec(&v4, bincode::config::standard()).unwrap(),
            )
            .unwrap();
        // Conversations were keyed by a hash of the peer.
        let conversations = raw.open_tree("userpeer_conversation").unwrap();
        let mut new_key = uid.to_be_bytes().to_vec();
        new_key.extend_from_slice(b"alice@example.com");
        let record = conversations
            .remove(new_key)
            .unwrap()
            .expect("alice's conversation");
        let mut old_key = uid.to_be_bytes().to_vec();
        old_key.extend_from_slice(
            &readtrack::store::keys::msgid_hash("alice@example.com").to_be_bytes(),
        );
        conversations.insert(old_key, record).unwrap();
        // Schemas 2 and 3 indexed the log with a key per message in two trees, and had no
        // block index.
        assert!(raw.drop_tree("userblock_index").unwrap());
        let mut old_key = uid.to_be_bytes().to_vec();
        old_key.extend_from_slice(&[7; 16]);
        for old in ["usermsgid_seq", "userpeerseq_received"] {
            raw.open_tree(old)
                .unwrap()
                .insert(&old_key, &[] as &[u8])
                .unwrap();
        }
        raw.flush().unwrap();
    }
    {
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let by_id: Vec<Seq> = store
            .messages_by_msgid(uid, "m1", 0, false, usize::MAX, &std::cell::Cell::new(0))
            .unwrap()
            .map(|m| m.unwrap().seq)
            .collect();
        assert_eq!(by_id, vec![seq], "the index is rebuilt from the log");
        let devices: Vec<DeviceRecord> = store
            .devices(uid)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(devices, vec![phone.clone(), laptop.clone()]);
        assert_eq!(
            store.deliveries(uid, 0, u64::MAX).unwrap(),
            vec![(seq, DeliveryRecord { session: 5, at: 6 })]
        );
        let user = store.user(uid).unwrap();
        assert_eq!(
            (user.jid.as_str(), user.head, user.next_device, user.account),
            ("bob@example.com", seq, 2, None)
        );
        let alice = store.conversation(uid, "alice@example.com").unwrap();
        assert_eq!(alice.map(|c| (c.unread, c.last_seq)), Some((1, seq)));
        assert_eq!(store.conversations(uid).unwrap().len(), 1);
        // The old record's fields, as the stanza its replay used to be built as.
        let upgraded = store.message(uid, seq).unwrap().unwrap();
        assert!(
            upgraded
                .stanza
                .starts_with("<message xmlns=\"jabber:client\"")
                && upgraded.stanza.ends_with("<body>hi</body></message>"),
            "{}",
            upgraded.stanza
        );
        assert_eq!(
            user.log_bytes,
            upgraded.stanza.len() as u64,
            "the byte total is summed from the upgraded log"
        );
    }
    let raw = raw_open(&path);
    assert_eq!(
        raw.open_tree("meta")
            .unwrap()
            .get("schema_version")
            .unwrap()
            .unwrap()
            .as_ref(),
        &readtrack::store::SCHEMA_VERSION.to_be_bytes(),
        "the upgrade is recorded"
    );
    let names: Vec<String> = raw
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    for old in ["usermsgid_seq", "userpeerseq_received"] {
        assert!(
            !names.contains(&old.to_string()),
            "{old} is dropped: {names:?}"
        );
    }
}

/// The log's index keeps one record per 32 messages: lookups by id, read markers and retention
/// across many records, with two peers interleaved, against a plain list.
#[test]
fn the_index_spans_many_records() {
    let dir = tempfile::tempdir().unwrap();
    let location = backend::test_location(dir.path());
    let mut store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    let uid = store.ensure_user("bob@example.com").unwrap();
    // (seq, id, sender or None for a message bob sent)
    let mut log: Vec<(Seq, String, Option<&str>)> = Vec::new();
    for i in 1..=150u64 {
        let from = match i % 5 {
            0 => None,
            1 | 2 => Some("carol@example.com"),
            _ => Some("alice@example.com"),
        };
        let id = format!("m{}", i % 7);
        let m = match from {
            Some(f) => received(&id, &format!("{f}/x"), "b", i),
            None => MessageRecord {
                sent: true,
                to: Some("dave@example.com/y".into()),
                ..received(&id, "bob@example.com/me", "b", i)
            },
        };
        let seq = store.append_message(uid, m, &[]).unwrap();
        assert_eq!(seq, i);
        log.push((seq, id, from));
        if i % 40 == 0 {
            store.flush().unwrap(); // some records come from sled, some from the write set
        }
    }
    let check = |store: &Store, log: &[(Seq, String, Option<&str>)]| {
        for id in ["m0", "m3", "m6", "nope"] {
            for after in [0, 31, 32, 33, 95, 149, 150] {
                let got = |newest_first| -> Vec<Seq> {
                    store
                        .messages_by_msgid(
                            uid,
                            id,
                            after,
                            newest_first,
                            usize::MAX,
                            &std::cell::Cell::new(0),
                        )
                        .unwrap()
                        .map(|m| m.unwrap().seq)
                        .collect()
                };
                let mut want: Vec<Seq> = log
                    .iter()
                    .filter(|(s, i, _)| *s > after && i == id)
                    .map(|(s, _, _)| *s)
                    .collect();
                assert_eq!(got(false), want, "{id} after {after}");
                want.reverse();
                assert_eq!(got(true), want, "newest first: {id} after {after}");
            }
        }
    };
    check(&store, &log);
    // Read markers count only the peer's received messages in the range, across records.
    let mut read = 0;
    for upto in [10, 70, 71, 140, 150] {
        let got = store.mark_read(uid, "carol@example.com", upto).unwrap();
        let want = log
            .iter()
            .filter(|(s, _, f)| *s > read && *s <= upto && *f == Some("carol@example.com"))
            .count() as u64;
        assert_eq!(got, want, "carol up to {upto}");
        read = upto;
    }
    let alice_unread_is_counted = |store: &Store, log: &[(Seq, String, Option<&str>)]| {
        let alice = store
            .conversation(uid, "alice@example.com")
            .unwrap()
            .unwrap();
        let want = log
            .iter()
            .filter(|(_, _, f)| *f == Some("alice@example.com"))
            .count() as u64;
        assert_eq!(alice.unread, want, "alice's unread count");
    };
    alice_unread_is_counted(&store, &log);
    // Retention deletes the oldest 70: whole records go, one is cut.
    for (seq, _, _) in log.drain(..70) {
        let m = store.message(uid, seq).unwrap().unwrap();
        store.delete_message(uid, &m, &[]).unwrap();
    }
    check(&store, &log);
    store.flush().unwrap();
    drop(store);
    store = Store::open_location(&location, &StoreOptions::default()).unwrap();
    check(&store, &log);
    // Deleted messages left the unread count.
    alice_unread_is_counted(&store, &log);
    drop(store);
    backend::drop_location(&location);
}

/// A chat message `id` with `body` received from `from` (a full JID), logged at `at`; the
/// store assigns its seq.
fn received(id: &str, from: &str, body: &str, at: u64) -> MessageRecord {
    MessageRecord {
        seq: 0,
        stanza_id: at.into(),
        msg_id: Some(id.into()),
        from: from.into(),
        sent: false,
        to: None,
        kind: Some("chat".into()),
        stanza: format!(
            "<message xmlns=\"jabber:client\" type=\"chat\"><body>{}</body></message>",
            body.replace('&', "&amp;").replace('<', "&lt;")
        ),
        signal: false,
        asks_receipt: false,
        logged_at: at,
        system: false,
        receipt: ReceiptState::NotRequired,
        archive_id: None,
    }
}

/// A store with one user and `messages` messages, flushed and closed.
fn small_store(path: &std::path::Path, jid: &str, messages: u64) {
    let store = Store::open(path, &StoreOptions::default()).unwrap();
    let uid = store.ensure_user(jid).unwrap();
    for i in 0..messages {
        let m = received(&format!("m{i}"), "alice@example.com/x", "b", i);
        store.append_message(uid, m, &[]).unwrap();
    }
    store.flush().unwrap();
}

/// What an interrupted upgrade leaves beside the store, by where the crash came (see
/// `src/store/migrate.rs`): the next open finishes or discards it, and nothing is left over.
#[test]
fn an_interrupted_upgrade_is_finished_or_discarded_at_the_next_open() {
    let mark = "readtrack-upgrade-complete";
    let leftovers = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let users = |path: &std::path::Path| -> Vec<String> {
        let store = Store::open(path, &StoreOptions::default()).unwrap();
        assert!(!path.join(mark).exists(), "the mark is removed");
        let mut jids = Vec::new();
        for jid in ["old@example.com", "new@example.com"] {
            if let Some(uid) = store.user_id(jid).unwrap() {
                assert_eq!(store.user(uid).unwrap().head, 3);
                jids.push(jid.to_string());
            }
        }
        jids
    };

    // What a crash at each point leaves: (folder, the user in it, marked complete), and which
    // store `db` is after the next open.
    type Folders = &'static [(&'static str, &'static str, bool)];
    let cases: [(&str, Folders, &str); 4] = [
        (
            "crash while copying: the store is untouched, the unmarked copy goes",
            &[("db", "old", false), ("db.upgrading", "new", false)],
            "old",
        ),
        (
            "crash after the mark, before the swap: the swap is done",
            &[("db", "old", false), ("db.upgrading", "new", true)],
            "new",
        ),
        (
            "crash between the two renames: the copy takes the store's name",
            &[
                ("db.schema-old", "old", false),
                ("db.upgrading", "new", true),
            ],
            "new",
        ),
        (
            "crash before the old store was deleted",
            &[("db", "new", false), ("db.schema-old", "old", false)],
            "new",
        ),
    ];
    for (what, folders, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        for (name, user, marked) in folders {
            let folder = dir.path().join(name);
            small_store(&folder, &format!("{user}@example.com"), 3);
            if *marked {
                std::fs::write(folder.join(mark), "4\n").unwrap();
            }
        }
        assert_eq!(
            users(&dir.path().join("db")),
            [format!("{want}@example.com")],
            "{what}"
        );
        assert_eq!(leftovers(dir.path()), ["db"], "{what}");
    }
}

/// Opens the folder with sled directly (not through readtrack). sled lets go of its lock a
/// little after the last handle is dropped (its flusher thread ends asynchronously), so an
/// open right after a `Store` was dropped is retried for a while: without it this failed
/// now and then under load.
fn raw_open(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("open {} with sled: {e}", path.display()),
        }
    }
}
