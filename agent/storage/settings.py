"""Settings the CSMS changed (configuration keys, device-model variables, network profiles).

Plain string key/value pairs in the ``settings`` table: the protocol adapters own the naming
(``v16.HeartbeatInterval``, ``v201.network_profile.2``, ...) and the parsing, so this
repository stores text and nothing else. Each write is its own fsynced commit, or part of the
caller's ``atomic()`` block, like every other write.
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

    def get_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,), "reading a setting")
        value = rows[0][0] if rows else None
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

    def delete_setting(self, key: str) -> None:
        with self._write(f"deleting setting {key!r}") as conn:
            conn.execute("DELETE FROM settings WHERE key = ?", (key,))

    def settings(self, prefix: str = "") -> dict[str, str]:
        rows = self._read(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
            "reading settings",
        )
        out = {row[0]: row[1] for row in rows}
        SECRETS.add_all(v for k, v in out.items() if v and SECRET_KEY.search(k))
        return out
