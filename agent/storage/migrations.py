"""The schema of the state file, as numbered migrations.

One list for all repositories, because a state file has one schema version
(``PRAGMA user_version``) and the migrations of all tables form one history: ``MIGRATIONS[n]``
brings a database from version n to n + 1, whichever tables it touches. A new repository adds
its tables by appending a script here. The engine (:mod:`agent.storage.engine`) runs them; it
knows nothing of what they create.
"""

from __future__ import annotations

from agent.storage.engine import APPLICATION_ID

# Schema migrations: MIGRATIONS[n] brings a database from version n to n + 1. Append only;
# never edit a released script, databases in the field have already run it. The runner wraps
# each script in a transaction and bumps user_version in it, so scripts hold no BEGIN/COMMIT.
MIGRATIONS: list[str] = [
    # 1: initial schema
    f"""
    PRAGMA application_id = {APPLICATION_ID};

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- AUTOINCREMENT: ids are never reused, even when the queue drains, so an id held by the
    -- sender can never come to mean a different message, and FIFO-by-id stays FIFO.
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        action       TEXT    NOT NULL,
        payload      TEXT    NOT NULL,
        tx_ref       TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL    NOT NULL DEFAULT 0,
        created      TEXT    NOT NULL
    );
    CREATE INDEX outbox_tx_ref ON outbox (tx_ref) WHERE tx_ref IS NOT NULL;

    CREATE TABLE dropped (
        id         INTEGER PRIMARY KEY,
        action     TEXT    NOT NULL,
        payload    TEXT    NOT NULL,
        tx_ref     TEXT,
        attempts   INTEGER NOT NULL,
        created    TEXT    NOT NULL,
        dropped_at TEXT    NOT NULL,
        reason     TEXT    NOT NULL
    );

    CREATE TABLE transactions (
        local_id       TEXT    PRIMARY KEY,
        evse_id        INTEGER NOT NULL,
        connector_id   INTEGER NOT NULL,
        id_token       TEXT    NOT NULL,
        token_type     TEXT,
        started_at     TEXT    NOT NULL,
        meter_start_wh REAL    NOT NULL,
        remote_id      TEXT,
        last_meter_wh  REAL    NOT NULL,
        last_meter_at  TEXT,
        stopped_at     TEXT,
        stop_reason    TEXT,
        meter_stop_wh  REAL,
        seq_no         INTEGER NOT NULL DEFAULT 0,
        data           TEXT    NOT NULL DEFAULT '{{}}',
        closed         INTEGER NOT NULL DEFAULT 0
    );
    -- not UNIQUE: some CSMSs hand out the same id (0, -1) for every rejected start
    CREATE INDEX transactions_remote_id ON transactions (remote_id);

    CREATE TABLE auth_cache (
        id_token   TEXT PRIMARY KEY,
        info       TEXT NOT NULL,
        expires_at TEXT,
        stored_at  TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE local_list (
        id_token TEXT PRIMARY KEY,
        info     TEXT NOT NULL
    ) WITHOUT ROWID;

    -- the agent's own bookkeeping (local list version, ...), kept apart from CSMS settings
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: how often each queued message was handed to the link. A message with sends > 0 found
    # at start-up may have reached the CSMS before the crash: resending it is the 1.6
    # duplicate window, which the agent can then at least name in its log.
    """
    ALTER TABLE outbox ADD COLUMN sends INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: charging profiles installed by the CSMS (agent.storage.charging_profiles)
    """
    CREATE TABLE charging_profiles (
        id          INTEGER PRIMARY KEY,
        evse_id     INTEGER NOT NULL,
        purpose     TEXT    NOT NULL,
        stack_level INTEGER NOT NULL,
        data        TEXT    NOT NULL,
        seq         INTEGER NOT NULL
    );
    """,
    # 4: reservations the CSMS made (agent.storage.reservations); evse_id NULL: any EVSE
    """
    CREATE TABLE reservations (
        id         INTEGER PRIMARY KEY,
        evse_id    INTEGER,
        expires_at TEXT    NOT NULL,
        data       TEXT    NOT NULL DEFAULT '{}'
    );
    """,
    # 5: messages the CSMS set for the display, and what transactions cost
    # (agent.storage.display)
    """
    CREATE TABLE display_messages (
        id   INTEGER PRIMARY KEY,
        data TEXT    NOT NULL,
        seq  INTEGER NOT NULL
    );
    CREATE TABLE tx_costs (
        local_id TEXT    PRIMARY KEY,
        evse_id  INTEGER NOT NULL,
        data     TEXT    NOT NULL,
        seq      INTEGER NOT NULL
    );
    """,
    # 6: tariffs for the station's own cost calculation (2.1 local cost, agent.storage.tariffs)
    """
    CREATE TABLE tariffs (
        tariff_id    TEXT    PRIMARY KEY,
        data         TEXT    NOT NULL,
        evses        TEXT    NOT NULL,
        installed_at TEXT    NOT NULL,
        seq          INTEGER NOT NULL
    );
    CREATE TABLE tx_tariffs (
        local_id TEXT    PRIMARY KEY,
        evse_id  INTEGER NOT NULL,
        data     TEXT    NOT NULL
    );
    CREATE TABLE tx_cost_samples (
        local_id TEXT    NOT NULL,
        seq      INTEGER NOT NULL,
        data     TEXT    NOT NULL,
        PRIMARY KEY (local_id, seq)
    ) WITHOUT ROWID;
    """,
]
