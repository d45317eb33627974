"""What the interop scenarios share: slixmpp clients on plain TCP to the test Prosody, an inbox
that keeps every message a client receives, XML comparison, and the report.

The scenarios are driven by tests/interop.rs, which starts Prosody and readtrack, registers the
accounts and runs `python scenarios.py NAME` with the connection in the environment:

    INTEROP_HOST, INTEROP_PORT   the c2s listener (plain TCP, SASL PLAIN allowed)
    INTEROP_DOMAIN               the VirtualHost
    INTEROP_PASSWORD             every account's password
    INTEROP_PARAMS               a JSON object of scenario parameters (optional)

Output is one JSON object per line on stdout: every message a client receives ("received"),
what the scenario found worth saying ("note"), and last "pass" (with the number of checks made)
or "fail" (what was expected and what was observed). The exit status is 0 on pass, 1 on fail and
2 when the harness itself cannot run (slixmpp missing or not the pinned version).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import sys
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
SETUP_HINT = "run scripts/test, which creates target/interop-venv with the pinned slixmpp"


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def pinned_slixmpp() -> str:
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if line.startswith("slixmpp=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("tests/interop/requirements.txt pins no slixmpp")


try:
    import slixmpp
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath
    from slixmpp.xmlstream.tostring import tostring
except ImportError as e:  # the harness cannot run: say what to do, never pass
    emit("setup-error", error=f"slixmpp is not importable ({e}): {SETUP_HINT}")
    sys.exit(2)

if slixmpp.__version__ != pinned_slixmpp():
    emit(
        "setup-error",
        error=f"slixmpp {slixmpp.__version__} is installed, the tests pin {pinned_slixmpp()}: {SETUP_HINT}",
    )
    sys.exit(2)

# Namespaces the scenarios look at.
CLIENT = "jabber:client"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DELAY = "urn:xmpp:delay"
SID = "urn:xmpp:sid:0"
RECEIPTS = "urn:xmpp:receipts"
OFFLINE = "urn:xmpp:offline"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
MAM = "urn:xmpp:mam:2"

# How long to wait for something that should arrive promptly on loopback, and how long to keep
# listening after the last expected stanza to see a second copy (a replay follows a login by a
# component round trip: milliseconds here).
WAIT = 5.0
QUIET = 1.2

# Every XEP a modern client would announce; the scenarios use what they need.
PLUGINS = [
    "xep_0030",  # service discovery
    "xep_0066",  # out-of-band data
    "xep_0184",  # receipts: answers requests, as Conversations and Dino do
    "xep_0191",  # blocking
    "xep_0198",  # stream management
    "xep_0199",  # ping, for round trips
    "xep_0280",  # carbons
    "xep_0313",  # archive queries
    "xep_0333",  # chat markers
    "xep_0359",  # stanza ids
    "xep_0444",  # reactions
]


class Failed(Exception):
    """A check of the scenario did not hold."""

    def __init__(self, what: str, observed: dict):
        super().__init__(what)
        self.what = what
        self.observed = observed


_checks = 0


def check(condition: bool, what: str, **observed) -> None:
    """Counts a check; raises Failed (with what was observed) when it does not hold."""
    global _checks
    _checks += 1
    if not condition:
        raise Failed(what, observed)


def xml_text(el: ET.Element) -> str:
    return tostring(el, top_level=True)


def parse(xml: str) -> ET.Element:
    """A stanza written in a scenario; the outer element names jabber:client."""
    return ET.fromstring(xml)


class Env:
    def __init__(self) -> None:
        missing = [
            k
            for k in ("INTEROP_HOST", "INTEROP_PORT", "INTEROP_DOMAIN", "INTEROP_PASSWORD")
            if k not in os.environ
        ]
        if missing:
            emit("setup-error", error=f"missing {', '.join(missing)}: run through tests/interop.rs")
            sys.exit(2)
        self.host = os.environ["INTEROP_HOST"]
        self.port = int(os.environ["INTEROP_PORT"])
        self.domain = os.environ["INTEROP_DOMAIN"]
        self.password = os.environ["INTEROP_PASSWORD"]
        self.params = json.loads(os.environ.get("INTEROP_PARAMS") or "{}")
        self.devices: list[Device] = []

    def bare(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def device(self, user: str, resource: str, **kw) -> "Device":
        d = Device(self, user, resource, **kw)
        self.devices.append(d)
        return d

    async def online(self, user: str, resource: str, **kw) -> "Device":
        """A device logged in that sent its initial presence (when readtrack replays)."""
        d = self.device(user, resource, **kw)
        await d.connect()
        return d


class Device:
    """One slixmpp client: a user's device, identified by its resource."""

    def __init__(
        self,
        env: Env,
        user: str,
        resource: str,
        *,
        receipts: bool = True,
        password: str | None = None,
    ) -> None:
        self.env = env
        self.name = f"{user}/{resource}"
        x = slixmpp.ClientXMPP(
            f"{user}@{env.domain}/{resource}",
            password if password is not None else env.password,
            plugin_config={
                # The test server offers no TLS; Prosody allows PLAIN on loopback there.
                "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True},
            },
        )
        x.enable_direct_tls = False
        x.enable_starttls = False
        x.enable_plaintext = True
        for p in PLUGINS:
            x.register_plugin(p)
        x.plugin["xep_0184"].auto_ack = receipts
        self.x = x
        # Every <message> received, in order, as received (a deep copy: plugins may change
        # the stanza object afterwards).
        self.inbox: list[ET.Element] = []
        self._arrival = asyncio.Event()
        x.register_handler(
            Callback("interop inbox", MatchXPath(f"{{{CLIENT}}}message"), self._on_message)
        )

    def _on_message(self, msg) -> None:
        el = copy.deepcopy(msg.xml)
        self.inbox.append(el)
        emit("received", device=self.name, xml=xml_text(el))
        self._arrival.set()

    @property
    def full_jid(self) -> str:
        return str(self.x.boundjid.full)

    @property
    def bare_jid(self) -> str:
        return str(self.x.boundjid.bare)

    async def connect(self, presence: bool = True) -> None:
        """Logs in; with `presence`, sends the initial presence (readtrack replays then)."""
        started = asyncio.ensure_future(self.x.wait_until("session_start", WAIT))
        refused = asyncio.ensure_future(self.x.wait_until("failed_all_auth", WAIT))
        self.x.connect(self.env.host, self.env.port)
        done, pending = await asyncio.wait(
            {started, refused}, return_when=asyncio.FIRST_COMPLETED
        )
        for f in pending:
            f.cancel()
        check(
            started in done and started.exception() is None,
            f"{self.name} logs in within {WAIT} s",
            refused=refused in done and refused.exception() is None,
        )
        emit("note", device=self.name, said="logged in", jid=self.full_jid)
        if presence:
            self.x.send_presence()
            await self.sync()

    async def resume(self) -> None:
        """Reconnects after `abort`; stream management resumes the old session."""
        resumed = asyncio.ensure_future(self.x.wait_until("session_resumed", WAIT))
        started = asyncio.ensure_future(self.x.wait_until("session_start", WAIT))
        self.x.connect(self.env.host, self.env.port)
        done, pending = await asyncio.wait(
            {resumed, started}, return_when=asyncio.FIRST_COMPLETED
        )
        for f in pending:
            f.cancel()
        check(
            resumed in done and resumed.exception() is None,
            f"{self.name} resumes its stream (XEP-0198) within {WAIT} s",
            started_fresh=started in done and started.exception() is None,
        )
        emit("note", device=self.name, said="resumed")

    async def sync(self) -> None:
        """A ping round trip to the server: what this client sent before has been processed."""
        await self.x.plugin["xep_0199"].ping(jid=self.env.domain, timeout=WAIT)

    def send(self, stanza: str | ET.Element) -> ET.Element:
        """Sends a stanza through slixmpp (so stream management counts it); returns it."""
        el = parse(stanza) if isinstance(stanza, str) else stanza
        self.x.send(slixmpp.Message(self.x, xml=copy.deepcopy(el)))
        emit("note", device=self.name, said="sent", xml=xml_text(el))
        return el

    async def close(self) -> None:
        """Ends the stream cleanly (no hibernation)."""
        if self.x.transport is None:
            return
        gone = asyncio.ensure_future(self.x.wait_until("disconnected", WAIT))
        self.x.disconnect(wait=WAIT)
        try:
            await gone
        except asyncio.TimeoutError:
            self.x.abort()

    def abort(self) -> None:
        """Drops the TCP connection without closing the stream: a phone losing its network."""
        self.x.abort()
        emit("note", device=self.name, said="dropped its connection")

    async def wait_for(
        self, pred: Callable[[ET.Element], bool], what: str, count: int = 1, timeout: float = WAIT
    ) -> list[ET.Element]:
        """Waits until `count` received messages match `pred`, then listens QUIET longer for
        more; returns every match. Fails after `timeout` with what did arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len([m for m in self.inbox if pred(m)]) < count:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), left)
            except asyncio.TimeoutError:
                break
        got = [m for m in self.inbox if pred(m)]
        check(
            len(got) >= count,
            f"{self.name} receives {what} within {timeout} s",
            wanted=count,
            matching=[xml_text(m) for m in got],
            inbox=[xml_text(m) for m in self.inbox],
        )
        await asyncio.sleep(QUIET)
        return [m for m in self.inbox if pred(m)]

    async def listen(self, window: float = QUIET) -> None:
        await asyncio.sleep(window)


# ---------------------------------------------------------------------------------------------
# Reading messages


def forwarded_message(el: ET.Element, wrapper: str, ns: str) -> ET.Element | None:
    w = el.find(f"{{{ns}}}{wrapper}")
    if w is None:
        return None
    fwd = w.find(f"{{{FORWARD}}}forwarded")
    return None if fwd is None else fwd.find(f"{{{CLIENT}}}message")


def carried(el: ET.Element) -> tuple[str, ET.Element]:
    """What a received <message> carries: ("direct", it), ("received-carbon" | "sent-carbon",
    the forwarded message) or ("mam", the archived message)."""
    for kind, wrapper, ns in (
        ("received-carbon", "received", CARBONS),
        ("sent-carbon", "sent", CARBONS),
        ("mam", "result", MAM),
    ):
        inner = forwarded_message(el, wrapper, ns)
        if inner is not None:
            return kind, inner
    return "direct", el


def is_server_signal(el: ET.Element, domain: str) -> bool:
    """readtrack's seed-dialect ack (type crs) or a bounce: about a message, not a copy of it."""
    return el.get("type") in ("crs", "error") or el.get("from") == domain


def copies_of(inbox: Iterable[ET.Element], msg_id: str, domain: str, kinds=("direct",)) -> list:
    """The received messages that are a copy of the message with id `msg_id`, in any of `kinds`."""
    out = []
    for el in inbox:
        kind, inner = carried(el)
        if kind in kinds and inner.get("id") == msg_id and not (
            kind == "direct" and is_server_signal(el, domain)
        ):
            out.append(el)
    return out


def has_child(el: ET.Element, ns: str, name: str) -> bool:
    return el.find(f"{{{ns}}}{name}") is not None


# ---------------------------------------------------------------------------------------------
# Comparing a delivered message with what was sent


def _canon(el: ET.Element, top: bool, skip) -> tuple:
    """An element as nested tuples: namespaced names, sorted attributes, text, children."""
    attrs = dict(el.attrib)
    if top:
        # The server sets `from` (the sender's full JID) and readtrack `to` (the device's full
        # JID): both are checked separately.
        attrs.pop("to", None)
        attrs.pop("from", None)
    children = [c for c in el if not (top and skip(c))]
    return (
        el.tag,
        tuple(sorted(attrs.items())),
        el.text or "",
        tuple(_canon(c, False, skip) for c in children),
    )


def readtrack_addition(recipient_bare: str, original: ET.Element):
    """The children a replay may add: <delay>, the seed <offline> marker, a <stanza-id> by the
    recipient, a receipt request (unless the sender asked for one itself)."""
    asked_receipt = has_child(original, RECEIPTS, "request")

    def skip(c: ET.Element) -> bool:
        if c.tag in (f"{{{DELAY}}}delay", f"{{{OFFLINE}}}offline"):
            return True
        if c.tag == f"{{{SID}}}stanza-id" and c.get("by") == recipient_bare:
            return True
        return c.tag == f"{{{RECEIPTS}}}request" and not asked_receipt

    return skip


def differences(original: ET.Element, got: ET.Element, recipient_bare: str, default_lang) -> str | None:
    """None when `got` is `original` plus only what a replay may add; else both, canonical."""
    skip = readtrack_addition(recipient_bare, original)
    want_lang = original.get(XML_LANG)
    a = _canon(original, True, skip)
    # slixmpp writes its stream's language on a received stanza that has none: the same as none.
    g = copy.deepcopy(got)
    if want_lang is None and default_lang is not None and g.get(XML_LANG) == default_lang:
        del g.attrib[XML_LANG]
    b = _canon(g, True, skip)
    if a == b:
        return None
    return f"sent:\n  {a}\nreceived (readtrack's additions removed):\n  {b}"


def check_intact(dev: Device, got: ET.Element, original: ET.Element, sender_full: str) -> None:
    """`got`, received by `dev`, is `original` as `sender_full` sent it, every child intact."""
    check(
        got.get("from") == sender_full,
        f"{dev.name}'s copy of {original.get('id')} is from {sender_full}",
        received=xml_text(got),
    )
    check(
        got.get("to") in (dev.full_jid, dev.bare_jid),
        f"{dev.name}'s copy of {original.get('id')} is addressed to it",
        received=xml_text(got),
    )
    diff = differences(original, got, dev.bare_jid, dev.x.peer_default_lang)
    check(
        diff is None,
        f"{dev.name} receives {original.get('id')} with every child, attribute and text as sent "
        "(only delay, offline marker, stanza-id and receipt request may be added)",
        difference=diff,
        sent=xml_text(original),
        received=xml_text(got),
    )


# ---------------------------------------------------------------------------------------------
# Running a scenario

SCENARIOS: dict[str, Callable] = {}
BUDGET = 30.0  # seconds for one scenario run, all waits included


def scenario(name: str):
    def register(fn):
        SCENARIOS[name] = fn
        return fn

    return register


async def _run(fn, env: Env) -> None:
    try:
        await asyncio.wait_for(fn(env), BUDGET)
    finally:
        for d in env.devices:
            if d.x.transport is not None:
                d.x.abort()


def main() -> None:
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("INTEROP_DEBUG") else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        emit("setup-error", error=f"usage: scenarios.py NAME; names: {sorted(SCENARIOS)}")
        sys.exit(2)
    name = sys.argv[1]
    env = Env()
    try:
        asyncio.run(_run(SCENARIOS[name], env))
    except Failed as f:
        emit("fail", scenario=name, expected=f.what, observed=f.observed)
        sys.exit(1)
    except asyncio.TimeoutError:
        emit("fail", scenario=name, expected=f"the scenario ends within {BUDGET} s",
             observed={"traceback": traceback.format_exc()})
        sys.exit(1)
    except Exception as e:  # a client error is a failure of the scenario, with its trace
        emit("fail", scenario=name, expected="no client error",
             observed={"error": repr(e), "traceback": traceback.format_exc()})
        sys.exit(1)
    emit("pass", scenario=name, checks=_checks)
