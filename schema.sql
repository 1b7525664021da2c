-- snapfs catalog, schema version 3 (PRAGMA user_version = 3). Older versions are
-- migrated in one transaction when first opened for writing: version 1 lacked
-- dir_entries.cookie, version 2 the per-generation totals and the generation indexes.
--
-- One SQLite database, REPO/catalog.db, in WAL mode. It holds every generation of the
-- tree (the live one and every snapshot), the list of chunks and where their copies are,
-- the mirrors, and the repository's settings.
--
-- Versioning. Every row of inodes, dir_entries, extents and xattrs carries the half-open
-- generation range [gen_from, gen_to) in which it is visible. gen_to = 9223372036854775807
-- (i64::MAX) means "still open". Generation G sees exactly the rows with
-- gen_from <= G < gen_to; per key, the visible ranges never overlap, so the row a
-- generation sees is "the one with the greatest gen_from <= G, if its gen_to > G", which
-- the primary keys answer with one index probe.
--   * The live generation is the newest one, the only one with frozen_ns IS NULL.
--   * Freezing it (taking a snapshot) writes one generations row and opens the next
--     generation: O(1), whatever the size of the tree. Every open row stays visible to both.
--   * Changing a row that an older generation can see closes it (gen_to = live) and
--     inserts the new version with gen_from = live; a row born in the live generation is
--     updated or deleted in place.
-- Times are integer nanoseconds since the Unix epoch (UTC). Names are raw bytes (BLOB):
-- Linux file names need not be UTF-8.

-- Repository settings, fixed at `snapfs init` unless noted.
--   repo_id       32 hex digits, also written into every mirror's MIRROR file
--   chunk_min, chunk_avg, chunk_max   FastCDC sizes in bytes; chunk_max also bounds every
--                 extent's length, which range queries on extents rely on
--   chunk_seed    FastCDC gear seed (decimal u64), random per repository, so that chunk
--                 boundaries do not leak content across repositories
--   zstd_level    zstd level for new chunks, or 'none'
--   created_ns    when the repository was made
--   next_inode_id the next inode id to hand out (ids are never reused)
--   sync_count    durable syncs of the catalog so far (each `sync` commits a change to
--                 it, so the commit has something to write and fsync; see Catalog::sync)
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Generations: the live tree and every snapshot.
CREATE TABLE generations (
    gen_id     INTEGER PRIMARY KEY NOT NULL, -- 1, 2, 3 …, increasing with time
    name       TEXT UNIQUE,                  -- '@YYYY-MM-DDTHHMMSSZ' once frozen; NULL while live
    label      TEXT,                         -- free text given to `snapfs snapshot --label`
    created_ns INTEGER NOT NULL,             -- when the generation was opened
    frozen_ns  INTEGER,                      -- when it was frozen (the snapshot's time); NULL = live
    held       INTEGER NOT NULL DEFAULT 0,   -- 1 = pinned by `snapfs hold` against forget
    -- The tree's totals, copied from live_totals when the generation is frozen (a
    -- snapshot never changes, so neither do they); NULL while live.
    inodes        INTEGER,                   -- inodes of every kind, the root included
    files         INTEGER,                   -- regular files
    logical_bytes INTEGER,                   -- sum of regular files' sizes
    data_bytes    INTEGER                    -- sum of extent lengths (holes excluded)
);

-- The live tree's totals (the columns of generations above), one row, kept by the
-- triggers below on every change of a row the live generation sees (gen_to = open),
-- so that `snapfs list`, `status` and a snapshot never count a tree.
CREATE TABLE live_totals (
    id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    inodes        INTEGER NOT NULL,
    files         INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    data_bytes    INTEGER NOT NULL
);
INSERT INTO live_totals VALUES (0, 0, 0, 0, 0);

-- Inodes: one row per version of a file, folder, symlink or special file.
CREATE TABLE inodes (
    inode_id INTEGER NOT NULL,   -- catalog inode id; 1 is the root folder in every generation
    gen_from INTEGER NOT NULL,   -- first generation that sees this version
    gen_to   INTEGER NOT NULL,   -- first generation that no longer sees it (i64::MAX = open)
    kind     INTEGER NOT NULL,   -- 1 file, 2 folder, 3 symlink, 4 fifo, 5 socket, 6 char device, 7 block device
    mode     INTEGER NOT NULL,   -- permission bits with setuid, setgid and sticky (07777); no type bits
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    size     INTEGER NOT NULL,   -- logical size in bytes (a symlink: its target's length)
    nlink    INTEGER NOT NULL,   -- names that point here; a folder counts "." and its subfolders' ".."
    rdev     INTEGER NOT NULL,   -- device number of char/block devices, else 0
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target   BLOB,               -- symlink target; NULL for every other kind
    PRIMARY KEY (inode_id, gen_from),
    CHECK (gen_from < gen_to)
) WITHOUT ROWID;

-- Directory entries: the name `name` in folder `parent_id` points at `inode_id`.
CREATE TABLE dir_entries (
    parent_id INTEGER NOT NULL,  -- inode id of the folder
    name      BLOB NOT NULL,     -- 1 to 255 bytes, no '/' and no NUL, never "." or ".."
    gen_from  INTEGER NOT NULL,
    gen_to    INTEGER NOT NULL,
    inode_id  INTEGER NOT NULL,  -- inode the name points at (visible in the same generations)
    cookie    INTEGER NOT NULL,  -- the name's position in listings of its folder: a hash of
                                 -- the name in [16, 2^62), the next free value on a collision.
                                 -- Invariant: within one folder, rows with the same cookie
                                 -- have the same name (in every generation), and a name keeps
                                 -- the cookie of its newest older row. So a listing that
                                 -- resumes "after cookie C" returns every name that exists for
                                 -- the whole listing exactly once, whatever else changes.
    PRIMARY KEY (parent_id, name, gen_from),
    CHECK (gen_from < gen_to)
) WITHOUT ROWID;

-- Which names point at an inode (hard links, rename, "which files does this chunk hurt").
CREATE INDEX dir_entries_by_inode ON dir_entries (inode_id, gen_from);

-- Listings in cookie order, resumable after any cookie, without touching other rows
-- (covering: the primary key columns name and gen_from are part of every index).
CREATE INDEX dir_entries_by_cookie ON dir_entries (parent_id, cookie, gen_to, inode_id);

-- Extents: bytes [file_offset, file_offset + length) of a regular file are bytes
-- [chunk_offset, chunk_offset + length) of the plaintext of chunk chunk_id.
-- Within one generation the extents of a file never overlap. A gap between extents,
-- or past the last extent up to the file's size, is a hole and reads as zeros: holes
-- cost no row and no chunk. length <= settings.chunk_max.
CREATE TABLE extents (
    inode_id     INTEGER NOT NULL,
    file_offset  INTEGER NOT NULL,
    gen_from     INTEGER NOT NULL,
    gen_to       INTEGER NOT NULL,
    length       INTEGER NOT NULL CHECK (length > 0),
    chunk_id     BLOB NOT NULL REFERENCES chunks (chunk_id),
    chunk_offset INTEGER NOT NULL,
    PRIMARY KEY (inode_id, file_offset, gen_from),
    CHECK (gen_from < gen_to)
) WITHOUT ROWID;

CREATE INDEX extents_by_chunk ON extents (chunk_id);

-- Extended attributes.
CREATE TABLE xattrs (
    inode_id INTEGER NOT NULL,
    name     BLOB NOT NULL,      -- full name with namespace, e.g. 'user.comment'
    gen_from INTEGER NOT NULL,
    gen_to   INTEGER NOT NULL,
    value    BLOB NOT NULL,
    PRIMARY KEY (inode_id, name, gen_from),
    CHECK (gen_from < gen_to)
) WITHOUT ROWID;

-- Chunks: every chunk the repository stores.
-- Invariant (write order): a chunk row and every extent that references it are
-- committed only after the chunk is durable (synced) in every mirror its `mirrors` names.
CREATE TABLE chunks (
    chunk_id    BLOB PRIMARY KEY NOT NULL, -- BLAKE3 of the plaintext (32 bytes)
    plain_size  INTEGER NOT NULL,          -- plaintext bytes
    stored_size INTEGER NOT NULL,          -- bytes of the object file (header + payload)
    mirrors     INTEGER NOT NULL,          -- bitmask of mirror ids holding a good copy
    refs        INTEGER NOT NULL DEFAULT 0 -- extent rows (any generation) that reference it; kept by triggers
) WITHOUT ROWID;

-- Chunks whose reference count fell to zero: what gc has to look at, so that gc costs
-- time in proportion to the garbage. A chunk referenced again leaves the table.
CREATE TABLE chunk_garbage (
    chunk_id BLOB PRIMARY KEY NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER extents_ref AFTER INSERT ON extents BEGIN
    UPDATE chunks SET refs = refs + 1 WHERE chunk_id = NEW.chunk_id;
    DELETE FROM chunk_garbage WHERE chunk_id = NEW.chunk_id;
END;

CREATE TRIGGER extents_unref AFTER DELETE ON extents BEGIN
    UPDATE chunks SET refs = refs - 1 WHERE chunk_id = OLD.chunk_id;
    INSERT OR IGNORE INTO chunk_garbage (chunk_id)
        SELECT chunk_id FROM chunks WHERE chunk_id = OLD.chunk_id AND refs = 0;
END;

-- live_totals follow every insert, delete and change of a row the live tree sees
-- (9223372036854775807 = open): forget and gc touch only closed rows, so cost nothing.
CREATE TRIGGER inodes_live_insert AFTER INSERT ON inodes
WHEN NEW.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET inodes = inodes + 1, files = files + (NEW.kind = 1),
        logical_bytes = logical_bytes + (CASE WHEN NEW.kind = 1 THEN NEW.size ELSE 0 END);
END;

CREATE TRIGGER inodes_live_delete AFTER DELETE ON inodes
WHEN OLD.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET inodes = inodes - 1, files = files - (OLD.kind = 1),
        logical_bytes = logical_bytes - (CASE WHEN OLD.kind = 1 THEN OLD.size ELSE 0 END);
END;

CREATE TRIGGER inodes_live_update AFTER UPDATE OF gen_to, kind, size ON inodes
WHEN OLD.gen_to = 9223372036854775807 OR NEW.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET
        inodes = inodes + (NEW.gen_to = 9223372036854775807) - (OLD.gen_to = 9223372036854775807),
        files = files + (NEW.gen_to = 9223372036854775807 AND NEW.kind = 1)
                      - (OLD.gen_to = 9223372036854775807 AND OLD.kind = 1),
        logical_bytes = logical_bytes
            + (CASE WHEN NEW.gen_to = 9223372036854775807 AND NEW.kind = 1 THEN NEW.size ELSE 0 END)
            - (CASE WHEN OLD.gen_to = 9223372036854775807 AND OLD.kind = 1 THEN OLD.size ELSE 0 END);
END;

CREATE TRIGGER extents_live_insert AFTER INSERT ON extents
WHEN NEW.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET data_bytes = data_bytes + NEW.length;
END;

CREATE TRIGGER extents_live_delete AFTER DELETE ON extents
WHEN OLD.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET data_bytes = data_bytes - OLD.length;
END;

CREATE TRIGGER extents_live_update AFTER UPDATE OF gen_to, length ON extents
WHEN OLD.gen_to = 9223372036854775807 OR NEW.gen_to = 9223372036854775807 BEGIN
    UPDATE live_totals SET data_bytes = data_bytes
        + (CASE WHEN NEW.gen_to = 9223372036854775807 THEN NEW.length ELSE 0 END)
        - (CASE WHEN OLD.gen_to = 9223372036854775807 THEN OLD.length ELSE 0 END);
END;

-- Generation indexes: "rows born in (A, B]" (by gen_from) and "rows closed in (A, B]"
-- (by gen_to; only closed rows, so the live tree's rows cost no entry there) make
-- forget, rollback, diff and a snapshot's own bytes cost in proportion to what changed
-- between generations, not to the tree. A query uses a `_closed` index only when it
-- says `gen_to != 9223372036854775807` in so many words (SQLite's partial-index rule).
CREATE INDEX inodes_born ON inodes (gen_from);
CREATE INDEX inodes_closed ON inodes (gen_to, gen_from) WHERE gen_to != 9223372036854775807;
CREATE INDEX dir_entries_born ON dir_entries (gen_from);
CREATE INDEX dir_entries_closed ON dir_entries (gen_to, gen_from) WHERE gen_to != 9223372036854775807;
CREATE INDEX extents_born ON extents (gen_from);
CREATE INDEX extents_closed ON extents (gen_to, gen_from, chunk_id) WHERE gen_to != 9223372036854775807;
CREATE INDEX xattrs_born ON xattrs (gen_from);
CREATE INDEX xattrs_closed ON xattrs (gen_to, gen_from) WHERE gen_to != 9223372036854775807;

-- Live inodes with no link: open files unlinked (and folders removed) while in use,
-- which a mount removes when it starts after a crash and a rollback settles. Few, so
-- finding them costs nothing, whatever the tree.
CREATE INDEX inodes_nameless ON inodes (inode_id) WHERE gen_to = 9223372036854775807 AND nlink = 0;

-- Mirrors: the object folders that each hold a copy of every chunk.
CREATE TABLE mirrors (
    mirror_id INTEGER PRIMARY KEY NOT NULL, -- 0 … 63 (bit in chunks.mirrors); never reused
    path      TEXT NOT NULL UNIQUE,         -- absolute path of the mirror folder
    state     TEXT NOT NULL,                -- 'complete': holds every chunk; 'filling': being resilvered
    added_ns  INTEGER NOT NULL
);
