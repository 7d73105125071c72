"""Two Hush clients, driven through the generated Python bindings, against a real relay.

Run by ffi/tests/bindings.rs, which generates the bindings, starts `hush-relay` on 127.0.0.1
and passes HUSH_RELAY_ADDR, HUSH_RELAY_PIN and HUSH_TEST_DIR (a scratch directory). Every wait
is on a listener event, with a timeout; nothing sleeps.
"""

import asyncio
import hashlib
import os
import sys
import threading
import time

import hush_ffi
from hush_ffi import Conversation, HushClient, HushError, HushEvent, MessageContent, MessageStatus

WAIT = 30.0
RELAY = os.environ["HUSH_RELAY_ADDR"]
PIN = os.environ["HUSH_RELAY_PIN"]
SCRATCH = os.environ["HUSH_TEST_DIR"]


class Listener(hush_ffi.HushListener):
    """Keeps every event; `wait` takes the first one (in arrival order) that matches."""

    def __init__(self, name):
        self.name = name
        self.events = []
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait(self, what, pick, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, ev in enumerate(self.events):
                    got = pick(ev)
                    if got is not None and got is not False:
                        del self.events[i]
                        return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name}: no {what} within {timeout} s; events seen: {self.events!r}"
                    )
                self.cond.wait(left)

    async def wait_async(self, what, pick, timeout=WAIT):
        # The client's calls run on its own runtime: waiting here in a thread keeps the loop free.
        return await asyncio.to_thread(self.wait, what, pick, timeout)


class Raising(Listener):
    def on_event(self, event):
        super().on_event(event)
        raise RuntimeError("a listener bug")


class Slow(hush_ffi.HushListener):
    """Takes its time over each event (sleeping, so another thread may run meanwhile)."""

    def __init__(self):
        self.entered = threading.Event()
        self.told = 0

    def on_event(self, event):
        self.entered.set()
        time.sleep(0.5)
        self.told += 1


def config(name, key=bytes(range(32)), relay=RELAY, pin=PIN):
    return hush_ffi.ClientConfig(
        profile_dir=os.path.join(SCRATCH, name),
        at_rest_key=key,
        relay_address=relay,
        relay_pin=pin,
    )


def expect_error(kind, needle, call):
    """`call()` raises HushError.<kind> whose message contains `needle`."""
    try:
        call()
    except kind as e:
        assert needle in str(e), f"{kind.__name__}: {str(e)!r} lacks {needle!r}"
        return
    except Exception as e:  # noqa: BLE001 - any other failure is a test failure
        raise AssertionError(f"expected {kind.__name__}, got {e!r}") from e
    raise AssertionError(f"expected {kind.__name__}, nothing raised")


async def expect_error_async(kind, needle, coro):
    try:
        await coro
    except kind as e:
        assert needle in str(e), f"{kind.__name__}: {str(e)!r} lacks {needle!r}"
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected {kind.__name__}, got {e!r}") from e
    raise AssertionError(f"expected {kind.__name__}, nothing raised")


def message_with(conversation=None, body=None, incoming=True):
    def pick(ev):
        if not ev.is_message():
            return None
        m = ev.message
        if incoming and m.outgoing:
            return None
        if conversation is not None and m.conversation != conversation:
            return None
        if body is not None and not (m.content.is_text() and m.content.body == body):
            return None
        return m

    return pick


def status_for(message_id, status, seen=None):
    """The `Status` event that moves `message_id` to `status`. Steps of the same message seen on
    the way are recorded in `seen` (to check that each is told once and never backwards)."""

    def pick(ev):
        if not (ev.is_status() and message_id in ev.message_ids):
            return None
        # The listener looks at waiting events again on each wake-up: each is counted once
        # (`seen` maps each event to its status, in arrival order).
        if seen is not None:
            seen.setdefault(id(ev), (ev, ev.status))  # kept alive: its id stays its own
        return ev.status == status and ev

    return pick


ALL_STEPS = [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ]


def once_in_order(steps):
    """Each step told once and never backwards, ending read. `SENT` may be overtaken: a receipt
    that arrives before the relay's acknowledgement is told collapsed into the later state."""
    return steps in (ALL_STEPS, ALL_STEPS[1:])


async def bad_input():
    """Whatever the host passes, the answer is an exception with a clear message."""
    listener = Listener("nobody")
    expect_error(HushError.InvalidArgument, "32 bytes", lambda: HushClient(config("bad", key=b"short"), listener))
    expect_error(HushError.InvalidArgument, "IP:PORT", lambda: HushClient(config("bad", relay="nowhere"), listener))
    expect_error(HushError.InvalidArgument, "64 hex digits", lambda: HushClient(config("bad", pin="abc"), listener))
    c = HushClient(config("empty"), listener)
    assert not c.has_account()
    expect_error(HushError.NoAccount, "create_account", c.open)
    expect_error(HushError.NoAccount, "create_account", c.account)
    await expect_error_async(HushError.NoAccount, "create_account", c.wait_connected(1000))
    # An all-zero key is not a valid account key.
    await expect_error_async(
        HushError.InvalidArgument, "not a valid account key",
        c.send_text(Conversation.DIRECT("00" * 32), "hi", None),
    )
    await expect_error_async(
        HushError.InvalidArgument, "hush-link:", c.link_device("not a code")
    )
    await c.shutdown()
    await c.shutdown()  # twice is fine
    await expect_error_async(HushError.Closed, "shut down", c.create_account())
    expect_error(HushError.Closed, "shut down", c.open)


async def main():
    await bad_input()

    a_events, b_events = Listener("alice"), Listener("bob")
    alice = HushClient(config("alice"), a_events)
    bob = HushClient(config("bob", key=bytes([7] * 32)), b_events)
    a_info = await alice.create_account()
    b_info = await bob.create_account()
    assert a_info.device_id == 1 and len(a_info.account_id) == 64
    assert alice.has_account()
    await alice.wait_connected(30_000)
    await bob.wait_connected(30_000)
    # Both clients set up concurrently: they run on their own runtimes.
    await asyncio.gather(alice.claim_username("alice"), bob.claim_username("Bob"))
    await expect_error_async(HushError.UsernameTaken, "another account", bob.claim_username("alice"))
    bob_id = await alice.lookup_username("bob")
    alice_id = await bob.lookup_username("alice")
    assert (bob_id, alice_id) == (b_info.account_id, a_info.account_id)
    await expect_error_async(HushError.UnknownUser, "nobody goes by", alice.lookup_username("carol"))
    await expect_error_async(HushError.InvalidArgument, "username", alice.lookup_username("x!"))
    expect_error(HushError.AlreadySetUp, "running", alice.open)

    to_bob, to_alice = Conversation.DIRECT(bob_id), Conversation.DIRECT(alice_id)

    # 1:1 text: delivered automatically, read when Bob marks it.
    first = await alice.send_text(to_bob, "hello bob", None)
    got = await b_events.wait_async("alice's text", message_with(to_alice, "hello bob"))
    assert got.id == first and got.sender_account == alice_id and got.unverified_sender_name == "alice"
    assert got.status == MessageStatus.UNREAD
    steps = {}
    await a_events.wait_async("delivered", status_for(first, MessageStatus.DELIVERED, steps))
    await bob.mark_read(to_alice)
    await a_events.wait_async("read", status_for(first, MessageStatus.READ, steps))
    steps = [s for _, s in steps.values()]
    assert once_in_order(steps), steps
    mine = alice.history(to_bob, None, 10)
    assert [m.id for m in mine] == [first] and mine[0].status == MessageStatus.READ, mine

    # Typing, a reply and a reaction.
    await bob.set_typing(to_alice, True)
    t = await a_events.wait_async("bob typing", lambda e: e.is_typing() and e.typing and e)
    assert t.account == bob_id and t.conversation == to_bob
    reply = await bob.send_text(to_alice, "hi alice", first)
    got = await a_events.wait_async("bob's reply", message_with(to_bob, "hi alice"))
    assert got.content.reply_to == first and got.id == reply
    await bob.set_typing(to_alice, False)
    await a_events.wait_async("bob stopped typing", lambda e: e.is_typing() and not e.typing)
    await alice.send_reaction(to_bob, reply, "👍")
    got = await b_events.wait_async(
        "reaction", lambda e: e.is_message() and e.message.content.is_reaction() and e.message
    )
    assert got.content.target == reply and got.content.emoji == "👍"

    # Push endpoints: a malformed one is refused by the relay with its reason; unregistering is
    # always accepted.
    await expect_error_async(HushError.Refused, "push URL", bob.register_push("not a url"))
    # A WebPush subscription's key must be a point on P-256 (all zeros is not).
    await expect_error_async(
        HushError.Refused,
        "p256dh",
        bob.register_web_push("https://push.example/x", bytes(65), bytes(16)),
    )
    await bob.register_push("")

    # Sealed envelopes from anyone, on and off again (contacts only, the default).
    await bob.set_sealed_from_anyone(True)
    await bob.set_sealed_from_anyone(False)

    # Presence.
    await bob.set_presence(True, [alice_id])
    p = await a_events.wait_async("presence", lambda e: e.is_presence() and e)
    assert p.account == bob_id and p.online

    # Concurrent sends from one client.
    ids = await asyncio.gather(*(alice.send_text(to_bob, f"burst {i}", None) for i in range(5)))
    assert len(set(ids)) == 5
    for i in range(5):
        await b_events.wait_async(f"burst {i}", message_with(to_alice, f"burst {i}"))

    # A group: created by Alice, joined by Bob; messages both ways, receipts and typing.
    group = await alice.create_group("friends", [bob_id])
    to_group = Conversation.GROUP(group)
    await b_events.wait_async("group joined", lambda e: e.is_groups_changed())
    assert [(g.id, g.name) for g in bob.groups()] == [(group, "friends")]
    assert [g.id for g in alice.groups()] == [group]
    g1 = await alice.send_text(to_group, "hello group", None)
    got = await b_events.wait_async("group text", message_with(to_group, "hello group"))
    assert got.sender_account == alice_id
    await a_events.wait_async("group delivered", status_for(g1, MessageStatus.DELIVERED))
    await bob.set_typing(to_group, True)
    await a_events.wait_async(
        "group typing", lambda e: e.is_typing() and e.conversation == to_group and e.typing
    )
    g2 = await bob.send_text(to_group, "hello alice, in the group", None)
    await a_events.wait_async("bob's group text", message_with(to_group, "hello alice, in the group"))
    await alice.mark_read(to_group)
    await b_events.wait_async("group read", status_for(g2, MessageStatus.READ))
    assert [m.id for m in bob.history(to_group, None, 10)] == [g1, g2]

    # Attachments: bytes and a file, each downloaded with its digest checked.
    data = os.urandom(300_000)
    att = await alice.send_attachment(to_bob, "noise.bin", "application/octet-stream", data)
    got = await b_events.wait_async(
        "attachment", lambda e: e.is_message() and e.message.content.is_attachment() and e.message
    )
    assert got.id == att and got.content.name == "noise.bin" and got.content.size == len(data)
    assert await bob.download_attachment(to_alice, att) == data
    path = os.path.join(SCRATCH, "note.txt")
    with open(path, "wb") as f:
        f.write(b"a file from disk\n" * 1000)
    fid = await bob.send_file(to_alice, path, "text/plain")
    got = await a_events.wait_async(
        "file", lambda e: e.is_message() and e.message.content.is_attachment() and e.message
    )
    assert got.content.name == "note.txt"
    saved = os.path.join(SCRATCH, "saved.txt")
    await alice.save_attachment(to_bob, fid, saved)
    with open(saved, "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(b"a file from disk\n" * 1000).digest()

    # History paging: oldest first, backwards from the first id of a page.
    newest = alice.history(to_bob, None, 3)
    older = alice.history(to_bob, newest[0].id, 3)
    assert len(newest) == 3 and len(older) == 3
    assert older[-1].sent_at_ms <= newest[0].sent_at_ms
    assert not {m.id for m in newest} & {m.id for m in older}

    # Safety numbers agree on both sides; the QR code of one verifies on the other.
    sa, sb = alice.safety_number(bob_id), bob.safety_number(alice_id)
    assert sa.digits == sb.digits and len(sa.digits) == 60
    assert bob.verify_safety_qr(alice_id, sa.qr_payload)
    expect_error(HushError.InvalidArgument, "scanned", lambda: bob.verify_safety_qr(alice_id, b"\x01"))

    # Bad input on a running client: clear exceptions, nothing crashes.
    await expect_error_async(
        HushError.InvalidArgument, "account id must be 64 hex digits",
        alice.send_text(Conversation.DIRECT("abcd"), "hi", None),
    )
    await expect_error_async(
        HushError.InvalidArgument, "account id is not hex",
        alice.send_text(Conversation.DIRECT("zz" * 32), "hi", None),
    )
    await expect_error_async(
        HushError.InvalidArgument, "group id", alice.send_text(Conversation.GROUP("12"), "hi", None)
    )
    await expect_error_async(
        HushError.InvalidArgument, "message id", alice.send_text(to_bob, "hi", "00ff")
    )
    await expect_error_async(HushError.InvalidArgument, "empty", alice.send_text(to_bob, "", None))
    await expect_error_async(
        HushError.TooLarge, "at most", alice.send_text(to_bob, "x" * 40_000, None)
    )
    expect_error(HushError.InvalidArgument, "limit", lambda: alice.history(to_bob, None, 0))
    await expect_error_async(
        HushError.NotFound, "no such message", alice.download_attachment(to_bob, "00" * 16)
    )
    await expect_error_async(
        HushError.InvalidArgument, "not an attachment", alice.download_attachment(to_bob, first)
    )
    await expect_error_async(
        HushError.NotFound, "not in that group",
        alice.send_text(Conversation.GROUP("ab" * 32), "hi", None),
    )
    await expect_error_async(
        HushError.InvalidArgument, "wait", alice.wait_connected(10**12)
    )
    await expect_error_async(
        HushError.InvalidArgument, "missing", alice.send_file(to_bob, os.path.join(SCRATCH, "missing"), "x")
    )
    await expect_error_async(HushError.InvalidArgument, "itself", bob.remove_device(b_info.device_id))

    # A well-formed account id the relay does not know (the Ed25519 base point): the send
    # returns at once, then the message is refused for good, stored as failed, reported to the
    # listener; a retry puts it back in the outbox and it is refused the same way.
    nobody = Conversation.DIRECT("58" + "66" * 31)
    nid = await alice.send_text(nobody, "anyone there?", None)
    failed = await a_events.wait_async(
        "send failed", lambda ev: ev.is_send_failed() and ev.conversation == nobody and ev
    )
    assert failed.message_id == nid
    assert "unknown account" in failed.reason, failed.reason
    lost = alice.message(failed.message_id)
    assert lost.status == MessageStatus.FAILED and lost.failure, lost
    assert lost.content.is_text() and lost.content.body == "anyone there?"
    await alice.retry_send(lost.id)
    await a_events.wait_async(
        "failed again", lambda ev: ev.is_send_failed() and ev.message_id == nid and ev
    )
    assert alice.message(lost.id).status == MessageStatus.FAILED
    assert alice.message("00" * 16) is None
    expect_error(HushError.InvalidArgument, "message id", lambda: alice.message("xyz"))
    await expect_error_async(HushError.NotFound, "link offer", alice.complete_link("hush-link:00", 1000))

    # A second device for Alice: linked with a one-time code from her first device.
    # Its listener raises on every event: the library logs that and goes on.
    a2_events = Raising("alice2")
    alice2 = HushClient(config("alice-phone", key=bytes([3] * 32)), a2_events)
    code = alice.offer_link()
    new_id, info = await asyncio.gather(alice.complete_link(code, 30_000), alice2.link_device(code))
    assert info.account_id == alice_id and info.device_id == new_id
    await alice2.wait_connected(30_000)
    await a2_events.wait_async("connection", lambda e: e.is_connection() and e.connected)
    # What Alice sends from her first device shows on the second.
    await alice.send_text(to_bob, "from the laptop", None)
    await a2_events.wait_async(
        "synced text", message_with(to_bob, "from the laptop", incoming=False)
    )
    assert new_id in alice.devices(alice_id)
    await expect_error_async(HushError.NotFound, "link offer", alice.complete_link(code, 1000))
    expect_error(HushError.NotPermitted, "first device", alice2.offer_link)

    # Receipts collapsed: Bob writes to Alice, whose two devices each confirm delivery and
    # reading; Bob's client tells each step once, never backwards.
    steps = {}
    both = await bob.send_text(to_alice, "to both of your devices", None)
    await a_events.wait_async("on the laptop", message_with(to_bob, "to both of your devices"))
    await a2_events.wait_async("on the phone", message_with(to_bob, "to both of your devices"))
    await b_events.wait_async("delivered once", status_for(both, MessageStatus.DELIVERED, steps))
    await alice2.mark_read(to_bob)
    await alice.mark_read(to_bob)
    await b_events.wait_async("read once", status_for(both, MessageStatus.READ, steps))
    steps = [s for _, s in steps.values()]
    assert once_in_order(steps), steps
    assert bob.message(both).status == MessageStatus.READ

    # A removed device is told, and says so on every call that needs the relay.
    await alice.remove_device(new_id)
    await a2_events.wait_async("revoked", lambda e: e.is_revoked())
    await expect_error_async(
        HushError.NotPermitted, "removed from its account", alice2.wait_connected(5_000)
    )
    await alice2.shutdown()

    # Offline first: Bob's profile opened with no relay to reach opens at once, reads its
    # history and takes a message at once (waiting); opened again with the relay, the message
    # leaves, and reaches Alice once.
    await bob.shutdown()
    bob_off = HushClient(config("bob", key=bytes([7] * 32), relay="127.0.0.1:9"), Listener("bob-offline"))
    bob_off.open()
    assert [m.id for m in bob_off.history(to_alice, None, 100)][-1] == both
    waiting = await asyncio.wait_for(bob_off.send_text(to_alice, "written offline", None), 5)
    assert bob_off.message(waiting).status == MessageStatus.WAITING
    await bob_off.shutdown()
    b_events = Listener("bob")
    bob = HushClient(config("bob", key=bytes([7] * 32)), b_events)
    bob.open()
    await b_events.wait_async(
        "sent",
        lambda ev: ev.is_status() and waiting in ev.message_ids and ev.status in ALL_STEPS and ev,
    )
    got = await a_events.wait_async("the waiting message", message_with(to_bob, "written offline"))
    assert got.id == waiting

    await lifecycle(alice, a_events, bob, b_events, to_alice, to_bob)

    # Shutdown: every later call is refused with Closed.
    await alice.shutdown()
    await bob.shutdown()
    await expect_error_async(HushError.Closed, "shut down", alice.send_text(to_bob, "late", None))
    expect_error(HushError.Closed, "shut down", lambda: alice.history(to_bob, None, 10))

    # Shut down while the listener is busy with an event: shutdown returns once that event is
    # told, and none is told after, so the interpreter may exit at once (a thread calling into
    # it while it finalizes would abort the process).
    slow = Slow()
    last = HushClient(config("bob", key=bytes([7] * 32)), slow)
    last.open()
    assert await asyncio.to_thread(slow.entered.wait, WAIT), "no event for the slow listener"
    await last.shutdown()
    told = slow.told
    assert told >= 1, told
    print("python bindings test: ok")


class PushEndpoint:
    """A push endpoint on loopback: records every wake-up POST the relay makes to it."""

    def __init__(self):
        import http.server

        self.posts = []
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.cond:
                    outer.posts.append((self.path, body))
                    outer.cond.notify_all()
                self.send_response(201)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wake/bob-phone"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_post(self, count, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.posts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no wake-up POST within {timeout} s: {self.posts!r}")
                self.cond.wait(left)
            return self.posts[count - 1]

    def close(self):
        self.server.shutdown()


async def lifecycle(alice, a_events, bob, b_events, to_alice, to_bob):
    """A phone's life: suspended in the background, woken by a push to fetch what came (once),
    resumed, moved to another network, kept alive for the background."""
    # The relay's VAPID key, which a UnifiedPush distributor may ask for when subscribing.
    server_key = await bob.push_server_key()
    assert len(server_key) == 65 and server_key[0] == 4, server_key
    assert await alice.push_server_key() == server_key

    endpoint = PushEndpoint()
    await bob.register_push(endpoint.url)
    await bob.wait_connected(30_000)
    link = bob.link()
    assert link.state == hush_ffi.LinkState.ONLINE and link.transport is not None, link

    # To the background: the connection closes, nothing is fetched.
    await bob.suspend()
    assert bob.link() == hush_ffi.LinkInfo(state=hush_ffi.LinkState.SUSPENDED, transport=None)
    await b_events.wait_async("suspended", lambda e: e.is_connection() and not e.connected)

    # Alice writes; the relay wakes Bob's endpoint with a content-free POST.
    texts = [f"while you slept {i}" for i in range(3)]
    sent = [await alice.send_text(to_bob, t, None) for t in texts]
    path, body = await asyncio.to_thread(endpoint.wait_post, 1)
    assert path == "/wake/bob-phone" and body == b"wake", (path, body)
    for t in texts:
        assert all(t.encode() not in b for _, b in endpoint.posts)

    # The push handler wakes the client: it fetches the queue, tells each message once, sends
    # the delivery receipts, and sleeps again.
    report = await bob.wake(20_000)
    assert report.caught_up and report.messages == 3 and report.unsent == 0, report
    assert bob.link().state == hush_ffi.LinkState.SUSPENDED
    for t in texts:
        await b_events.wait_async("woken message", message_with(to_alice, t))
    await a_events.wait_async("delivered while asleep", status_for(sent[-1], MessageStatus.DELIVERED))

    # Woken again with nothing queued: nothing told twice.
    report = await bob.wake(20_000)
    assert report.caught_up and report.messages == 0, report

    # What the wake-ups told is all in; what is left are their connection events.
    with b_events.cond:
        left = [e for e in b_events.events if e.is_message() and not e.message.outgoing]
        b_events.events.clear()
    assert left == [], left

    # To the foreground: connected at once; the queue was drained exactly once. (Events are
    # told on a thread of their own, so a wake's last events may still come after this point:
    # what is waited for below is what only the resumed connection can bring.)
    bob.resume()
    await bob.wait_connected(30_000)
    assert bob.link().state == hush_ffi.LinkState.ONLINE
    # A message written now comes after anything the relay still held for Bob: once it is in,
    # any second copy of what the wakes fetched would have been told too.
    await alice.send_text(to_bob, "after the wakes", None)
    await b_events.wait_async("after the wakes", message_with(to_alice, "after the wakes"))
    with b_events.cond:
        again = [e for e in b_events.events if e.is_message() and not e.message.outgoing]
    assert again == [], again

    # A network change: QUIC moves to a new socket, TCP dials again; Bob chats on.
    moved = bob.network_changed("cellular")
    assert moved in (hush_ffi.NetworkMove.MIGRATED, hush_ffi.NetworkMove.REDIALLED), moved
    await alice.send_text(to_bob, "after the move", None)
    await b_events.wait_async("after the move", message_with(to_alice, "after the move"))

    # Kept connected in the background: a new connection with rare keep-alives; still works.
    with b_events.cond:
        b_events.events.clear()
    bob.set_liveness(hush_ffi.Liveness.BACKGROUND)
    await b_events.wait_async("link replaced", lambda e: e.is_connection() and not e.connected)
    await b_events.wait_async("link back", lambda e: e.is_connection() and e.connected)
    await alice.send_text(to_bob, "background link", None)
    await b_events.wait_async("background link", message_with(to_alice, "background link"))
    with b_events.cond:
        b_events.events.clear()
    bob.set_liveness(hush_ffi.Liveness.INTERACTIVE)
    await b_events.wait_async("link replaced", lambda e: e.is_connection() and not e.connected)
    await b_events.wait_async("link back", lambda e: e.is_connection() and e.connected)
    await bob.register_push("")
    endpoint.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        # Clients still running may call the listener while the interpreter finalizes: leave
        # at once instead.
        os._exit(1)
