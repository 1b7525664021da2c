#!/usr/bin/env bash
# Scale benchmark: a home directory's size. Builds a repository of FILES files in
# FOLDERS folders (a plain tree written first, then `snapfs import`, then a mount) and
# SNAPSHOTS snapshots through the mount with 10 to 100 changed files each, then times
# every command a user runs on it and records the daemon's peak memory. Prints a
# markdown table (each row with its aim) and a line per build step.
#
#   benches/scale.sh                    # 1,000,000 files, 10,000 folders, 1,000 snapshots
#   FILES=100000 SNAPSHOTS=200 benches/scale.sh   # smaller (FOLDERS scales along)
#   BENCH_DIR=/mnt/disk …               # where the work folder lives (default $TMPDIR or /tmp)
#   KEEP=1 …                            # keep the work folder (it is big) for inspection
#   SNAPFS_BIN=… …                      # use this binary instead of building a release one
#   SCALE_MOUNT_ARGS=-vv …              # extra arguments for the mount (e.g. its trace log, kept with KEEP=1)
#
# Needs: FUSE (/dev/fuse, fusermount3), python3. Disk: about 3 GB and 3 inodes per
# file (the plain tree, and one object file per chunk in each of two mirrors).
set -euo pipefail

FILES=${FILES:-1000000}
FOLDERS=${FOLDERS:-$((FILES / 100))}
SNAPSHOTS=${SNAPSHOTS:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

if [ -n "${SNAPFS_BIN:-}" ]; then
    BIN=$SNAPFS_BIN
else
    log "building release binary…"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/snapfs
fi

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/snapfs-scale.XXXXXX")
REPO=$WORK/repo
MNT=$WORK/mnt
SRC=$WORK/src
mkdir -p "$MNT" "$SRC"

mounted() { awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
cleanup() {
    if mounted; then
        "$BIN" --repo "$REPO" umount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" 2>/dev/null || true
    fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

snapfs() { "$BIN" --repo "$REPO" "$@"; }
daemon_pid() { head -n1 "$REPO/lock"; }
peak_kib() { awk '/VmHWM/ { print $2 }' "/proc/$(daemon_pid)/status"; }
now_ns() { date +%s%N; }
# ms CMD… → milliseconds CMD took (its output discarded): the median of three runs, as
# the mount's background work (a catalog copy a minute) shares the two cores
ms() {
    local start end runs=()
    for _ in 1 2 3; do
        start=$(now_ns)
        "$@" >/dev/null
        end=$(now_ns)
        runs+=($(((end - start) / 1000000)))
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p
}
# catalog_bytes → bytes the catalog's pages hold (as a reader sees it, WAL included)
catalog_bytes() {
    python3 - "$REPO/catalog.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
pages, free, size = (c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
print((pages - free) * size)
PY
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }
STEPS=()
step() { STEPS+=("$1: $2 s"); log "$1: $2 s"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

# 1. The plain tree: FOLDERS folders (a hundred per parent), files of 200 B to 3 KiB.
log "writing $FILES files in $FOLDERS folders…"
t0=$(now_ns)
python3 - "$SRC" "$FILES" "$FOLDERS" <<'PY'
import os, random, sys
root, files, folders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(13)
per = files // folders
for d in range(folders):
    folder = os.path.join(root, f"p{d // 100:03d}", f"d{d % 100:02d}")
    os.makedirs(folder)
    for f in range(per):
        line = f"folder {d} file {f} ".encode()
        with open(os.path.join(folder, f"f{f:03d}"), "wb") as out:
            out.write(line * (rng.randrange(200, 3072) // len(line) + 1))
PY
t1=$(now_ns)
step "plain tree written" "$(secs "$t0" "$t1")"
snapfs init -q >/dev/null
snapfs import -q "$SRC" >/dev/null
t2=$(now_ns)
step "snapfs init + import" "$(secs "$t1" "$t2")"
rm -rf "$SRC"
# Deleting the plain tree leaves minutes of metadata writeback (a million inodes);
# written back now, it does not land in the syncs of the timed snapshots below.
sync
snapfs mount "$MNT" ${SCALE_MOUNT_ARGS:-} >/dev/null
log "taking $SNAPSHOTS snapshots, 10 to 100 changed files before each…"
t3=$(now_ns)
python3 - "$BIN" "$REPO" "$MNT" "$FOLDERS" "$((FILES / FOLDERS))" "$SNAPSHOTS" >"$WORK/snapshot_ms" <<'PY'
import os, random, subprocess, sys, time
bin, repo, mnt, folders, per, rounds = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
rng = random.Random(14)
def path(d, f):
    return os.path.join(mnt, f"p{d // 100:03d}", f"d{d % 100:02d}", f"f{f:03d}")
times = []
for r in range(rounds):
    changed = rng.randrange(10, 101)
    for _ in range(changed):
        p = path(rng.randrange(folders), rng.randrange(per + 5))
        if rng.random() < 0.05 and os.path.exists(p):
            os.remove(p)
        else:
            with open(p, "wb") as out:
                out.write(f"round {r} {p} ".encode() * rng.randrange(10, 200))
    start = time.monotonic()
    subprocess.run([bin, "--repo", repo, "snapshot"], check=True, stdout=subprocess.DEVNULL)
    times.append(((time.monotonic() - start) * 1000, r, changed))
for ms, r, changed in sorted(times)[-3:]:
    print(f"slow snapshot: round {r} of {rounds}, {changed} changed files, {ms:.0f} ms", file=sys.stderr)
times = sorted(t for t, _, _ in times)
over = sum(1 for t in times if t >= 50)
print(f"{times[len(times) // 2]:.0f} {times[len(times) * 99 // 100]:.0f} {times[-1]:.0f} {over}")
PY
t4=$(now_ns)
step "$SNAPSHOTS snapshots through the mount" "$(secs "$t3" "$t4")"
read -r snap_median snap_p99 snap_worst snap_over <"$WORK/snapshot_ms"
build_peak=$(peak_kib)

# 2. The commands, on the mount (list, status and friends read the catalog beside it).
mapfile -t NAMES < <(snapfs list --json | python3 -c 'import json,sys; [print(s["name"]) for s in json.load(sys.stdin)]')
first=${NAMES[0]}
last=${NAMES[-1]}
middle=${NAMES[$((${#NAMES[@]} / 2))]}
next=${NAMES[$((${#NAMES[@]} / 2 + 1))]}
row "\`snapfs list\` ($SNAPSHOTS snapshots)" "$(ms snapfs list) ms" "< 1,000 ms"
row "\`snapfs list --json\`" "$(ms snapfs list --json) ms" "< 1,000 ms"
row "\`snapfs forget --keep-last 100 --dry-run\`" "$(ms snapfs forget --keep-last 100 --dry-run) ms" "< 2,000 ms"
row "\`snapfs status\`" "$(ms snapfs status) ms" "< 1,000 ms"
row "\`snapfs diff\` of two neighbouring snapshots" "$(ms snapfs diff "$middle" "$next") ms" "< 100 ms"
row "\`snapfs diff\` of the first and the last snapshot" "$(ms snapfs diff "$first" "$last") ms" "< 5,000 ms"
row "\`snapfs log\` of one file" "$(ms snapfs log /p000/d00/f000) ms" "< 200 ms"
row "\`snapfs snapshot\` right after its 10-100 writes, their commit included (median, p99, worst of $SNAPSHOTS; how many took 50 ms or more)" "$snap_median ms, $snap_p99 ms, $snap_worst ms; $snap_over" "< 50 ms"

# The catalog's growth for a snapshot that changed 10 files (20 rounds, averaged).
before=$(catalog_bytes)
python3 - "$BIN" "$REPO" "$MNT" >"$WORK/settled_ms" <<'PY'
import os, subprocess, sys, time
bin, repo, mnt = sys.argv[1:]
times = []
for r in range(20):
    for f in range(10):
        with open(os.path.join(mnt, "p001", f"d{f:02d}", "f007"), "wb") as out:
            out.write(f"growth round {r} file {f} ".encode() * 40)
    time.sleep(1.5)  # the flusher commits them within a second: the snapshot alone is timed
    start = time.monotonic()
    subprocess.run([bin, "--repo", repo, "snapshot"], check=True, stdout=subprocess.DEVNULL)
    times.append((time.monotonic() - start) * 1000)
times.sort()
print(f"{times[len(times) // 2]:.0f} {times[-1]:.0f}")
PY
after=$(catalog_bytes)
read -r settled_median settled_worst <"$WORK/settled_ms"
row "\`snapfs snapshot\` with the writes before it committed (median, worst of 20)" "$settled_median ms, $settled_worst ms" "< 50 ms"
row "catalog growth per snapshot of 10 changed files (mean of 20)" "$(((after - before) / 20)) B" "< 10,240 B"
first_peak=$(( $(peak_kib) > build_peak ? $(peak_kib) : build_peak ))

# 3. Mount time and the first listing.
snapfs umount "$MNT" >/dev/null
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
start=$(now_ns)
# No background reclaim on this mount: the forget + gc below must find all the
# garbage for gc to report (a reclaim in between frees some of it unreported).
snapfs mount -o noreclaim "$MNT" >/dev/null
until mounted && [ -e "$MNT/p000" ]; do sleep 0.005; done
ready=$((($(now_ns) - start) / 1000000))
row "mount ready (cold cache)" "$ready ms" "< 3,000 ms"
row "first \`ls\` of the mount root ($(( FOLDERS / 100 )) folders, $((SNAPSHOTS + 20)) snapshots)" "$(ms ls "$MNT") ms" "< 100 ms"

# 4. forget of half the snapshots through the mount, then gc, beside a stat+ls probe.
snapfs gc -q >/dev/null
touch "$MNT/probe"
dry=$(snapfs forget --keep-last $(((SNAPSHOTS + 20) / 2)) --dry-run --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r["forgotten"]), r["frees_bytes"])')
read -r forget_count dry_bytes <<<"$dry"
probe() {
    python3 - "$MNT" "$WORK/stop" <<'PY'
import os, sys, time
top, stop = sys.argv[1], sys.argv[2]
waits = []
while not os.path.exists(stop):
    start = time.monotonic()
    os.listdir(top)
    os.stat(os.path.join(top, "probe"))
    waits.append((time.monotonic() - start) * 1000)
    time.sleep(0.02)
waits.sort()
print(f"{waits[len(waits) // 2]:.1f} {waits[int(len(waits) * 0.99)]:.1f} {waits[-1]:.1f}")
PY
}
# A writer beside it too: create or overwrite a small file and fsync it, every 20 ms.
write_probe() {
    python3 - "$MNT" "$WORK/stop" <<'PY'
import os, sys, time
top, stop = sys.argv[1], sys.argv[2]
waits, i = [], 0
while not os.path.exists(stop):
    start = time.monotonic()
    with open(os.path.join(top, f"write-probe-{i % 10}"), "wb") as out:
        out.write(b"probe" * 20)
        out.flush()
        os.fsync(out.fileno())
    waits.append((time.monotonic() - start) * 1000)
    i += 1
    time.sleep(0.02)
waits.sort()
print(f"{waits[len(waits) // 2]:.1f} {waits[int(len(waits) * 0.99)]:.1f} {waits[-1]:.1f}")
PY
}
# First the stat+ls probe alone (the concurrency issue's probe), then, for a further
# forget of half of what is left + gc, the writer beside it too (while files are being
# written, reads of the live tree take the core's lock, so the stat probe meets its
# steps there).
rm -f "$WORK/stop"
probe >"$WORK/probe" &
probe_pid=$!
start=$(now_ns)
snapfs forget -q --keep-last $(((SNAPSHOTS + 20) / 2)) >/dev/null
mid=$(now_ns)
freed=$(snapfs gc -q --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
end=$(now_ns)
touch "$WORK/stop"
wait "$probe_pid"
read -r p50 p99 worst <"$WORK/probe"
row "forget of $forget_count snapshots through the mount, then gc" "$(secs "$start" "$mid") s + $(secs "$mid" "$end") s" ""
row "stat+ls probe during them: p50, p99, worst" "$p50, $p99, $worst ms" "p99 < 20 ms, worst < 100 ms"
agree=$([ "$dry_bytes" = "$freed" ] && echo "equal" || echo "DIFFER")
row "\`forget --dry-run\` said, gc freed" "$dry_bytes B, $freed B ($agree)" "equal"

rm -f "$WORK/stop"
probe >"$WORK/probe" &
probe_pid=$!
write_probe >"$WORK/write_probe" &
write_probe_pid=$!
start=$(now_ns)
snapfs forget -q --keep-last $(((SNAPSHOTS + 20) / 4)) >/dev/null
mid=$(now_ns)
snapfs gc -q >/dev/null
end=$(now_ns)
touch "$WORK/stop"
wait "$probe_pid" "$write_probe_pid"
read -r p50 p99 worst <"$WORK/probe"
read -r w50 w99 wworst <"$WORK/write_probe"
row "forget of $(((SNAPSHOTS + 20) / 2 - (SNAPSHOTS + 20) / 4)) more, then gc, with a writer beside them" "$(secs "$start" "$mid") s + $(secs "$mid" "$end") s" ""
row "the stat+ls probe meanwhile: p50, p99, worst" "$p50, $p99, $worst ms" ""
row "write + fsync of a small file every 20 ms meanwhile: p50, p99, worst" "$w50, $w99, $wworst ms" ""
second_peak=$(peak_kib)
snapfs umount "$MNT" >/dev/null

start=$(now_ns)
snapfs check >"$WORK/check" 2>&1 || true
end=$(now_ns)
row "\`snapfs check\`: $(tail -n1 "$WORK/check")" "$(secs "$start" "$end") s" "< 120 s"
peak=$(( first_peak > second_peak ? first_peak : second_peak ))
row "daemon peak memory (VmHWM), whole run" "$((peak / 1024)) MiB" "< 300 MiB"
db=$(stat -c %s "$REPO/catalog.db")
row "catalog.db size" "$((db / 1048576)) MiB" ""

echo
echo "$FILES files in $FOLDERS folders, $SNAPSHOTS snapshots; $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(date -u +%F)"
printf '%s\n' "${STEPS[@]}"
echo
echo "| what | measured | aim |"
echo "| --- | ---: | --- |"
printf '%s\n' "${ROWS[@]}"
