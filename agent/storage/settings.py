"""Settings the CSMS changed (configuration keys, device-model variables, network profiles).

Plain string key/value pairs in the ``settings`` table: the protocol adapters own the naming
(``v16.HeartbeatInterval``, ``v201.network_profile.2``, ...) and the parsing, so this
repository stores text and nothing else. Each write is its own fsynced commit, or part of the
caller's ``atomic()`` block, like every other write.

Reads come from a copy of the table loaded by the first one (one query instead of one per
key: a start-up reads some twenty keys, and each SQLite statement is compiled anew per
connection, which a swarm pays per station).  Writes go to the database first, exactly as
before, and to the copy once the statement has run; any rollback (``Engine._rollbacks``)
drops the copy, so it never holds what the database does not.  The agent's process is the
only writer of its state file (the engine's lock).
"""

from __future__ import annotations

import re

from agent.redaction import SECRETS
from agent.storage.engine import Repository

# Keys whose values are credentials (link.password, the 2.0.1 BasicAuthPassword, the 1.6
# AuthorizationKey): registered with the log's secret registry whenever written or read, so
# a password a CSMS sets is masked in every log line from that moment on.
SECRET_KEY = re.compile(r"(?i)password|authorizationkey|secret")


class SettingsRepository(Repository):
    """``get_setting``/``set_setting``/``delete_setting``/``settings``: the ``settings`` table."""

    _settings_copy: dict[str, str] | None = None
    _settings_copy_at = -1  # the engine's rollback count when the copy was made

    def _settings_table(self) -> dict[str, str]:
        copy = self._settings_copy
        if copy is None or self._settings_copy_at != self._rollbacks:
            # A pristine database in memory (a swarm station's) has no settings yet: no
            # statement to compile for an empty table.
            rows = [] if self.pristine else self._read("SELECT key, value FROM settings", (),
                                                       "reading settings")
            copy = {row[0]: row[1] for row in rows}
            self._settings_copy = copy
            self._settings_copy_at = self._rollbacks
        return copy

    def _settings_written(self, key: str, value: str | None) -> None:
        """The statement ran: the copy follows (a stale copy is reloaded anyway)."""
        copy = self._settings_copy
        if copy is None or self._settings_copy_at != self._rollbacks:
            return
        if value is None:
            copy.pop(key, None)
        else:
            copy[key] = value

    def get_setting(self, key: str) -> str | None:
        self._require()  # a closed database says so, as a query would
        value = self._settings_table().get(key)
        if value and SECRET_KEY.search(key):
            SECRETS.add(value)
        return value

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"setting {key!r}: value must be a str, got {type(value).__name__}")
        if SECRET_KEY.search(key):
            SECRETS.add(value)  # masked before the write can fail and log it
        with self._write(f"saving setting {key!r}") as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            self._settings_written(key, value)

    def delete_setting(self, key: str) -> None:
        with self._write(f"deleting setting {key!r}") as conn:
            conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            self._settings_written(key, None)

    def settings(self, prefix: str = "") -> dict[str, str]:
        """The settings whose key starts with ``prefix``, in key order."""
        self._require()
        table = self._settings_table()
        # Python orders str by code point, as SQLite's BINARY collation orders UTF-8 bytes.
        out = {k: table[k] for k in sorted(table) if k.startswith(prefix)}
        SECRETS.add_all(v for k, v in out.items() if v and SECRET_KEY.search(k))
        return out
