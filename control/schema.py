"""The control plane's versioned schema: migrations, applied in order by ``db.migrate``.

Portable SQL only (see control/db.py): TEXT ids made by the application, times as unix
seconds in DOUBLE PRECISION, booleans as INTEGER 0/1, JSON documents in TEXT. A released
migration is never edited: a change is a new migration with the next version.
"""

from __future__ import annotations

from .db import Migration

V1 = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,             -- normalised (control.auth.normalize_email)
    password_hash TEXT NOT NULL,            -- scrypt, self-describing
    role TEXT NOT NULL DEFAULT 'user',      -- user | admin
    created_at DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL DEFAULT 0       -- bumped first to serialise per-account writes
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,            -- SHA-256 of the bearer token; the token is not kept
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_account ON sessions(account_id, expires_at);

CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    maturity_limit INTEGER NOT NULL,        -- highest age rating shown, 0..18
    kids INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (account_id, name)
);
CREATE INDEX profiles_account ON profiles(account_id);

CREATE TABLE subscriptions (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,                   -- pending | active | canceled
    period_start DOUBLE PRECISION,
    period_end DOUBLE PRECISION,            -- paid until; playback is refused after it
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0,
    next_plan_id TEXT,                      -- a downgrade waiting for the next period
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    plan_id TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,                   -- open | paid | void
    period_start DOUBLE PRECISION NOT NULL,
    period_end DOUBLE PRECISION NOT NULL,
    provider TEXT NOT NULL,
    reference TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    paid_at DOUBLE PRECISION
);
CREATE INDEX invoices_account ON invoices(account_id, created_at);
CREATE INDEX invoices_status ON invoices(status, created_at);

CREATE TABLE titles (
    id TEXT PRIMARY KEY,                    -- a slug, [a-z0-9-]
    kind TEXT NOT NULL,                     -- movie | series
    name TEXT NOT NULL,
    synopsis TEXT NOT NULL DEFAULT '',
    year INTEGER,
    maturity INTEGER NOT NULL DEFAULT 0,    -- minimum age, 0..18
    genres TEXT NOT NULL DEFAULT '[]',      -- JSON array of strings
    cast_members TEXT NOT NULL DEFAULT '[]',
    artwork TEXT NOT NULL DEFAULT '{}',     -- JSON object: kind -> path or URL
    duration DOUBLE PRECISION,              -- seconds (movies)
    media_key TEXT UNIQUE,                  -- movies: the origin title, served under /v/<key>/
    renditions TEXT NOT NULL DEFAULT '[]',  -- JSON, from the origin's catalog feed
    published INTEGER NOT NULL DEFAULT 1,
    source TEXT NOT NULL DEFAULT 'admin',   -- admin | origin
    released_at DOUBLE PRECISION NOT NULL,  -- entered the catalog (New Releases)
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE episodes (
    id TEXT PRIMARY KEY,
    title_id TEXT NOT NULL REFERENCES titles(id) ON DELETE CASCADE,
    season INTEGER NOT NULL,
    number INTEGER NOT NULL,
    name TEXT NOT NULL,
    synopsis TEXT NOT NULL DEFAULT '',
    duration DOUBLE PRECISION,
    media_key TEXT UNIQUE,
    renditions TEXT NOT NULL DEFAULT '[]',
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (title_id, season, number)
);

-- Resume positions and watch history: the latest position per profile, title and episode
-- ('' for a movie). The client's timestamp decides which of two devices' writes wins.
CREATE TABLE watch_state (
    profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    title_id TEXT NOT NULL,
    episode_id TEXT NOT NULL DEFAULT '',
    position DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION,
    finished INTEGER NOT NULL DEFAULT 0,
    client_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (profile_id, title_id, episode_id)
);
CREATE INDEX watch_state_recent ON watch_state(profile_id, client_at);

CREATE TABLE my_list (
    profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    title_id TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (profile_id, title_id)
);

CREATE TABLE ratings (
    profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    title_id TEXT NOT NULL,
    rating INTEGER NOT NULL,                -- 1 thumbs up, -1 thumbs down
    rated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (profile_id, title_id)
);

-- One row per playback session: concurrent-stream leases while it is alive, then play
-- counts and bytes for popularity.
CREATE TABLE plays (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    profile_id TEXT NOT NULL,
    title_id TEXT NOT NULL,
    episode_id TEXT NOT NULL DEFAULT '',
    media_key TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    client_ip TEXT NOT NULL DEFAULT '',
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    lease_expires_at DOUBLE PRECISION NOT NULL,  -- holds a stream slot until then
    stopped_at DOUBLE PRECISION,
    position DOUBLE PRECISION NOT NULL DEFAULT 0,
    seconds_watched DOUBLE PRECISION NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX plays_leases ON plays(account_id, lease_expires_at);
CREATE INDEX plays_started ON plays(started_at);

-- Batch output: home rows per profile, and title popularity (decayed plays).
CREATE TABLE home_rows (
    profile_id TEXT PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
    rows TEXT NOT NULL,                     -- JSON list of {name, label, titles}
    computed_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE popularity (
    title_id TEXT PRIMARY KEY,
    score DOUBLE PRECISION NOT NULL,
    computed_at DOUBLE PRECISION NOT NULL
);

-- Small named values: the catalog version (bumped on every catalog change, so other
-- instances rebuild their search index) and the origin feed's last sequence number.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""

# Playback (control/playback.py): the session's ranked edges ([{"id", "url"}], JSON), so the
# per-session multivariant playlist names the same first edge the start answered with.
V2 = """
ALTER TABLE plays ADD COLUMN edges TEXT NOT NULL DEFAULT '[]'
"""

# Catalog (control/catalog.py, control/feed.py): whether an episode's media is available. The
# origin's feed withdraws a title by key; an episode keeps its media_key (so a re-publication
# finds it again) and is marked unavailable instead.
V3 = """
ALTER TABLE episodes ADD COLUMN published INTEGER NOT NULL DEFAULT 1
"""

# Billing (control/billing.py): what an invoice buys. 'period' (a first invoice or a renewal,
# every invoice before this migration) or 'upgrade' (the prorated difference of a plan upgrade;
# its plan_id is the plan paid for, applied when it is paid).
V4 = """
ALTER TABLE invoices ADD COLUMN kind TEXT NOT NULL DEFAULT 'period'
"""

# Accounts (control/accounts.py): the sign-in and sign-up rate limits' token buckets, shared by
# every worker and instance. One row per (limit, key), named by a SHA-256 digest so that no
# client address or e-mail is kept; a row idle long enough to be full again is deleted.
V5 = """
CREATE TABLE rate_buckets (
    id TEXT PRIMARY KEY,                    -- SHA-256 of limit name and key
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    full_at DOUBLE PRECISION NOT NULL       -- when it is full again if left alone
);
CREATE INDEX rate_buckets_full ON rate_buckets(full_at)
"""

# Personal state (control/library.py): a title deleted from a profile's history, and when
# (server time). Positions older than the deletion (a heartbeat of a play started before it,
# a resume write with an earlier client_at) no longer bring the title back.
V6 = """
CREATE TABLE history_deletions (
    profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    title_id TEXT NOT NULL,
    deleted_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (profile_id, title_id)
)
"""

# Proactive fill (control/fill.py, control/feed.py). A play records where it was served from
# (the site of steering's first edge; '' when playback fell back to playback.fallback_url) and
# its plan's height cap at the start, for the per-region popularity of files. media_files: the
# files of each published media key, from the origin's /v/<key>/manifest.json, replaced on a
# re-publication and removed on a withdrawal; media_files_wanted: the keys whose manifest is
# still to be read (the feed entry's seq; a failed read is retried on the next poll, and a
# restart finds the work where it was left).
V7 = """
ALTER TABLE plays ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE plays ADD COLUMN max_height INTEGER;
CREATE TABLE media_files (
    media_key TEXT NOT NULL,
    path TEXT NOT NULL,                     -- relative to /v/<media_key>/
    size BIGINT NOT NULL,                   -- bytes
    xxh64 TEXT NOT NULL,                    -- 16 lower-case hex digits, of the whole file
    PRIMARY KEY (media_key, path)
);
CREATE TABLE media_files_wanted (
    media_key TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,                    -- the feed entry that published it
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at DOUBLE PRECISION NOT NULL
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", V1),
    Migration(2, "plays: ranked edges of the session", V2),
    Migration(3, "episodes: availability from the origin feed", V3),
    Migration(4, "invoices: kind (period or upgrade)", V4),
    Migration(5, "rate_buckets: rate limits shared by instances", V5),
    Migration(6, "history_deletions: deleted history stays deleted", V6),
    Migration(7, "fill: plays' region and height cap, media files", V7),
)
