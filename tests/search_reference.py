"""A naive oracle for `control.search.SearchIndex.search`: score every posting, then rank.

This is the search as it was before top-k scoring (score every visible posting of every
alternative, keep per doc the best alternative, intersect or unite, rank), kept as the
reference the fast path must equal bit for bit (tests/test_control_search.py). It reads the
index's raw structures (postings, per-term level counts, per-level ids, vocabulary, deletion
index, filter indexes) and re-derives everything else itself, alternatives included, so a
shortcut in the index cannot hide in a helper both share.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Iterable

from control.search import (
    _K1P1,
    _ROUND_SLACK,
    K1,
    MAX_PREFIX_EXPANSIONS,
    MIN_PREFIX_LEN,
    MIN_TYPO_LEN,
    PREFIX_FACTOR,
    SCORE_DIGITS,
    TYPO_FACTOR,
    Hit,
    Page,
    SearchIndex,
    _deletes,
    damerau_levenshtein,
    normalize,
    tokenize,
)


def _ids(index: SearchIndex, bits: int) -> set[str]:
    return {index._slot_ids[i] for i in range(bits.bit_length()) if bits >> i & 1}


def _visible_df(index: SearchIndex, term: str, max_maturity: int) -> int:
    levels = index._term_levels.get(term)
    if not levels:
        return 0
    return sum(n for m, n in levels.items() if m <= max_maturity)


def _typo_candidates(index: SearchIndex, term: str, max_maturity: int) -> list[tuple[str, int]]:
    if len(term) < MIN_TYPO_LEN:
        return []
    dist = 1 if len(term) < 8 else 2
    seen: set[str] = set()
    for variant in _deletes(term, dist):
        seen.update(index._deletes.get(variant, ()))
    best: list[tuple[str, int]] = []
    best_d = dist + 1
    for cand in sorted(seen):
        if cand == term or _visible_df(index, cand, max_maturity) == 0:
            continue
        d = damerau_levenshtein(term, cand)
        if d < best_d:
            best, best_d = [(cand, d)], d
        elif d == best_d and d <= dist:
            best.append((cand, d))
    return best


def _alternatives(
    index: SearchIndex, term: str, is_last: bool, max_maturity: int
) -> list[tuple[str, float]]:
    alts: list[tuple[str, float]] = []
    if _visible_df(index, term, max_maturity):
        alts.append((term, 1.0))
    if is_last and len(term) >= MIN_PREFIX_LEN:
        vocab = index._vocab
        completions = []
        i = bisect_left(vocab, term)
        while i < len(vocab) and vocab[i].startswith(term):
            t = vocab[i]
            df = _visible_df(index, t, max_maturity)
            if t != term and df:
                completions.append((df, t))
            i += 1
        completions.sort(key=lambda c: (-c[0], c[1]))
        alts.extend((t, PREFIX_FACTOR) for _, t in completions[:MAX_PREFIX_EXPANSIONS])
    if not alts:
        alts = [(t, TYPO_FACTOR[d]) for t, d in _typo_candidates(index, term, max_maturity)]
    return alts


def reference_search(
    index: SearchIndex,
    query: str,
    *,
    max_maturity: int = 18,
    genre: str | None = None,
    year: int | None = None,
    kind: str | None = None,
    offset: int = 0,
    limit: int = 20,
) -> Page:
    """What ``index.search`` must answer (valid arguments only: no validation here).

    The body of ``SearchIndex.search`` before top-k scoring, with ``index.`` for ``self.``;
    the per-level doc counts and the filter indexes (now bitmaps) are decoded first.
    """
    genre_key = normalize(genre).strip() if genre is not None else None

    maturity = index._maturity
    level_docs = {m: bits.bit_count() for m, bits in index._level_docs.items()}
    by_genre = {g: _ids(index, bits) for g, bits in index._by_genre.items()}
    by_kind = {k: _ids(index, bits) for k, bits in index._by_kind.items()}
    by_year = {y: _ids(index, bits) for y, bits in index._by_year.items()}
    check_maturity = bool(level_docs) and max(level_docs) > max_maturity
    allowed: set[str] | None = None
    if genre_key is not None or kind is not None or year is not None:
        empty: set[str] = set()
        parts: list[set[str]] = []
        if genre_key is not None:
            parts.append(by_genre.get(genre_key, empty))
        if kind is not None:
            parts.append(by_kind.get(kind, empty))
        if year is not None:
            parts.append(by_year.get(year, empty))
        parts.sort(key=len)
        allowed = parts[0].intersection(*parts[1:])
        if check_maturity:
            allowed = {d for d in allowed if maturity[d] <= max_maturity}
        check_maturity = False

    entries = index._entries
    terms = list(dict.fromkeys(tokenize(query)))  # dedupe, keep order
    if not terms:
        if allowed is not None:
            pool: Iterable[str] = allowed
        elif check_maturity:
            pool = [d for d, m in maturity.items() if m <= max_maturity]
        else:
            pool = entries
        browse = [(-entries[d].popularity, d) for d in pool]
        first = heapq.nsmallest(offset + limit, browse)
        return Page(
            hits=[Hit(d, 0.0, ()) for _, d in first[offset:]],
            total=len(browse),
            offset=offset,
            limit=limit,
        )

    n_docs = sum(n for m, n in level_docs.items() if m <= max_maturity)

    # Per query term: doc -> best score, and the matched vocabulary term
    # (a str when every doc matched the same one, else doc -> term).
    scores: list[dict[str, float]] = []
    vterms: list[str | dict[str, str]] = []
    for i, term in enumerate(terms):
        best: dict[str, float] = {}
        which: str | dict[str, str] = ""
        for vterm, factor in _alternatives(index, term, i == len(terms) - 1, max_maturity):
            df = _visible_df(index, vterm, max_maturity)
            idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            # Same evaluation order as factor * idf * tf * (K1 + 1) / (tf + K1).
            fi = factor * idf
            posting = index._postings[vterm]
            if allowed is not None:
                sc = {d: fi * tf * _K1P1 / (tf + K1) for d, tf in posting.items() if d in allowed}
            elif check_maturity:
                sc = {
                    d: fi * tf * _K1P1 / (tf + K1)
                    for d, tf in posting.items()
                    if maturity[d] <= max_maturity
                }
            else:
                sc = {d: fi * tf * _K1P1 / (tf + K1) for d, tf in posting.items()}
            if not sc:
                continue
            if not best:
                best, which = sc, vterm
                continue
            if isinstance(which, str):
                which = dict.fromkeys(best, which)
            for d, s in sc.items():
                cur = best.get(d)
                if cur is None or s > cur or (s == cur and vterm < which[d]):
                    best[d] = s
                    which[d] = vterm
        scores.append(best)
        vterms.append(which)

    # Unrounded relevance of every match, summed in query-term order.
    raw: dict[str, float]
    if len(scores) == 1:
        raw = scores[0]
    else:
        by_size = sorted(scores, key=len)
        matches: set[str] = set(by_size[0]).intersection(*by_size[1:])
        if not matches:
            # OR fallback (see module docstring).
            matches = set().union(*scores)
        if len(scores) == 2:
            a, b = scores
            raw = {d: a.get(d, 0.0) + b.get(d, 0.0) for d in matches}
        else:
            raw = {}
            for d in matches:
                total = 0.0
                for sc in scores:
                    part = sc.get(d)
                    if part is not None:
                        total += part
                raw[d] = total

    n = offset + limit
    if n < len(raw):
        # Only documents whose score can round to at least the k-th best
        # one can make the page; round and rank just those.
        kth = heapq.nlargest(n, raw.values())[-1]
        floor = kth - _ROUND_SLACK * max(1.0, abs(kth))
        cands = [(d, s) for d, s in raw.items() if s >= floor]
    else:
        cands = list(raw.items())
    ranked = [(-round(s, SCORE_DIGITS), -entries[d].popularity, d) for d, s in cands]
    top = heapq.nsmallest(n, ranked)
    hits: list[Hit] = []
    for neg_score, _, d in top[offset:]:
        matched: list[str] = []
        for sc, which in zip(scores, vterms, strict=True):
            if d in sc:
                matched.append(which if isinstance(which, str) else which[d])
        hits.append(Hit(d, -neg_score, tuple(matched)))
    return Page(hits=hits, total=len(raw), offset=offset, limit=limit)
