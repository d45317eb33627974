"""readtrack's interop scenarios: what a user of a standard client sees through real Prosody
with mod_mam, mod_carbons, mod_smacks and mod_blocklist, and readtrack beside it.

Each function is one run of `python scenarios.py NAME` (see harness.py for the environment and
the report). tests/interop.rs starts the servers, registers the accounts, runs these, and does
what needs the server side (deleting an account, stopping readtrack, reading readtrack's log).
The stanza ids are fixed, so the Rust side can look them up in readtrack's log.
"""

from __future__ import annotations

import asyncio

from harness import (
    DELAY,
    QUIET,
    SID,
    WAIT,
    Failed,
    carried,
    check,
    check_intact,
    copies_of,
    emit,
    has_child,
    main,
    scenario,
    xml_text,
)

ALL_KINDS = ("direct", "received-carbon", "sent-carbon")
RECEIPT = "<request xmlns='urn:xmpp:receipts'/>"


def chat(to: str, msg_id: str, body: str, extra: str = "") -> str:
    return (
        f"<message xmlns='jabber:client' to='{to}' type='chat' id='{msg_id}'>"
        f"<body>{body}</body>{extra}</message>"
    )


def rich_messages(to: str) -> list[str]:
    """What Conversations sends: an OMEMO message (the ciphertext, the EME hint, a store hint and
    the fallback body) and a file link (XEP-0066), both markable, with an origin id and a
    language other than the stream's."""
    omemo = (
        f"<message xmlns='jabber:client' to='{to}' type='chat' id='rich-omemo' xml:lang='de'>"
        "<encrypted xmlns='eu.siacs.conversations.axolotl'>"
        "<header sid='27183'>"
        "<key rid='31415'>MwohBTYEAxyX9bNTHQ5sGqnS4tySFlsx2tM0yAJsIwA+cxRXEAAYACIwgY8wq+CeXWY</key>"
        "<key prekey='true' rid='16180'>Mwgz3dEqCc4GEiEFKhS1B5qKJQ6rxnV9Jl7u1C8TrLhT7WUl</key>"
        "<iv>bGUsTfI+dXkVQ6Hb</iv>"
        "</header>"
        "<payload>qvTJEC6/kG0Yf3m5fhjcl0S3FQ==</payload>"
        "</encrypted>"
        "<encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl' name='OMEMO'/>"
        "<store xmlns='urn:xmpp:hints'/>"
        "<body>I sent you an OMEMO encrypted message but your client doesn\u2019t seem to support that.</body>"
        "<markable xmlns='urn:xmpp:chat-markers:0'/>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='5f0c1f52-8f1b-4a5e-9c41-omemo'/>"
        "</message>"
    )
    url = "https://upload.example.org/f3a9/holiday%20photo.jpg"
    oob = (
        f"<message xmlns='jabber:client' to='{to}' type='chat' id='rich-oob' xml:lang='de'>"
        f"<body>{url}</body>"
        f"<x xmlns='jabber:x:oob'><url>{url}</url><desc>Urlaub</desc></x>"
        "<markable xmlns='urn:xmpp:chat-markers:0'/>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='5f0c1f52-8f1b-4a5e-9c41-oob'/>"
        "</message>"
    )
    return [omemo, oob]


async def expect_once(dev, msg_id: str, what: str, kinds=("direct",)):
    """Waits for the copy of `msg_id` and fails unless exactly one arrives (in `kinds`)."""
    got = await dev.wait_for(
        lambda m: bool(copies_of([m], msg_id, dev.env.domain, kinds)), f"{msg_id} ({what})"
    )
    check(
        len(got) == 1,
        f"{dev.name} receives {msg_id} exactly once ({what})",
        copies=[xml_text(m) for m in got],
    )
    return got[0]


def expect_none(dev, msg_ids, why: str, kinds=ALL_KINDS) -> None:
    """`dev` has received no copy of any of `msg_ids` in any form (call after listening)."""
    for msg_id in msg_ids:
        got = copies_of(dev.inbox, msg_id, dev.env.domain, kinds)
        check(
            not got,
            f"{dev.name} receives no copy of {msg_id}: {why}",
            copies=[xml_text(m) for m in got],
        )


async def send_all(dev, stanzas):
    sent = [dev.send(s) for s in stanzas]
    await dev.sync()
    return sent


# ---------------------------------------------------------------------------------------------
# 1. A chat to an offline user, two devices


@scenario("offline-chat-two-devices")
async def offline_chat_two_devices(env):
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare("bob"), "off-1", "while you were out")])
    for resource in ("phone", "laptop"):
        bob = await env.online("bob", resource)
        got = await expect_once(bob, "off-1", "replayed at login")
        check(
            has_child(got, DELAY, "delay"),
            f"{bob.name}'s copy of off-1 carries a XEP-0203 <delay>",
            received=xml_text(got),
        )
        body = got.find("{jabber:client}body")
        check(
            body is not None and body.text == "while you were out",
            f"{bob.name}'s copy of off-1 has the body as sent",
            received=xml_text(got),
        )
        await bob.close()


# ---------------------------------------------------------------------------------------------
# 2. OMEMO, file link, marker, origin id, language: every child on every device


@scenario("rich-offline")
async def rich_offline(env):
    alice = await env.online("alice", "desk")
    sent = await send_all(alice, rich_messages(env.bare("bob")))
    for resource in ("phone", "laptop"):
        bob = await env.online("bob", resource)
        for original in sent:
            got = await expect_once(bob, original.get("id"), "replayed at login")
            check_intact(bob, got, original, alice.full_jid)
        await bob.close()


@scenario("rich-live")
async def rich_live(env):
    phone = await env.online("bob", "phone")
    alice = await env.online("alice", "desk")
    sent = await send_all(alice, rich_messages(env.bare("bob")))
    for original in sent:
        got = await expect_once(phone, original.get("id"), "live")
        check_intact(phone, got, original, alice.full_jid)
    laptop = await env.online("bob", "laptop")
    for original in sent:
        got = await expect_once(laptop, original.get("id"), "replayed to a device that was away")
        check_intact(laptop, got, original, alice.full_jid)


# ---------------------------------------------------------------------------------------------
# 3. A reaction (no body) to an offline user


@scenario("reaction-offline")
async def reaction_offline(env):
    alice = await env.online("alice", "desk")
    reaction = (
        f"<message xmlns='jabber:client' to='{env.bare('bob')}' type='chat' id='react-1'>"
        "<reactions xmlns='urn:xmpp:reactions:0' id='base-1'><reaction>\U0001f44d</reaction></reactions>"
        "<store xmlns='urn:xmpp:hints'/>"
        "</message>"
    )
    sent = await send_all(alice, [chat(env.bare("bob"), "base-1", "lunch?"), reaction])
    for resource in ("phone", "laptop"):
        bob = await env.online("bob", resource)
        got = await expect_once(bob, "react-1", "the reaction, at login")
        check_intact(bob, got, sent[1], alice.full_jid)
        await bob.close()


# ---------------------------------------------------------------------------------------------
# 4. A replay and the archive agree on the message's id


@scenario("mam-id")
async def mam_id(env):
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare("bob"), "mam-1", "catch up through the archive")])
    bob = await env.online("bob", "phone")
    replay = await expect_once(bob, "mam-1", "replayed at login")
    ids = [
        s.get("id") for s in replay.findall(f"{{{SID}}}stanza-id") if s.get("by") == bob.bare_jid
    ]
    check(
        len(ids) == 1,
        f"the replay of mam-1 carries one <stanza-id by='{bob.bare_jid}'>",
        received=xml_text(replay),
    )
    from slixmpp import JID

    result = await bob.x.plugin["xep_0313"].retrieve(with_jid=JID(env.bare("alice")), timeout=WAIT)
    archived = []
    for r in result["mam"]["results"]:
        kind, inner = carried(r.xml)
        if kind == "mam" and inner.get("id") == "mam-1":
            archived.append(r.xml.find("{urn:xmpp:mam:2}result").get("id"))
    check(
        len(archived) == 1,
        "bob's archive (XEP-0313 query) holds mam-1 once",
        results=[xml_text(r.xml) for r in result["mam"]["results"]],
    )
    emit("note", said="ids", replay_stanza_id=ids[0], archive_id=archived[0])
    check(
        ids[0] == archived[0],
        "the replay's stanza-id is the archive's id for mam-1, so a client that also catches up "
        "through MAM shows it once",
        replay_stanza_id=ids[0],
        archive_id=archived[0],
        replay=xml_text(replay),
    )


# ---------------------------------------------------------------------------------------------
# 5. A carbon is a delivery


async def with_carbons(env, resource):
    dev = env.device("bob", resource)
    await dev.connect(presence=False)
    await dev.x.plugin["xep_0280"].enable(timeout=WAIT)
    dev.x.send_presence()
    await dev.sync()
    return dev


@scenario("carbon-received")
async def carbon_received(env):
    phone = await with_carbons(env, "phone")
    laptop = await with_carbons(env, "laptop")
    alice = await env.online("alice", "desk")
    await send_all(
        alice,
        [chat(phone.full_jid, "carb-1", "to your phone", RECEIPT)],
    )
    await expect_once(phone, "carb-1", "live, addressed to it")
    await expect_once(laptop, "carb-1", "as a received carbon", kinds=("received-carbon",))
    await laptop.close()
    # Logged after carb-1 and missed by the laptop: its replay comes after any replay of carb-1,
    # so once it is there, carb-1 is not on its way.
    await send_all(alice, [chat(phone.full_jid, "carb-ctl", "while the laptop was away")])
    again = await with_carbons(env, "laptop")
    await expect_once(again, "carb-ctl", "replayed: it missed it")
    expect_none(again, ["carb-1"], "the laptop had it as a carbon before it reconnected")


@scenario("carbon-sent")
async def carbon_sent(env):
    phone = await with_carbons(env, "phone")
    laptop = await with_carbons(env, "laptop")
    alice = await env.online("alice", "desk")
    await send_all(phone, [chat(env.bare("alice"), "carb-2", "sent from my phone")])
    await expect_once(alice, "carb-2", "from bob")
    await expect_once(laptop, "carb-2", "as a sent carbon", kinds=("sent-carbon",))
    await laptop.close()
    # Sent after carb-2 while the laptop was away: replayed to it (`sent-sync`, docs/rules.md) after
    # any replay of carb-2, so once it is there, carb-2 is not on its way.
    await send_all(phone, [chat(env.bare("alice"), "carb-ctl", "sent while the laptop was away")])
    again = await with_carbons(env, "laptop")
    await expect_once(again, "carb-ctl", "as a sent carbon: it missed it", kinds=("sent-carbon",))
    expect_none(again, ["carb-2"], "the laptop had it as a sent carbon before it reconnected")
    # The message is in bob's log all the same: a device bob has never used gets it (`sent-sync`).
    tablet = await with_carbons(env, "tablet")
    await expect_once(tablet, "carb-2", "as a sent carbon, new device", kinds=("sent-carbon",))


# ---------------------------------------------------------------------------------------------
# 6. Stream management: a dropped connection with unacked stanzas


async def drop_with_unacked(env):
    """bob/phone (XEP-0198 enabled) receives sm-1 and sm-2 without acking them (no <a/>, no
    receipt: the network went before the acks), drops its TCP connection, and alice sends sm-3
    while the session hibernates. alice asks for receipts, as Conversations and Dino do."""
    phone = await env.online("bob", "phone")
    check(
        "stream_management" in phone.x.features,
        "Prosody enabled stream management for bob/phone",
        features=sorted(phone.x.features),
    )
    sm = phone.x.plugin["xep_0198"]
    sm.send_ack = lambda: None  # answers no <r/> from now on
    phone.x.plugin["xep_0184"].auto_ack = False
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare("bob"), f"sm-{i}", f"message {i}", RECEIPT) for i in (1, 2)])
    for i in (1, 2):
        await expect_once(phone, f"sm-{i}", "live")
    phone.abort()
    await asyncio.sleep(0.3)  # Prosody notices the closed socket and hibernates the session
    await send_all(alice, [chat(env.bare("bob"), "sm-3", "message 3", RECEIPT)])
    del sm.send_ack
    phone.x.plugin["xep_0184"].auto_ack = True  # sm-3 and later are acked as they arrive
    return phone, alice


@scenario("smacks-resume")
async def smacks_resume(env):
    phone, alice = await drop_with_unacked(env)
    await phone.resume()
    await expect_once(phone, "sm-3", "after resuming")
    for i in (1, 2, 3):
        got = copies_of(phone.inbox, f"sm-{i}", env.domain)
        check(len(got) == 1, f"bob/phone has sm-{i} once over both connections",
              copies=[xml_text(m) for m in got])
    # The client has now shown them: it sends the receipts the lost connection could not.
    for i in (1, 2):
        phone.send(
            f"<message xmlns='jabber:client' to='{alice.full_jid}'>"
            f"<received xmlns='urn:xmpp:receipts' id='sm-{i}'/></message>"
        )
    await phone.sync()
    await phone.close()
    # Nothing was left to the server's offline storage, and nothing is replayed; sm-ctl, sent
    # while bob is away, is (after anything older).
    await send_all(alice, [chat(env.bare("bob"), "sm-ctl", "while you were out")])
    later = await env.online("bob", "phone")
    await expect_once(later, "sm-ctl", "replayed at login")
    expect_none(later, ["sm-1", "sm-2", "sm-3"], "each reached bob/phone through the resumed stream")


@scenario("smacks-timeout")
async def smacks_timeout(env):
    await drop_with_unacked(env)
    hibernation = float(env.params.get("hibernation", 5))
    await asyncio.sleep(hibernation + 1.5)  # the session is destroyed with sm-1..3 unacked
    phone = await env.online("bob", "phone")
    for i in (1, 2, 3):
        got = await expect_once(phone, f"sm-{i}", "at login after the hibernation timed out")
        emit("note", said="copy", id=f"sm-{i}", xml=xml_text(got))


# ---------------------------------------------------------------------------------------------
# 7. The first device after an absence


@scenario("first-device-after-absence")
async def first_device_after_absence(env):
    count = int(env.params.get("count", 20))
    alice = await env.online("alice", "desk")
    ids = [f"away-{i}" for i in range(1, count + 1)]
    await send_all(alice, [chat(env.bare("bob"), i, f"number {i}") for i in ids])
    bob = await env.online("bob", "phone")
    got = await bob.wait_for(
        lambda m: any(copies_of([m], i, env.domain) for i in ids), f"all {count} messages",
        count=count,
    )
    for i in ids:
        n = len(copies_of(got, i, env.domain))
        check(n == 1, f"bob's first device receives {i} once",
              copies=n, received_ids=[carried(m)[1].get("id") for m in got])


# ---------------------------------------------------------------------------------------------
# 8. What a standard sender sees


@scenario("standard-sender")
async def standard_sender(env):
    wait = float(env.params.get("receipt_timeout", 2)) + 1.5
    # bob/phone shows messages but sends no receipts (many clients do not).
    bob = await env.online("bob", "phone", receipts=False)
    alice = await env.online("alice", "desk")
    await send_all(
        alice,
        [
            chat(env.bare("bob"), "std-1", "to a device that sends no receipt"),
            chat(env.bare("carol"), "std-2", "to a user with no device online"),
        ],
    )
    await expect_once(bob, "std-1", "live")
    await alice.listen(wait)
    seed = [xml_text(el) for el in alice.inbox if el.get("type") in ("crs", "error")]
    check(
        not seed,
        "a standard client receives no seed-dialect ack (type crs) and no bounce (type error) for "
        "a message it sent",
        received=seed,
    )


# ---------------------------------------------------------------------------------------------
# 9. Blocking (XEP-0191)


async def set_block(env, block: bool):
    """bob blocks or unblocks mallory from a session that sends no presence (so nothing is
    replayed to it)."""
    from slixmpp import JID

    bob = env.device("bob", "settings")
    await bob.connect(presence=False)
    blocking = bob.x.plugin["xep_0191"]
    if block:
        await blocking.block(JID(env.bare("mallory")), timeout=WAIT)
    else:
        await blocking.unblock(JID(env.bare("mallory")), timeout=WAIT)
    blocked = await blocking.get_blocked_jids(timeout=WAIT)
    check(
        (JID(env.bare("mallory")) in blocked) == block,
        f"bob's blocklist {'holds' if block else 'no longer holds'} mallory",
        blocklist=sorted(str(j) for j in blocked),
    )
    await bob.close()


async def mallory_and_alice_write(env, blocked_id: str, control_id: str):
    mallory = await env.online("mallory", "desk")
    alice = await env.online("alice", "desk")
    await send_all(mallory, [chat(env.bare("bob"), blocked_id, "you cannot block me")])
    await send_all(alice, [chat(env.bare("bob"), control_id, "hello from a friend")])
    await mallory.close()


@scenario("block-then-message")
async def block_then_message(env):
    await set_block(env, True)
    await mallory_and_alice_write(env, "blk-1", "ctl-1")
    bob = await env.online("bob", "phone")
    await expect_once(bob, "ctl-1", "alice's message, replayed at login")
    expect_none(bob, ["blk-1"], "bob blocked mallory before mallory wrote")


@scenario("message-then-block")
async def message_then_block(env):
    await mallory_and_alice_write(env, "blk-2", "ctl-2")
    await set_block(env, True)
    bob = await env.online("bob", "phone")
    await expect_once(bob, "ctl-2", "alice's message, replayed at login")
    expect_none(bob, ["blk-2"], "bob blocked mallory before the message was replayed")


@scenario("unblock-then-message")
async def unblock_then_message(env):
    await set_block(env, True)
    await set_block(env, False)
    await mallory_and_alice_write(env, "blk-3", "ctl-3")
    bob = await env.online("bob", "phone")
    await expect_once(bob, "ctl-3", "alice's message, replayed at login")
    await expect_once(bob, "blk-3", "mallory's message, written after bob unblocked mallory")


# ---------------------------------------------------------------------------------------------
# 10. Account deletion


@scenario("deletion-before")
async def deletion_before(env):
    phone = await env.online("bob", "phone")
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare("bob"), "old-1", "for the old bob, live")])
    await expect_once(phone, "old-1", "live")
    await phone.close()
    await send_all(alice, [chat(env.bare("bob"), "old-2", "for the old bob, offline")])


@scenario("deletion-after")
async def deletion_after(env):
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare("bob"), "new-1", "welcome, new bob")])
    for resource in ("phone", "tablet"):
        bob = await env.online("bob", resource)
        await expect_once(bob, "new-1", "the new account's own message")
        expect_none(bob, ["old-1", "old-2"], "they were the deleted account's")
        await bob.close()


# ---------------------------------------------------------------------------------------------
# 11. Accounts whose names stringprep keeps or folds


@scenario("unusual-names")
async def unusual_names(env):
    names = env.params["names"]
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare(n), f"name-{i}", f"hello {n}") for i, n in enumerate(names)])


    async def log_in(i, name):
        try:
            dev = await env.online(name, "phone")
            emit("note", said="account", name=name, bound=dev.full_jid)
            await expect_once(dev, f"name-{i}", f"replayed at login to {name!r}")
            return None
        except Failed as f:
            emit("note", said="name failed", name=name, expected=f.what, observed=f.observed)
            return name

    # All at once, so a name that fails costs one wait, not one each.
    failures = await asyncio.gather(*(log_in(i, n) for i, n in enumerate(names)))
    failures = [n for n in failures if n is not None]
    check(not failures, "every account receives its replay", failing_names=failures)


@scenario("send-to-names")
async def send_to_names(env):
    """alice writes to each account of `names`, for the operator's view of them."""
    names = env.params["names"]
    alice = await env.online("alice", "desk")
    await send_all(alice, [chat(env.bare(n), f"name-{i}", f"hello {n}") for i, n in enumerate(names)])
    await alice.listen(QUIET)
    refused = [
        xml_text(el)
        for el in alice.inbox
        if el.get("type") == "error" and el.find("{jabber:client}error") is not None
    ]
    check(not refused, "the server accepts a message to each account", refused=refused)


if __name__ == "__main__":
    main()
