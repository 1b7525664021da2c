#!/usr/bin/env bash
# What the fsync mode of the mirrors costs where syncfs would do: the same workloads in
# a plain folder, through a mount whose mirrors sync with syncfs (this disk's own
# choice when it is ext4, xfs, btrfs …) and through one forced to fsync every new
# chunk file and folder (SNAPFS_SYNC=fsync, the mode of mirrors on FUSE, NFS …), all on
# the same disk, the sides alternating in each round. Prints one line per measurement
# and a markdown table of medians (with the range).
#
#   benches/sync_modes.sh                    # 3 rounds, 1 GiB sequential, 15 s fio runs
#   ROUNDS=5 SIZE=2G RUNTIME=30 benches/sync_modes.sh
#   BENCH_DIR=/mnt/disk benches/sync_modes.sh
#   SNAPFS_BIN=target/release/snapfs …       # use this binary instead of building one
#
# Workloads: a sequential write of random data (dd, 1 MiB blocks, one fsync at the
# end); 4 KiB writes at random offsets of a 64 MiB file for RUNTIME seconds (fio,
# psync), once with one fsync at the end and once with an fsync after every write.
#
# Needs: FUSE (/dev/fuse, fusermount3), fio, dd, numfmt.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-15}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BYTES=$(numfmt --from=iec "$SIZE")

log() { printf '%s\n' "$*" >&2; }

if [ -n "${SNAPFS_BIN:-}" ]; then
    BIN=$SNAPFS_BIN
else
    log "building release binary…"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/snapfs
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/snapfs-sync.XXXXXX")
MNT=$WORK/mnt
mkdir -p "$MNT"
mounted() { awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
cleanup() {
    set +e
    if mounted; then
        "$BIN" --repo "$WORK/repo" umount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "generating $SIZE of random data…"
head -c "$BYTES" /dev/urandom >"$WORK/data"
sync

now() { date +%s.%N; }
rate() { awk -v a="$1" -v s="$2" -v e="$3" 'BEGIN { d = e - s; if (d <= 0) d = 1e-9; printf "%.1f", a / d }'; }

# setup SIDE → prints the folder to work in (mounting a fresh repository for the mounts)
setup() {
    rm -rf "$WORK/repo" "$WORK/plain"
    case $1 in
    plain)
        mkdir -p "$WORK/plain"
        echo "$WORK/plain"
        ;;
    syncfs | fsync)
        local env=()
        [ "$1" = fsync ] && env=(SNAPFS_SYNC=fsync)
        env "${env[@]}" "$BIN" --repo "$WORK/repo" mount "$MNT" >/dev/null
        # The daemon must run in the mode this side is named for.
        local pid
        pid=$(head -n1 "$WORK/repo/lock")
        if [ "$1" = fsync ]; then
            tr '\0' '\n' <"/proc/$pid/environ" | grep -qx SNAPFS_SYNC=fsync || { log "daemon not forced"; exit 1; }
        else
            ! tr '\0' '\n' <"/proc/$pid/environ" | grep -q '^SNAPFS_SYNC=' || { log "daemon forced"; exit 1; }
            local status
            status=$("$BIN" --repo "$WORK/repo" status --json)
            grep -q '"sync": "syncfs"' <<<"$status" || { log "this disk is not synced by syncfs"; exit 1; }
        fi
        echo "$MNT"
        ;;
    esac
}

teardown() {
    if mounted; then "$BIN" --repo "$WORK/repo" umount "$MNT" >/dev/null; fi
    rm -rf "$WORK/repo" "$WORK/plain"
    sync
}

# fio_iops DIR FSYNC → write IOPS of 4 KiB random writes
fio_iops() {
    local extra=(--end_fsync=1)
    [ "$2" = 1 ] && extra=(--fsync=1)
    fio --name=rand --directory="$1" --filename=rand.bin --rw=randwrite --bs=4k --size=64M \
        --ioengine=psync --time_based --runtime="$RUNTIME" "${extra[@]}" \
        --output-format=terse --terse-version=3 | awk -F';' '{ print $49 }'
}

declare -A results
sides=(plain syncfs fsync)
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round, so no side always follows the same one.
    shift_by=$(((round - 1) % 3))
    order=("${sides[@]:shift_by}" "${sides[@]:0:shift_by}")
    for side in "${order[@]}"; do
        dir=$(setup "$side")
        start=$(now)
        dd if="$WORK/data" of="$dir/seq.bin" bs=1M conv=fsync status=none
        end=$(now)
        seq=$(rate "$((BYTES / 1000000))" "$start" "$end")
        rm -f "$dir/seq.bin"
        rand=$(fio_iops "$dir" 0)
        rm -f "$dir/rand.bin"
        randsync=$(fio_iops "$dir" 1)
        teardown
        log "round $round $side: sequential ${seq} MB/s, random 4k ${rand} writes/s, random 4k + fsync ${randsync} writes/s"
        results[$side,seq]+="$seq "
        results[$side,rand]+="$rand "
        results[$side,randsync]+="$randsync "
    done
done

# summary VALUES… → "median (min-max)"
summary() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%s (%s-%s)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
echo
echo "| workload | plain folder | mount, syncfs | mount, fsync per file |"
echo "| --- | ---: | ---: | ---: |"
for w in seq rand randsync; do
    case $w in
    seq) name="sequential write $SIZE, random data, MB/s" ;;
    rand) name="4 KiB random writes, one fsync at the end, writes/s" ;;
    randsync) name="4 KiB random writes, fsync after each, writes/s" ;;
    esac
    # shellcheck disable=SC2086
    echo "| $name | $(summary ${results[plain,$w]}) | $(summary ${results[syncfs,$w]}) | $(summary ${results[fsync,$w]}) |"
done
