"""Balance, disruption and speed of the steering ring against Apache Traffic Control's scheme.

Run by hand: ``.venv/bin/python loadtests/bench_ring.py [--keys N] [--sizes 10 50]``. For each
site size N it prints, for steering's weighted rendezvous ring (``steering.ring``) and for a
reimplementation of Traffic Router's consistent hash (each cache gets 1000 points on a 64-bit
ring placed by MD5 of ``"<cache id>--<index>"``, a key goes to the closest point clockwise):

* ``peak/mean uniform``: max edge load over mean, uniformly random keys, no bounded loads
  (target <= 1.05);
* ``peak/mean zipf``: same, but requests drawn from a catalogue with Zipf popularity, where one
  hot title lands wholly on one edge;
* ``zipf bounded c=1.25``: steering's ``BoundedLoads`` on the same Zipf requests (target <= c;
  Traffic Router has no bounded loads, hence n/a);
* ``moved/(1/N)``: fraction of keys whose edge changes when one edge leaves, over 1/N (target
  within 1.1x), and ``stray moves``: keys that moved although their edge stayed (must be 0);
* ``rank/s`` and ``pick/s``: full preference lists and first choices per second, one core.

``--quick`` measures 10 edges only (the same 100,000 keys: fewer would make the balance figures
noise); ``--json FILE`` writes steering's figures against ATC's and the targets as rows
(loadtests/results.py). Exit status 0 when every target holds, 2 when one is missed.

The ATC scheme lives only here, as the reference; nothing in the product imports it.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Row, measured, write_rows

from steering.ring import BoundedLoads, Member, Ring

C = 1.25
ATC_POINTS = 1000


def _md5_64(s: str) -> int:
    return int.from_bytes(hashlib.md5(s.encode()).digest()[:8], "big")


class AtcRing:
    """Traffic Router style ring: 1000 MD5-placed points per cache, closest point clockwise."""

    def __init__(self, ids: Sequence[str], points: int = ATC_POINTS) -> None:
        ring = sorted((_md5_64(f"{cid}--{i}"), cid) for cid in ids for i in range(points))
        self.hashes = [h for h, _ in ring]
        self.owners = [cid for _, cid in ring]
        self.n = len(set(ids))

    def pick(self, key: str) -> str:
        i = bisect.bisect_right(self.hashes, _md5_64(key))
        return self.owners[i % len(self.owners)]

    def rank(self, key: str) -> list[str]:
        # Fallback order as Traffic Router walks it: distinct caches met going clockwise.
        start = bisect.bisect_right(self.hashes, _md5_64(key))
        seen: dict[str, None] = {}
        owners, total = self.owners, len(self.owners)
        for j in range(total):
            seen.setdefault(owners[(start + j) % total])
            if len(seen) == self.n:
                break
        return list(seen)


def peak_to_mean(assigned: Counter[str], n: int) -> float:
    total = sum(assigned.values())
    return max(assigned.values()) / (total / n)


def zipf_requests(count: int, catalogue: int, s: float, seed: int) -> list[str]:
    rnd = random.Random(seed)
    titles = [f"/v/title{i:06d}/seg.m4s" for i in range(catalogue)]
    cum = list(itertools.accumulate(1.0 / (r + 1) ** s for r in range(catalogue)))
    return rnd.choices(titles, cum_weights=cum, k=count)


def rate(fn: Callable[[str], object], ks: Sequence[str]) -> float:
    t0 = time.perf_counter()
    for k in ks:
        fn(k)
    return len(ks) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000, help="random keys per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="edges per site")
    ap.add_argument("--catalogue", type=int, default=10_000, help="titles for the Zipf run")
    ap.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10 edges only")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args()
    if args.quick:
        args.sizes = [10]

    rnd = random.Random(args.seed)
    keys = [
        f"/v/{rnd.getrandbits(48):012x}/seg{rnd.randrange(5000):05d}.m4s" for _ in range(args.keys)
    ]
    zipf = zipf_requests(args.keys, args.catalogue, args.zipf_s, args.seed)
    speed_keys = keys[:20_000]

    rows: list[tuple[str, ...]] = []
    figures: dict[tuple[int, str], dict[str, float]] = {}
    for n in args.sizes:
        ids = [f"edge-{i:02d}" for i in range(n)]
        gone = ids[0]
        hrw, hrw_less = Ring(Member(i) for i in ids), Ring(Member(i) for i in ids[1:])
        atc, atc_less = AtcRing(ids), AtcRing(ids[1:])
        for name, ring, less in (("steering HRW", hrw, hrw_less), ("ATC md5 x1000", atc, atc_less)):
            before = [ring.pick(k) for k in keys]
            after = [less.pick(k) for k in keys]
            moved = sum(b != a for b, a in zip(before, after, strict=True))
            stray = sum(b != a and b != gone for b, a in zip(before, after, strict=True))
            uniform = peak_to_mean(Counter(before), n)
            zipf_plain = peak_to_mean(Counter(ring.pick(k) for k in zipf), n)
            fig = figures[n, name] = {"uniform": uniform, "zipf": zipf_plain}
            if isinstance(ring, Ring):
                bl = BoundedLoads(ring, C)
                for k in zipf:
                    bl.assign(k)
                fig["bounded"] = max(bl.loads.values()) / (bl.total / n)
                bounded = f"{fig['bounded']:.3f}"
            else:
                bounded = "n/a"
            fig["moved"], fig["stray"] = moved / len(keys) * n, stray
            fig["rank"], fig["pick"] = rate(ring.rank, speed_keys), rate(ring.pick, speed_keys)
            rows.append(
                (
                    str(n),
                    name,
                    f"{uniform:.3f}",
                    f"{zipf_plain:.3f}",
                    bounded,
                    f"{fig['moved']:.3f}",
                    str(stray),
                    f"{fig['rank']:,.0f}",
                    f"{fig['pick']:,.0f}",
                )
            )

    head = (
        "N",
        "scheme",
        "peak/mean uniform",
        "peak/mean zipf",
        f"zipf bounded c={C}",
        "moved/(1/N)",
        "stray moves",
        "rank/s",
        "pick/s",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(
        f"{args.keys:,} keys; Zipf s={args.zipf_s} over {args.catalogue:,} titles; "
        f"edge-00 leaves; Python {sys.version.split()[0]}"
    )
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                c.rjust(w) if i != 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    rows_out = json_rows(figures, args.sizes, len(zipf))
    if args.json:
        write_rows(args.json, rows_out)
    missed = [r.figure for r in rows_out if r.met is False]
    for figure in missed:
        print(f"target missed: {figure}")
    return 2 if missed else 0


def json_rows(
    figures: dict[tuple[int, str], dict[str, float]], sizes: list[int], requests: int
) -> list[Row]:
    """Steering's ring against ATC's, per site size, with the targets of the docstring."""
    out = []
    for n in sizes:
        ours, atc = figures[n, "steering HRW"], figures[n, "ATC md5 x1000"]
        # BoundedLoads caps a member at ceil(c * load * share): one unit above c * mean at most.
        bounded_ok = ours["bounded"] <= C + n / requests
        for key, figure, target, met in (
            ("uniform", "peak/mean, uniform keys", "<= 1.05", ours["uniform"] <= 1.05),
            ("zipf", "peak/mean, Zipf requests", None, None),
            ("bounded", f"peak/mean, Zipf, bounded c={C}", f"<= {C}", bounded_ok),
            ("moved", "keys moved / (1/N), one edge leaves", "<= 1.1", ours["moved"] <= 1.1),
            ("stray", "stray moves", "= 0", ours["stray"] == 0),
            ("rank", "rank (preference lists)", None, None),
            ("pick", "pick (first choice)", None, None),
        ):
            speed = key in ("rank", "pick")
            out.append(
                measured(
                    "ring",
                    f"{figure}, {n} edges",
                    ours[key],
                    "/s" if speed else "",
                    peer="ATC" if key in atc else None,
                    peer_value=atc.get(key),
                    target=target,
                    met=met,
                )
            )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
