// Two Hush clients, driven through the generated Kotlin bindings on a JVM, against a real relay.
//
// Run by ffi/tests/kotlin.rs, which generates the bindings, compiles them with this file, starts
// `hush-relay` on 127.0.0.1 and passes HUSH_RELAY_ADDR, HUSH_RELAY_PIN and HUSH_TEST_DIR (a
// scratch directory). The same scenario as tests/python/test_hush.py. Every wait is on a
// listener event, with a timeout; nothing sleeps.

import java.io.File
import java.util.concurrent.TimeUnit
import java.util.concurrent.locks.ReentrantLock
import kotlin.concurrent.withLock
import kotlin.system.exitProcess
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import uniffi.hush_ffi.ClientConfig
import uniffi.hush_ffi.Conversation
import uniffi.hush_ffi.HushClient
import uniffi.hush_ffi.HushEvent
import uniffi.hush_ffi.HushException
import uniffi.hush_ffi.HushListener
import uniffi.hush_ffi.HushMessage
import uniffi.hush_ffi.MessageContent
import uniffi.hush_ffi.MessageStatus

const val WAIT_MS = 30_000L
val RELAY: String = System.getenv("HUSH_RELAY_ADDR") ?: error("HUSH_RELAY_ADDR is not set")
val PIN: String = System.getenv("HUSH_RELAY_PIN") ?: error("HUSH_RELAY_PIN is not set")
val SCRATCH: String = System.getenv("HUSH_TEST_DIR") ?: error("HUSH_TEST_DIR is not set")

fun ensure(ok: Boolean, what: () -> String) {
    if (!ok) throw AssertionError(what())
}

/** Keeps every event; `wait` takes the first one (in arrival order) that `pick` maps to non-null. */
open class Listener(val name: String) : HushListener {
    private val lock = ReentrantLock()
    private val changed = lock.newCondition()
    private val events = mutableListOf<HushEvent>()

    override fun onEvent(event: HushEvent) {
        lock.withLock {
            events.add(event)
            changed.signalAll()
        }
    }

    fun <T : Any> waitBlocking(what: String, timeoutMs: Long, pick: (HushEvent) -> T?): T {
        val deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs)
        lock.withLock {
            while (true) {
                val it = events.iterator()
                while (it.hasNext()) {
                    val got = pick(it.next())
                    if (got != null) {
                        it.remove()
                        return got
                    }
                }
                val left = deadline - System.nanoTime()
                if (left <= 0) {
                    throw AssertionError("$name: no $what within $timeoutMs ms; events seen: $events")
                }
                changed.awaitNanos(left)
            }
        }
    }

    /** The client's calls run on its own runtime: waiting on an IO thread keeps this one free. */
    suspend fun <T : Any> wait(what: String, timeoutMs: Long = WAIT_MS, pick: (HushEvent) -> T?): T =
        withContext(Dispatchers.IO) { waitBlocking(what, timeoutMs, pick) }
}

class Raising(name: String) : Listener(name) {
    override fun onEvent(event: HushEvent) {
        super.onEvent(event)
        throw RuntimeException("a listener bug")
    }
}

fun key(b: Int) = ByteArray(32) { b.toByte() }

val DEFAULT_KEY = ByteArray(32) { it.toByte() }

fun config(
    name: String,
    key: ByteArray = DEFAULT_KEY,
    relay: String = RELAY,
    pin: String = PIN,
) = ClientConfig(
    profileDir = File(SCRATCH, name).path,
    atRestKey = key,
    relayAddress = relay,
    relayPin = pin,
)

/** `call()` throws `E` whose message contains `needle` (`call` may suspend). */
suspend inline fun <reified E : HushException> expectError(needle: String, call: () -> Any?) {
    val kind = E::class.simpleName
    try {
        call()
    } catch (e: HushException) {
        ensure(e is E) { "expected HushException.$kind, got $e" }
        ensure(e.message.orEmpty().contains(needle)) { "$kind: ${e.message} lacks `$needle`" }
        return
    }
    throw AssertionError("expected HushException.$kind, nothing thrown")
}

fun messageWith(
    conversation: Conversation? = null,
    body: String? = null,
    incoming: Boolean = true,
): (HushEvent) -> HushMessage? = { ev ->
    val m = (ev as? HushEvent.Message)?.message
    when {
        m == null -> null
        incoming && m.outgoing -> null
        conversation != null && m.conversation != conversation -> null
        body != null && (m.content as? MessageContent.Text)?.body != body -> null
        else -> m
    }
}

fun attachment(ev: HushEvent): HushMessage? =
    (ev as? HushEvent.Message)?.message?.takeIf { it.content is MessageContent.Attachment }

/** The status steps told for one message, each event once, in arrival order. */
class Steps {
    private val seen = mutableListOf<HushEvent.Status>()

    fun record(ev: HushEvent.Status) {
        if (seen.none { it === ev }) seen.add(ev)
    }

    fun statuses() = seen.map { it.status }
}

/** The `Status` event that moves `messageId` to `status`; steps seen on the way go to `steps`. */
fun statusFor(messageId: String, status: MessageStatus, steps: Steps? = null): (HushEvent) -> HushEvent.Status? =
    { ev ->
        if (ev is HushEvent.Status && messageId in ev.messageIds) {
            steps?.record(ev)
            ev.takeIf { it.status == status }
        } else {
            null
        }
    }

val ALL_STEPS = listOf(MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ)

/**
 * Each step told once and never backwards, ending read: the steps seen are [ALL_STEPS] in order,
 * except that `SENT` may be overtaken (a receipt that arrives before the relay's acknowledgement
 * is reported, collapsed into the later state).
 */
fun onceInOrder(statuses: List<MessageStatus>) =
    statuses == ALL_STEPS || statuses == ALL_STEPS.drop(1)

/** Whatever the host passes, the answer is an exception with a clear message. */
suspend fun badInput() {
    val listener = Listener("nobody")
    expectError<HushException.InvalidArgument>("32 bytes") { HushClient(config("bad", key = ByteArray(5)), listener) }
    expectError<HushException.InvalidArgument>("IP:PORT") { HushClient(config("bad", relay = "nowhere"), listener) }
    expectError<HushException.InvalidArgument>("64 hex digits") { HushClient(config("bad", pin = "abc"), listener) }
    val c = HushClient(config("empty"), listener)
    ensure(!c.hasAccount()) { "a new profile has no account" }
    expectError<HushException.NoAccount>("create_account") { c.open() }
    expectError<HushException.NoAccount>("create_account") { c.account() }
    expectError<HushException.NoAccount>("create_account") { c.waitConnected(1000uL) }
    // An all-zero key is not a valid account key.
    expectError<HushException.InvalidArgument>("not a valid account key") {
        c.sendText(Conversation.Direct("00".repeat(32)), "hi", null)
    }
    expectError<HushException.InvalidArgument>("hush-link:") { c.linkDevice("not a code") }
    c.shutdown()
    c.shutdown() // twice is fine
    expectError<HushException.Closed>("shut down") { c.createAccount() }
    expectError<HushException.Closed>("shut down") { c.open() }
    c.close()
}

suspend fun scenario() {
    badInput()

    val aEvents = Listener("alice")
    var bEvents = Listener("bob")
    val alice = HushClient(config("alice"), aEvents)
    var bob = HushClient(config("bob", key = key(7)), bEvents)
    val aInfo = alice.createAccount()
    val bInfo = bob.createAccount()
    ensure(aInfo.deviceId == 1u && aInfo.accountId.length == 64) { "alice's account: $aInfo" }
    ensure(alice.hasAccount()) { "alice has an account" }
    alice.waitConnected(30_000uL)
    bob.waitConnected(30_000uL)
    // Both clients set up concurrently: they run on their own runtimes.
    coroutineScope {
        listOf(async { alice.claimUsername("alice") }, async { bob.claimUsername("Bob") }).awaitAll()
    }
    expectError<HushException.UsernameTaken>("another account") { bob.claimUsername("alice") }
    val bobId = alice.lookupUsername("bob")
    val aliceId = bob.lookupUsername("alice")
    ensure(bobId == bInfo.accountId && aliceId == aInfo.accountId) { "lookups: $bobId, $aliceId" }
    expectError<HushException.UnknownUser>("nobody goes by") { alice.lookupUsername("carol") }
    expectError<HushException.InvalidArgument>("username") { alice.lookupUsername("x!") }
    expectError<HushException.AlreadySetUp>("running") { alice.open() }

    val toBob = Conversation.Direct(bobId)
    val toAlice = Conversation.Direct(aliceId)

    // 1:1 text: delivered automatically, read when Bob marks it.
    val first = alice.sendText(toBob, "hello bob", null)
    var got = bEvents.wait("alice's text", pick = messageWith(toAlice, "hello bob"))
    ensure(got.id == first && got.senderAccount == aliceId && got.unverifiedSenderName == "alice") { "$got" }
    ensure(got.status == MessageStatus.UNREAD) { "${got.status}" }
    var steps = Steps()
    aEvents.wait("delivered", pick = statusFor(first, MessageStatus.DELIVERED, steps))
    bob.markRead(toAlice)
    aEvents.wait("read", pick = statusFor(first, MessageStatus.READ, steps))
    ensure(onceInOrder(steps.statuses())) { "steps: ${steps.statuses()}" }
    val mine = alice.history(toBob, null, 10u)
    ensure(mine.map { it.id } == listOf(first) && mine[0].status == MessageStatus.READ) { "$mine" }

    // Typing, a reply and a reaction.
    bob.setTyping(toAlice, true)
    val t = aEvents.wait("bob typing") { ev -> (ev as? HushEvent.Typing)?.takeIf { it.typing } }
    ensure(t.account == bobId && t.conversation == toBob) { "$t" }
    val reply = bob.sendText(toAlice, "hi alice", first)
    got = aEvents.wait("bob's reply", pick = messageWith(toBob, "hi alice"))
    ensure((got.content as MessageContent.Text).replyTo == first && got.id == reply) { "$got" }
    bob.setTyping(toAlice, false)
    aEvents.wait("bob stopped typing") { ev -> (ev as? HushEvent.Typing)?.takeIf { !it.typing } }
    alice.sendReaction(toBob, reply, "👍")
    got = bEvents.wait("reaction") { ev ->
        (ev as? HushEvent.Message)?.message?.takeIf { it.content is MessageContent.Reaction }
    }
    val reaction = got.content as MessageContent.Reaction
    ensure(reaction.target == reply && reaction.emoji == "👍") { "$reaction" }

    // Push endpoints: a malformed one is refused by the relay with its reason; unregistering is
    // always accepted.
    expectError<HushException.Refused>("push URL") { bob.registerPush("not a url") }
    // A WebPush subscription's key must be a point on P-256 (all zeros is not).
    expectError<HushException.Refused>("p256dh") {
        bob.registerWebPush("https://push.example/x", ByteArray(65), ByteArray(16))
    }
    bob.registerPush("")

    // Sealed envelopes from anyone, on and off again (contacts only, the default).
    bob.setSealedFromAnyone(true)
    bob.setSealedFromAnyone(false)

    // Presence.
    bob.setPresence(true, listOf(aliceId))
    val p = aEvents.wait("presence") { ev -> ev as? HushEvent.Presence }
    ensure(p.account == bobId && p.online) { "$p" }

    // Concurrent sends from one client.
    val ids = coroutineScope { (0 until 5).map { i -> async { alice.sendText(toBob, "burst $i", null) } }.awaitAll() }
    ensure(ids.toSet().size == 5) { "burst ids: $ids" }
    for (i in 0 until 5) bEvents.wait("burst $i", pick = messageWith(toAlice, "burst $i"))

    // A group: created by Alice, joined by Bob; messages both ways, receipts and typing.
    val group = alice.createGroup("friends", listOf(bobId))
    val toGroup = Conversation.Group(group)
    bEvents.wait("group joined") { ev -> ev.takeIf { it is HushEvent.GroupsChanged } }
    ensure(bob.groups().map { it.id to it.name } == listOf(group to "friends")) { "${bob.groups()}" }
    ensure(alice.groups().map { it.id } == listOf(group)) { "${alice.groups()}" }
    val g1 = alice.sendText(toGroup, "hello group", null)
    got = bEvents.wait("group text", pick = messageWith(toGroup, "hello group"))
    ensure(got.senderAccount == aliceId) { "$got" }
    aEvents.wait("group delivered", pick = statusFor(g1, MessageStatus.DELIVERED))
    bob.setTyping(toGroup, true)
    aEvents.wait("group typing") { ev -> (ev as? HushEvent.Typing)?.takeIf { it.conversation == toGroup && it.typing } }
    val g2 = bob.sendText(toGroup, "hello alice, in the group", null)
    aEvents.wait("bob's group text", pick = messageWith(toGroup, "hello alice, in the group"))
    alice.markRead(toGroup)
    bEvents.wait("group read", pick = statusFor(g2, MessageStatus.READ))
    ensure(bob.history(toGroup, null, 10u).map { it.id } == listOf(g1, g2)) { "group history" }

    // Attachments: bytes and a file, each downloaded with its digest checked.
    val data = ByteArray(300_000).also { java.util.Random(7).nextBytes(it) }
    val att = alice.sendAttachment(toBob, "noise.bin", "application/octet-stream", data)
    got = bEvents.wait("attachment", pick = ::attachment)
    var content = got.content as MessageContent.Attachment
    ensure(got.id == att && content.name == "noise.bin" && content.size == data.size.toULong()) { "$got" }
    ensure(bob.downloadAttachment(toAlice, att).contentEquals(data)) { "downloaded bytes differ" }
    val note = "a file from disk\n".repeat(1000).toByteArray()
    val path = File(SCRATCH, "note.txt").apply { writeBytes(note) }
    val fid = bob.sendFile(toAlice, path.path, "text/plain")
    got = aEvents.wait("file", pick = ::attachment)
    content = got.content as MessageContent.Attachment
    ensure(content.name == "note.txt") { "$content" }
    val saved = File(SCRATCH, "saved.txt")
    alice.saveAttachment(toBob, fid, saved.path)
    ensure(saved.readBytes().contentEquals(note)) { "saved file differs" }

    // History paging: oldest first, backwards from the first id of a page.
    val newest = alice.history(toBob, null, 3u)
    val older = alice.history(toBob, newest[0].id, 3u)
    ensure(newest.size == 3 && older.size == 3) { "pages: $newest / $older" }
    ensure(older.last().sentAtMs <= newest[0].sentAtMs) { "pages out of order" }
    ensure(newest.map { it.id }.intersect(older.map { it.id }.toSet()).isEmpty()) { "pages overlap" }

    // Safety numbers agree on both sides; the QR code of one verifies on the other.
    val sa = alice.safetyNumber(bobId)
    val sb = bob.safetyNumber(aliceId)
    ensure(sa.digits == sb.digits && sa.digits.length == 60) { "safety numbers: $sa / $sb" }
    ensure(bob.verifySafetyQr(aliceId, sa.qrPayload)) { "the QR code does not verify" }
    expectError<HushException.InvalidArgument>("scanned") { bob.verifySafetyQr(aliceId, byteArrayOf(1)) }

    // Bad input on a running client: clear exceptions, nothing crashes.
    expectError<HushException.InvalidArgument>("account id must be 64 hex digits") {
        alice.sendText(Conversation.Direct("abcd"), "hi", null)
    }
    expectError<HushException.InvalidArgument>("account id is not hex") {
        alice.sendText(Conversation.Direct("zz".repeat(32)), "hi", null)
    }
    expectError<HushException.InvalidArgument>("group id") { alice.sendText(Conversation.Group("12"), "hi", null) }
    expectError<HushException.InvalidArgument>("message id") { alice.sendText(toBob, "hi", "00ff") }
    expectError<HushException.InvalidArgument>("empty") { alice.sendText(toBob, "", null) }
    expectError<HushException.TooLarge>("at most") { alice.sendText(toBob, "x".repeat(40_000), null) }
    expectError<HushException.InvalidArgument>("limit") { alice.history(toBob, null, 0u) }
    expectError<HushException.NotFound>("no such message") { alice.downloadAttachment(toBob, "00".repeat(16)) }
    expectError<HushException.InvalidArgument>("not an attachment") { alice.downloadAttachment(toBob, first) }
    expectError<HushException.NotFound>("not in that group") {
        alice.sendText(Conversation.Group("ab".repeat(32)), "hi", null)
    }
    expectError<HushException.InvalidArgument>("wait") { alice.waitConnected(1_000_000_000_000uL) }
    expectError<HushException.InvalidArgument>("missing") {
        alice.sendFile(toBob, File(SCRATCH, "missing").path, "x")
    }
    expectError<HushException.InvalidArgument>("itself") { bob.removeDevice(bInfo.deviceId) }

    // A well-formed account id the relay does not know (the Ed25519 base point): the send
    // returns at once, then the message is refused for good, stored as failed, reported to the
    // listener; a retry puts it back in the outbox and it is refused the same way.
    val nobody = Conversation.Direct("58" + "66".repeat(31))
    val nid = alice.sendText(nobody, "anyone there?", null)
    val failed = aEvents.wait("send failed") { ev -> (ev as? HushEvent.SendFailed)?.takeIf { it.conversation == nobody } }
    ensure(failed.messageId == nid) { "$failed" }
    ensure("unknown account" in failed.reason) { failed.reason }
    val lost = alice.message(failed.messageId) ?: throw AssertionError("the failed message is not stored")
    ensure(lost.status == MessageStatus.FAILED && lost.failure != null) { "$lost" }
    ensure((lost.content as? MessageContent.Text)?.body == "anyone there?") { "${lost.content}" }
    alice.retrySend(lost.id)
    aEvents.wait("failed again") { ev -> (ev as? HushEvent.SendFailed)?.takeIf { it.messageId == nid } }
    ensure(alice.message(lost.id)?.status == MessageStatus.FAILED) { "still failed after a retry" }
    ensure(alice.message("00".repeat(16)) == null) { "an unknown message id finds nothing" }
    expectError<HushException.InvalidArgument>("message id") { alice.message("xyz") }
    expectError<HushException.NotFound>("link offer") { alice.completeLink("hush-link:00", 1000uL) }

    // A second device for Alice: linked with a one-time code from her first device.
    // Its listener throws on every event: the library logs that and goes on.
    val a2Events = Raising("alice2")
    val alice2 = HushClient(config("alice-phone", key = key(3)), a2Events)
    val code = alice.offerLink()
    val (newId, info) = coroutineScope {
        val completed = async { alice.completeLink(code, 30_000uL) }
        val linked = async { alice2.linkDevice(code) }
        completed.await() to linked.await()
    }
    ensure(info.accountId == aliceId && info.deviceId == newId) { "linked: $info, $newId" }
    alice2.waitConnected(30_000uL)
    a2Events.wait("connection") { ev -> (ev as? HushEvent.Connection)?.takeIf { it.connected } }
    // What Alice sends from her first device shows on the second.
    alice.sendText(toBob, "from the laptop", null)
    a2Events.wait("synced text", pick = messageWith(toBob, "from the laptop", incoming = false))
    ensure(newId in alice.devices(aliceId)) { "alice's devices: ${alice.devices(aliceId)}" }
    expectError<HushException.NotFound>("link offer") { alice.completeLink(code, 1000uL) }
    expectError<HushException.NotPermitted>("first device") { alice2.offerLink() }

    // Receipts collapsed: Bob writes to Alice, whose two devices each confirm delivery and
    // reading; Bob's client tells each step once, never backwards.
    steps = Steps()
    val both = bob.sendText(toAlice, "to both of your devices", null)
    aEvents.wait("on the laptop", pick = messageWith(toBob, "to both of your devices"))
    a2Events.wait("on the phone", pick = messageWith(toBob, "to both of your devices"))
    bEvents.wait("delivered once", pick = statusFor(both, MessageStatus.DELIVERED, steps))
    alice2.markRead(toBob)
    alice.markRead(toBob)
    bEvents.wait("read once", pick = statusFor(both, MessageStatus.READ, steps))
    ensure(onceInOrder(steps.statuses())) { "steps: ${steps.statuses()}" }
    ensure(bob.message(both)?.status == MessageStatus.READ) { "read on bob's side" }

    // A removed device is told, and says so on every call that needs the relay.
    alice.removeDevice(newId)
    a2Events.wait("revoked") { ev -> ev.takeIf { it is HushEvent.Revoked } }
    expectError<HushException.NotPermitted>("removed from its account") { alice2.waitConnected(5_000uL) }
    alice2.shutdown()
    alice2.close()

    // Offline first: Bob's profile opened with no relay to reach opens at once, reads its
    // history and takes a message at once (waiting); opened again with the relay, the message
    // leaves, and reaches Alice once.
    bob.shutdown()
    bob.close()
    val bobOff = HushClient(config("bob", key = key(7), relay = "127.0.0.1:9"), Listener("bob-offline"))
    bobOff.open()
    ensure(bobOff.history(toAlice, null, 100u).last().id == both) { "bob's offline history" }
    val waiting = withTimeout(5_000) { bobOff.sendText(toAlice, "written offline", null) }
    ensure(bobOff.message(waiting)?.status == MessageStatus.WAITING) { "the offline message waits" }
    bobOff.shutdown()
    bobOff.close()
    bEvents = Listener("bob")
    bob = HushClient(config("bob", key = key(7)), bEvents)
    bob.open()
    bEvents.wait("sent", pick = statusFor(waiting, MessageStatus.SENT))
    got = aEvents.wait("the waiting message", pick = messageWith(toBob, "written offline"))
    ensure(got.id == waiting) { "$got" }

    // Shutdown: every later call is refused with Closed.
    alice.shutdown()
    bob.shutdown()
    expectError<HushException.Closed>("shut down") { alice.sendText(toBob, "late", null) }
    expectError<HushException.Closed>("shut down") { alice.history(toBob, null, 10u) }
    alice.close()
    bob.close()
}

fun main() {
    try {
        runBlocking { scenario() }
    } catch (e: Throwable) {
        e.printStackTrace()
        System.err.flush()
        // Clients still running may call their listeners: leave at once.
        Runtime.getRuntime().halt(1)
    }
    println("kotlin bindings test: ok")
    System.out.flush()
    // The library's runtimes may keep threads attached to the JVM: leave without waiting for them.
    exitProcess(0)
}
