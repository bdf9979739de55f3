"""Pure in-memory catalogue search: full text, autocomplete, typo tolerance, filters.

No I/O and no event loop: the control plane owns persistence and concurrency and
feeds this index with ``add``/``remove``/``set_popularity``.

Visibility rule: a profile's maturity limit is applied *before* anything is
counted, ranked or paginated, and every statistic that influences ranking
(document frequencies, corpus size, the vocabulary used for
typo correction and prefix expansion) is computed over the visible titles only.
So a search with ``max_maturity=m`` returns exactly what the same search would
return on a catalogue that never contained the titles above ``m``: a hidden
title cannot change totals, pages, order or even which corrections are tried.

Matching semantics:

* every query term must match (AND); if AND finds nothing among the visible,
  filtered titles, the search falls back to OR (any term), ranked by summed
  relevance, so a stray word does not empty the results;
* the last query term also matches as a prefix (the user may still be typing);
* a term of length >= 4 that is not in the visible vocabulary is replaced by
  its closest vocabulary terms within Damerau-Levenshtein distance 1 (length
  4-7) or 2 (length >= 8), scored below exact matches;
* an empty query (no tokens) lists the visible, filtered titles by popularity,
  which lets the UI browse a genre with the same call.

Ranking: BM25F-style relevance (per-field length normalisation, field boosts,
one saturation), then popularity as the tie-break, then id for determinism.
"""

from __future__ import annotations

import heapq
import math
import re
import unicodedata
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "KINDS",
    "MAX_LIMIT",
    "MAX_QUERY_LEN",
    "Doc",
    "Hit",
    "Page",
    "SearchIndex",
    "damerau_levenshtein",
    "normalize",
    "tokenize",
]

KINDS = frozenset({"movie", "series"})
MAX_LIMIT = 100
MAX_QUERY_LEN = 200

# Field boosts: a title word says far more about a title than a synopsis word.
TITLE_W = 4.0
CAST_W = 3.0
GENRE_W = 2.0
SYNOPSIS_W = 1.0

# Each field is length-normalised against a fixed nominal length rather than
# the corpus average: a long synopsis or a big cast must not drown a title
# match, and a fixed norm makes a document's weights independent of every
# other document (so hidden titles cannot influence them, and add/remove order
# cannot either).
NOMINAL_LEN = {"title": 3.0, "cast": 8.0, "genres": 2.0, "synopsis": 30.0}
B = 0.5
# Saturation on the scale of the boosts: one title occurrence reaches about
# half of the maximum, so repeating a word in a synopsis cannot beat the title.
K1 = 4.0

# Non-exact matches must rank below exact ones, typos below completions.
PREFIX_FACTOR = 0.7
TYPO_FACTOR = {1: 0.5, 2: 0.3}

# A one-letter prefix would expand to a large slice of the vocabulary and blow
# the latency budget for little value; cap expansions for the same reason and
# keep the most common (visible) completions, which are the likeliest intent.
MIN_PREFIX_LEN = 2
MAX_PREFIX_EXPANSIONS = 16

MIN_TYPO_LEN = 4
# Ranking ties are decided by popularity; rounding stops floating-point noise
# (from summing in a different order) from masquerading as relevance.
SCORE_DIGITS = 9

_TOKEN_RE = re.compile(r"[^\W_]+")

_K = TypeVar("_K")


def normalize(text: str) -> str:
    """NFKD, drop combining marks (accents), casefold: 'Amélie' -> 'amelie'."""
    if text.isascii():
        # The same result for ASCII (no decompositions, no marks; casefold is lower), about
        # three times faster: tokenising dominates building the index for a catalogue load.
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # casefold can reintroduce decomposable characters (e.g. 'ß' -> 'ss' is fine,
    # but some ligatures are not), so normalise once more for stable tokens.
    return unicodedata.normalize("NFKC", stripped.casefold())


def tokenize(text: str) -> list[str]:
    """Normalised alphanumeric runs; everything else (punctuation, '_') splits."""
    return _TOKEN_RE.findall(normalize(text))


def damerau_levenshtein(a: str, b: str) -> int:
    """Optimal-string-alignment distance (adjacent transpositions cost 1)."""
    if a == b:
        return 0
    la, lb = len(a), len(b)
    prev2: list[int] = []
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [i] + [0] * lb
        ca = a[i - 1]
        for j in range(1, lb + 1):
            cb = b[j - 1]
            cost = 0 if ca == cb else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        prev2, prev = prev, cur
    return prev[lb]


def _deletes(term: str, depth: int) -> set[str]:
    """The term plus every string reachable by deleting up to ``depth`` chars."""
    out = {term}
    frontier = {term}
    for _ in range(depth):
        nxt: set[str] = set()
        for w in frontier:
            if len(w) <= 1:
                continue
            for i in range(len(w)):
                nxt.add(w[:i] + w[i + 1 :])
        out |= nxt
        frontier = nxt
    return out


def _query_typo_distance(term: str) -> int:
    if len(term) < MIN_TYPO_LEN:
        return 0
    return 1 if len(term) < 8 else 2


def _vocab_delete_depth(term: str) -> int:
    # A query of length 4-7 (distance 1) can only reach terms of length >= 3;
    # a query of length >= 8 (distance 2) only terms of length >= 6. Indexing
    # no deeper than needed keeps the deletion index small.
    if len(term) >= 6:
        return 2
    if len(term) >= 3:
        return 1
    return 0


def _check_finite(popularity: float) -> None:
    # NaN would make the sort order undefined.
    if not math.isfinite(popularity):
        raise ValueError(f"popularity must be finite, got {popularity!r}")


def _discard(index: dict[_K, set[str]], key: _K, doc_id: str) -> None:
    ids = index[key]
    ids.discard(doc_id)
    if not ids:
        del index[key]


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    synopsis: str = ""
    cast: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    year: int | None = None
    kind: str = "movie"
    maturity: int = 0
    popularity: float = 0.0

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("doc id must be non-empty")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        _check_finite(self.popularity)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    matched: tuple[str, ...]  # query terms that matched, in their corrected form


@dataclass(frozen=True)
class Page:
    hits: list[Hit]
    total: int
    offset: int
    limit: int


@dataclass(slots=True)
class _Entry:
    doc: Doc
    genres: frozenset[str]
    terms: frozenset[str]
    title_terms: frozenset[str]
    title_key: str
    popularity: float


# Upper bound on |x - round(x, SCORE_DIGITS)| plus float slack: a document whose
# unrounded score is below ``kth - _ROUND_SLACK`` cannot round to (or above)
# the rounded k-th best score, so it cannot reach the page (round is monotone).
_ROUND_SLACK = 4 * 10.0**-SCORE_DIGITS
_K1P1 = K1 + 1.0


class SearchIndex:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        # term -> {doc id: field-weighted tf}
        self._postings: dict[str, dict[str, float]] = {}
        # term -> {maturity: number of docs}: lets df and "is it in the
        # vocabulary?" be answered for the visible subset without a scan.
        self._term_levels: dict[str, dict[int, int]] = {}
        self._vocab: list[str] = []  # sorted, for prefix ranges
        # deletion variant -> vocabulary terms (lists: most variants map to one
        # term and a one-element list is far smaller than a set).
        self._deletes: dict[str, list[str]] = {}
        # maturity -> number of docs (visible corpus size for idf)
        self._level_docs: dict[int, int] = {}
        # title-only index for autocomplete
        self._title_postings: dict[str, set[str]] = {}
        self._title_vocab: list[str] = []
        # Flat per-doc keys and filter indexes, so the query path never has to
        # call a predicate per posting.
        self._maturity: dict[str, int] = {}
        self._by_genre: dict[str, set[str]] = {}
        self._by_kind: dict[str, set[str]] = {}
        self._by_year: dict[int | None, set[str]] = {}

    # ------------------------------------------------------------------ updates

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._entries

    def add(self, doc: Doc) -> None:
        """Index ``doc``, replacing any document with the same id."""
        self.remove(doc.id)
        tf: dict[str, float] = {}
        fields: list[tuple[str, Iterable[str], float]] = [
            ("title", (doc.title,), TITLE_W),
            ("cast", doc.cast, CAST_W),
            ("genres", doc.genres, GENRE_W),
            ("synopsis", (doc.synopsis,), SYNOPSIS_W),
        ]
        for name, texts, weight in fields:
            toks = [tok for text in texts for tok in tokenize(text)]
            w = weight / (1.0 - B + B * len(toks) / NOMINAL_LEN[name])
            for tok in toks:
                tf[tok] = tf.get(tok, 0.0) + w
        title_terms = frozenset(tokenize(doc.title))
        entry = _Entry(
            doc=doc,
            genres=frozenset(normalize(g).strip() for g in doc.genres),
            terms=frozenset(tf),
            title_terms=title_terms,
            title_key=normalize(doc.title),
            popularity=doc.popularity,
        )
        self._entries[doc.id] = entry
        self._maturity[doc.id] = doc.maturity
        for g in entry.genres:
            self._by_genre.setdefault(g, set()).add(doc.id)
        self._by_kind.setdefault(doc.kind, set()).add(doc.id)
        self._by_year.setdefault(doc.year, set()).add(doc.id)
        m = doc.maturity
        self._level_docs[m] = self._level_docs.get(m, 0) + 1
        for term, w in tf.items():
            posting = self._postings.get(term)
            if posting is None:
                posting = self._postings[term] = {}
                self._term_levels[term] = {}
                self._vocab_add(term)
            posting[doc.id] = w
            levels = self._term_levels[term]
            levels[m] = levels.get(m, 0) + 1
        for term in title_terms:
            ids = self._title_postings.get(term)
            if ids is None:
                ids = self._title_postings[term] = set()
                insort(self._title_vocab, term)
            ids.add(doc.id)

    def remove(self, doc_id: str) -> None:
        """Drop ``doc_id``; unknown ids are ignored so catalogue syncs are idempotent."""
        entry = self._entries.pop(doc_id, None)
        if entry is None:
            return
        del self._maturity[doc_id]
        for g in entry.genres:
            _discard(self._by_genre, g, doc_id)
        _discard(self._by_kind, entry.doc.kind, doc_id)
        _discard(self._by_year, entry.doc.year, doc_id)
        m = entry.doc.maturity
        self._level_docs[m] -= 1
        if not self._level_docs[m]:
            del self._level_docs[m]
        for term in entry.terms:
            posting = self._postings[term]
            del posting[doc_id]
            levels = self._term_levels[term]
            levels[m] -= 1
            if not levels[m]:
                del levels[m]
            if not posting:
                del self._postings[term], self._term_levels[term]
                self._vocab_remove(term)
        for term in entry.title_terms:
            ids = self._title_postings[term]
            ids.discard(doc_id)
            if not ids:
                del self._title_postings[term]
                del self._title_vocab[bisect_left(self._title_vocab, term)]

    def set_popularity(self, doc_id: str, popularity: float) -> None:
        """Update the ranking signal without reindexing (KeyError if unknown)."""
        _check_finite(popularity)
        self._entries[doc_id].popularity = popularity

    def _vocab_add(self, term: str) -> None:
        insort(self._vocab, term)
        for variant in _deletes(term, _vocab_delete_depth(term)):
            self._deletes.setdefault(variant, []).append(term)

    def _vocab_remove(self, term: str) -> None:
        del self._vocab[bisect_left(self._vocab, term)]
        for variant in _deletes(term, _vocab_delete_depth(term)):
            terms = self._deletes[variant]
            terms.remove(term)
            if not terms:
                del self._deletes[variant]

    # ------------------------------------------------------------ visibility

    def _visible_df(self, term: str, max_maturity: int) -> int:
        levels = self._term_levels.get(term)
        if not levels:
            return 0
        return sum(n for m, n in levels.items() if m <= max_maturity)

    def _prefix_range(self, vocab: list[str], prefix: str) -> Iterator[str]:
        i = bisect_left(vocab, prefix)
        while i < len(vocab) and vocab[i].startswith(prefix):
            yield vocab[i]
            i += 1

    def _typo_candidates(self, term: str, max_maturity: int) -> list[tuple[str, int]]:
        """Closest visible vocabulary terms within the allowed distance."""
        dist = _query_typo_distance(term)
        if not dist:
            return []
        seen: set[str] = set()
        for variant in _deletes(term, dist):
            seen.update(self._deletes.get(variant, ()))
        best: list[tuple[str, int]] = []
        best_d = dist + 1
        for cand in sorted(seen):
            if cand == term or self._visible_df(cand, max_maturity) == 0:
                continue
            d = damerau_levenshtein(term, cand)
            if d < best_d:
                best, best_d = [(cand, d)], d
            elif d == best_d and d <= dist:
                best.append((cand, d))
        return best

    def _alternatives(self, term: str, is_last: bool, max_maturity: int) -> list[tuple[str, float]]:
        """(vocabulary term, score factor) pairs a query term may match."""
        alts: list[tuple[str, float]] = []
        if self._visible_df(term, max_maturity):
            alts.append((term, 1.0))
        if is_last and len(term) >= MIN_PREFIX_LEN:
            completions = [
                (self._visible_df(t, max_maturity), t)
                for t in self._prefix_range(self._vocab, term)
                if t != term
            ]
            completions = [c for c in completions if c[0]]
            completions.sort(key=lambda c: (-c[0], c[1]))
            alts.extend((t, PREFIX_FACTOR) for _, t in completions[:MAX_PREFIX_EXPANSIONS])
        if not alts:
            alts = [(t, TYPO_FACTOR[d]) for t, d in self._typo_candidates(term, max_maturity)]
        return alts

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: str,
        *,
        max_maturity: int = 18,
        genre: str | None = None,
        year: int | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        if not isinstance(query, str):
            raise TypeError("query must be a string")
        if len(query) > MAX_QUERY_LEN:
            raise ValueError(f"query longer than {MAX_QUERY_LEN} characters")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        genre_key = normalize(genre).strip() if genre is not None else None

        # Admissible documents: either every visible doc (``allowed is None``,
        # checked by maturity only when something is actually hidden) or an
        # explicit set built from the filter indexes.
        maturity = self._maturity
        check_maturity = bool(self._level_docs) and max(self._level_docs) > max_maturity
        allowed: set[str] | None = None
        if genre_key is not None or kind is not None or year is not None:
            empty: set[str] = set()
            parts: list[set[str]] = []
            if genre_key is not None:
                parts.append(self._by_genre.get(genre_key, empty))
            if kind is not None:
                parts.append(self._by_kind.get(kind, empty))
            if year is not None:
                parts.append(self._by_year.get(year, empty))
            parts.sort(key=len)
            allowed = parts[0].intersection(*parts[1:])
            if check_maturity:
                allowed = {d for d in allowed if maturity[d] <= max_maturity}
            check_maturity = False

        entries = self._entries
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

        n_docs = sum(n for m, n in self._level_docs.items() if m <= max_maturity)

        # Per query term: doc -> best score, and the matched vocabulary term
        # (a str when every doc matched the same one, else doc -> term).
        scores: list[dict[str, float]] = []
        vterms: list[str | dict[str, str]] = []
        for i, term in enumerate(terms):
            best: dict[str, float] = {}
            which: str | dict[str, str] = ""
            for vterm, factor in self._alternatives(term, i == len(terms) - 1, max_maturity):
                df = self._visible_df(vterm, max_maturity)
                idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
                # Same evaluation order as factor * idf * tf * (K1 + 1) / (tf + K1).
                fi = factor * idf
                posting = self._postings[vterm]
                if allowed is not None:
                    sc = {
                        d: fi * tf * _K1P1 / (tf + K1) for d, tf in posting.items() if d in allowed
                    }
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

    # ------------------------------------------------------------ autocomplete

    def autocomplete(self, prefix: str, *, max_maturity: int = 18, limit: int = 10) -> list[str]:
        """Titles for a typed prefix, most popular first.

        Earlier words must be whole title words; the last word is a prefix of a
        title word unless the input already ends in a separator (word finished).
        """
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a string")
        if len(prefix) > MAX_QUERY_LEN:
            raise ValueError(f"prefix longer than {MAX_QUERY_LEN} characters")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
        words = tokenize(prefix)
        if not words:
            return []
        finished = not normalize(prefix[-1]).isalnum()
        *whole, last = words
        if finished:
            whole.append(last)
            candidates: set[str] | None = None
        else:
            candidates = set()
            for t in self._prefix_range(self._title_vocab, last):
                candidates |= self._title_postings[t]
        for w in whole:
            ids = self._title_postings.get(w, set())
            candidates = set(ids) if candidates is None else candidates & ids
        assert candidates is not None
        entries = self._entries
        maturity = self._maturity
        ranked = [
            (-e.popularity, e.title_key, doc_id)
            for doc_id in candidates
            if maturity[doc_id] <= max_maturity and (e := entries[doc_id])
        ]
        # Pop in ranking order only as far as needed (dedupe makes the number
        # of pops unknown up front, so a heap rather than nsmallest).
        heapq.heapify(ranked)
        out: list[str] = []
        seen: set[str] = set()
        while ranked:
            doc_id = heapq.heappop(ranked)[2]
            title = entries[doc_id].doc.title
            if title not in seen:  # remakes share titles; suggest each once
                seen.add(title)
                out.append(title)
                if len(out) == limit:
                    break
        return out
