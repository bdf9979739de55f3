"""Locality: which edge site is "near" a client address.

This is the pure core of the steering service: no sockets, no event loop, no
clock. Everything here is a function of its inputs so it can be table-tested
and reused by the HTTP front end and by offline tools (e.g. a CZF linter).

Order of decision (from the issue), implemented by :class:`Locator`:

1. longest-prefix match of the client address against the prefixes each edge
   serves; at the matching prefix, ISP-embedded edges are preferred over the
   others (an embedded edge sits inside the ISP that announces the prefix);
2. a Coverage Zone File (Apache Traffic Control's JSON format) mapping CIDRs
   to zones, where a zone names a site;
3. the nearest site by great-circle distance from the client's coordinates;
4. an operator-chosen default site.

Bad input (malformed addresses, broken coverage zone files, inconsistent
configuration) raises :class:`LocalityError` with a message that says what
and where, because these errors are read by operators, not programs.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = [
    "EARTH_RADIUS_KM",
    "CoverageZones",
    "EdgePrefixes",
    "IPAddress",
    "IPNetwork",
    "Locality",
    "LocalityError",
    "Location",
    "Locator",
    "PrefixTable",
    "Site",
    "Zone",
    "great_circle_km",
    "load_czf",
    "normalize_address",
    "parse_address",
    "parse_client_address",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
T = TypeVar("T")

# IUGG mean earth radius; the haversine formula on a sphere is within ~0.5% of
# the ellipsoid, which is far below the noise of IP geolocation.
EARTH_RADIUS_KM = 6371.0088


class LocalityError(ValueError):
    """Bad input to the locality core: the message is meant for an operator."""


# --------------------------------------------------------------------------
# Addresses


def normalize_address(addr: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4; IPv6 scope ids are dropped.

    Dual-stack sockets report IPv4 peers as mapped addresses; without this an
    IPv4 client would never match IPv4 prefixes. Scope ids (``%eth0``) only
    mean something on the local host and would make equal addresses compare
    unequal.
    """
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return IPv6Address(int(addr))
    return addr


def _strip_port(text: str) -> str:
    """Remove a port from ``a.b.c.d:port`` or ``[v6]:port`` (and brackets from ``[v6]``).

    Some proxies (Azure Application Gateway, IIS ARR) append the client port
    in X-Forwarded-For; stripping is friendlier than rejecting. A bare IPv6
    address is never treated as having a port: ``2001:db8::1:80`` is a valid
    address and the ambiguity can only be resolved by brackets.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise LocalityError(f"malformed address {text!r}: unbalanced '['")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise LocalityError(f"malformed address {text!r}: junk after ']'")
            _check_port(text, rest[1:])
        return host
    if text.count(":") == 1:
        host, port = text.split(":")
        _check_port(text, port)
        return host
    return text


def _check_port(text: str, port: str) -> None:
    if not (port.isascii() and port.isdigit() and 0 <= int(port) <= 65535):
        raise LocalityError(f"malformed address {text!r}: bad port {port!r}")


def parse_address(text: str | IPAddress) -> IPAddress:
    """Parse one client address (optionally with a port, see :func:`_strip_port`).

    Surrounding whitespace is ignored (header values are often ``a, b``);
    anything else that is not an address raises :class:`LocalityError`.
    """
    if isinstance(text, IPv4Address | IPv6Address):
        return normalize_address(text)
    if not isinstance(text, str):
        raise LocalityError(f"malformed address {text!r}: expected a string")
    stripped = text.strip()
    if not stripped:
        raise LocalityError("malformed address: empty")
    host = _strip_port(stripped)
    try:
        return normalize_address(ipaddress.ip_address(host))
    except ValueError:
        raise LocalityError(f"malformed address {text!r}") from None


def _is_trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    # `in` across families is simply False, so mixed lists are fine.
    return any(addr in net for net in trusted)


def parse_client_address(
    remote: str | IPAddress,
    xff: str | None,
    trusted_proxies: Sequence[IPNetwork],
) -> IPAddress:
    """The client's address, from the TCP peer or a trusted X-Forwarded-For.

    X-Forwarded-For is only believed when the peer itself is a trusted proxy;
    otherwise any client could claim any address. Each proxy appends the
    address it saw, so the list is walked from the right: the first entry that
    is not a trusted proxy is the client. If every entry is a trusted proxy
    (the request originated inside our own infrastructure) the left-most one
    is returned. Several XFF headers must be joined with "," by the caller
    (RFC 9110 field combination), which is what aiohttp does.

    Ports are stripped (``1.2.3.4:5678``, ``[2001:db8::1]:443``); an empty or
    whitespace-only XFF counts as absent; an empty element or any garbage in
    the walked part raises :class:`LocalityError`. Entries left of the client
    are never parsed: they are client-controlled and irrelevant.
    """
    peer = parse_address(remote)
    if xff is None or not xff.strip() or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = xff.split(",")
    addr = peer
    for raw in reversed(hops):
        try:
            addr = parse_address(raw)
        except LocalityError as exc:
            raise LocalityError(f"X-Forwarded-For {xff!r}: {exc}") from None
        if not _is_trusted(addr, trusted_proxies):
            return addr
    return addr


def _as_network(prefix: str | IPNetwork) -> IPNetwork:
    if isinstance(prefix, IPv4Network | IPv6Network):
        return prefix
    try:
        # strict: "10.0.0.1/8" is almost always a typo for a different prefix,
        # so it is rejected instead of being silently widened.
        return ipaddress.ip_network(prefix.strip(), strict=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise LocalityError(f"malformed prefix {prefix!r}: {exc}") from None


# --------------------------------------------------------------------------
# Longest-prefix match


class _FamilyTable(Generic[T]):
    """One address family: per prefix length, a dict of network int -> value.

    A lookup probes only the lengths that exist, longest first, each probe
    being one shift and one dict lookup: O(number of distinct lengths) which
    is at most 33 / 129 and in practice a dozen, regardless of table size.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, tuple[IPNetwork, T]]] = {}
        self.lengths: list[int] = []  # descending, rebuilt on a new length

    def add(self, net: IPNetwork, value: T) -> None:
        plen = net.prefixlen
        bucket = self.by_len.get(plen)
        if bucket is None:
            bucket = self.by_len[plen] = {}
            self.lengths = sorted(self.by_len, reverse=True)
        bucket[int(net.network_address) >> (self.bits - plen)] = (net, value)

    def lookup(self, addr_int: int) -> tuple[IPNetwork, T] | None:
        for plen in self.lengths:
            hit = self.by_len[plen].get(addr_int >> (self.bits - plen))
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        return sum(len(b) for b in self.by_len.values())


class PrefixTable(Generic[T]):
    """Longest-prefix match over IPv4 and IPv6 prefixes, kept apart.

    Adding the same prefix again replaces its value (last wins): callers that
    need several values per prefix store a tuple (as :class:`Locator` does).
    IPv4 prefixes never match IPv6 addresses, not even ``0.0.0.0/0`` vs a
    mapped address; mapped addresses are converted to IPv4 before lookup.
    """

    def __init__(self, items: Iterable[tuple[str | IPNetwork, T]] = ()) -> None:
        self._v4: _FamilyTable[T] = _FamilyTable(32)
        self._v6: _FamilyTable[T] = _FamilyTable(128)
        for prefix, value in items:
            self.add(prefix, value)

    def add(self, prefix: str | IPNetwork, value: T) -> None:
        net = _as_network(prefix)
        (self._v4 if net.version == 4 else self._v6).add(net, value)

    def lookup(self, addr: str | IPAddress) -> tuple[IPNetwork, T] | None:
        """The most specific (network, value) containing ``addr``, or None."""
        a = parse_address(addr)
        return (self._v4 if a.version == 4 else self._v6).lookup(int(a))

    def get(self, prefix: str | IPNetwork) -> T | None:
        """Exact-prefix lookup (no containment)."""
        net = _as_network(prefix)
        table = self._v4 if net.version == 4 else self._v6
        hit = table.by_len.get(net.prefixlen, {}).get(
            int(net.network_address) >> (table.bits - net.prefixlen)
        )
        return None if hit is None else hit[1]

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)


# --------------------------------------------------------------------------
# Coverage Zone File (Apache Traffic Control format)


@dataclass(frozen=True)
class Zone:
    """One coverage zone: in ATC the name is a cache group, here a site name."""

    name: str
    networks: tuple[IPNetwork, ...]
    coordinates: tuple[float, float] | None = None  # (latitude, longitude)


@dataclass(frozen=True)
class CoverageZones:
    """A parsed, validated CZF. ``table`` maps each network to its zone name."""

    revision: str
    customer_name: str
    zones: dict[str, Zone]
    table: PrefixTable[str] = field(repr=False, compare=False)

    def lookup(self, addr: str | IPAddress) -> tuple[IPNetwork, Zone] | None:
        hit = self.table.lookup(addr)
        return None if hit is None else (hit[0], self.zones[hit[1]])


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json would silently keep the last of two zones with the same name,
    # dropping the first zone's networks; that is a broken file.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LocalityError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _coordinate(where: str, obj: dict[str, Any], key: str, limit: float) -> float:
    value = obj.get(key)
    # bool is an int subclass; true/false is never a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LocalityError(f"{where}.{key}: expected a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and -limit <= number <= limit):
        raise LocalityError(f"{where}.{key}: {value!r} out of range [-{limit:g}, {limit:g}]")
    return number


def _parse_zone(
    source: str, name: str, body: Any, owner: dict[IPNetwork, str], table: PrefixTable[str]
) -> Zone:
    where = f"{source}: zone {name!r}"
    if not isinstance(body, dict):
        raise LocalityError(f"{where}: expected an object, got {type(body).__name__}")
    networks: list[IPNetwork] = []
    for key, version in (("network", 4), ("network6", 6)):
        entries = body.get(key, [])
        if not isinstance(entries, list):
            raise LocalityError(f"{where}: {key!r} must be a list of CIDR strings")
        for i, entry in enumerate(entries):
            field_name = f"{key}[{i}]"
            if not isinstance(entry, str):
                raise LocalityError(f"{where}: {field_name} must be a string, got {entry!r}")
            try:
                net = _as_network(entry)
            except LocalityError as exc:
                raise LocalityError(f"{where}: {field_name}: {exc}") from None
            if net.version != version:
                raise LocalityError(
                    f"{where}: {field_name} {entry!r} is IPv{net.version}, "
                    f"but {key!r} holds IPv{version} networks"
                )
            other = owner.get(net)
            if other is not None and other != name:
                # Ambiguous: which zone is right depends on file order, which
                # an operator does not expect to matter.
                raise LocalityError(f"{where}: {field_name} {entry!r} is already in zone {other!r}")
            if other is None:  # a repeat within one zone is harmless
                owner[net] = name
                networks.append(net)
                table.add(net, name)
    coordinates: tuple[float, float] | None = None
    if "coordinates" in body:
        coords = body["coordinates"]
        cwhere = f"{where}: coordinates"
        if not isinstance(coords, dict):
            raise LocalityError(f"{cwhere}: expected an object with latitude and longitude")
        coordinates = (
            _coordinate(cwhere, coords, "latitude", 90.0),
            _coordinate(cwhere, coords, "longitude", 180.0),
        )
    return Zone(name, tuple(networks), coordinates)


def load_czf(source: str | bytes | os.PathLike[str]) -> CoverageZones:
    """Parse and validate a Coverage Zone File.

    ``source`` is JSON text (bytes, or a str starting with "{" or "[") or a
    path (a str or os.PathLike); errors name the path, or ``<czf>`` for text.
    Format (ATC)::

        {"revision": "...", "customerName": "...",
         "coverageZones": {"<zone>": {"network": ["192.168.8.0/24"],
                                      "network6": ["1234:5678::/64"],
                                      "coordinates": {"latitude": 1.0, "longitude": -2.0}}}}

    "network", "network6" and "coordinates" are optional per zone; unknown
    keys are ignored so files generated by newer ATC versions still load.
    Networks must be CIDRs of the right family with no host bits set (a bare
    address is a host route). A network listed in two zones is an error.
    Every error message names the file, the zone and the field.
    """
    if isinstance(source, bytes):
        label, text = "<czf>", source.decode("utf-8", errors="replace")
    elif isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        label, text = "<czf>", source
    else:
        label = os.fspath(source)
        try:
            text = Path(label).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalityError(f"{label}: cannot read coverage zone file: {exc}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise LocalityError(f"{label}: not valid JSON: {exc}") from None
    except LocalityError as exc:
        raise LocalityError(f"{label}: {exc}") from None
    if not isinstance(doc, dict):
        raise LocalityError(f"{label}: top level must be a JSON object")
    meta: dict[str, str] = {}
    for key in ("revision", "customerName"):
        value = doc.get(key, "")
        if not isinstance(value, str):
            raise LocalityError(f"{label}: {key!r} must be a string, got {value!r}")
        meta[key] = value
    zones_doc = doc.get("coverageZones")
    if not isinstance(zones_doc, dict):
        raise LocalityError(f"{label}: 'coverageZones' must be an object of zone name -> zone")
    table: PrefixTable[str] = PrefixTable()
    owner: dict[IPNetwork, str] = {}
    zones: dict[str, Zone] = {}
    for name, body in zones_doc.items():
        if not name.strip():
            raise LocalityError(f"{label}: zone with an empty name")
        zones[name] = _parse_zone(label, name, body, owner, table)
    return CoverageZones(meta["revision"], meta["customerName"], zones, table)


# --------------------------------------------------------------------------
# Geography


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km on a sphere of radius :data:`EARTH_RADIUS_KM`.

    Haversine rather than the spherical law of cosines because it stays
    accurate for very short distances (two sites in one metro).
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    # Clamp: rounding can push h a hair above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, h))))


def _check_latlon(what: str, lat: float, lon: float) -> None:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon))
    if not ok or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise LocalityError(f"{what}: coordinates ({lat!r}, {lon!r}) out of range")


# --------------------------------------------------------------------------
# Locator


@dataclass(frozen=True)
class Site:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class EdgePrefixes:
    """The prefixes an edge serves; an ISP-embedded edge serves what its ISP announces."""

    edge_id: str
    site: str
    prefixes: tuple[str, ...]
    embedded: bool = False


@dataclass(frozen=True)
class Location:
    """The decision. ``sites_by_distance``: the other sites, nearest to ``site`` first."""

    site: str
    reason: str
    edge_ids_preferred: tuple[str, ...] = ()
    sites_by_distance: tuple[str, ...] = ()


Locality = Location  # alias for callers that think of it as "the locality"

GeoLookup = Callable[[IPAddress], tuple[float, float] | None]


class Locator:
    """Decides the site for a client address; immutable after construction.

    All cross-references (edge -> site, default site, zone -> site) are
    checked here so that a bad configuration fails at load, not per request.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        edges: Sequence[EdgePrefixes] = (),
        czf: CoverageZones | None = None,
        geo: GeoLookup | None = None,
        default_site: str | None = None,
        zone_sites: dict[str, str] | None = None,
    ) -> None:
        """``zone_sites`` maps CZF zone names to site names where they differ
        (an operator's existing CZF uses ATC cache group names); otherwise a
        zone maps to the site of the same name."""
        if not sites:
            raise LocalityError("no sites configured")
        self.sites: dict[str, Site] = {}
        for site in sites:
            if site.name in self.sites:
                raise LocalityError(f"site {site.name!r} is defined twice")
            _check_latlon(f"site {site.name!r}", site.latitude, site.longitude)
            self.sites[site.name] = site
        if default_site is not None and default_site not in self.sites:
            raise LocalityError(f"default site {default_site!r} is not a known site")
        self.zone_sites = dict(zone_sites or {})
        for zone, site_name in self.zone_sites.items():
            if site_name not in self.sites:
                raise LocalityError(f"zone {zone!r} maps to unknown site {site_name!r}")
        self.czf = czf
        self.geo = geo
        self.default_site = default_site
        self._edges = self._build_edge_table(edges)
        # Fallback ranking is per site, not per client: precompute it (sites
        # are tens, so n^2 is nothing) and hand out the same tuple each time.
        self._ranking: dict[str, tuple[str, ...]] = {
            name: self._rank_from(site) for name, site in self.sites.items()
        }

    def _rank_from(self, origin: Site) -> tuple[str, ...]:
        def key(other: Site) -> tuple[float, str]:
            d = great_circle_km(origin.latitude, origin.longitude, other.latitude, other.longitude)
            return (d, other.name)

        return tuple(s.name for s in sorted(self.sites.values(), key=key) if s.name != origin.name)

    def _build_edge_table(
        self, edges: Sequence[EdgePrefixes]
    ) -> PrefixTable[tuple[EdgePrefixes, ...]]:
        by_prefix: dict[IPNetwork, list[EdgePrefixes]] = {}
        seen: set[str] = set()
        for edge in edges:
            if edge.edge_id in seen:
                raise LocalityError(f"edge {edge.edge_id!r} is listed twice")
            seen.add(edge.edge_id)
            if edge.site not in self.sites:
                raise LocalityError(f"edge {edge.edge_id!r}: unknown site {edge.site!r}")
            for prefix in edge.prefixes:
                try:
                    net = _as_network(prefix)
                except LocalityError as exc:
                    raise LocalityError(f"edge {edge.edge_id!r}: {exc}") from None
                holders = by_prefix.setdefault(net, [])
                if edge not in holders:
                    holders.append(edge)
        # Several edges may serve one prefix (a site's edges all serve it), so
        # the table value is the tuple of them.
        return PrefixTable((net, tuple(holders)) for net, holders in by_prefix.items())

    def locate(self, addr: str | IPAddress) -> Location:
        client = parse_address(addr)

        hit = self._edges.lookup(client)
        if hit is not None:
            net, holders = hit
            # The issue: embedded ISP edges first. Since the longest prefix
            # already won, "first" applies among the edges of that prefix.
            preferred = [e for e in holders if e.embedded] or list(holders)
            counts: dict[str, int] = {}
            for e in preferred:
                counts[e.site] = counts.get(e.site, 0) + 1
            # Edges of one prefix normally share a site; if not, the site with
            # most of them wins, then the name, so the choice is stable.
            site = min(counts, key=lambda s: (-counts[s], s))
            ids = tuple(sorted(e.edge_id for e in preferred if e.site == site))
            label = "edge" if len(ids) == 1 else "edges"
            return self._location(site, f"prefix {net} of {label} {', '.join(ids)}", ids)

        coords: tuple[float, float] | None = None
        where = ""
        if self.czf is not None:
            zhit = self.czf.lookup(client)
            if zhit is not None:
                zone = zhit[1]
                site_name = self.zone_sites.get(zone.name, zone.name)
                if site_name in self.sites:
                    return self._location(site_name, f"coverage zone {zone.name}")
                # A zone that is not a site still says where the client is;
                # operator data beats a geolocation database.
                if zone.coordinates is not None:
                    coords, where = zone.coordinates, f"coverage zone {zone.name!r}"

        if coords is None and self.geo is not None:
            coords, where = self.geo(client), f"geo lookup for {client}"
        if coords is not None:
            lat, lon = coords
            _check_latlon(where, lat, lon)
            km, name = min(
                (great_circle_km(lat, lon, s.latitude, s.longitude), s.name)
                for s in self.sites.values()
            )
            return self._location(name, f"nearest site ({km:.0f} km)")

        if self.default_site is not None:
            return self._location(self.default_site, "default")
        raise LocalityError(
            f"no locality for {client}: no edge prefix, coverage zone or coordinates "
            "match, and no default site is configured"
        )

    def _location(self, site: str, reason: str, edge_ids: tuple[str, ...] = ()) -> Location:
        return Location(site, reason, edge_ids, self._ranking[site])
