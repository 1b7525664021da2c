#!/usr/bin/env bash
# rsync benchmark: `rsync -a --delete` of each of six successive releases of a real
# source tree (the Django 4.2.1 … 4.2.6 sdists, about 6,700 files each) into a snapfs
# mount, with a snapshot after each, against the same rsync into a plain folder on the
# same disk, in the same run. The target: the mount at most 2x the plain folder's time,
# and every snapshot reading back exactly the release it was taken after. Prints a
# markdown table with one row per release: plain seconds, mount seconds, the ratio
# mount/plain, the snapshot's milliseconds and the daemon's peak RSS.
#
#   benches/rsync.sh                       # all six releases
#   RELEASES="4.2.1 4.2.2" benches/rsync.sh   # fewer (in this order; any Django versions)
#   BENCH_DIR=/mnt/disk benches/rsync.sh   # where the repository and the plain folder live
#   SNAPFS_BENCH_CACHE=/some/dir …         # where the sdists are downloaded and unpacked
#                                          # (default /var/cache/snapfs-bench; kept between runs)
#   KEEP=1 …                               # keep the work folder for inspection
#   SNAPFS_BIN=target/debug/snapfs …       # use this binary instead of building a release one
#   MOUNT_ARGS="--threads 2" …             # extra arguments for `snapfs mount`
#
# What is timed is rsync alone, on both sides: its own writes, which do no fsync, so
# neither side's time includes writing back to the disk. Before each timed rsync an
# untimed `sync` writes back what the previous one left dirty, and the source release
# has been read once (warm page cache for both sides). The side that goes first
# alternates from release to release (the machine may be noisy). The snapshot, taken
# right after the mount's rsync, is timed on its own and is not in the mount's seconds.
# No file of 4.2.2 has the size and mtime it had in 4.2.1 (nor, likely, across the
# later releases), so from the second release on rsync rewrites every file too (a temporary file renamed
# over the old one), besides deleting and adding a few: each row is a full rewrite.
# Then every snapshot, at MNT/@name/tree, is compared with its release: the same names,
# types, modes, owners (when run as root), mtimes, symlink targets and bytes. Any
# difference, and any rsync error, fails the run.
#
# The sdists come from PyPI's simple index (the JSON form), checked against the sha256
# it gives, and are unpacked once each into the cache folder.
#
# Needs: FUSE (/dev/fuse, fusermount3), rsync, curl, python3, tar.
set -euo pipefail

RELEASES=${RELEASES:-4.2.1 4.2.2 4.2.3 4.2.4 4.2.5 4.2.6}
CACHE=${SNAPFS_BENCH_CACHE:-/var/cache/snapfs-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

log() { printf '%s\n' "$*" >&2; }

for tool in rsync curl python3 tar; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done

if [ -n "${SNAPFS_BIN:-}" ]; then
    BIN=$SNAPFS_BIN # e.g. a debug build, for a quick check of this script
else
    log "building release binary…"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/snapfs
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }

# The sources: each release's sdist, downloaded and unpacked once into the cache.
mkdir -p "$CACHE"
# fetch_release VERSION → the path of the unpacked tree (downloads and unpacks if needed)
fetch_release() {
    local v=$1 tree=$CACHE/django-$1 tarball=$CACHE/django-$1.tar.gz tmp
    if [ ! -d "$tree" ]; then
        if [ ! -f "$tarball" ]; then
            if [ ! -f "$CACHE/simple-django.json" ]; then
                log "fetching Django's file list from PyPI…"
                curl -fsS -m 120 -H 'Accept: application/vnd.pypi.simple.v1+json' \
                    https://pypi.org/simple/django/ -o "$CACHE/simple-django.json.tmp"
                mv "$CACHE/simple-django.json.tmp" "$CACHE/simple-django.json"
            fi
            local url sha
            read -r url sha < <(python3 - "$CACHE/simple-django.json" "$v" <<'EOF'
import json, sys
files, v = json.load(open(sys.argv[1]))["files"], sys.argv[2]
for f in files:
    if f["filename"].lower() == "django-%s.tar.gz" % v:
        print(f["url"], f["hashes"]["sha256"])
        break
else:
    sys.exit("no sdist of Django %s in PyPI's index" % v)
EOF
            )
            [ -n "${url:-}" ] || exit 1
            log "downloading Django $v…"
            curl -fsS -m 600 "$url" -o "$tarball.tmp"
            echo "$sha  $tarball.tmp" | sha256sum -c --quiet - ||
                { log "Django $v: sha256 is not $sha"; rm -f "$tarball.tmp"; exit 1; }
            mv "$tarball.tmp" "$tarball"
        fi
        log "unpacking Django $v…"
        tmp=$(mktemp -d "$CACHE/unpack.XXXXXX")
        tar -C "$tmp" -xzf "$tarball"
        [ "$(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l)" -eq 1 ] || { log "$tarball: not one top folder"; exit 1; }
        mv "$tmp"/* "$tree"
        rmdir "$tmp"
    fi
    echo "$tree"
}

declare -A SRC
for v in $RELEASES; do
    SRC[$v]=$(fetch_release "$v")
done

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/snapfs-rsync.XXXXXX")
REPO=$WORK/repo
MNT=$WORK/mnt
PLAIN=$WORK/plain
mkdir -p "$MNT" "$PLAIN"

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
secs() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.2f", e - s }'; }

daemon_pid() { head -n1 "$REPO/lock"; }
# Resets the daemon's peak RSS (VmHWM), so each release reports its own peak.
reset_peak() { echo 5 >"/proc/$(daemon_pid)/clear_refs" 2>/dev/null || true; }
peak_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$(daemon_pid)/status"; }

# timed_rsync SRC DEST → seconds of `rsync -a --delete SRC/ DEST/`; on any error, shows
# rsync's own output and fails.
timed_rsync() {
    local s e rc=0
    sync
    s=$(now)
    rsync -a --delete "$1/" "$2/" >"$WORK/rsync.out" 2>&1 || rc=$?
    e=$(now)
    if [ "$rc" -ne 0 ] || [ -s "$WORK/rsync.out" ]; then
        log "rsync -a --delete $1/ $2/ exited with $rc:"
        cat "$WORK/rsync.out" >&2
        [ "$rc" -ne 0 ] && exit 1
    fi
    secs "$s" "$e"
}

log "creating and mounting a repository at $MNT…"
"$BIN" --repo "$REPO" init -q >&2 # -q still prints the repository and its mirrors
# shellcheck disable=SC2086 # MOUNT_ARGS is a list of words
"$BIN" --repo "$REPO" mount "$MNT" ${MOUNT_ARGS:-} >&2

ROWS=()
TP=0 TM=0 TS=0 MAXPEAK=0 i=0
# mount_side SRC → the rsync into the mount (m), then its snapshot (s, e) and the
# daemon's peak RSS over both (peak).
mount_side() {
    reset_peak
    m=$(timed_rsync "$1" "$MNT/tree")
    s=$(now)
    "$BIN" --repo "$REPO" snapshot -q >/dev/null
    e=$(now)
    peak=$(peak_mib)
}

for v in $RELEASES; do
    src=${SRC[$v]}
    files=$(find "$src" -type f | wc -l)
    log "Django $v ($files files): rsync into both sides…"
    find "$src" -type f -exec cat {} + >/dev/null # a warm source for both sides
    if [ $((i % 2)) -eq 0 ]; then
        p=$(timed_rsync "$src" "$PLAIN/tree")
        mount_side "$src"
    else
        mount_side "$src"
        p=$(timed_rsync "$src" "$PLAIN/tree")
    fi
    snap_ms=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", (e - s) * 1000 }')
    first=plain
    [ $((i % 2)) -eq 1 ] && first=mount
    ratio=$(awk -v p="$p" -v m="$m" 'BEGIN { if (p > 0) printf "%.2fx", m / p; else print "-" }')
    ROWS+=("| $v ($files files, $first first) | $p s | $m s | $ratio | $snap_ms ms | $peak MiB |")
    log "  plain $p s, mount $m s ($ratio), snapshot $snap_ms ms"
    TP=$(awk -v a="$TP" -v b="$p" 'BEGIN { print a + b }')
    TM=$(awk -v a="$TM" -v b="$m" 'BEGIN { print a + b }')
    TS=$((TS + snap_ms))
    MAXPEAK=$((peak > MAXPEAK ? peak : MAXPEAK))
    i=$((i + 1))
done

# The snapshots, oldest first, are the releases in order.
mapfile -t SNAPS < <("$BIN" --repo "$REPO" list --json | python3 -c 'import json,sys
for s in json.load(sys.stdin): print(s["name"])')
read -ra VERS <<<"$RELEASES"
[ "${#SNAPS[@]}" -eq "${#VERS[@]}" ] ||
    { log "snapfs list shows ${#SNAPS[@]} snapshots, not ${#VERS[@]}: ${SNAPS[*]}"; exit 1; }

log "comparing each snapshot with its release…"
BAD=0
for k in "${!VERS[@]}"; do
    v=${VERS[$k]} snap=${SNAPS[$k]}
    if ! python3 - "${SRC[$v]}" "$MNT/$snap/tree" <<'EOF'; then
import os, stat, sys
want_top, got_top = sys.argv[1], sys.argv[2]
owners = os.geteuid() == 0  # rsync -a keeps owners only as root
problems = []

def walk(top):
    out = {}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, top)] = p
    return out

def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True

want, got = walk(want_top), walk(got_top)
for rel in sorted(set(want) - set(got)):
    problems.append("missing: %s" % rel)
for rel in sorted(set(got) - set(want)):
    problems.append("extra: %s" % rel)
for rel in ["."] + sorted(set(want) & set(got)):
    a, b = os.path.join(want_top, rel), os.path.join(got_top, rel)
    sa, sb = os.lstat(a), os.lstat(b)
    if sa.st_mode != sb.st_mode:
        problems.append("mode %o, not %o: %s" % (sb.st_mode, sa.st_mode, rel))
        continue
    if owners and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        problems.append("owner %d:%d, not %d:%d: %s" % (sb.st_uid, sb.st_gid, sa.st_uid, sa.st_gid, rel))
    if sa.st_mtime_ns != sb.st_mtime_ns:
        problems.append("mtime %d ns, not %d ns: %s" % (sb.st_mtime_ns, sa.st_mtime_ns, rel))
    if stat.S_ISLNK(sa.st_mode):
        if os.readlink(a) != os.readlink(b):
            problems.append("symlink to %r, not %r: %s" % (os.readlink(b), os.readlink(a), rel))
    elif stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            problems.append("size %d, not %d: %s" % (sb.st_size, sa.st_size, rel))
        elif not same_bytes(a, b):
            problems.append("different bytes: %s" % rel)
for p in problems[:20]:
    print("  " + p, file=sys.stderr)
if len(problems) > 20:
    print("  … and %d more" % (len(problems) - 20), file=sys.stderr)
print("  %d entries compared, %d differences" % (len(want) + 1, len(problems)), file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
        log "snapshot $snap does not read back as Django $v"
        BAD=1
    else
        log "snapshot $snap reads back as Django $v"
    fi
done
[ "$BAD" -eq 0 ] || { log "FAILED: snapshots differ from their releases (above)"; exit 1; }

"$BIN" --repo "$REPO" umount "$MNT" >&2

# What the six releases cost on one disk: that disk's packs, the catalog, and the
# catalog copies kept on that disk; and its files per MiB of stored data.
M0=$REPO/mirror-0
bytes_of() { du -sb --apparent-size "$@" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
PACKB=$(bytes_of "$M0/packs")
COPYB=$(bytes_of "$M0/catalog")
CATB=$(bytes_of "$REPO"/catalog.db "$REPO"/catalog.db-wal)
M0FILES=$(find "$M0" -type f | wc -l)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
FOOT=$((PACKB + COPYB + CATB))

# The oldest snapshot read cold, every file with cat, after a remount and a page-cache
# drop, against the same release copied into a plain folder on the same disk.
OLDEST=$WORK/plain-oldest
cp -a "${SRC[${VERS[0]}]}" "$OLDEST"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "cannot drop the page cache (not root?)"; }
cold_cat() {
    local s e
    drop
    s=$(now)
    find "$1" -type f -exec cat {} + >/dev/null
    e=$(now)
    secs "$s" "$e"
}
# shellcheck disable=SC2086
"$BIN" --repo "$REPO" mount "$MNT" ${MOUNT_ARGS:-} >&2
CP=() CM=()
for _ in 1 2 3; do
    CP+=("$(cold_cat "$OLDEST")")
    CM+=("$(cold_cat "$MNT/${SNAPS[0]}/tree")")
done
"$BIN" --repo "$REPO" umount "$MNT" >&2
med() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
COLDP=$(med "${CP[@]}") COLDM=$(med "${CM[@]}")

ratio=$(awk -v p="$TP" -v m="$TM" 'BEGIN { if (p > 0) printf "%.2fx", m / p; else print "-" }')
verdict=$(awk -v p="$TP" -v m="$TM" 'BEGIN { print (m <= 2 * p ? "met" : "NOT met") }')
echo
echo "snapfs rsync benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), $(rsync --version | head -n1 | awk '{ print $1, $3 }')"
echo
echo "| rsync -a --delete of Django … | plain folder | snapfs mount | mount/plain | snapshot | daemon peak RSS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
echo "| total, ${#VERS[@]} releases | $(printf '%.2f' "$TP") s | $(printf '%.2f' "$TM") s | $ratio | $TS ms | $MAXPEAK MiB |"
echo
echo "Target, the mount at most 2x the plain folder in total: $verdict. Every snapshot read back"
echo "exactly (names, types, modes, owners, mtimes, symlink targets, bytes). Times are rsync's alone,"
echo "without fsync; the snapshot is timed on its own. Daemon peak RSS: VmHWM, reset before each"
echo "release's rsync into the mount, read after its snapshot."
echo
echo "| one disk after the ${#VERS[@]} releases | bytes |"
echo "| --- | ---: |"
echo "| packs (chunk data) | $(mb "$PACKB") MB |"
echo "| catalog (catalog.db + WAL) | $(mb "$CATB") MB |"
echo "| catalog copies on that disk | $(mb "$COPYB") MB |"
echo "| total (aim: at most 25 MB) | $(mb "$FOOT") MB |"
echo "| files in the disk folder per MiB of packs | $(awk -v f="$M0FILES" -v b="$PACKB" 'BEGIN { printf "%.2f (%d files)", f / (b / 1048576), f }') |"
echo
echo "Cold read of every file of the oldest snapshot (${VERS[0]}, cat of each after a page-cache drop,"
echo "remounted, median of 3): plain folder $COLDP s, snapfs mount $COLDM s (aim: at most 2.5 s)."
