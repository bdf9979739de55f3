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

Evaluation: matching is done on bitmaps (one bit per title), so totals cost no per-title
work; when there are many matches, only those that can still reach the requested page are
scored (a threshold algorithm over postings kept in tf order). The answers are exactly
those of scoring every match (tests/search_reference.py keeps that naive search as the
oracle the tests compare against).
"""

from __future__ import annotations

import heapq
import math
import re
import unicodedata
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress
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


def _unset(index: dict[_K, int], key: _K, bit: int) -> None:
    bits = index[key] & ~bit
    if bits:
        index[key] = bits
    else:
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

# A query term's scoring plan: per alternative its vocabulary term, its factor * idf and its
# posting (doc id -> tf).
_Alt = tuple[str, float, dict[str, float]]

# Scoring every match costs one posting lookup per match and alternative; past this many
# matches (plus a few per place of the requested page), the threshold algorithm in
# ``_top_scores`` scores only the matches that can still reach the page. Measured on
# loadtests/bench_search.py, the two break even at 100 to 400 matches.
_TA_MIN_MATCHES = 128
_TA_MATCHES_PER_PLACE = 4
# Relative margin on the threshold algorithm's score bound. The bound is computed with the
# same float expression as the scores, at the largest tf still to come, and a smaller tf can
# score a few ulps above it (the rounding of ``fi * tf * _K1P1 / (tf + K1)`` is not monotone
# in tf); summing bounds in another order adds a few ulps per term. 1e-12 covers both by far
# and is negligible next to ``_ROUND_SLACK``.
_BOUND_SLACK = 1e-12
# str.translate table: a bitmap's binary digits to the bytes 0 and 1.
_DIGIT_BYTES = bytes.maketrans(b"01", b"\x00\x01")
# A term holding at least 1/_DENSE of the docs keeps its bitmap, so that the common terms
# and most prefix completions are not mapped again by every query: at most _DENSE / 8
# bytes per posting (a posting entry costs about 70); 3.5 MB for bench_search's 10k titles.
_DENSE = 256


def _raw_score(plan: list[list[_Alt]], doc_id: str) -> float:
    """Relevance of a matching doc: per query term its best alternative, summed in order."""
    total = 0.0
    for alts in plan:
        best: float | None = None
        for _, fi, posting in alts:
            tf = posting.get(doc_id)
            if tf is not None:
                s = fi * tf * _K1P1 / (tf + K1)
                if best is None or s > best:
                    best = s
        if best is not None:
            total += best
    return total


def _matched(plan: list[list[_Alt]], doc_id: str) -> tuple[str, ...]:
    """The vocabulary term each query term matched in ``doc_id`` (ties: the smaller term)."""
    out: list[str] = []
    for alts in plan:
        best: float | None = None
        which = ""
        for vterm, fi, posting in alts:
            tf = posting.get(doc_id)
            if tf is not None:
                s = fi * tf * _K1P1 / (tf + K1)
                if best is None or s > best or (s == best and vterm < which):
                    best, which = s, vterm
        if best is not None:
            out.append(which)
    return tuple(out)


class SearchIndex:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        # term -> {doc id: field-weighted tf}
        self._postings: dict[str, dict[str, float]] = {}
        # term -> its posting's ids in increasing tf order, for the top-k scoring; sorted by
        # the first query that needs it (about 6 ms for 10k ids on the bench VM, 8 bytes per
        # posting), then kept up to date by add/remove.
        self._ranked: dict[str, list[str]] = {}
        # term -> {maturity: number of docs}: lets df and "is it in the
        # vocabulary?" be answered for the visible subset without a scan.
        self._term_levels: dict[str, dict[int, int]] = {}
        self._vocab: list[str] = []  # sorted, for prefix ranges
        # deletion variant -> vocabulary terms (lists: most variants map to one
        # term and a one-element list is far smaller than a set).
        self._deletes: dict[str, list[str]] = {}
        # title-only index for autocomplete
        self._title_postings: dict[str, set[str]] = {}
        self._title_vocab: list[str] = []
        self._maturity: dict[str, int] = {}
        # Matching runs on bitmaps: Python ints with one bit per doc, at the doc's slot.
        # Intersecting or uniting two costs microseconds where sets of ids cost about a
        # microsecond per element, and ``int.bit_count`` counts the matches. Slots of
        # removed docs are reused, so bitmaps are as long as the largest catalogue yet.
        self._slot: dict[str, int] = {}
        self._slot_ids: list[str] = []  # slot -> doc id ("" while free)
        self._free_slots: list[int] = []  # a heap
        # Bitmaps of the terms holding at least 1/_DENSE of the docs (most of what a
        # query unites and intersects); a smaller posting is mapped per query.
        self._term_bits: dict[str, int] = {}
        # maturity -> bitmap (visible corpus for idf and matching), and the filter
        # indexes as bitmaps, so the query path never has to test a doc.
        self._level_docs: dict[int, int] = {}
        self._by_genre: dict[str, int] = {}
        self._by_kind: dict[str, int] = {}
        self._by_year: dict[int | None, int] = {}

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
        if self._free_slots:
            # The lowest free slot: bitmaps stay as short as the catalogue allows.
            slot = heapq.heappop(self._free_slots)
            self._slot_ids[slot] = doc.id
        else:
            slot = len(self._slot_ids)
            self._slot_ids.append(doc.id)
        self._slot[doc.id] = slot
        bit = 1 << slot
        for g in entry.genres:
            self._by_genre[g] = self._by_genre.get(g, 0) | bit
        self._by_kind[doc.kind] = self._by_kind.get(doc.kind, 0) | bit
        self._by_year[doc.year] = self._by_year.get(doc.year, 0) | bit
        m = doc.maturity
        self._level_docs[m] = self._level_docs.get(m, 0) | bit
        n_slots = len(self._slot_ids)
        term_bits = self._term_bits
        for term, w in tf.items():
            posting = self._postings.get(term)
            if posting is None:
                posting = self._postings[term] = {}
                self._term_levels[term] = {}
                self._vocab_add(term)
            posting[doc.id] = w
            levels = self._term_levels[term]
            levels[m] = levels.get(m, 0) + 1
            ranked = self._ranked.get(term)
            if ranked is not None:
                insort(ranked, doc.id, key=posting.__getitem__)
            bits = term_bits.get(term)
            if bits is None:
                if len(posting) * _DENSE >= n_slots:
                    term_bits[term] = self._bitmap(posting)
            elif len(posting) * 2 * _DENSE < n_slots:
                # Hysteresis (2x): a term near the threshold is not rebuilt again and again.
                del term_bits[term]
            else:
                term_bits[term] = bits | bit
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
        slot = self._slot.pop(doc_id)
        self._slot_ids[slot] = ""
        heapq.heappush(self._free_slots, slot)
        bit = 1 << slot
        for g in entry.genres:
            _unset(self._by_genre, g, bit)
        _unset(self._by_kind, entry.doc.kind, bit)
        _unset(self._by_year, entry.doc.year, bit)
        m = entry.doc.maturity
        _unset(self._level_docs, m, bit)
        n_slots = len(self._slot_ids)
        for term in entry.terms:
            posting = self._postings[term]
            ranked = self._ranked.get(term)
            if ranked is not None:
                # The doc sits in the run of its tf: find the run, then the doc in it.
                i = bisect_left(ranked, posting[doc_id], key=posting.__getitem__)
                del ranked[ranked.index(doc_id, i)]
            del posting[doc_id]
            levels = self._term_levels[term]
            levels[m] -= 1
            if not levels[m]:
                del levels[m]
            bits = self._term_bits.get(term)
            if bits is not None:
                if len(posting) * 2 * _DENSE < n_slots:
                    del self._term_bits[term]
                else:
                    self._term_bits[term] = bits & ~bit
            if not posting:
                del self._postings[term], self._term_levels[term]
                self._ranked.pop(term, None)
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

    # ------------------------------------------------------------ bitmaps

    def _bitmap(self, ids: Iterable[str]) -> int:
        slot = self._slot
        buf = bytearray((len(self._slot_ids) + 7) >> 3)
        for d in ids:
            i = slot[d]
            buf[i >> 3] |= 1 << (i & 7)
        return int.from_bytes(buf, "little")

    def _ids(self, bits: int) -> list[str]:
        """The doc ids of a bitmap, in slot order."""
        ids = self._slot_ids
        flags = bin(bits)[:1:-1]  # bit i at index i; str.find skips zeros at C speed
        out: list[str] = []
        i = flags.find("1")
        while i >= 0:
            out.append(ids[i])
            i = flags.find("1", i + 1)
        return out

    def _term_bitmap(self, term: str) -> int:
        bits = self._term_bits.get(term)
        return self._bitmap(self._postings[term]) if bits is None else bits

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

        # Admissible documents: every doc (``admissible is None``, nothing hidden and no
        # filter) or a bitmap: the visible docs, narrowed by the filters.
        admissible: int | None = None
        if self._level_docs and max(self._level_docs) > max_maturity:
            admissible = 0
            for m, bits in self._level_docs.items():
                if m <= max_maturity:
                    admissible |= bits
        filters: list[int] = []
        if genre_key is not None:
            filters.append(self._by_genre.get(genre_key, 0))
        if kind is not None:
            filters.append(self._by_kind.get(kind, 0))
        if year is not None:
            filters.append(self._by_year.get(year, 0))
        for bits in filters:
            admissible = bits if admissible is None else admissible & bits

        entries = self._entries
        terms = list(dict.fromkeys(tokenize(query)))  # dedupe, keep order
        if not terms:
            pool: Iterable[str] = entries if admissible is None else self._ids(admissible)
            browse = [(-entries[d].popularity, d) for d in pool]
            first = heapq.nsmallest(offset + limit, browse)
            return Page(
                hits=[Hit(d, 0.0, ()) for _, d in first[offset:]],
                total=len(browse),
                offset=offset,
                limit=limit,
            )

        n_docs = sum(bits.bit_count() for m, bits in self._level_docs.items() if m <= max_maturity)
        plan: list[list[_Alt]] = []
        for i, term in enumerate(terms):
            alts: list[_Alt] = []
            for vterm, factor in self._alternatives(term, i == len(terms) - 1, max_maturity):
                df = self._visible_df(vterm, max_maturity)
                idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
                # Same evaluation order as factor * idf * tf * (K1 + 1) / (tf + K1).
                alts.append((vterm, factor * idf, self._postings[vterm]))
            plan.append(alts)

        # The matches come from bitmap operations alone; then only they are scored (or,
        # when there are many, only those that can still reach the page).
        matches = self._matches(plan, admissible)
        total = matches.bit_count()
        n = offset + limit
        raw: dict[str, float]
        if total > _TA_MIN_MATCHES + _TA_MATCHES_PER_PLACE * n:
            raw = self._top_scores(plan, matches, total, n)
        else:
            raw = {d: _raw_score(plan, d) for d in self._ids(matches)}

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
        hits = [Hit(d, -neg_score, _matched(plan, d)) for neg_score, _, d in top[offset:]]
        return Page(hits=hits, total=total, offset=offset, limit=limit)

    def _matches(self, plan: list[list[_Alt]], admissible: int | None) -> int:
        """Bitmap of the admissible docs matching every query term, or any if none does."""
        held: list[int] = []
        for alts in plan:
            bits = 0
            for vterm, _, _ in alts:
                bits |= self._term_bitmap(vterm)
            held.append(bits if admissible is None else bits & admissible)
        found = held[0]
        for bits in held[1:]:
            found &= bits
        if not found:
            # OR fallback (see module docstring).
            for bits in held:
                found |= bits
        return found

    def _by_tf(self, term: str) -> list[str]:
        """The ids of ``term``'s posting in increasing tf order."""
        ranked = self._ranked.get(term)
        if ranked is None:
            posting = self._postings[term]
            ranked = self._ranked[term] = sorted(posting, key=posting.__getitem__)
        return ranked

    def _top_scores(
        self, plan: list[list[_Alt]], matches: int, total: int, n: int
    ) -> dict[str, float]:
        """Scores of a subset of ``matches`` that holds every match that can make the top ``n``.

        Fagin's threshold algorithm: per query term, a stream of its matching docs in
        (nearly) decreasing score, merging its alternatives' postings by tf; each new doc
        is scored in full. A doc not seen yet scores at most the sum of the streams' next scores, so
        once that bound is below the floor under the n-th best score seen (the same floor
        as ``search`` uses to cut the candidates), no unseen doc can reach the page, and the
        n-th best seen score is the n-th best overall.
        """
        # A byte per slot, 1 for a match: lets the streams skip non-matching docs at C speed
        # (``compress`` over the ids, selecting by ``is_match(slot_of(id))``).
        is_match = (
            format(matches, f"0{len(self._slot_ids)}b")[::-1]
            .encode("ascii")
            .translate(_DIGIT_BYTES)
            .__getitem__
        )
        slot_of = self._slot.__getitem__
        # Per term a heap of (-score of the alternative's next match, alternative, that
        # match, the alternative's further matches in decreasing tf order).
        streams: list[list[tuple[float, int, str, Iterator[str]]]] = []
        for alts in plan:
            heap: list[tuple[float, int, str, Iterator[str]]] = []
            for j, (vterm, fi, posting) in enumerate(alts):
                ranked = self._by_tf(vterm)
                rest: Iterator[str] = compress(
                    reversed(ranked), map(is_match, map(slot_of, reversed(ranked)))
                )
                d = next(rest, None)
                if d is not None:
                    tf = posting[d]
                    heap.append((-(fi * tf * _K1P1 / (tf + K1)), j, d, rest))
            heapq.heapify(heap)
            streams.append(heap)
        # Per term the score of its stream's next match (0 once exhausted): the bound.
        tops = [-heap[0][0] if heap else 0.0 for heap in streams]
        raw: dict[str, float] = {}
        best: list[float] = []  # min-heap of the n highest scores seen
        floor = -math.inf  # until n docs are seen
        while len(raw) < total:
            # Advance the stream with the highest next score: it lowers the bound the most.
            t = tops.index(max(tops)) if len(tops) > 1 else 0
            heap = streams[t]
            if not heap:
                break  # unreachable: every match is in some stream
            _, j, d, rest = heap[0]
            nxt = next(rest, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                _, fi, posting = plan[t][j]
                tf = posting[nxt]
                heapq.heapreplace(heap, (-(fi * tf * _K1P1 / (tf + K1)), j, nxt, rest))
            tops[t] = -heap[0][0] if heap else 0.0
            if d not in raw:
                s = raw[d] = _raw_score(plan, d)
                if len(best) < n:
                    heapq.heappush(best, s)
                elif s > best[0]:
                    heapq.heapreplace(best, s)
                if len(best) == n:
                    floor = best[0] - _ROUND_SLACK * max(1.0, abs(best[0]))
            if sum(tops) * (1.0 + _BOUND_SLACK) < floor:
                break
        return raw

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
