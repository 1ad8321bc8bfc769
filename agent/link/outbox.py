"""Delivery of the durable outbox: transaction messages, in order, exactly once acknowledged.

An item stays in SQLite until its CALLRESULT arrives.  A lost connection leaves it there for the
next one, uncounted (the link was gone, not the CSMS's will to process it).  A CALLERROR counts
as a failed attempt, and so does a CALL that gets no answer within the message timeout on a
connection that is still up (2.0.1 E13 / TC_E_41_CS: "does not reply within the
MessageTimeout"; 1.6 4.7 "what kind of response, or failure to respond"): before the next
attempt the sender waits the retry interval times the attempts so far, and after
TransactionMessageAttempts / MessageAttempts failures the item is dropped (kept in the
`dropped` table for diagnosis) so one poisoned message cannot block every later session
forever.  Strict FIFO keeps Start before MeterValues before Stop.

Version-neutral: the adapter supplies ``prepare`` (fill in ids and times known only at send
time; it replaces values of the item's payload, never changes its nested values in place, so
that the stored JSON can be sent with the replaced value spliced in: :func:`stored_json`),
``on_result`` (runs in the same SQLite transaction as the ack, so a kill -9 can never
separate "the CSMS answered" from "we recorded the answer"), ``on_dropped`` (likewise, in the
transaction that drops an item), ``on_done`` (after either) and the retry settings.

The one thing no station can close on its own is the window between the CSMS processing a
message and our ack commit: a crash there makes the message go again after restart.  Every
hand-over to the link is counted in the item (``sends``), so such a resend is at least named in
the log and counted in :attr:`OutboxSender.resent`.

One fsynced commit per message, and no fewer: the ack of item N must be on the disk before
item N+1 goes out, or a power cut after N+1 left would send N again although the CSMS had
answered it, a duplicate outside the one message in flight (docs/durability.md).  What that
commit can carry is the next item's hand-over: the ack of N, what its answer changed, and the
head of the queue peeked, prepared and counted as sent (``sends``) are one commit, and N+1
goes out right after it without another look at the database (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.clock import Clock
from agent.link.rpc import (
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    ResponseInvalid,
    RpcSession,
    encode,
)
from agent.storage import OutboxItem, Storage, StorageError

log = logging.getLogger("cp_agent.outbox")

# After a storage failure the sender pauses this long before looking at the queue again.
STORAGE_RETRY_S = 5.0
# How often a held message (waiting for the CSMS time) is looked at without a wake-up.
HOLD_POLL_S = 1.0
# CALLERROR codes saying the CSMS does not know / support the action at all.
UNSUPPORTED = frozenset({"NotImplemented", "NotSupported"})


_MISSING = object()


def stored_json(item: OutboxItem, payload: dict) -> str | None:
    """``payload`` as the link encodes it, cut from the item's stored JSON instead of encoded
    anew; None when that cannot be shown cheaply (then the caller encodes).

    Encoding a replayed MeterValues was about a tenth of the agent's work per message, and
    what ``prepare`` does to it is to fill in one top-level value (the 1.6 transactionId).
    So: when every top-level value of ``payload`` is the very object read from the table but
    at most one, the stored text is the answer with that one value spliced in.  The stored
    text is the storage's encoding of the decoded ``item.payload``, which equals the link's
    for ASCII text (the storage writes non-ASCII characters and DEL as they are, the link
    escapes them); everything before the replaced value is encoded and compared, so the cut
    is made at the right place or not at all.  ``prepare`` must not change nested values of
    the item's payload in place (none does: they replace, ``Clock.resolve_payload`` builds
    anew); tests/test_outbox_delivery.py checks the equality against the encoder.
    """
    text, stored = item.text, item.payload
    if not text or len(payload) != len(stored) or not text.isascii() or "\x7f" in text:
        return None
    changed = _MISSING
    head = ["{"]
    for key, value in stored.items():
        new = payload.get(key, _MISSING)
        if new is value:
            if changed is _MISSING:
                head.append(f"{encode(key)}:{encode(value)},")
            continue
        if changed is not _MISSING or new is _MISSING:
            return None
        changed = key
    if changed is _MISSING:
        return text
    try:
        prefix = "".join(head)
        old = f"{encode(changed)}:{encode(stored[changed])}"
        end = len(prefix) + len(old)
        if not (text.startswith(prefix) and text.startswith(old, len(prefix))
                and text[end:end + 1] in (",", "}")):
            return None
        return f"{prefix}{encode(changed)}:{encode(payload[changed])}{text[end:]}"
    except (TypeError, ValueError):
        return None  # the ordinary encoding reports it


class Hold(Exception):  # noqa: N818 - a signal from ``prepare``, not an error
    """Raised by ``prepare``: the head message cannot go yet (e.g. its time is not known)."""


class OutboxSender:
    def __init__(self, storage: Storage, clock: Clock, *,
                 prepare: Callable[[OutboxItem], dict | None],
                 on_result: Callable[[OutboxItem, dict], None],
                 attempts: Callable[[], int], retry_interval: Callable[[], float],
                 on_done: Callable[[OutboxItem], None] | None = None,
                 on_dropped: Callable[[OutboxItem], None] | None = None) -> None:
        self._storage = storage
        self._clock = clock
        self._prepare = prepare
        self._on_result = on_result
        self._attempts = attempts
        self._retry_interval = retry_interval
        self._on_done = on_done
        self._on_dropped = on_dropped
        self._wakeup = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.resent = 0  # items sent again after a restart had interrupted their first send
        self._sent_here: set[int] = set()  # items handed to the link by this process
        self._due: dict[tuple[int, int], float] = {}  # (id, attempts) -> monotonic deadline
        # The head of the queue as the last ack's commit found it: (item, verdict, value) from
        # ``_judge``, counted as sent in that commit when the verdict is "send".  Only valid
        # until the next suspension (``_step`` uses it before awaiting anything).
        self._next: tuple[OutboxItem, str, object] | None = None
        self.idle = asyncio.Event()  # set whenever the outbox is empty (tests, clean shutdown)
        self.queued = asyncio.Event()  # set on every new item; observers clear it

    def wake(self) -> None:
        """Called after each outbox_put (or when a held item may go now)."""
        self.queued.set()
        self.idle.clear()
        self._wakeup.set()

    async def _pause(self, seconds: float) -> None:
        """Wait for ``seconds`` of the injected clock or a wake-up, whichever comes first."""
        self._wakeup.clear()
        sleeper = asyncio.ensure_future(self._clock.sleep(max(0.0, seconds)))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    def _drop(self, item: OutboxItem, reason: str) -> None:
        """Give up on ``item``; ``on_dropped`` runs in the commit of the drop (what it queues,
        e.g. a 1.6 Start once more, cannot be lost to a crash between the two)."""
        try:
            with self._storage.atomic():
                self._storage.outbox_drop(item.id, reason)
                if self._on_dropped is not None:
                    self._on_dropped(item)
        except StorageError:
            raise
        except Exception:
            # A bug in the reaction must not keep a message the CSMS refused at the head.
            log.exception("%s #%s: handling its drop failed; dropping it anyway", item.action,
                          item.id)
            self._storage.outbox_drop(item.id, reason)
        self.dropped += 1
        if self._on_done is not None:
            self._on_done(item)

    def _failed(self, item: OutboxItem, what: str, reason: str) -> None:
        """Count a failed attempt of ``item``: retry after the interval times the attempts so
        far (1.6 4.7, 2.0.1 E13.FR.02), or drop it after the last one (E13.FR.03)."""
        attempts = item.attempts + 1
        if attempts >= self._attempts():
            log.error("%s #%s %s %d time(s) (%s): dropped", item.action, item.id, what,
                      attempts, reason)
            self._drop(item, reason[:200])
            return
        wait = self._retry_interval() * attempts
        log.warning("%s #%s %s (%s); attempt %d in %.0f s", item.action, item.id, what,
                    reason, attempts + 1, wait)
        self._storage.outbox_retry(item.id, self._clock.wall() + wait)

    async def run(self, rpc: RpcSession) -> None:
        """Deliver until the connection drops (ConnectionLost / CallTimeout end the loop)."""
        self._next = None  # what another connection's loop looked at is not ours to send
        while True:
            try:
                done = await self._step(rpc)
            except StorageError as exc:
                # Disk full, I/O error: the messages are still in the file (or were never
                # written); try again later rather than end delivery for this connection.
                log.error("outbox: %s; retrying in %.0f s", exc, STORAGE_RETRY_S)
                await self._pause(STORAGE_RETRY_S)
                continue
            if done:
                return

    def _judge(self, item: OutboxItem) -> tuple[str, object]:
        """What to do with the head of the queue now, without waiting for anything.

        ("wait", seconds) for an item in its retry back-off, ("hold", None) when ``prepare``
        holds it, ("drop", None) when it cannot be completed, ("send", payload) otherwise.
        """
        # next_attempt is wall time so that it survives a restart; after one (or a clock
        # step) it may lie far in the future, so it is turned into a monotonic deadline once,
        # never further away than the retry rule allows.
        if item.attempts or item.next_attempt:
            key = (item.id, item.attempts)
            due = self._due.get(key)
            if due is None:
                longest = self._retry_interval() * max(1, item.attempts)
                wait = min(max(0.0, item.next_attempt - self._clock.wall()), longest)
                due = self._clock.monotonic() + wait
                self._due = {key: due}  # only the head of the queue is ever waited for
            delay = due - self._clock.monotonic()
            if delay > 0:
                return "wait", delay
        try:
            payload = self._prepare(item)
        except Hold:
            return "hold", None
        if payload is None:
            return "drop", None
        return "send", payload

    def _hand_over(self, item: OutboxItem) -> None:
        """Count the send in the item (before the frame goes out) and name a likely repeat."""
        if item.sends > 0 and item.id not in self._sent_here:
            self.resent += 1
            log.warning("%s #%s was handed to the CSMS before the last restart without an "
                        "acknowledged answer; sending the identical message again (a CSMS "
                        "that already processed it must treat it as a repeat)",
                        item.action, item.id)
        self._storage.outbox_mark_sent(item.id)
        self._sent_here.add(item.id)

    def _prefetch(self) -> None:
        """Inside the ack's commit: judge the new head and, if it can go, count its send.

        Whatever goes wrong here (a failing ``prepare``, a storage error) leaves the ack as it
        is, and the next step simply looks again.  No savepoint is needed for that (it was
        two of the eight statements of every replayed message): the peek and ``prepare`` only
        read, and the one write, the send count, is the last statement, which SQLite undoes
        on its own if it fails.  Should an error make SQLite roll back the whole transaction
        (a full disk, an I/O error), a savepoint would be gone with it: the ack's commit then
        fails as a whole (``atomic`` raises), and the message goes again, as after a crash.
        """
        try:
            items = self._storage.outbox_peek(1)
            if not items:
                return
            verdict, value = self._judge(items[0])
            if verdict == "send":
                self._hand_over(items[0])
            self._next = (items[0], verdict, value)
        except Exception:  # noqa: BLE001 - the ordinary path meets it again and reports it
            log.debug("outbox: looking ahead in the ack's commit failed", exc_info=True)
            self._next = None

    async def _step(self, rpc: RpcSession) -> bool:
        """Handle the head of the queue once; True when the connection is gone."""
        ahead, self._next = self._next, None
        if ahead is not None:
            item, verdict, value = ahead  # judged, and counted if sendable, in the last ack
        else:
            items = self._storage.outbox_peek(1)
            if not items:
                self.idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                return False
            item = items[0]
            verdict, value = self._judge(item)
            if verdict == "send":
                self._hand_over(item)
        if verdict == "wait":
            await self._pause(value)  # type: ignore[arg-type]
            return False
        if verdict == "hold":
            await self._pause(HOLD_POLL_S)
            return False
        if verdict == "drop":
            self._drop(item, "cannot be completed")
            return False
        payload: dict = value  # type: ignore[assignment]
        try:
            body = stored_json(item, payload) if isinstance(rpc, RpcSession) else None
            result = await (rpc.call(item.action, payload, encoded=body) if body is not None
                            else rpc.call(item.action, payload))
        except ValueError as exc:
            # Our own message does not match the schema: it can never be delivered, and
            # retrying would block every later transaction message.
            log.error("%s #%s is invalid and can never be sent (%s): dropped", item.action,
                      item.id, exc)
            self._drop(item, f"invalid: {exc}"[:200])
            return False
        except (CallErrorReceived, ResponseInvalid) as exc:
            if isinstance(exc, CallErrorReceived) and exc.code in UNSUPPORTED:
                # The CSMS does not implement this action (e.g. a 1.6 CSMS without the
                # security extension and SecurityEventNotification): no retry can succeed,
                # and retrying would hold every later transaction message back.
                log.warning("%s #%s: the CSMS does not support it (%s): dropped", item.action,
                            item.id, exc.code)
                self._drop(item, f"{exc.code}: {exc.description}")
            else:
                self._failed(item, "refused", f"{exc.code}: {exc.description}")
            return False
        except CallTimeout:
            if rpc.closed:
                return True  # the link died under the call: not the CSMS's failure
            # No answer within the message timeout on a live link: a failed attempt (E13).
            # A late answer to it is discarded by the link; the resend is the identical
            # message (2.0.1: the same seqNo), which a CSMS that did process it recognises.
            self._failed(item, "not answered", "no answer within the message timeout")
            return False
        except ConnectionLost:
            return True  # the item stays; the next connection starts again
        try:
            # One fsynced commit: the answer's effects, the ack and, when the new head can go
            # at once, its hand-over; it is sent right after, with nothing awaited between.
            with self._storage.atomic():
                self._on_result(item, result)
                self._storage.outbox_ack(item.id)
                if not rpc.closed:
                    self._prefetch()
        except StorageError:
            self._next = None
            raise
        except Exception:
            # A bug in handling the answer must not make us send a delivered message forever.
            self._next = None
            log.exception("%s #%s: handling the answer failed; acknowledging it anyway",
                          item.action, item.id)
            self._storage.outbox_ack(item.id)
        self._sent_here.discard(item.id)
        self.sent += 1
        if self._on_done is not None:
            self._on_done(item)
        return False
