-- snapfs catalog, schema version 4 (PRAGMA user_version = 4): storage format 2, chunks
-- in pack files. Versions 1 to 3 are format 1 (one object file per chunk per mirror):
-- they are refused with a message naming `snapfs upgrade`, which migrates the catalog
-- (version 1 lacked dir_entries.cookie, version 2 the per-generation totals and the
-- generation indexes, version 3 the pack locations) and moves every chunk into packs,
-- resumably (settings.upgrade says an upgrade is under way).
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

-- Chunks: every chunk the repository stores, and where: the entry of `entry_len` bytes
-- at `pack_offset` of pack `pack_id` (the same place on every mirror, which all hold
-- the same packs byte for byte).
-- Invariant (write order): a chunk row and every extent that references it are
-- committed only after the chunk's pack entry is durable (fdatasync) on every mirror
-- the store counted as healthy.
CREATE TABLE chunks (
    chunk_id    BLOB PRIMARY KEY NOT NULL, -- BLAKE3 of the plaintext (32 bytes)
    plain_size  INTEGER NOT NULL,          -- plaintext bytes
    stored_size INTEGER NOT NULL,          -- bytes of the codec frame (header + payload)
    pack_id     INTEGER,                   -- NULL only during `snapfs upgrade` (not yet packed)
    pack_offset INTEGER,                   -- byte offset of the entry in the pack file
    entry_len   INTEGER,                   -- the entry's bytes: frame + 48 bytes of entry overhead
    refs        INTEGER NOT NULL DEFAULT 0 -- extent rows (any generation) that reference it; kept by triggers
) WITHOUT ROWID;

-- Packs: the entry bytes each pack holds for chunk rows, kept by the triggers below.
-- `live_bytes` counts the entries of chunks that still have a row; the rest of the
-- file is dead (chunks gc dropped, entries a crash or a failed commit left) and comes
-- back when the pack is compacted, or deleted once nothing in it is live.
CREATE TABLE packs (
    pack_id    INTEGER PRIMARY KEY NOT NULL,
    bytes      INTEGER NOT NULL, -- entry bytes of every chunk row ever placed in it
    live_bytes INTEGER NOT NULL  -- entry bytes of the chunk rows that name it now
);

CREATE TRIGGER chunks_pack_insert AFTER INSERT ON chunks WHEN NEW.pack_id IS NOT NULL BEGIN
    INSERT INTO packs (pack_id, bytes, live_bytes) VALUES (NEW.pack_id, NEW.entry_len, NEW.entry_len)
        ON CONFLICT (pack_id) DO UPDATE SET bytes = bytes + excluded.bytes,
            live_bytes = live_bytes + excluded.live_bytes;
END;

CREATE TRIGGER chunks_pack_delete AFTER DELETE ON chunks WHEN OLD.pack_id IS NOT NULL BEGIN
    UPDATE packs SET live_bytes = live_bytes - OLD.entry_len WHERE pack_id = OLD.pack_id;
END;

-- A chunk moved (compaction, upgrade, a catalog rebuilt from the packs).
CREATE TRIGGER chunks_pack_move AFTER UPDATE OF pack_id, pack_offset, entry_len ON chunks BEGIN
    UPDATE packs SET live_bytes = live_bytes - OLD.entry_len
        WHERE OLD.pack_id IS NOT NULL AND pack_id = OLD.pack_id;
    INSERT INTO packs (pack_id, bytes, live_bytes)
        SELECT NEW.pack_id, NEW.entry_len, NEW.entry_len WHERE NEW.pack_id IS NOT NULL
        ON CONFLICT (pack_id) DO UPDATE SET bytes = bytes + excluded.bytes,
            live_bytes = live_bytes + excluded.live_bytes;
END;

-- Chunks by place, so that scrub, check and compaction walk a pack's entries in order.
CREATE INDEX chunks_by_pack ON chunks (pack_id, pack_offset) WHERE pack_id IS NOT NULL;

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

-- Mirrors: the disk folders that each hold every pack.
CREATE TABLE mirrors (
    mirror_id INTEGER PRIMARY KEY NOT NULL, -- 0 … 63; never reused
    path      TEXT NOT NULL UNIQUE,         -- absolute path of the mirror folder
    state     TEXT NOT NULL,                -- 'complete': holds every pack; 'filling': being resilvered
    added_ns  INTEGER NOT NULL
);
