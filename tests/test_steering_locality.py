"""Steering locality core: tables of cases, no event loop, no network."""

from __future__ import annotations

import ipaddress
import json
import math
import random
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.locality import (
    EARTH_RADIUS_KM,
    CoverageZones,
    EdgePrefixes,
    IPAddress,
    IPNetwork,
    LocalityError,
    Location,
    Locator,
    PrefixTable,
    Site,
    great_circle_km,
    load_czf,
    parse_client_address,
)

DATA = Path(__file__).resolve().parent / "data"
CZF_PATH = DATA / "czf_example.json"

# --------------------------------------------------------------------------
# parse_client_address

TRUSTED = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]

CLIENT_CASES = [
    # (remote, X-Forwarded-For, expected client, why)
    ("192.0.2.1", None, "192.0.2.1", "plain v4"),
    ("2001:db8::1", None, "2001:db8::1", "plain v6"),
    (" 192.0.2.1 ", None, "192.0.2.1", "surrounding spaces"),
    ("::ffff:192.0.2.1", None, "192.0.2.1", "v4-mapped peer from a dual-stack socket"),
    ("fe80::1%eth0", None, "fe80::1", "scope id dropped"),
    ("2001:db8::1:80", None, "2001:db8::1:80", "unbracketed v6 never has a port"),
    ("192.0.2.1", "198.51.100.7", "192.0.2.1", "untrusted peer: XFF ignored"),
    ("192.0.2.1", "garbage", "192.0.2.1", "untrusted peer: XFF not even parsed"),
    ("10.0.0.1", None, "10.0.0.1", "trusted peer without XFF"),
    ("10.0.0.1", "", "10.0.0.1", "empty XFF is absent"),
    ("10.0.0.1", "   ", "10.0.0.1", "blank XFF is absent"),
    ("10.0.0.1", "198.51.100.7", "198.51.100.7", "one trusted hop"),
    ("::ffff:10.0.0.1", "198.51.100.7", "198.51.100.7", "mapped peer is still trusted"),
    ("fd00::1", "2001:db8::5", "2001:db8::5", "v6 proxy"),
    ("fd00::1", "198.51.100.7", "198.51.100.7", "v6 proxy, v4 client"),
    ("10.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.2", "198.51.100.7", "multi-hop, spoof ignored"),
    ("10.0.0.1", "garbage, 198.51.100.7", "198.51.100.7", "left of client not parsed"),
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3", "all trusted: left-most"),
    ("10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7", "mapped XFF entry"),
    ("10.0.0.1", "198.51.100.7:5678", "198.51.100.7", "v4 with port stripped"),
    ("10.0.0.1", "[2001:db8::5]:443", "2001:db8::5", "bracketed v6 with port"),
    ("10.0.0.1", "[2001:db8::5]", "2001:db8::5", "bracketed v6"),
    ("10.0.0.1", "  198.51.100.7  ,10.0.0.2 ", "198.51.100.7", "spaces around entries"),
    ("10.0.0.1", "198.51.100.7,fd00::9", "198.51.100.7", "mixed-family proxy chain"),
]


@pytest.mark.parametrize(
    ("remote", "xff", "expected"),
    [c[:3] for c in CLIENT_CASES],
    ids=[c[3] for c in CLIENT_CASES],
)
def test_parse_client_address(remote: str, xff: str | None, expected: str) -> None:
    got = parse_client_address(remote, xff, TRUSTED)
    assert got == ip_address(expected)
    assert got.version == ip_address(expected).version


CLIENT_ERRORS = [
    # (remote, XFF, fragment of the message)
    ("not-an-ip", None, "malformed address 'not-an-ip'"),
    ("", None, "empty"),
    ("300.1.1.1", None, "malformed address"),
    ("192.0.2.0/24", None, "malformed address"),
    ("1.2.3.4:http", None, "bad port"),
    ("10.0.0.1", "198.51.100.7, bogus", "X-Forwarded-For"),
    ("10.0.0.1", "unknown", "malformed address 'unknown'"),
    ("10.0.0.1", "198.51.100.7,,10.0.0.2", "empty"),
    ("10.0.0.1", "1.2.3.4:70000", "bad port '70000'"),
    ("10.0.0.1", "1.2.3.4:", "bad port"),
    ("10.0.0.1", "[2001:db8::1", "unbalanced"),
    ("10.0.0.1", "[2001:db8::1]x", "junk after"),
    ("10.0.0.1", "[1.2.3.4]:99999", "bad port"),
]


@pytest.mark.parametrize(("remote", "xff", "fragment"), CLIENT_ERRORS)
def test_parse_client_address_errors(remote: str, xff: str | None, fragment: str) -> None:
    with pytest.raises(LocalityError) as info:
        parse_client_address(remote, xff, TRUSTED)
    assert fragment in str(info.value)
    # LocalityError is a ValueError so generic 400 handlers catch it.
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------
# PrefixTable

NESTED = [
    ("0.0.0.0/0", "v4-default"),
    ("10.0.0.0/8", "a"),
    ("10.1.0.0/16", "b"),
    ("10.1.2.0/24", "c"),
    ("10.1.2.3/32", "d"),
    ("::/0", "v6-default"),
    ("2001:db8::/32", "x"),
    ("2001:db8:1::/48", "y"),
    ("2001:db8::1/128", "z"),
]

NESTED_LOOKUPS = [
    ("10.1.2.3", "10.1.2.3/32", "d"),
    ("10.1.2.4", "10.1.2.0/24", "c"),
    ("10.1.3.4", "10.1.0.0/16", "b"),
    ("10.2.0.0", "10.0.0.0/8", "a"),
    ("10.255.255.255", "10.0.0.0/8", "a"),
    ("11.0.0.0", "0.0.0.0/0", "v4-default"),
    ("255.255.255.255", "0.0.0.0/0", "v4-default"),
    ("::ffff:10.1.2.3", "10.1.2.3/32", "d"),  # mapped goes to the v4 table
    ("2001:db8::1", "2001:db8::1/128", "z"),
    ("2001:db8::2", "2001:db8::/32", "x"),
    ("2001:db8:1::2", "2001:db8:1::/48", "y"),
    ("2001:db9::", "::/0", "v6-default"),
    ("::", "::/0", "v6-default"),
]


@pytest.mark.parametrize(("addr", "net", "value"), NESTED_LOOKUPS)
def test_prefix_table_nested(addr: str, net: str, value: str) -> None:
    table = PrefixTable(NESTED)
    assert table.lookup(addr) == (ip_network(net), value)
    assert table.lookup(ip_address(addr)) == (ip_network(net), value)


@pytest.mark.parametrize(
    ("prefixes", "addr"),
    [
        (["0.0.0.0/0"], "2001:db8::1"),  # a v4 default never catches v6
        (["::/0"], "192.0.2.1"),  # and vice versa
        (["::/0"], "::ffff:192.0.2.1"),  # mapped is v4, not v6
        (["10.0.0.0/8"], "11.0.0.0"),
        (["192.0.2.1/32"], "192.0.2.2"),
        (["2001:db8::1/128"], "2001:db8::2"),
        ([], "192.0.2.1"),
    ],
)
def test_prefix_table_miss(prefixes: list[str], addr: str) -> None:
    table: PrefixTable[str] = PrefixTable((p, p) for p in prefixes)
    assert table.lookup(addr) is None


def test_prefix_table_last_wins_get_len() -> None:
    table: PrefixTable[int] = PrefixTable()
    table.add("10.0.0.0/8", 1)
    table.add(ip_network("10.0.0.0/8"), 2)  # same prefix: replaces
    table.add("2001:db8::/32", 3)
    assert len(table) == 2
    assert table.lookup("10.9.9.9") == (ip_network("10.0.0.0/8"), 2)
    assert table.get("10.0.0.0/8") == 2
    assert table.get("10.0.0.0/9") is None  # exact match only
    assert table.get("2001:db8::/32") == 3


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0/33", "malformed prefix"),
        ("banana", "malformed prefix 'banana'"),
        ("2001:db8::/129", "malformed prefix"),
    ],
)
def test_prefix_table_bad_prefix(prefix: str, fragment: str) -> None:
    with pytest.raises(LocalityError) as info:
        PrefixTable[int]().add(prefix, 1)
    assert fragment in str(info.value)


def test_prefix_table_bad_address() -> None:
    with pytest.raises(LocalityError, match="malformed address"):
        PrefixTable([("10.0.0.0/8", 1)]).lookup("10.0.0")


def brute_force(
    prefixes: list[tuple[IPNetwork, int]], addr: IPAddress
) -> tuple[IPNetwork, int] | None:
    """The reference: scan everything, keep the longest containing prefix (last wins)."""
    best: tuple[IPNetwork, int] | None = None
    for net, value in prefixes:
        contains = net.version == addr.version and addr in net
        if contains and (best is None or net.prefixlen >= best[0].prefixlen):
            best = (net, value)
    return best


def random_prefix(rng: random.Random, bits: int) -> IPNetwork:
    # Weight towards realistic lengths but keep some very short/long ones.
    plen = rng.choice([rng.randint(0, bits), rng.randint(bits // 4, bits // 2 + 8)])
    plen = min(plen, bits)
    value = rng.getrandbits(bits) >> (bits - plen) << (bits - plen) if plen else 0
    return (
        ipaddress.ip_network((value, plen)) if bits == 32 else ipaddress.IPv6Network((value, plen))
    )


@pytest.mark.parametrize("bits", [32, 128])
def test_prefix_table_random_vs_brute_force(bits: int) -> None:
    rng = random.Random(bits)  # deterministic: a failure is reproducible
    prefixes = [(random_prefix(rng, bits), i) for i in range(10_000)]
    table = PrefixTable(prefixes)
    make = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    probes = [make(rng.getrandbits(bits)) for _ in range(100)]
    # Addresses inside known prefixes exercise the deep matches too.
    for net, _ in rng.sample(prefixes, 100):
        probes.append(make(int(net.network_address) | rng.getrandbits(bits - net.prefixlen)))
    # The reference is a linear scan of every prefix, on ints so it stays fast;
    # ">=" keeps the last of duplicate prefixes, like the table.
    flat = [(int(n.network_address), n.prefixlen, bits - n.prefixlen, n, v) for n, v in prefixes]
    for addr in probes:
        a = int(addr)
        expected: tuple[IPNetwork, int] | None = None
        best_len = -1
        for net_int, plen, shift, net, value in flat:
            if plen >= best_len and a >> shift == net_int >> shift:
                best_len, expected = plen, (net, value)
        assert table.lookup(addr) == expected, addr


v4_prefixes = st.builds(
    lambda v, plen: ipaddress.IPv4Network((v >> (32 - plen) << (32 - plen) if plen else 0, plen)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(v4_prefixes, st.integers()), max_size=40),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_prefix_table_hypothesis(prefixes: list[tuple[IPNetwork, int]], addrs: list[int]) -> None:
    table = PrefixTable(prefixes)
    for a in addrs:
        addr = ipaddress.IPv4Address(a)
        assert table.lookup(addr) == brute_force(prefixes, addr)
    # Probing the network addresses themselves hits every stored prefix.
    for net, _ in prefixes:
        assert table.lookup(net.network_address) == brute_force(prefixes, net.network_address)


def test_prefix_table_100k_prefixes() -> None:
    # The size the issue asks for: building and probing must stay fast.
    rng = random.Random(7)
    table: PrefixTable[int] = PrefixTable()
    for i in range(100_000):
        table.add(ipaddress.IPv4Network((rng.getrandbits(24) << 8, 24)), i)
    hits = sum(
        table.lookup(ipaddress.IPv4Address(rng.getrandbits(32))) is not None for _ in range(20_000)
    )
    assert 0 < hits < 20_000


# --------------------------------------------------------------------------
# Coverage Zone File


def test_load_sample_czf() -> None:
    czf = load_czf(CZF_PATH)
    assert czf.revision == "2024-05-01T12:00:00Z"
    assert czf.customer_name == "opencdn-example"
    assert set(czf.zones) == {"par", "lon", "isp-rennes", "isp-unknown"}
    par = czf.zones["par"]
    assert par.coordinates == (48.8566, 2.3522)
    assert ip_network("2001:db8:100::/48") in par.networks
    assert czf.zones["lon"].coordinates is None
    assert len(czf.table) == 10


@pytest.mark.parametrize(
    ("addr", "zone", "net"),
    [
        ("192.0.2.77", "par", "192.0.2.0/24"),
        ("198.51.100.1", "par", "198.51.100.0/25"),
        ("198.51.100.200", "lon", "198.51.100.128/25"),
        ("10.20.1.1", "lon", "10.20.0.0/16"),
        ("10.20.30.40", "isp-rennes", "10.20.30.0/24"),  # nested in lon's /16
        ("2001:db8:100::1", "par", "2001:db8:100::/48"),
        ("2001:db8:3ab::1", "isp-rennes", "2001:db8:300::/40"),
        ("::ffff:100.64.0.1", "isp-unknown", "100.64.0.0/10"),
        ("8.8.8.8", None, None),
        ("2001:db8:400::1", None, None),
    ],
)
def test_czf_lookup(addr: str, zone: str | None, net: str | None) -> None:
    hit = load_czf(CZF_PATH).lookup(addr)
    if zone is None:
        assert hit is None
    else:
        assert hit is not None
        assert (hit[0], hit[1].name) == (ip_network(net or ""), zone)


@pytest.mark.parametrize("kind", ["path", "str-path", "text", "bytes"])
def test_load_czf_sources(kind: str) -> None:
    text = CZF_PATH.read_text()
    sources: dict[str, str | bytes | Path] = {
        "path": CZF_PATH,
        "str-path": str(CZF_PATH),
        "text": text,
        "bytes": text.encode(),
    }
    assert set(load_czf(sources[kind]).zones) == {"par", "lon", "isp-rennes", "isp-unknown"}


def test_czf_lenient_parts() -> None:
    # Optional fields, unknown keys (newer ATC) and a network repeated within
    # one zone all load; revision and customerName default to "".
    czf = load_czf(
        json.dumps(
            {
                "coverageZones": {
                    "a": {"network": ["192.0.2.0/24", "192.0.2.0/24"], "extra": 1},
                    "empty": {},
                    "host": {"network": ["198.51.100.1"], "network6": ["2001:db8::1"]},
                },
                "futureField": True,
            }
        )
    )
    assert (czf.revision, czf.customer_name) == ("", "")
    assert czf.zones["a"].networks == (ip_network("192.0.2.0/24"),)
    assert czf.zones["empty"].networks == ()
    hit = czf.lookup("198.51.100.1")
    assert hit is not None and hit[1].name == "host"


def zones(body: object) -> str:
    return json.dumps({"revision": "r", "coverageZones": body})


BROKEN_CZF = [
    # (file content, fragments the message must contain)
    ("not json at all", ["not valid JSON"]),
    ("", ["not valid JSON"]),
    ("[1, 2]", ["top level must be a JSON object"]),
    ('{"revision": "r"}', ["'coverageZones' must be an object"]),
    ('{"coverageZones": []}', ["'coverageZones' must be an object"]),
    ('{"revision": 5, "coverageZones": {}}', ["'revision' must be a string"]),
    ('{"customerName": [], "coverageZones": {}}', ["'customerName' must be a string"]),
    (zones({"z": []}), ["zone 'z'", "expected an object"]),
    (zones({"": {}}), ["empty name"]),
    (zones({"z": {"network": "10.0.0.0/8"}}), ["zone 'z'", "'network' must be a list"]),
    (zones({"z": {"network6": {}}}), ["zone 'z'", "'network6' must be a list"]),
    (zones({"z": {"network": [10]}}), ["zone 'z'", "network[0] must be a string"]),
    (
        zones({"z": {"network": ["10.0.0.0/8", "10.0.0.0/40"]}}),
        ["zone 'z'", "network[1]", "malformed prefix '10.0.0.0/40'"],
    ),
    (zones({"z": {"network": ["10.0.0.1/8"]}}), ["zone 'z'", "network[0]", "host bits"]),
    (zones({"z": {"network": ["2001:db8::/32"]}}), ["zone 'z'", "network[0]", "is IPv6"]),
    (zones({"z": {"network6": ["10.0.0.0/8"]}}), ["zone 'z'", "network6[0]", "is IPv4"]),
    (zones({"z": {"coordinates": [1, 2]}}), ["zone 'z'", "coordinates", "expected an object"]),
    (zones({"z": {"coordinates": {"longitude": 2}}}), ["zone 'z'", "coordinates.latitude"]),
    (
        zones({"z": {"coordinates": {"latitude": "48.8", "longitude": 2}}}),
        ["zone 'z'", "latitude", "expected a number"],
    ),
    (
        zones({"z": {"coordinates": {"latitude": True, "longitude": 2}}}),
        ["latitude", "expected a number"],
    ),
    (
        zones({"z": {"coordinates": {"latitude": 91, "longitude": 2}}}),
        ["zone 'z'", "latitude", "out of range"],
    ),
    (
        zones({"z": {"coordinates": {"latitude": 0, "longitude": -180.5}}}),
        ["zone 'z'", "longitude", "out of range"],
    ),
    (
        '{"coverageZones": {"z": {"coordinates": {"latitude": NaN, "longitude": 0}}}}',
        ["zone 'z'", "latitude", "out of range"],
    ),
    (
        zones({"a": {"network": ["10.0.0.0/8"]}, "b": {"network": ["10.0.0.0/8"]}}),
        ["zone 'b'", "network[0]", "already in zone 'a'"],
    ),
    (
        '{"coverageZones": {"a": {}, "a": {"network": ["10.0.0.0/8"]}}}',
        ["duplicate key 'a'"],
    ),
]


@pytest.mark.parametrize(("content", "fragments"), BROKEN_CZF)
def test_broken_czf(tmp_path: Path, content: str, fragments: list[str]) -> None:
    path = tmp_path / "czf.json"
    path.write_text(content)
    with pytest.raises(LocalityError) as info:
        load_czf(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # the file is named first
    for fragment in fragments:
        assert fragment in message, message


def test_missing_czf_file(tmp_path: Path) -> None:
    with pytest.raises(LocalityError, match="cannot read coverage zone file"):
        load_czf(tmp_path / "nope.json")


def test_broken_czf_text_is_labelled() -> None:
    with pytest.raises(LocalityError, match=r"^<czf>: zone 'z'"):
        load_czf(zones({"z": 1}))


# --------------------------------------------------------------------------
# great_circle_km

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)
NEW_YORK = (40.7128, -74.0060)
FRANKFURT = (50.1109, 8.6821)
RENNES = (48.1173, -1.6778)
HALF_CIRCUMFERENCE = math.pi * EARTH_RADIUS_KM  # ~20015.09 km


@pytest.mark.parametrize(
    ("a", "b", "km", "tolerance"),
    [
        (PARIS, PARIS, 0.0, 1e-9),
        (PARIS, LONDON, 343.6, 1.0),
        (LONDON, NEW_YORK, 5570.2, 3.0),
        ((0.0, 0.0), (0.0, 180.0), HALF_CIRCUMFERENCE, 1e-6),  # antipodes
        ((90.0, 0.0), (-90.0, 0.0), HALF_CIRCUMFERENCE, 1e-6),  # pole to pole
        ((45.0, 10.0), (-45.0, -170.0), HALF_CIRCUMFERENCE, 1e-6),  # generic antipodes
        ((0.0, 0.0), (0.0, 1.0), 111.195, 0.001),  # one degree on the equator
        ((0.0, 179.5), (0.0, -179.5), 111.195, 0.001),  # across the antimeridian
        ((48.0, 2.0), (48.0000001, 2.0), 0.0000111, 1e-6),  # tiny: haversine stays exact
    ],
)
def test_great_circle_km(
    a: tuple[float, float], b: tuple[float, float], km: float, tolerance: float
) -> None:
    assert great_circle_km(*a, *b) == pytest.approx(km, abs=tolerance)
    assert great_circle_km(*b, *a) == pytest.approx(km, abs=tolerance)  # symmetric


def test_antipodes_value() -> None:
    assert round(great_circle_km(0, 0, 0, 180)) == 20015


# --------------------------------------------------------------------------
# Locator

SITES = [
    Site("par", *PARIS),
    Site("lon", *LONDON),
    Site("fra", *FRANKFURT),
    Site("nyc", *NEW_YORK),
]

EDGES = [
    # Transit edges in Paris also serve the Rennes ISP's prefixes (outnumbering
    # the embedded edges, so a head count alone would pick Paris) ...
    EdgePrefixes("par-1", "par", ("203.0.113.0/24", "2001:db8:300::/48"), embedded=False),
    EdgePrefixes("par-2", "par", ("203.0.113.0/24", "2001:db8:300::/48"), embedded=False),
    EdgePrefixes("par-3", "par", ("203.0.113.0/24",), embedded=False),
    # ... but two edges embedded in that ISP (homed to site fra) serve it too.
    EdgePrefixes("isp-fra-2", "fra", ("203.0.113.0/24", "2001:db8:300::/48"), embedded=True),
    EdgePrefixes("isp-fra-1", "fra", ("203.0.113.0/24",), embedded=True),
    # A more specific prefix beats an embedded less specific one.
    EdgePrefixes("lon-1", "lon", ("203.0.113.128/25",), embedded=False),
    # Only non-embedded edges at this prefix: all are preferred.
    EdgePrefixes("nyc-1", "nyc", ("198.18.0.0/15",)),
    EdgePrefixes("nyc-2", "nyc", ("198.18.0.0/15",)),
]


def geo_stub(addr: IPAddress) -> tuple[float, float] | None:
    """A fake geolocation database: CGNAT space is near Frankfurt, one v6 block is
    unknown, everything else is New York (so any geo answer is visibly wrong
    where the CZF should have won)."""
    if addr in ip_network("100.64.0.0/10"):
        return (50.0, 8.5)
    if addr in ip_network("2001:db8:ffff::/48"):
        return None
    return NEW_YORK


def km_from(coords: tuple[float, float], site: Site) -> int:
    return round(great_circle_km(*coords, site.latitude, site.longitude))


@pytest.fixture(scope="module")
def czf() -> CoverageZones:
    return load_czf(CZF_PATH)


@pytest.fixture(scope="module")
def locator(czf: CoverageZones) -> Locator:
    return Locator(SITES, EDGES, czf=czf, geo=geo_stub, default_site="par")


RENNES_TO_PARIS = km_from(RENNES, SITES[0])
CGNAT_TO_FRA = km_from((50.0, 8.5), SITES[2])

LOCATE_CASES = [
    # (address, site, reason, preferred edges, why)
    (
        "203.0.113.5",
        "fra",
        "prefix 203.0.113.0/24 of edges isp-fra-1, isp-fra-2",
        ("isp-fra-1", "isp-fra-2"),
        "embedded edges beat transit edge at same prefix, and beat the CZF",
    ),
    (
        "203.0.113.200",
        "lon",
        "prefix 203.0.113.128/25 of edge lon-1",
        ("lon-1",),
        "longest prefix beats embedded-ness",
    ),
    (
        "2001:db8:300::1",
        "fra",
        "prefix 2001:db8:300::/48 of edge isp-fra-2",
        ("isp-fra-2",),
        "v6 edge prefix, embedded wins",
    ),
    (
        "198.19.1.1",
        "nyc",
        "prefix 198.18.0.0/15 of edges nyc-1, nyc-2",
        ("nyc-1", "nyc-2"),
        "no embedded edge: all edges of the prefix",
    ),
    ("192.0.2.9", "par", "coverage zone par", (), "CZF beats geo (geo says NYC)"),
    ("::ffff:192.0.2.9", "par", "coverage zone par", (), "mapped address, CZF"),
    ("2001:db8:200::9", "lon", "coverage zone lon", (), "v6 CZF"),
    ("10.20.1.1", "lon", "coverage zone lon", (), "CZF zone named like a site"),
    (
        "10.20.30.40",
        "par",
        f"nearest site ({RENNES_TO_PARIS} km)",
        (),
        "CZF zone not a site: its coordinates beat geo",
    ),
    (
        "2001:db8:3ab::1",
        "par",
        f"nearest site ({RENNES_TO_PARIS} km)",
        (),
        "v6 CZF zone coordinates, outside the edges' /48",
    ),
    (
        "100.64.1.1",
        "fra",
        f"nearest site ({CGNAT_TO_FRA} km)",
        (),
        "CZF zone without coordinates falls through to geo",
    ),
    ("8.8.8.8", "nyc", "nearest site (0 km)", (), "no prefix, no zone: geo"),
    ("2001:db8:ffff::1", "par", "default", (), "geo has no answer: default"),
]


@pytest.mark.parametrize(
    ("addr", "site", "reason", "edges"),
    [c[:4] for c in LOCATE_CASES],
    ids=[c[4] for c in LOCATE_CASES],
)
def test_locate(
    locator: Locator, addr: str, site: str, reason: str, edges: tuple[str, ...]
) -> None:
    loc = locator.locate(addr)
    assert (loc.site, loc.reason, loc.edge_ids_preferred) == (site, reason, edges)
    assert loc.site not in loc.sites_by_distance
    assert set(loc.sites_by_distance) | {site} == {s.name for s in SITES}


@pytest.mark.parametrize(
    ("site", "ranking"),
    [
        ("par", ("lon", "fra", "nyc")),
        ("lon", ("par", "fra", "nyc")),
        ("fra", ("par", "lon", "nyc")),
        ("nyc", ("lon", "par", "fra")),
    ],
)
def test_sites_by_distance(locator: Locator, site: str, ranking: tuple[str, ...]) -> None:
    # Route a known address to each site via an edge prefix to read its ranking.
    loc = Locator(SITES, [EdgePrefixes("e", site, ("0.0.0.0/0",))]).locate("192.0.2.1")
    assert loc == Location(site, "prefix 0.0.0.0/0 of edge e", ("e",), ranking)


def test_ties_are_broken_by_name() -> None:
    # Three sites in one place: distances tie, names decide, for both the
    # nearest-site choice and the fallback ranking.
    same = [Site(n, 10.0, 10.0) for n in ("c", "a", "b")]
    loc = Locator(same, geo=lambda _addr: (10.0, 10.0)).locate("192.0.2.1")
    assert loc == Location("a", "nearest site (0 km)", (), ("b", "c"))
    # Edges of one prefix split over two sites: the site with more wins,
    # then the name.
    edges = [
        EdgePrefixes("x1", "c", ("192.0.2.0/24",)),
        EdgePrefixes("x2", "b", ("192.0.2.0/24",)),
        EdgePrefixes("x3", "c", ("192.0.2.0/24",)),
        EdgePrefixes("y1", "a", ("198.51.100.0/24",)),
        EdgePrefixes("y2", "b", ("198.51.100.0/24",)),
    ]
    locator = Locator(same, edges)
    assert locator.locate("192.0.2.1").edge_ids_preferred == ("x1", "x3")
    assert locator.locate("198.51.100.1").site == "a"


def test_zone_sites_mapping(czf: CoverageZones) -> None:
    # An operator's CZF names ATC cache groups; map them onto our sites.
    locator = Locator(SITES, czf=czf, zone_sites={"isp-rennes": "lon"})
    assert locator.locate("10.20.30.40") == Location(
        "lon", "coverage zone isp-rennes", (), ("par", "fra", "nyc")
    )


def test_no_czf_no_geo_no_default() -> None:
    locator = Locator(SITES, EDGES)
    assert locator.locate("203.0.113.5").site == "fra"
    with pytest.raises(LocalityError, match=r"no locality for 192\.0\.2\.1"):
        locator.locate("192.0.2.1")


@pytest.mark.parametrize("addr", ["bogus", "", "192.0.2.0/24"])
def test_locate_bad_address(locator: Locator, addr: str) -> None:
    with pytest.raises(LocalityError, match="malformed address"):
        locator.locate(addr)


def test_geo_returning_nonsense_is_an_error() -> None:
    locator = Locator(SITES, geo=lambda _addr: (123.0, 0.0))
    with pytest.raises(LocalityError, match=r"geo lookup for 192\.0\.2\.1.*out of range"):
        locator.locate("192.0.2.1")


CONFIG_ERRORS = [
    # (sites, edges, kwargs, fragment)
    ([], [], {}, "no sites configured"),
    ([Site("a", 0, 0), Site("a", 1, 1)], [], {}, "site 'a' is defined twice"),
    ([Site("a", 91, 0)], [], {}, "site 'a': coordinates"),
    ([Site("a", 0, 181)], [], {}, "site 'a': coordinates"),
    ([Site("a", 0, 0)], [EdgePrefixes("e", "b", ())], {}, "edge 'e': unknown site 'b'"),
    (
        [Site("a", 0, 0)],
        [EdgePrefixes("e", "a", ("10.0.0.0/8", "10.0.0.0/99"))],
        {},
        "edge 'e': malformed prefix '10.0.0.0/99'",
    ),
    (
        [Site("a", 0, 0)],
        [EdgePrefixes("e", "a", ()), EdgePrefixes("e", "a", ())],
        {},
        "edge 'e' is listed twice",
    ),
    ([Site("a", 0, 0)], [], {"default_site": "b"}, "default site 'b' is not a known site"),
    ([Site("a", 0, 0)], [], {"zone_sites": {"z": "b"}}, "zone 'z' maps to unknown site 'b'"),
]


@pytest.mark.parametrize(("sites", "edges", "kwargs", "fragment"), CONFIG_ERRORS)
def test_locator_config_errors(
    sites: list[Site], edges: list[EdgePrefixes], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(LocalityError) as info:
        Locator(sites, edges, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)
