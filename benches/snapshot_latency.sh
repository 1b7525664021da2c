#!/usr/bin/env bash
# Snapshot latency through a running mount: a tree of 100 files against one of
# 100,000 files. Each round changes one file, then times `snapfs snapshot` (which goes
# through the control socket: commit buffered writes, freeze, sync). Prints a
# markdown table with the median and the ratio.
#
#   benches/snapshot_latency.sh            # release build, 15 rounds per tree
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/snapfs
ROUNDS=${ROUNDS:-15}
WORK=$(mktemp -d)
cleanup() {
	for m in "$WORK"/*/mnt; do
		mountpoint -q "$m" 2>/dev/null && fusermount3 -uz "$m" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

median_ms() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RESULT
for n in 100 100000; do
	dir=$WORK/t$n
	mkdir -p "$dir/src" "$dir/mnt"
	python3 - "$dir/src" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "w") as f:
        f.write(f"file {i}\n")
PY
	"$BIN" --repo "$dir/repo" init >/dev/null
	"$BIN" --repo "$dir/repo" import "$dir/src" >/dev/null
	"$BIN" --repo "$dir/repo" mount "$dir/mnt" >/dev/null
	# Settle the set-up writes, so that syncfs in the first rounds does not pay for them.
	sync
	times=()
	for r in $(seq "$ROUNDS"); do
		echo "round $r" >"$dir/mnt/changed"
		start=$(date +%s%N)
		"$BIN" --repo "$dir/repo" snapshot >/dev/null
		end=$(date +%s%N)
		times+=($(((end - start) / 1000)))
	done
	"$BIN" --repo "$dir/repo" umount "$dir/mnt" >/dev/null
	RESULT[$n]=$(printf '%s\n' "${times[@]}" | median_ms)
done
small=${RESULT[100]}
big=${RESULT[100000]}
echo "| tree | median snapshot latency |"
echo "| --- | ---: |"
printf '| 100 files | %.1f ms |\n' "$(echo "$small / 1000" | bc -l)"
printf '| 100,000 files | %.1f ms |\n' "$(echo "$big / 1000" | bc -l)"
printf '| ratio (100,000 / 100) | %.2fx |\n' "$(echo "$big / $small" | bc -l)"
