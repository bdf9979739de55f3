"""Offline evaluation of the home rows: leave-last-out hit rate@10 against popularity only.

Run by hand: ``.venv/bin/python loadtests/bench_recommend.py [--profiles 2000] [--titles 1000]``.

It generates a catalogue in ``--genres`` genres where titles form small clusters (a series, a
franchise) inside a genre, and viewing sessions with planted tastes: each profile prefers one or
two genres and one cluster, and each pick comes from that cluster, those genres, or (the noise)
the whole catalogue by Zipf popularity. The last title each profile watched is held out; the
rows are computed from everything else (trending and co-watch included, so nothing about the
held-out plays is known), and it prints:

* ``hit@10 home rows``: share of profiles whose held-out title is among the first 10 titles of
  the personalised rows, in display order (Because You Watched, Top in Genre, then Trending and
  New Releases fill up); Continue Watching is skipped since it holds only watched titles;
* ``hit@10 popular``: the baseline, the 10 most trending titles the profile has not watched;
* ``lift``: the ratio (target >= 2.0), and the batch's run time.

``--quick``: 1,000 profiles. ``--json FILE`` writes the figures as rows (loadtests/results.py).
The exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import measured, write_rows

from control.recommend import (
    DAY_S,
    Title,
    Watch,
    cowatch_similarity,
    home_rows,
    shared_inputs,
    trending_scores,
)

NOW = 1_700_000_000.0
CLUSTER = 20


def make_catalogue(rng: random.Random, n_titles: int, n_genres: int) -> list[Title]:
    genres = [f"g{i:02d}" for i in range(n_genres)]
    out = []
    for i in range(n_titles):
        # Titles come in clusters that share a main genre, like episodes of a franchise.
        main = genres[(i // CLUSTER) % n_genres]
        extra = (rng.choice(genres),) if rng.random() < 0.3 else ()
        released = NOW - rng.uniform(0, 365 * DAY_S)
        out.append(Title(f"t{i:04d}", (main, *extra), released, rng.choice((0, 7, 13, 16, 18))))
    return out


def make_sessions(
    rng: random.Random, catalogue: list[Title], n_profiles: int, n_genres: int
) -> dict[str, list[Watch]]:
    ids = [t.id for t in catalogue]
    by_genre: dict[str, list[str]] = defaultdict(list)
    for t in catalogue:
        for g in t.genres:
            by_genre[g].append(t.id)
    clusters = [ids[i : i + CLUSTER] for i in range(0, len(ids), CLUSTER)]
    # Zipf popularity over a shuffled catalogue, so popularity is independent of taste.
    popular_order = ids[:]
    rng.shuffle(popular_order)
    zipf = [1.0 / (r + 1) for r in range(len(ids))]

    sessions: dict[str, list[Watch]] = {}
    for p in range(n_profiles):
        profile = f"p{p:05d}"
        cluster = rng.choice(clusters)
        main = catalogue[ids.index(cluster[0])].genres[0]
        tastes = [main] + ([f"g{rng.randrange(n_genres):02d}"] if rng.random() < 0.5 else [])
        n = rng.randint(8, 30)
        seen: set[str] = set()
        at = NOW - rng.uniform(5, 20) * DAY_S
        history = []
        while len(history) < n:
            u = rng.random()
            if u < 0.45:
                pick = rng.choice(cluster)
            elif u < 0.75:
                pick = rng.choice(by_genre[rng.choice(tastes)])
            else:
                pick = rng.choices(popular_order, weights=zipf)[0]
            if pick in seen:
                continue
            seen.add(pick)
            at += rng.uniform(0.05, 0.6) * DAY_S
            finished = rng.random() < 0.85
            progress = 1.0 if finished else rng.uniform(0.05, 0.9)
            history.append(Watch(profile, pick, min(at, NOW), progress, finished))
        sessions[profile] = history
    return sessions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=None, help="viewing profiles (2000)")
    ap.add_argument("--titles", type=int, default=1000)
    ap.add_argument("--genres", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1,000 profiles")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args()
    if args.profiles is None:
        args.profiles = 1000 if args.quick else 2000

    rng = random.Random(args.seed)
    catalogue = make_catalogue(rng, args.titles, args.genres)
    titles = {t.id: t for t in catalogue}
    sessions = make_sessions(rng, catalogue, args.profiles, args.genres)

    held_out: dict[str, str] = {}
    train: dict[str, list[Watch]] = {}
    for profile, history in sessions.items():
        last = max(history, key=lambda w: w.at).title
        held_out[profile] = last
        train[profile] = [w for w in history if w.title != last]
    all_train = [w for h in train.values() for w in h]

    t0 = time.perf_counter()
    trending = trending_scores(all_train, NOW)
    similar = cowatch_similarity(all_train)
    t1 = time.perf_counter()
    shared = shared_inputs(titles, trending, NOW)  # once per batch, as recompute() does
    rows = {
        p: home_rows(p, h, titles, similar=similar, trending=trending, now=NOW, shared=shared)
        for p, h in train.items()
    }
    t2 = time.perf_counter()

    ranked = sorted(trending, key=lambda t: (-trending[t], t))
    hits = base_hits = 0
    for profile, target in held_out.items():
        shown = [t for r in rows[profile] if r.name != "continue_watching" for t in r.titles]
        hits += target in shown[:10]
        watched = {w.title for w in train[profile]}
        base_hits += target in [t for t in ranked if t not in watched][:10]

    n = len(held_out)
    rate, base = hits / n, base_hits / n
    print(f"profiles {n}  titles {len(titles)}  genres {args.genres}  watches {len(all_train)}")
    print(f"hit@10 home rows   {rate:.3f}")
    print(f"hit@10 popular     {base:.3f}")
    print(f"lift               {rate / base if base else float('inf'):.2f}x  (target >= 2.0)")
    print(f"batch: trending+similarity {t1 - t0:.2f}s, rows {t2 - t1:.2f}s ({n / (t2 - t1):.0f}/s)")
    if args.json:
        lift = rate / base if base else None
        write_rows(
            args.json,
            [
                measured("recommend", f"hit@10 home rows, {n:,} profiles", rate, peer="popular",
                         peer_value=base, ratio=lift, target=">= 2.0x popular",
                         met=lift is None or lift >= 2.0),
                measured("recommend", "home rows batch", n / (t2 - t1), "profiles/s"),
            ],
        )  # fmt: skip


if __name__ == "__main__":
    main()
