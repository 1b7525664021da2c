#!/usr/bin/env bash
# End-to-end benchmark: the same workloads through a snapfs mount and in a plain folder
# on the same disk, in the same run. Prints a markdown table with MB/s or ops/s, the
# ratio mount/plain, and the daemon's peak RSS during each workload.
#
#   benches/e2e.sh                 # 2 GiB per sequential test
#   SIZE=256M benches/e2e.sh       # smaller
#   READS=5 …                      # cold reads per side (default 3, median reported)
#   BENCH_DIR=/mnt/disk benches/e2e.sh   # where the repository and the plain folder live
#   KEEP=1 …                       # keep the work folder for inspection
#   SNAPFS_BIN=target/debug/snapfs … # use this binary instead of building a release one
#   MOUNT_ARGS="--threads 2" …     # extra arguments for every `snapfs mount`
#   ENTRIES=100000 …               # the big-folder listing (ls -f), cold and warm (0 skips)
#   BIG_ENTRIES=1000000 …          # also list a folder this big (default 0: skipped)
#   ONLY=main …                    # only sequential write/read, untar and small files
#   ONLY=listing …                 # only the listings (big folders, find in a snapshot)
#   ONLY=gc …                      # only the stat+ls probe beside a gc of GC_MIB of 4 KiB chunks
#   GC_MIB=400 …                   # the garbage that probe's gc frees (default 520 MiB, ~100,000 chunks)
#   ONLY=ops …                     # only the stat+ls probe beside a forget and a rollback
#   OPS_FILES=50000 …              # files of the tree those two work on (in 500 folders)
#   ONLY=reclaim …                 # only background reclaim of a deleted 1 GiB file, with the probe
#   ONLY=untar_probe …             # only the stat+ls probe of another folder beside an untar
#   ONLY=parallel …                # only one vs two cold readers and one vs two small-file creators
#   ONLY=fio …                     # only fio: 4 KiB random writes, then reads, of a 1 GiB file, direct I/O
#   ONLY=import …                  # only `snapfs import` of 50,000 files of 64 bytes in 500 folders vs cp -a
#
# On an ext4 without a journal, start a few minutes after any mass deletion (such as
# the previous run's clean-up): new inodes are slow to allocate until then, and the
# mount allocates one per object file.
#
# Needs: FUSE (/dev/fuse, fusermount3), python3, tar, dd, numfmt. Root for dropping the
# page cache before cold reads (without it, files are evicted one by one with fadvise).
set -euo pipefail

SIZE=${SIZE:-2G}
ENTRIES=${ENTRIES:-100000}
BIG_ENTRIES=${BIG_ENTRIES:-0}
ONLY=${ONLY:-}
GC_MIB=${GC_MIB:-520}
OPS_FILES=${OPS_FILES:-50000}
READS=${READS:-3} # cold reads per side, alternating; the table shows the medians
FILES=${FILES:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BYTES=$(numfmt --from=iec "$SIZE")

log() { printf '%s\n' "$*" >&2; }

if [ -n "${SNAPFS_BIN:-}" ]; then
    BIN=$SNAPFS_BIN # e.g. a debug build, for a quick check of this script
else
    log "building release binary…"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/snapfs
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/snapfs-e2e.XXXXXX")
REPO=$WORK/repo
MNT=$WORK/mnt
PLAIN=$WORK/plain
DATA=$WORK/data
mkdir -p "$MNT" "$PLAIN" "$DATA"

mounted() { awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

cleanup() {
    set +e
    if mounted; then
        "$BIN" --repo "$REPO" umount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" || umount -l "$MNT"
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# median VALUE… → the middle value (the lower middle one for an even count)
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# rate AMOUNT START END → AMOUNT per second, one decimal
rate() { awk -v a="$1" -v s="$2" -v e="$3" 'BEGIN { d = e - s; if (d <= 0) d = 1e-9; printf "%.1f", a / d }'; }

daemon_pid() { head -n1 "$REPO/lock"; }
# Resets the daemon's peak RSS (VmHWM), so each workload reports its own peak.
reset_peak() { echo 5 >"/proc/$(daemon_pid)/clear_refs" 2>/dev/null || true; }
peak_mib() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$(daemon_pid)/status"; }

# Cold caches: write everything back, then drop the page cache (or, without the right
# to, evict the files involved one by one).
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        python3 - "$@" <<'EOF'
import os, sys
for top in sys.argv[1:]:
    walk = os.walk(top) if os.path.isdir(top) else [(os.path.dirname(top), [], [os.path.basename(top)])]
    for d, _, names in walk:
        for n in names:
            try:
                fd = os.open(os.path.join(d, n), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            except OSError:
                pass
EOF
    fi
}

log "mounting a fresh repository at $MNT…"
"$BIN" --repo "$REPO" mount "$MNT" ${MOUNT_ARGS:-} >&2

[ -n "$ONLY" ] && [ "$ONLY" != main ] && BYTES=0 # no data for the sequential workloads
log "generating $SIZE of random and of text-like data…"
head -c "$BYTES" /dev/urandom >"$DATA/random.bin"
# Text-like: lines of words from a fixed vocabulary of 4096 words, picked at random.
python3 - "$BYTES" >"$DATA/text.txt" <<'EOF'
import random, sys
rng = random.Random(1)
letters = "abcdefghijklmnopqrstuvwxyz"
vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(4096)]
left = int(sys.argv[1])
out = sys.stdout.buffer
while left > 0:
    words = rng.choices(vocab, k=150000)
    block = "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)).encode() + b"\n"
    block = block[:left]
    out.write(block)
    left -= len(block)
EOF

log "making a source-tree tarball…"
if [ -d "$HOME/.cargo/registry/src" ] && [ -n "$(ls -A "$HOME"/.cargo/registry/src 2>/dev/null)" ]; then
    SRC_PARENT=$(ls -d "$HOME"/.cargo/registry/src/*/ | head -n1)
    SRC_NAMES=$(cd "$SRC_PARENT" && ls | head -n 150)
    SRC_DESC="150 crates from ~/.cargo/registry/src"
else
    SRC_PARENT=/usr/share
    SRC_NAMES=doc
    SRC_DESC="/usr/share/doc"
fi
# shellcheck disable=SC2086
tar -C "$SRC_PARENT" -cf "$DATA/src.tar" $SRC_NAMES
TAR_BYTES=$(stat -c %s "$DATA/src.tar")
TAR_FILES=$(tar -tf "$DATA/src.tar" | wc -l)
cat "$DATA/random.bin" "$DATA/text.txt" "$DATA/src.tar" >/dev/null # sources come from memory
sync # and their writeback does not share the disk with the first workloads

ROWS=()
MAXPEAK=0

# record NAME UNIT PLAIN-RATE MOUNT-RATE PEAK: adds a table row.
record() {
    local name=$1 unit=$2 plain=$3 mount=$4 peak=$5
    local ratio
    MAXPEAK=$(awk -v a="$MAXPEAK" -v b="${peak% MiB}" 'BEGIN { print (b > a ? b : a) }')
    ratio=$(awk -v p="$plain" -v m="$mount" 'BEGIN { if (p > 0) printf "%.0f%%", 100 * m / p; else print "-" }')
    ROWS+=("| $name | $plain $unit | $mount $unit | $ratio | $peak |")
}

# probe DIR SECONDS → "p99 worst" in ms of `ls DIR` + `stat DIR/probe`, every 10 ms:
# how long a user waits for a listing while something else writes.
probe() {
    python3 - "$1" "$2" <<'EOF'
import os, sys, time
top, secs = sys.argv[1], float(sys.argv[2])
lat, end = [], time.time() + secs
while time.time() < end:
    t = time.perf_counter()
    os.listdir(top)
    os.stat(os.path.join(top, "probe"))
    lat.append((time.perf_counter() - t) * 1e3)
    time.sleep(0.01)
lat.sort()
print("%.1f %.1f" % (lat[int(len(lat) * 0.99)], lat[-1]))
EOF
}

seq_write() { # SRC DEST → MB/s, fsync included
    local s e
    s=$(now)
    dd if="$1" of="$2" bs=1M conv=fsync status=none
    e=$(now)
    rate "$(awk -v b="$BYTES" 'BEGIN { print b / 1e6 }')" "$s" "$e"
}

warm_read() { # FILE → MB/s of a second read, right after a first (page cache warm)
    local s e
    dd if="$1" of=/dev/null bs=1M status=none
    s=$(now)
    dd if="$1" of=/dev/null bs=1M status=none
    e=$(now)
    rate "$(awk -v b="$BYTES" 'BEGIN { print b / 1e6 }')" "$s" "$e"
}

cold_read() { # FILE → MB/s
    local s e
    drop_caches "$1" "$REPO"
    s=$(now)
    dd if="$1" of=/dev/null bs=1M status=none
    e=$(now)
    rate "$(awk -v b="$BYTES" 'BEGIN { print b / 1e6 }')" "$s" "$e"
}

# chunk_ceiling FILE → MB/s of 64 KiB O_DIRECT reads at random offsets of FILE, 8 at a
# time: what this disk gives for reads the size of chunk files scattered over it, the
# pattern a cold read of a snapfs file makes (its chunks are separate object files).
chunk_ceiling() {
    python3 - "$1" <<'EOF'
import mmap, os, random, sys, threading, time
path, block, threads = sys.argv[1], 64 << 10, 8
blocks = os.path.getsize(path) // block
count = min(blocks, (1 << 30) // block)
order = random.Random(7).sample(range(blocks), count)
def work(part):
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    for b in part:
        os.preadv(fd, [buf], b * block)
    os.close(fd)
t = time.perf_counter()
workers = [threading.Thread(target=work, args=(order[i::threads],)) for i in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print("%.1f" % (count * block / (time.perf_counter() - t) / 1e6))
EOF
}

small_files() { # DIR → "create stat delete" ops/s
    python3 - "$1" "$FILES" <<'EOF'
import os, sys, time
top, n = sys.argv[1], int(sys.argv[2])
os.makedirs(top)
dirs = [os.path.join(top, "d%03d" % i) for i in range(100)]
for d in dirs:
    os.mkdir(d)
paths = [os.path.join(dirs[i % 100], "f%05d" % i) for i in range(n)]
payload = [os.urandom(64) * (1 + i % 32) for i in range(64)]
t0 = time.perf_counter()
for i, p in enumerate(paths):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, payload[i % 64])
    os.close(fd)
t1 = time.perf_counter()
for p in paths:
    os.stat(p)
t2 = time.perf_counter()
for p in paths:
    os.unlink(p)
t3 = time.perf_counter()
print("%.0f %.0f %.0f" % (n / (t1 - t0), n / (t2 - t1), n / (t3 - t2)))
EOF
}

untar() { # DIR → "MB/s files/s", sync included
    local s e
    mkdir -p "$1"
    s=$(now)
    tar -C "$1" -xf "$DATA/src.tar"
    sync -f "$1"
    e=$(now)
    echo "$(rate "$(awk -v b="$TAR_BYTES" 'BEGIN { print b / 1e6 }')" "$s" "$e") $(rate "$TAR_FILES" "$s" "$e")"
}

# list_secs DIR COUNT → seconds of `ls -f DIR | wc -l`; fails unless COUNT lines came
list_secs() {
    local s e n
    s=$(now)
    n=$(ls -f "$1" | wc -l)
    e=$(now)
    [ "$n" -eq "$2" ] || { log "ls -f $1 listed $n names, expected $2"; exit 1; }
    awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}

find_secs() { # DIR → seconds of `find DIR`
    local s e
    s=$(now)
    find "$1" >/dev/null
    e=$(now)
    awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}

rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$(head -n1 "$1/lock")/status"; }

# record_time NAME PLAIN-SECONDS MOUNT-SECONDS EXTRA: a row where lower is better; the
# ratio is mount time / plain time.
record_time() {
    local ratio
    ratio=$(awk -v p="$2" -v m="$3" 'BEGIN { if (p > 0) printf "%.1fx", m / p; else print "-" }')
    ROWS+=("| $1 | $2 s | $3 s | $ratio | $4 |")
}

# Big folders imported into a repository of their own (empty files, so the catalog is
# all there is), listed cold (after a remount and a page-cache drop) and warm; and
# `find` in a snapshot of the source tree, cold and warm.
listings() {
    local lrepo=$WORK/lrepo lmnt=$WORK/lmnt src=$PLAIN/listing n s e
    mkdir -p "$lmnt" "$src"
    for n in "$ENTRIES" "$BIG_ENTRIES"; do
        [ "$n" -gt 0 ] || continue
        log "making a folder of $n empty files…"
        python3 - "$src/big$n" "$n" <<'EOF'
import os, sys
top, n = sys.argv[1], int(sys.argv[2])
os.makedirs(top)
for i in range(n):
    os.close(os.open(os.path.join(top, "file-%07d" % i), os.O_WRONLY | os.O_CREAT, 0o644))
EOF
    done
    "$BIN" --repo "$lrepo" init -q
    s=$(now)
    "$BIN" --repo "$lrepo" import -q "$src"
    e=$(now)
    log "import took $(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }') s"
    mkdir -p "$PLAIN/srcfind"
    "$BIN" --repo "$lrepo" mount "$lmnt" ${MOUNT_ARGS:-} >&2
    mkdir -p "$lmnt/srcfind"
    tar -C "$lmnt/srcfind" -xf "$DATA/src.tar"
    tar -C "$PLAIN/srcfind" -xf "$DATA/src.tar"
    local snap
    snap=$("$BIN" --repo "$lrepo" snapshot)
    "$BIN" --repo "$lrepo" umount "$lmnt" >&2
    for n in "$ENTRIES" "$BIG_ENTRIES"; do
        [ "$n" -gt 0 ] || continue
        log "ls -f of $n entries…"
        local pc pw mc mw before after grew
        drop_caches "$src"
        pc=$(list_secs "$src/big$n" $((n + 2)))
        pw=$(list_secs "$src/big$n" $((n + 2)))
        "$BIN" --repo "$lrepo" mount "$lmnt" ${MOUNT_ARGS:-} >&2
        drop_caches "$lrepo"
        before=$(rss_kib "$lrepo")
        mc=$(list_secs "$lmnt/big$n" $((n + 2)))
        after=$(rss_kib "$lrepo")
        mw=$(list_secs "$lmnt/big$n" $((n + 2)))
        grew=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "RSS +%.1f MiB", (b - a) / 1024 }')
        record_time "ls -f of $n entries, cold (after remount)" "$pc" "$mc" "$grew"
        record_time "ls -f of $n entries, warm" "$pw" "$mw" "-"
        "$BIN" --repo "$lrepo" umount "$lmnt" >&2
    done
    log "find in a snapshot of $SRC_DESC ($TAR_FILES entries)…"
    local fpc fpw fmc fmw
    "$BIN" --repo "$lrepo" mount "$lmnt" ${MOUNT_ARGS:-} >&2
    drop_caches "$lrepo" "$PLAIN/srcfind"
    fmc=$(find_secs "$lmnt/$snap/srcfind")
    fmw=$(median "$(find_secs "$lmnt/$snap/srcfind")" "$(find_secs "$lmnt/$snap/srcfind")" "$(find_secs "$lmnt/$snap/srcfind")")
    fpc=$(find_secs "$PLAIN/srcfind")
    fpw=$(median "$(find_secs "$PLAIN/srcfind")" "$(find_secs "$PLAIN/srcfind")" "$(find_secs "$PLAIN/srcfind")")
    record_time "find in a snapshot of $SRC_DESC, cold (after remount)" "$fpc" "$fmc" "-"
    record_time "find in a snapshot of $SRC_DESC, warm (median of 3)" "$fpw" "$fmw" "-"
    "$BIN" --repo "$lrepo" umount "$lmnt" >&2
}

# probe_until DIR STOPFILE → "p50 p99 worst" ms of `ls DIR` + `stat DIR/probe`, every
# 20 ms, until STOPFILE exists.
probe_until() {
    python3 - "$1" "$2" <<'EOF'
import os, sys, time
top, stop = sys.argv[1], sys.argv[2]
lat = []
while not os.path.exists(stop):
    t = time.perf_counter()
    os.listdir(top)
    os.stat(os.path.join(top, "probe"))
    lat.append((time.perf_counter() - t) * 1e3)
    time.sleep(0.02)
lat.sort()
print("%.1f %.1f %.1f" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]))
EOF
}

# A repository of 4 KiB chunks, GC_MIB of random data written and deleted with no
# snapshot (and no background reclaim), then `snapfs gc` while the probe runs.
gc_probe() {
    local grepo=$WORK/grepo gmnt=$WORK/gmnt s e
    mkdir -p "$gmnt"
    "$BIN" --repo "$grepo" init -q --chunk-size 2K:4K:8K
    "$BIN" --repo "$grepo" mount "$gmnt" ${MOUNT_ARGS:-} -o noreclaim >&2
    touch "$gmnt/probe"
    head -c "$((GC_MIB << 20))" /dev/urandom >"$gmnt/garbage"
    sync "$gmnt/garbage"
    rm "$gmnt/garbage"
    local chunks
    chunks=$("$BIN" --repo "$grepo" gc --dry-run --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
    log "gc of $chunks chunks beside a stat+ls probe…"
    rm -f "$WORK/stop"
    probe_until "$gmnt" "$WORK/stop" >"$WORK/probe.gc" &
    sleep 1
    s=$(now)
    "$BIN" --repo "$grepo" gc -q
    e=$(now)
    touch "$WORK/stop"
    wait
    local p50 p99 worst
    read -r p50 p99 worst <"$WORK/probe.gc"
    ROWS+=("| stat+ls every 20 ms beside a gc of $chunks chunks ($(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }') s), p50 / p99 / worst | - | $p50 / $p99 / $worst ms | - | - |")
    "$BIN" --repo "$grepo" umount "$gmnt" >&2
}

# The probe on a folder of its own beside an untar into the same filesystem, in a
# plain folder and through a fresh mount, ROUNDS times each, sides taking turns.
untar_probe() {
    local umnt=$WORK/umnt uplain=$WORK/uplain round side dir s e p50 p99 worst
    mkdir -p "$umnt" "$uplain"
    "$BIN" --repo "$WORK/urepo" init -q
    "$BIN" --repo "$WORK/urepo" mount "$umnt" ${MOUNT_ARGS:-} >&2
    for round in 1 2; do
        for side in plain mount; do
            dir=$uplain
            [ "$side" = mount ] && dir=$umnt
            rm -rf "$dir/quiet" "$dir/x"
            mkdir -p "$dir/quiet" "$dir/x"
            touch "$dir/quiet/probe"
            for i in $(seq 20); do echo "$i" >"$dir/quiet/f$i"; done
            sync -f "$dir/quiet/probe"
            log "untar beside a stat+ls probe of another folder ($side, round $round)…"
            rm -f "$WORK/stop"
            probe_until "$dir/quiet" "$WORK/stop" >"$WORK/probe.untar" &
            sleep 1
            s=$(now)
            tar -C "$dir/x" -xf "$DATA/src.tar"
            sync -f "$dir/quiet/probe"
            e=$(now)
            touch "$WORK/stop"
            wait
            read -r p50 p99 worst <"$WORK/probe.untar"
            ROWS+=("| stat+ls of another folder every 20 ms beside an untar of $SRC_DESC, $side, round $round ($(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }') s), p50 / p99 / worst | $([ "$side" = plain ] && echo "$p50 / $p99 / $worst ms" || echo -) | $([ "$side" = mount ] && echo "$p50 / $p99 / $worst ms" || echo -) | - | - |")
        done
    done
    "$BIN" --repo "$WORK/urepo" umount "$umnt" >&2
}

# probe_beside NAME CMD… → runs CMD through the mount of the ops probe while
# `probe_until` watches it, and records a row NAME.
probe_beside() {
    local name=$1 s e p50 p99 worst
    shift
    rm -f "$WORK/stop"
    probe_until "$omnt" "$WORK/stop" >"$WORK/probe.ops" &
    sleep 1
    s=$(now)
    "$@" >&2
    e=$(now)
    touch "$WORK/stop"
    wait
    read -r p50 p99 worst <"$WORK/probe.ops"
    ROWS+=("| stat+ls every 20 ms beside $name ($(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }') s), p50 / p99 / worst | - | $p50 / $p99 / $worst ms | - | - |")
}

# ops_tree DIR FILES ROUND → writes every tenth file of a tree of FILES small files
# in 500 folders (every file when ROUND is 0), each saying which round wrote it.
ops_tree() {
    python3 - "$1" "$2" "$3" <<'EOF'
import os, sys
top, n, round_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
step = 1 if round_ == 0 else 10
for i in range(round_ % 10 if round_ else 0, n, step):
    d = os.path.join(top, "d%03d" % (i % 500))
    if round_ == 0 and i < 500:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "w") as f:
        f.write("file %d round %d\n" % (i, round_))
EOF
}

# A tree of OPS_FILES small files and 20 snapshots, each after rewriting a tenth of
# the files; then a forget of the 10 oldest and a rollback of the whole tree
# (emptied first, so that it brings back every file), each beside the probe.
ops_probe() {
    local orepo=$WORK/orepo r target back
    omnt=$WORK/omnt
    mkdir -p "$omnt"
    "$BIN" --repo "$orepo" init -q
    "$BIN" --repo "$orepo" mount "$omnt" ${MOUNT_ARGS:-} -o noreclaim >&2
    touch "$omnt/probe"
    log "ops probe: $OPS_FILES files, 20 snapshots…"
    ops_tree "$omnt/tree" "$OPS_FILES" 0
    for r in $(seq 1 20); do
        ops_tree "$omnt/tree" "$OPS_FILES" "$r"
        "$BIN" --repo "$orepo" snapshot -q >/dev/null
    done
    probe_beside "a forget of 10 of 20 snapshots of $OPS_FILES files" \
        "$BIN" --repo "$orepo" forget -q --keep-last 10
    target=$("$BIN" --repo "$orepo" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
    rm -rf "$omnt/tree"
    "$BIN" --repo "$orepo" snapshot -q >/dev/null
    probe_beside "a rollback bringing back $OPS_FILES files" \
        "$BIN" --repo "$orepo" rollback -q "$target"
    back=$(find "$omnt/tree" -type f | wc -l)
    [ "$back" -eq "$OPS_FILES" ] || { log "rollback brought back $back files, not $OPS_FILES"; exit 1; }
    "$BIN" --repo "$orepo" umount "$omnt" >&2
}

# mirror_bytes REPO → stored bytes of mirror 0 as `status` reports them
mirror_bytes() {
    "$BIN" --repo "$1" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mirrors"][0]["stored_bytes"])'
}

# A mount with background reclaim on: 1 GiB written, synced and deleted with no
# snapshot holding it, then the time until `status` shows mirror 0 back to its size
# before, with the stat+ls probe running throughout.
reclaim_probe() {
    local rrepo=$WORK/rrepo rmnt=$WORK/rmnt before now_bytes s e p50 p99 worst waited
    mkdir -p "$rmnt"
    "$BIN" --repo "$rrepo" init -q
    "$BIN" --repo "$rrepo" mount "$rmnt" ${MOUNT_ARGS:-} >&2
    touch "$rmnt/probe"
    sync "$rmnt/probe"
    before=$(mirror_bytes "$rrepo")
    head -c 1G /dev/urandom >"$rmnt/big"
    sync "$rmnt/big"
    log "reclaim: $(mirror_bytes "$rrepo") bytes stored with the file, $before before"
    rm -f "$WORK/stop"
    probe_until "$rmnt" "$WORK/stop" >"$WORK/probe.reclaim" &
    sleep 1
    rm "$rmnt/big"
    s=$(now)
    waited=0
    while now_bytes=$(mirror_bytes "$rrepo") && [ "$now_bytes" -gt "$before" ]; do
        sleep 0.5
        waited=$((waited + 1))
        [ "$waited" -le 240 ] || { log "reclaim: still $now_bytes bytes after 120 s"; break; }
    done
    e=$(now)
    sleep 1
    touch "$WORK/stop"
    wait
    read -r p50 p99 worst <"$WORK/probe.reclaim"
    ROWS+=("| background reclaim of a deleted 1 GiB file: until status shows the mirror back to $before bytes (now $now_bytes) | - | $(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }') s | - | - |")
    ROWS+=("| stat+ls every 20 ms beside that reclaim, p50 / p99 / worst | - | $p50 / $p99 / $worst ms | - | - |")
    "$BIN" --repo "$rrepo" umount "$rmnt" >&2
}

# cpu_ticks → "busy idle": the machine's CPU ticks so far, busy (user, nice, system,
# irq, softirq, steal) and idle (idle, iowait), from /proc/stat.
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
# busy_share BEFORE AFTER → the share of both cores that was busy between two
# `cpu_ticks` readings, e.g. 96%.
busy_share() {
    awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f%%", 100 * busy / (busy + idle + 1e-9) }'
}

# readers DIR N → "MB/s busy": MB/s of N processes reading N different cold 1 GiB
# files of DIR at once (files r0 … r(N-1)), all bytes together, and the share of the
# machine's CPU that was busy meanwhile.
readers() {
    local dir=$1 n=$2 i s e t0 t1
    drop_caches "$dir"
    t0=$(cpu_ticks)
    s=$(now)
    for i in $(seq 0 $((n - 1))); do
        dd if="$dir/r$i" of=/dev/null bs=1M status=none &
    done
    wait
    e=$(now)
    t1=$(cpu_ticks)
    echo "$(rate "$((n * 1024 * 1048576 / 1000000))" "$s" "$e") $(busy_share "$t0" "$t1")"
}

# creators DIR N → "files/s busy": files/s of N processes creating 10,000 small
# files each, each in a folder of its own, all together, and the machine's busy share.
creators() {
    local dir=$1 n=$2 i s e t0 t1
    rm -rf "$dir/c"
    mkdir -p "$dir/c"
    sync -f "$dir"
    t0=$(cpu_ticks)
    s=$(now)
    for i in $(seq 0 $((n - 1))); do
        python3 - "$dir/c/p$i" <<'EOF' &
import os, sys
top = sys.argv[1]
os.mkdir(top)
for i in range(10000):
    fd = os.open(os.path.join(top, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"x" * (64 + i % 512))
    os.close(fd)
EOF
    done
    wait
    e=$(now)
    t1=$(cpu_ticks)
    echo "$(rate "$((n * 10000))" "$s" "$e") $(busy_share "$t0" "$t1")"
}

# One and two readers of cold 1 GiB files, one and two creators of small files, in a
# plain folder and through a mount, alternating sides, three rounds (medians).
parallel_probe() {
    local prepo=$WORK/prepo pmnt=$WORK/pmnt pplain=$WORK/pplain i side one two
    mkdir -p "$pmnt" "$pplain"
    "$BIN" --repo "$prepo" init -q
    "$BIN" --repo "$prepo" mount "$pmnt" ${MOUNT_ARGS:-} >&2
    for i in 0 1; do
        head -c 1G /dev/urandom >"$pplain/r$i"
        cp "$pplain/r$i" "$pmnt/r$i"
    done
    sync
    # Read everything once first: on a virtual disk the first read of blocks just
    # written can be many times slower than any later one (seen: 69 MB/s, then 1.4 GB/s).
    cat "$pplain"/r* "$pmnt"/r* >/dev/null
    for what in readers creators; do
        local p1s=() p2s=() m1s=() m2s=() busy=() rep r b
        # Three rounds, the sides alternating within each; medians. The machine's
        # busy share of each mount run goes to the log: near 100% says the CPU is
        # what stops two from going faster than one.
        for rep in 1 2 3; do
            read -r r b <<<"$($what "$pplain" 1)"
            p1s+=("$r")
            read -r r b <<<"$($what "$pmnt" 1)"
            m1s+=("$r") busy+=("one $b")
            read -r r b <<<"$($what "$pmnt" 2)"
            m2s+=("$r") busy+=("two $b")
            read -r r b <<<"$($what "$pplain" 2)"
            p2s+=("$r")
        done
        log "  $what through the mount, machine busy: ${busy[*]}"
        eval "${what}_plain=\"$(median "${p1s[@]}") $(median "${p2s[@]}")\""
        eval "${what}_mount=\"$(median "${m1s[@]}") $(median "${m2s[@]}")\""
        local p m
        p=${what}_plain m=${what}_mount
        read -r p1 p2 <<<"${!p}"
        read -r m1 m2 <<<"${!m}"
        local unit=MB/s
        [ "$what" = creators ] && unit=files/s
        ROWS+=("| one of $what ($unit, median of 3) | $p1 | $m1 | $(awk -v a="$m1" -v b="$p1" 'BEGIN { printf "%.0f%%", 100 * a / b }') | - |")
        ROWS+=("| two $what at once ($unit, together; two/one) | $p2 ($(awk -v a="$p2" -v b="$p1" 'BEGIN { printf "%.2fx", a / b }')) | $m2 ($(awk -v a="$m2" -v b="$m1" 'BEGIN { printf "%.2fx", a / b }')) | $(awk -v a="$m2" -v b="$p2" 'BEGIN { printf "%.0f%%", 100 * a / b }') | - |")
    done
    "$BIN" --repo "$prepo" umount "$pmnt" >&2
}

# fio_iops DIR RW → IOPS of fio's 4 KiB RW (randwrite or randread) over DIR/fio.bin
# (1 GiB, laid out by fio on first use), direct I/O, one job, 20 s.
fio_iops() {
    fio --name=snapfs --filename="$1/fio.bin" --size=1G --bs=4k --rw="$2" --direct=1 \
        --ioengine=psync --numjobs=1 --runtime=20 --time_based --output-format=json 2>/dev/null |
        python3 -c 'import json, sys
j = json.load(sys.stdin)["jobs"][0]
print("%.0f" % (j["write"]["iops"] + j["read"]["iops"]))'
}

# 4 KiB random writes, then reads, of a 1 GiB file with direct I/O (fio, one job),
# through a mount of a fresh repository and in a plain folder, the sides alternating.
fio_probe() {
    command -v fio >/dev/null || { log "needs fio (apt-get install fio)"; return 1; }
    local frepo=$WORK/frepo fmnt=$WORK/fmnt fplain=$WORK/fplain rw
    mkdir -p "$fmnt" "$fplain"
    "$BIN" --repo "$frepo" init -q
    # shellcheck disable=SC2086
    "$BIN" --repo "$frepo" mount "$fmnt" ${MOUNT_ARGS:-} >&2
    for rw in randwrite randread; do
        local ps=() ms=()
        for _ in 1 2; do
            ps+=("$(fio_iops "$fplain" "$rw")")
            ms+=("$(fio_iops "$fmnt" "$rw")")
        done
        local p m
        p=$(median "${ps[@]}") m=$(median "${ms[@]}")
        ROWS+=("| fio $rw 4 KiB of a 1 GiB file, direct I/O, one job, 20 s (ops/s, lower of 2) | $p | $m | $(awk -v a="$m" -v b="$p" 'BEGIN { printf "%.0f%%", 100 * a / b }') | - |")
        log "  $rw: plain ${ps[*]}, mount ${ms[*]}"
    done
    "$BIN" --repo "$frepo" umount "$fmnt" >&2
    rm -rf "$frepo" "$fplain"
}

# `snapfs import` of 50,000 files of 64 bytes in 500 folders into a fresh repository,
# against `cp -a` of the same tree into a plain folder (both after a sync).
import_probe() {
    local tree=$WORK/itree irepo=$WORK/irepo s e p m
    python3 - "$tree" <<'PYEOF'
import os, sys
top = sys.argv[1]
for d in range(500):
    os.makedirs(os.path.join(top, "d%03d" % d))
    for f in range(100):
        with open(os.path.join(top, "d%03d" % d, "f%03d" % f), "wb") as out:
            out.write(os.urandom(32).hex().encode())
PYEOF
    sync
    s=$(now)
    cp -a "$tree" "$WORK/icopy"
    sync
    e=$(now)
    p=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')
    "$BIN" --repo "$irepo" init -q
    sync
    s=$(now)
    "$BIN" --repo "$irepo" import "$tree" >/dev/null
    e=$(now)
    m=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')
    ROWS+=("| import of 50,000 files of 64 bytes in 500 folders (s; plain: cp -a + sync) | $p s | $m s ($(awk -v m="$m" 'BEGIN { printf "%.0f files/s", 50000 / m }')) | $(awk -v a="$m" -v b="$p" 'BEGIN { printf "%.1fx the time", a / b }') | - |")
    rm -rf "$tree" "$WORK/icopy" "$irepo"
}

if [ -z "$ONLY" ] || [ "$ONLY" = main ]; then
    for kind in random text; do
        src=$DATA/random.bin
        [ "$kind" = text ] && src=$DATA/text.txt
        log "sequential write, $kind…"
        if [ "$kind" = random ]; then
            # A listing probe runs beside the write, for its first 10 seconds.
            touch "$PLAIN/probe" "$MNT/probe"
            probe "$PLAIN" 10 >"$WORK/probe.plain" &
            p=$(seq_write "$src" "$PLAIN/$kind")
            wait
            reset_peak
            probe "$MNT" 10 >"$WORK/probe.mount" &
            m=$(seq_write "$src" "$MNT/$kind")
            wait
        else
            p=$(seq_write "$src" "$PLAIN/$kind")
            reset_peak
            m=$(seq_write "$src" "$MNT/$kind")
        fi
        record "sequential write $SIZE, $kind" MB/s "$p" "$m" "$(peak_mib)"
        if [ "$kind" = random ]; then
            read -r pp pw <"$WORK/probe.plain"
            read -r mp mw <"$WORK/probe.mount"
            ROWS+=("| ls+stat latency during that write, p99 / worst | $pp / $pw ms | $mp / $mw ms | - | - |")
        fi
        log "cold sequential read, $kind ($READS times each, alternating)…"
        reset_peak
        ps=() ms=()
        for _ in $(seq "$READS"); do
            ps+=("$(cold_read "$PLAIN/$kind")")
            ms+=("$(cold_read "$MNT/$kind")")
        done
        record "cold sequential read $SIZE, $kind (median of $READS)" MB/s "$(median "${ps[@]}")" "$(median "${ms[@]}")" "$(peak_mib)"
        if [ "$kind" = random ]; then
            log "chunk-sized random reads of the disk…"
            drop_caches "$PLAIN/$kind"
            ROWS+=("| disk ceiling: 64 KiB direct reads at random offsets, 8 at a time | $(chunk_ceiling "$PLAIN/$kind") MB/s | - | - | - |")
            log "warm re-read, $kind…"
            p=$(warm_read "$PLAIN/$kind")
            reset_peak
            m=$(warm_read "$MNT/$kind")
            record "re-read $SIZE (page cache warm), $kind" MB/s "$p" "$m" "$(peak_mib)"
        fi
        rm -f "$PLAIN/$kind" "$MNT/$kind"
    done

    log "untar of $SRC_DESC ($TAR_FILES entries, $((TAR_BYTES >> 20)) MiB)…"
    read -r pmb pfs < <(untar "$PLAIN/untar")
    reset_peak
    read -r mmb mfs < <(untar "$MNT/untar")
    peak=$(peak_mib)
    record "untar $SRC_DESC" MB/s "$pmb" "$mmb" "$peak"
    record "untar $SRC_DESC" files/s "$pfs" "$mfs" "$peak"

    log "create/stat/delete of $FILES small files…"
    # Last, and the mount first: the plain folder's run ends by deleting its files, and
    # on an ext4 without a journal new inodes are slow to allocate for a minute or more
    # after many deletions (the mount's objects are files too); the mount's deletions
    # free no inodes (its objects stay until gc), so this order biases neither side.
    reset_peak
    read -r mc ms md < <(small_files "$MNT/small")
    peak=$(peak_mib)
    read -r pc ps pd < <(small_files "$PLAIN/small")
    record "create $FILES small files" ops/s "$pc" "$mc" "$peak"
    record "stat $FILES small files" ops/s "$ps" "$ms" "$peak"
    record "delete $FILES small files" ops/s "$pd" "$md" "$peak"
fi

"$BIN" --repo "$REPO" umount "$MNT" >&2
if [ -z "$ONLY" ] || [ "$ONLY" = listing ]; then
    listings
fi
if [ -z "$ONLY" ] || [ "$ONLY" = gc ]; then
    gc_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = ops ]; then
    ops_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = reclaim ]; then
    reclaim_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = untar_probe ]; then
    untar_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = parallel ]; then
    parallel_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = fio ]; then
    fio_probe
fi
if [ -z "$ONLY" ] || [ "$ONLY" = import ]; then
    import_probe
fi

echo
echo "snapfs end-to-end benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), SIZE=$SIZE"
echo
echo "| workload | plain folder | snapfs mount | mount/plain | daemon peak RSS |"
echo "| --- | ---: | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
echo
echo "Daemon peak RSS (VmHWM, reset before each workload): at most $MAXPEAK MiB. Sequential tests include"
echo "an fsync at the end; cold reads follow a page-cache drop. Source: $SRC_DESC."
