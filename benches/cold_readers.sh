#!/usr/bin/env bash
# Cold readers, builds side by side: one and then two `dd` of cold 1 GiB files of
# random data through a mount of each given snapfs binary (each on a repository of
# its own, all mounted at once), and in a plain folder on the same disk, the sides
# taking turns within each round. For each mount run it prints MB/s, the daemon's
# CPU seconds (/proc/PID/stat) and the bytes the daemon read from disk
# (/proc/PID/io read_bytes: more than the files' size means chunks read twice).
#
#   benches/cold_readers.sh ROUNDS BIN…          # e.g. 3 old/snapfs target/release/snapfs
#   BENCH_DIR=/mnt/disk benches/cold_readers.sh … # where the repositories live
#
# Needs root (to drop the page cache), FUSE, dd.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 ROUNDS BIN…" >&2; exit 2; }
ROUNDS=$1
shift
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/snapfs-readers.XXXXXX")
MOUNTED=()
cleanup() {
    local i
    for i in "${!MOUNTED[@]}"; do
        "${MOUNTED[$i]}" --repo "$WORK/repo$i" umount "$WORK/m$i" >/dev/null 2>&1 ||
            fusermount3 -u "$WORK/m$i" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
read_of() { awk '/^read_bytes/ { print $2 }' "/proc/$1/io"; }

# read_n DIR N [PID] → "MB/s" of N readers of DIR/r0 … at once, and with PID the
# daemon's CPU seconds and GiB read from disk meanwhile.
read_n() {
    local dir=$1 n=$2 pid=${3:-} i s e c0=0 c1=0 r0=0 r1=0
    drop
    [ -n "$pid" ] && { c0=$(cpu_of "$pid"); r0=$(read_of "$pid"); }
    s=$(now)
    for i in $(seq 0 $((n - 1))); do
        dd if="$dir/r$i" of=/dev/null bs=1M status=none &
    done
    wait
    e=$(now)
    [ -n "$pid" ] && { c1=$(cpu_of "$pid"); r1=$(read_of "$pid"); }
    awk -v n="$n" -v s="$s" -v e="$e" -v c=$((c1 - c0)) -v r=$((r1 - r0)) -v p="$pid" 'BEGIN {
        printf "%5.0f MB/s", n * 1073.741824 / (e - s)
        if (p != "") printf " (daemon CPU %.2f s, read %.2f GiB)", c / 100, r / 1073741824 }'
}

mkdir -p "$WORK/plain"
for i in 0 1; do head -c 1G /dev/urandom >"$WORK/plain/r$i"; done
PIDS=()
k=0
for bin in "$@"; do
    mkdir -p "$WORK/m$k"
    "$bin" --repo "$WORK/repo$k" init -q >/dev/null
    "$bin" --repo "$WORK/repo$k" mount "$WORK/m$k" >/dev/null
    MOUNTED[k]=$bin
    PIDS[k]=$(head -n1 "$WORK/repo$k/lock")
    for i in 0 1; do cp "$WORK/plain/r$i" "$WORK/m$k/r$i"; done
    k=$((k + 1))
done
sync
# The first read of blocks just written can be much slower on a virtual disk.
cat "$WORK"/plain/r* "$WORK"/m*/r* >/dev/null

for round in $(seq "$ROUNDS"); do
    echo "round $round"
    echo "  plain folder: one $(read_n "$WORK/plain" 1) | two $(read_n "$WORK/plain" 2)"
    for k in "${!PIDS[@]}"; do
        echo "  ${MOUNTED[$k]}: one $(read_n "$WORK/m$k" 1 "${PIDS[$k]}") | two $(read_n "$WORK/m$k" 2 "${PIDS[$k]}")"
    done
done
