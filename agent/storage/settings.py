"""Settings the CSMS changed (configuration keys, device-model variables, network profiles).

Plain string key/value pairs in the ``settings`` table: the protocol adapters own the naming
(``v16.HeartbeatInterval``, ``v201.network_profile.2``, ...) and the parsing, so this
repository stores text and nothing else. Each write is its own fsynced commit, or part of the
caller's ``atomic()`` block, like every other write.
"""

from __future__ import annotations

from agent.storage.engine import Repository


class SettingsRepository(Repository):
    """``get_setting``/``set_setting``/``delete_setting``/``settings``: the ``settings`` table."""

    def get_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,), "reading a setting")
        return rows[0][0] if rows else None

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"setting {key!r}: value must be a str, got {type(value).__name__}")
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
        return {row[0]: row[1] for row in rows}
