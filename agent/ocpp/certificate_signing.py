"""Getting the station certificate signed (A02 / A03), the same way on every OCPP version.

A signing round: a fresh key pair and CSR go out in SignCertificate; the CSMS has the CA sign
it and sends CertificateSigned, which the version's block hands to the certificate store.
What differs per version is given by the block: the SignCertificate payload, and the resend
schedule (2.0.1 A02.FR.17/18: when no CertificateSigned came within CertSigningWaitMinimum a
new CSR is sent, the wait doubling each time, CertSigningRepeatTimes times; the 1.6 whitepaper
recommends not to retry, so its schedule is empty).

A03: a certificate that expires within a month is renewed by the station itself, checked on
the injectable clock at least once an hour (a clock the CSMS corrected is noticed by the next
check), and tried again a day later if a round brought no certificate.

A02.FR.08: the station switches to a new certificate as soon as it is valid.  One valid now
is used at once; one whose validity starts later is kept by the store and switched to when
the station clock gets there (the same loop wakes for it).  With security profile 3 the
connection proves the station with its certificate, so switching means reconnecting, after
the CertificateSignedResponse went out; if the CSMS refuses the renewed certificate the link's
network plan goes back to the previous one (DiscardedRenewedClientCertificate, 2.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from agent.link.rpc import CallFailed, ConnectionLost

if TYPE_CHECKING:
    from agent.ocpp.adapter import Adapter
    from agent.security.store import CertificateStore, Verdict

log = logging.getLogger("cp_agent.certificates")

RENEW_BEFORE = timedelta(days=30)  # A03.FR.02: "will expire in one month"
CHECK_EVERY_S = 3600.0  # the longest the renewal check sleeps (clock corrections, jumps)
RETRY_AFTER_S = 86400.0  # a renewal round that brought no certificate is tried again


class CertificateSigning:
    """One version's A02/A03 flow; owned by that version's certificate block."""

    def __init__(self, adapter: Adapter, *, payload: Callable[[str], dict],
                 resend_waits: Callable[[], list[float]],
                 csr: Callable[[bool], str] | None = None,
                 send: Callable[[dict], Awaitable[dict]] | None = None,
                 what: str = "station certificate") -> None:
        self.adapter = adapter
        self.payload = payload
        self.resend_waits = resend_waits
        # ``csr(new_round)``: another certificate's CSR (the V2G one of ISO 15118), else the
        # store's station CSR; ``send(payload)``: how SignCertificate goes out and its answer
        # comes back (1.6 Plug & Charge: wrapped in a DataTransfer), else a plain CALL.
        self.csr = csr
        self.send = send
        self.what = what
        self._round: asyncio.Task | None = None
        self._answered = asyncio.Event()  # a CertificateSigned arrived in this round
        self._changed = asyncio.Event()  # the station certificate changed: re-plan renewal
        self._last_renewal: float | None = None  # monotonic time of the last A03 round

    @property
    def store(self) -> CertificateStore | None:
        return getattr(self.adapter.station, "certificates", None)

    @property
    def busy(self) -> bool:
        return self._round is not None and not self._round.done()

    def start(self, why: str) -> None:
        """Begin a signing round now (a trigger replaces a round still waiting)."""
        if self.store is None:
            log.warning("%s: no certificate store; no CSR sent", why)
            return
        if self.busy:
            assert self._round is not None
            self._round.cancel()
        self._answered.clear()
        self._round = self.adapter.spawn(self._run(why), f"{self.adapter.version}-csr",
                                         session=True)

    def answered(self) -> None:
        """A CertificateSigned came (good or bad): the round stops resending."""
        self._answered.set()
        self._changed.set()

    def certificate_signed(self, chain: str) -> Verdict:
        """CertificateSigned of the station certificate: the store's verdict, and the switch
        to the new certificate (a reconnect on security profile 3) when it is valid now."""
        store = self.store
        assert store is not None
        before = store.identity_fingerprint()
        verdict = store.install_station_chain(chain, common_name=self.adapter.ctx.station_id)
        self.answered()
        if verdict.status == "Accepted" and store.identity_fingerprint() != before:
            self.switched("a new station certificate")
        return verdict

    def switched(self, why: str) -> None:
        """The station certificate in use changed: a profile-3 connection still proves the
        station with the old one, so reconnect (after the answer that caused it)."""
        network = getattr(self.adapter.ctx, "network", None)
        active = getattr(network, "active", None)
        if active is None or active.security_profile != 3:
            return
        self.adapter.spawn(self._reconnect(why), f"{self.adapter.version}-cert-reconnect")

    async def _reconnect(self, why: str) -> None:
        await self.adapter.after_answer()
        log.info("%s is in use; reconnecting so that the connection uses it", why)
        await self.adapter.ctx.network.reconnect(why)

    async def _run(self, why: str) -> None:
        await self.adapter.after_answer()  # a trigger's answer goes out before the CSR
        waits = [0.0, *self.resend_waits()]
        for attempt, wait in enumerate(waits):
            if attempt:
                await self.adapter.sleep_or(wait, self._answered)
                if self._answered.is_set():
                    return
                log.info("no CertificateSigned within %.0f s; sending a new CSR", wait)
            store = self.store
            if store is None:
                return
            csr = (self.csr(attempt == 0) if self.csr is not None
                   else store.new_csr(self.adapter.ctx.station_id, new_round=attempt == 0))
            try:
                payload = self.payload(csr)
                res = await (self.send(payload) if self.send is not None
                             else self.adapter.call("SignCertificate", payload))
            except ConnectionLost:
                raise
            except CallFailed as exc:
                log.warning("SignCertificate of the %s (%s) failed: %s", self.what, why, exc)
                return
            if res.get("status") != "Accepted":
                log.warning("SignCertificate of the %s (%s) answered %s; no certificate to "
                            "expect", self.what, why, res.get("status"))
                return
        log.info("SignCertificate of the %s (%s) accepted; waiting for CertificateSigned",
                 self.what, why)

    async def renewal(self) -> None:
        """A03, for the lifetime of one connection: renew before the certificate expires;
        and A02.FR.08: switch to a certificate kept for later once it is valid."""
        while True:
            store = self.store
            due = store.renewal_due(RENEW_BEFORE) if store is not None else None
            later = store.next_identity_at() if store is not None else None
            self._changed.clear()
            if later is not None:
                if store is not None and store.activate_due():
                    self.switched("the station certificate kept for later")
                    continue
                until = (later - self.adapter.clock.now()).total_seconds()
                if due is None or until < (due - self.adapter.clock.now()).total_seconds():
                    await self.adapter.sleep_or(min(max(until, 0.0), CHECK_EVERY_S),
                                                self._changed)
                    continue
            if due is None:
                await self.adapter.sleep_or(CHECK_EVERY_S, self._changed)
                continue
            wait = (due - self.adapter.clock.now()).total_seconds()
            if wait <= 0:
                mono = self.adapter.clock.monotonic()
                recent = self._last_renewal is not None and \
                    mono - self._last_renewal < RETRY_AFTER_S
                if not self.busy and not recent:
                    self._last_renewal = mono
                    log.info("the station certificate expires within %s; renewing (A03)",
                             RENEW_BEFORE)
                    self.start("renewal before expiry")
                wait = CHECK_EVERY_S
            await self.adapter.sleep_or(min(wait, CHECK_EVERY_S), self._changed)


__all__ = ["CHECK_EVERY_S", "RENEW_BEFORE", "RETRY_AFTER_S", "CertificateSigning"]
