"""Durable agent state in one SQLite file.

A charge point is switched off at the breaker, browns out, or is killed by the watchdog, and
the CSMS still has to receive every transaction message exactly once. So everything that must
survive a restart lives here, in a single file that is easy to back up and to move aside:
settings changed by the CSMS, the transaction journal, the outbox of transaction-related
messages, the authorization cache and the local authorization list.

The package keeps the machinery apart from the tables:

- :mod:`~agent.storage.engine`: opening, locking, integrity check, running migrations,
  ``atomic()``, fsync policy and the translation of every failure into :class:`StorageError`.
  It knows no table.
- :mod:`~agent.storage.migrations`: the schema, as one numbered history (``MIGRATIONS``).
- one repository module per kind of state (:mod:`~agent.storage.settings`,
  :mod:`~agent.storage.outbox`, :mod:`~agent.storage.journal`,
  :mod:`~agent.storage.authorization`, :mod:`~agent.storage.charging_profiles`), each a mixin
  holding that state's SQL.

:class:`Storage` composes them; callers only ever see ``Storage`` and its methods. A new kind of
state (certificates, firmware jobs) is one new repository module, one script
appended to ``MIGRATIONS`` and one more base class of ``Storage``.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.core.model import TxRecord
from agent.storage.authorization import AuthorizationRepository
from agent.storage.charging_profiles import ChargingProfileRepository
from agent.storage.display import DisplayRepository
from agent.storage.engine import APPLICATION_ID, BUSY_TIMEOUT_MS, MEMORY, Engine, StorageError
from agent.storage.journal import JournalRepository
from agent.storage.migrations import MIGRATIONS
from agent.storage.outbox import OutboxItem, OutboxRepository
from agent.storage.reservations import ReservationRepository
from agent.storage.settings import SettingsRepository
from agent.storage.tariffs import TariffRepository

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_MS",
    "MEMORY",
    "MIGRATIONS",
    "OutboxItem",
    "Storage",
    "StorageError",
    "TxRecord",
]


class Storage(
    Engine, SettingsRepository, OutboxRepository, JournalRepository, AuthorizationRepository,
    ChargingProfileRepository, ReservationRepository, DisplayRepository, TariffRepository,
):
    """The agent's durable state; open one per state file, for the life of the process."""

    def _migrations(self) -> Sequence[str]:
        # Looked up when a file is opened, not bound at import, so that a test can open a file
        # with extra migrations appended (monkeypatching ``agent.storage.MIGRATIONS``).
        return MIGRATIONS
