#!/usr/bin/env python3
# The durability work of one commit of N (10 to 100) small chunks into two mirrors:
# one file per chunk in objects/xx/ + syncfs of each mirror (storage format 1) against
# one append per mirror to a pack file + fdatasync (format 2). The two sides alternate
# round by round. Files it makes are named zzbench… / packs-bench/ and removed at the end.
#
#   python3 benches/commit_cost.py MIRROR0 MIRROR1 ROUNDS
#
# MIRROR* are format-1 mirror folders (with objects/00 … objects/ff), e.g. those of the
# repository `KEEP=1 benches/scale.sh` leaves, to see the cost at a million objects.
import ctypes, os, random, sys, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
mirrors = sys.argv[1:3]; rounds = int(sys.argv[3])
rng = random.Random(5)
made = []
def objects_round(n):
    for m in mirrors:
        for i in range(n):
            name = os.urandom(32).hex()
            d = os.path.join(m, "objects", name[:2])
            tmp = os.path.join(d, f".tmp-{name}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, os.urandom(rng.randrange(300, 3000)))
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            final = os.path.join(d, "zzbench" + name)
            os.rename(tmp, final); made.append(final)
    for m in mirrors:
        fd = os.open(os.path.join(m, "objects"), os.O_RDONLY | os.O_DIRECTORY)
        assert libc.syncfs(fd) == 0; os.close(fd)
packs = {}
def pack_round(n):
    for m in mirrors:
        if m not in packs:
            d = os.path.join(m, "packs-bench"); os.makedirs(d, exist_ok=True)
            packs[m] = (os.open(os.path.join(d, "0000000000000001.pack"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), d)
        fd, d = packs[m]
        buf = b"".join(os.urandom(rng.randrange(300, 3000) + 48) for _ in range(n))
        os.write(fd, buf)
    for m in mirrors:
        fd, d = packs[m]
        os.fdatasync(fd)
times = {"objects": [], "pack": []}
for r in range(rounds):
    n = rng.randrange(10, 101)
    for side in (["objects", "pack"] if r % 2 else ["pack", "objects"]):
        t = time.monotonic()
        (objects_round if side == "objects" else pack_round)(n)
        times[side].append((time.monotonic() - t) * 1000)
for side, v in times.items():
    v.sort(); print(f"{side}: median {v[len(v)//2]:.1f} ms, p90 {v[int(len(v)*0.9)]:.1f} ms, worst {v[-1]:.1f} ms")
for f in made: os.remove(f)
for m, (fd, d) in packs.items():
    os.close(fd); import shutil; shutil.rmtree(d)
