"""A certificate block's signing flow without the cost of it on a station that never signs.

The A02/A03 flow (:class:`agent.ocpp.certificate_signing.CertificateSigning`) is made on first
use (a trigger, a CertificateSigned), and its A03 renewal loop runs for a connection only while
the certificate store exists: a station at security profile 0/1 without a station
certificate builds no store at start-up (agent/app.py) and has nothing to renew, and one that
gets a store during a connection (InstallCertificate, a CSR) starts the loop then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.ocpp.blocks import Block
    from agent.ocpp.certificate_signing import CertificateSigning

STORE = "certificates"  # the station service (Station.provide) of the certificate store


def built_store(station: Any) -> Any:
    """The station's certificate store if it exists, without building it (a test's stand-in
    station without ``built`` has it as a plain attribute, or not)."""
    built = getattr(station, "built", None)
    return built(STORE) if built is not None else getattr(station, STORE, None)


class LazySigning:
    """``flow``: the block's signing flow, made by ``make`` on first use; ``session_started`` /
    ``session_ended``: the block's hooks, which run ``flow.renewal()`` as a session task
    named ``task`` once the store exists."""

    def __init__(self, block: Block, make: Callable[[], CertificateSigning], task: str) -> None:
        self._block = block
        self._make = make
        self._task = task
        self._flow: CertificateSigning | None = None
        self._in_session = False
        block.when_service(STORE, self._store_built)

    @property
    def flow(self) -> CertificateSigning:
        if self._flow is None:
            self._flow = self._make()
        return self._flow

    def session_started(self) -> None:
        self._in_session = True
        if built_store(self._block.station) is not None:
            self._renew()

    def session_ended(self) -> None:
        self._in_session = False

    def _store_built(self, store: Any) -> None:
        if self._in_session:  # built during this connection: renewal from now on
            self._renew()

    def _renew(self) -> None:
        self._block.adapter.spawn(self.flow.renewal(), self._task, session=True)


__all__ = ["STORE", "LazySigning", "built_store"]
