"""Whether a transaction a restart interrupted may go on (OCPP 2.1 E17), in neutral terms.

After a power cut, a crash or a Reset that keeps transactions (2.1 ImmediateAndResume), the
journal still holds the transactions that were running.  Without :class:`ResumptionRules`
(1.6, 2.0.1, or a 2.1 station with TxCtrlr.ResumptionTimeout 0) each one ends with PowerLoss
(``Station.recover``).  With them, a transaction resumes -- same record, same local id and
seqNo sequence, its session restored on its EVSE -- only when everything still holds that
held when power went:

- the interruption was no longer than ``timeout_s``, measured on a clock that survives the
  restart (:meth:`agent.clock.Clock.elapsed_since`: the monotonic clock within one kernel
  boot, wall times across a reboot; a board without a real-time clock that has not heard the
  CSMS time yet cannot know how long it was off, so nothing resumes);
- the EVSE is there and not faulted, and the EV is still connected (pilot B/C/D now) at the
  connector of the transaction: an EV that left while the station was off ended its session;
- the authorization still holds: its own expiry has not passed, and the local list or cache
  do not now say the token is anything but Accepted (no round trip at start-up).

Energy then flows again only through the EVSE's normal invariants (EV asks, authorized,
operative, not faulted, offer at least the minimum), and not at all when the rules say
``allow_energy`` false (the session resumes suspended: another EV may have been plugged in
while the station was off).  The first status the EVSE reports afterwards is what the adapter
announces (2.1: TransactionEvent Updated, triggerReason TxResumed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.clock import Clock, parse_iso
from agent.core.model import ResumptionRules, Token, TxRecord

if TYPE_CHECKING:
    from agent.core.authorization import AuthorizationPolicy
    from agent.core.evse import EvseController


def last_alive(tx: TxRecord) -> str:
    """The last instant the journal saw the transaction running (its last meter reading,
    journalled every ``storage.meter_persist_s``): where the interruption began, at the
    latest."""
    return tx.last_meter_at or tx.started_at


def session_token(tx: TxRecord) -> Token | None:
    """The token whose authorization the session had: the starting one, or the one
    authorized after a start without one (TxStartPoint EVConnected)."""
    if tx.auth_token:
        return Token(tx.auth_token, tx.auth_token_type or "ISO14443")
    if tx.id_token:
        return Token(tx.id_token, tx.token_type or "ISO14443")
    return None


def why_not_resumed(tx: TxRecord, evse: EvseController | None, rules: ResumptionRules,
                    clock: Clock, authorization: AuthorizationPolicy) -> str | None:
    """None when ``tx`` may resume on ``evse`` now; else why not, in words for the log."""
    if rules.timeout_s <= 0:
        return "resumption is off (resumption timeout 0)"
    if evse is None:
        return f"EVSE {tx.evse_id} is not configured any more"
    if evse.tx is not None:
        return f"EVSE {tx.evse_id} has another transaction"
    elapsed = clock.elapsed_since(last_alive(tx))
    if elapsed is None:
        return ("how long the station was off is unknown (no trustworthy clock yet: no "
                "real-time clock, no CSMS time in this boot)")
    if elapsed > rules.timeout_s:
        return (f"interrupted for {elapsed:.0f} s, longer than the resumption timeout "
                f"{rules.timeout_s:.0f} s")
    if evse.blocking_fault is not None:
        return f"EVSE {evse.id} is faulted ({evse.blocking_fault})"
    pilot = evse.pilot
    if not pilot.connected:
        return f"the EV is no longer connected (pilot {pilot.value})"
    if len(evse.connector_ids) > 1 and evse.connector_id != tx.connector_id:
        return f"the EV is now at connector {evse.connector_id}, not {tx.connector_id}"
    token = session_token(tx)
    if token is None or tx.deauth_reason:
        return None  # nothing (more) authorized to check: it resumes as it was
    if tx.auth_expires_at:
        try:
            expiry = parse_iso(tx.auth_expires_at).timestamp()
        except ValueError:
            expiry = None
        if expiry is not None:
            if not clock.trustworthy:
                return "the authorization has an expiry and the time is not known yet"
            if expiry <= clock.wall():
                return f"its authorization expired ({tx.auth_expires_at})"
    local = authorization.lookup(token)
    if local is not None and not local.accepted:
        return f"the {local.source.replace('_', ' ')} now says {local.status} for its token"
    return None
