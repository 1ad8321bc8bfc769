"""Authorization data kept offline: the authorization cache and the local authorization list.

Both let the station decide on an identifier while the CSMS is unreachable, and they differ in
who owns them. The cache (``auth_cache``) is the station's own memory of answers the CSMS gave,
with an expiry judged by the injected clock; given a size limit, it makes room as OCPP 1.6
section 3.5.1 says. The local list (``local_list``) is installed by the CSMS, whole or as
differences, together with its version number, and each update lands entirely or not at all;
the version lives in the ``meta`` table (the agent's own bookkeeping, apart from CSMS settings).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from agent.storage.engine import Repository, _dumps, _iso


def _parse_ts(value: str) -> datetime:
    """Compare instants, not strings: 'Z', '+00:00' and fractional seconds all occur."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class AuthorizationRepository(Repository):
    """``auth_cache_*`` (table ``auth_cache``) and ``local_list_*`` (``local_list``, ``meta``)."""

    def auth_cache_get(self, id_token: str, *, include_expired: bool = False) -> dict | None:
        """The cached info, or None if absent or past its ``expires_at`` (by the injected clock).

        An expired entry is left in place: deleting it would turn every read into an fsync.
        ``include_expired`` returns it anyway, for a caller that judges expiry with its own
        (CSMS-corrected) clock: an identifier known to be expired must be rejected offline,
        not mistaken for an unknown one.
        """
        rows = self._read(
            "SELECT info, expires_at FROM auth_cache WHERE id_token = ?",
            (id_token,),
            "reading the authorization cache",
        )
        if not rows:
            return None
        info, expires_at = rows[0]
        if expires_at is not None and not include_expired:
            now = datetime.fromtimestamp(self._clock(), UTC)
            if _parse_ts(expires_at) <= now:
                return None
        return json.loads(info)

    def auth_cache_put(self, id_token: str, info: dict, expires_at: str | None, *,
                       limit: int | None = None) -> None:
        """Insert or update an entry; with ``limit``, make room as 1.6 section 3.5.1 says.

        When the cache is full, NOT-valid entries (status other than Accepted) go first, then
        the oldest valid ones.
        """
        text = _dumps(info)
        if expires_at is not None:
            _parse_ts(expires_at)  # reject a malformed timestamp now, not at every lookup
        with self._write("updating the authorization cache") as conn:
            conn.execute(
                "INSERT INTO auth_cache (id_token, info, expires_at, stored_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id_token) DO UPDATE SET "
                "info = excluded.info, expires_at = excluded.expires_at, "
                "stored_at = excluded.stored_at",
                (id_token, text, expires_at, _iso(self._clock())),
            )
            if limit is not None:
                excess = conn.execute("SELECT count(*) FROM auth_cache").fetchone()[0] - limit
                if excess > 0:
                    conn.execute(
                        "DELETE FROM auth_cache WHERE id_token IN (SELECT id_token FROM "
                        "auth_cache WHERE id_token != ? ORDER BY "
                        "(json_extract(info, '$.status') = 'Accepted'), stored_at LIMIT ?)",
                        (id_token, excess),
                    )

    def auth_cache_count(self) -> int:
        return self._read("SELECT count(*) FROM auth_cache", (), "counting the cache")[0][0]

    def auth_cache_clear(self) -> None:
        with self._write("clearing the authorization cache") as conn:
            conn.execute("DELETE FROM auth_cache")

    def local_list_version(self) -> int:
        """The version of the last update installed, 0 before the first one.

        What a CSMS is told is the core's (:meth:`AuthorizationPolicy.local_list_version`:
        0 while the list is empty); this is the bookkeeping.
        """
        rows = self._read(
            "SELECT value FROM meta WHERE key = 'local_list_version'",
            (),
            "reading the local list version",
        )
        return int(rows[0][0]) if rows else 0

    def local_list_get(self, id_token: str) -> dict | None:
        rows = self._read(
            "SELECT info FROM local_list WHERE id_token = ?",
            (id_token,),
            "reading the local authorization list",
        )
        return json.loads(rows[0][0]) if rows else None

    def local_list_replace(self, version: int, entries: dict[str, dict]) -> None:
        """Full update: the old list and version are replaced together or not at all."""
        encoded = [(token, _dumps(info)) for token, info in entries.items()]
        with self._write("replacing the local authorization list") as conn:
            conn.execute("DELETE FROM local_list")
            conn.executemany("INSERT INTO local_list (id_token, info) VALUES (?, ?)", encoded)
            self._set_list_version(conn, version)

    def local_list_apply(self, version: int, entries: dict[str, dict | None]) -> None:
        """Differential update (None deletes a token); all of it and the version, or nothing."""
        upserts = [(t, _dumps(info)) for t, info in entries.items() if info is not None]
        deletes = [(t,) for t, info in entries.items() if info is None]
        with self._write("updating the local authorization list") as conn:
            conn.executemany("DELETE FROM local_list WHERE id_token = ?", deletes)
            conn.executemany(
                "INSERT INTO local_list (id_token, info) VALUES (?, ?) "
                "ON CONFLICT (id_token) DO UPDATE SET info = excluded.info",
                upserts,
            )
            self._set_list_version(conn, version)

    @staticmethod
    def _set_list_version(conn: sqlite3.Connection, version: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('local_list_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(int(version)),),
        )

    def local_list_count(self) -> int:
        return self._read("SELECT count(*) FROM local_list", (), "counting the local list")[0][0]
