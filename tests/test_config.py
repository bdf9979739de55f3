"""Tests for edge.config: defaults, the example file, flags over the file, and error messages."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from edge.config import (
    AdminConfig,
    CacheConfig,
    CacheDir,
    ConfigError,
    EdgeConfig,
    LimitsConfig,
    Listen,
    LogConfig,
    SigningConfig,
    UpstreamConfig,
    add_config_arguments,
    config_from_args,
    load_config,
    parse_listen,
    read_credential_file,
)

KiB = 1024
MiB = KiB**2
GiB = KiB**3

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "conf" / "edge.example.yaml"

UP = "upstreams:\n  - url: http://origin.test\n"
OPEN = 'signing:\n  public_prefixes: ["/"]\n'
REQUIRED = {"upstreams": ["http://origin.test"], "signing.public_prefixes": ["/"]}
ADMIN_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in its own directory, where relative config paths resolve."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "signing.keys").write_text("k1 c2VjcmV0c2VjcmV0c2VjcmV0\n")
    (tmp_path / "admin.token").write_text(f"# admin token\n\n{ADMIN_TOKEN}\n")
    (tmp_path / "short.token").write_text("tooshort\n")
    (tmp_path / "empty.token").write_text("# nothing here\n\n")
    (tmp_path / "fill.token").write_text("fill-token\n")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- defaults


def test_empty_file_means_all_defaults(in_tmp: Path) -> None:
    cfg = load_config(write(in_tmp / "edge.yaml", ""), REQUIRED)
    assert cfg == EdgeConfig(
        upstreams=(UpstreamConfig("http://origin.test"),),
        signing=SigningConfig(public_prefixes=("/",)),
    )
    assert cfg.site == "default"
    assert cfg.listen == Listen("0.0.0.0", 8080)
    assert cfg.admin == AdminConfig(listen=Listen("127.0.0.1", 9091), credential_file=None)
    assert cfg.upstream_retries == 1
    assert cfg.upstreams[0].connect_timeout == 2.0
    assert cfg.upstreams[0].read_timeout == 10.0
    assert cfg.upstreams[0].fill_timeout == 120.0
    assert cfg.cache.dirs == (CacheDir(in_tmp / "var/cache/edge", 1 * GiB),)
    assert cfg.cache.slice_size == 2 * MiB
    assert cfg.cache.max_open_files == 4096
    assert cfg.cache.reserve == 0
    assert cfg.signing.key_file is None
    assert cfg.limits == LimitsConfig(
        max_connections=10000,
        max_egress=None,
        retry_after=2,
        header_timeout=10.0,
        idle_timeout=60.0,
        send_timeout=60.0,
        max_header_bytes=16384,
        max_ranges=16,
        drain_timeout=30.0,
    )
    assert cfg.log == LogConfig(level="info", access_log=True)


def test_comment_only_file_is_empty(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", "# nothing yet\n\n# still nothing\n")
    assert load_config(path, REQUIRED) == load_config(None, REQUIRED)


def test_minimal_file(in_tmp: Path) -> None:
    cfg = load_config(write(in_tmp / "edge.yaml", UP + OPEN))
    assert cfg.upstreams == (UpstreamConfig("http://origin.test"),)
    assert cfg.signing == SigningConfig(key_file=None, public_prefixes=("/",))


def test_default_node_id_is_sanitised_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "edge 01/ams")
    assert load_config(None, REQUIRED).node_id == "edge-01-ams"
    monkeypatch.setattr("socket.gethostname", lambda: "x" * 100)
    assert load_config(None, REQUIRED).node_id == "x" * 64


def test_relative_paths_resolve_against_cwd(in_tmp: Path) -> None:
    text = (
        UP
        + "signing:\n  key_file: signing.keys\ncache:\n  dirs:\n    - {path: disk0, size: 1GiB}\n"
    )
    cfg = load_config(write(in_tmp / "edge.yaml", text))
    assert cfg.signing.key_file == in_tmp / "signing.keys"
    assert cfg.cache.dirs[0].path == in_tmp / "disk0"
    assert cfg.cache.dirs[0].path.is_absolute()


# --------------------------------------------------------------------------- example file


def example_copy(in_tmp: Path) -> Path:
    """The example with its /etc/opencdn/ files pointed at real files in the test directory."""
    text = EXAMPLE.read_text().replace("/etc/opencdn/", f"{in_tmp}/")
    return write(in_tmp / "edge.yaml", text)


def test_example_file_loads(in_tmp: Path) -> None:
    cfg = load_config(example_copy(in_tmp))
    assert cfg.listen == Listen("0.0.0.0", 8080)
    assert cfg.admin == AdminConfig(Listen("127.0.0.1", 9091), in_tmp / "admin.token")
    assert [u.url for u in cfg.upstreams] == [
        "https://origin.example.net",
        "https://origin-backup.example.net",
    ]
    assert cfg.upstreams[0].credential_file == in_tmp / "fill.token"
    assert cfg.upstreams[1].credential_file is None
    assert cfg.cache.dirs == (
        CacheDir(Path("/var/cache/opencdn/disk0"), 500 * GiB),
        CacheDir(Path("/var/cache/opencdn/disk1"), 500 * GiB),
    )
    assert cfg.signing == SigningConfig(in_tmp / "signing.keys", ("/art/",))


def test_example_file_states_true_defaults(in_tmp: Path) -> None:
    # The example spells out the defaults; if a default changes, the example must too.
    cfg = load_config(example_copy(in_tmp))
    assert cfg.limits == LimitsConfig()
    assert cfg.log == LogConfig()
    assert dataclasses.replace(cfg.cache, dirs=CacheConfig().dirs) == CacheConfig()
    assert (cfg.site, cfg.listen, cfg.upstream_retries) == (
        "default",
        Listen("0.0.0.0", 8080),
        1,
    )
    assert cfg.upstreams[0].connect_timeout == 2.0
    assert cfg.upstreams[0].read_timeout == 10.0


def test_example_file_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    classes = [
        EdgeConfig,
        AdminConfig,
        UpstreamConfig,
        CacheConfig,
        CacheDir,
        SigningConfig,
        LimitsConfig,
        LogConfig,
    ]
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if f"{f.name}:" not in text
    ]
    assert missing == []


def test_example_file_loads_with_overrides_as_is() -> None:
    # The unmodified file, with only the host-specific credential paths overridden.
    cfg = load_config(
        EXAMPLE,
        {
            "admin.credential_file": "admin.token",
            "upstreams[0].credential_file": "fill.token",
            "signing.key_file": "signing.keys",
        },
    )
    assert len(cfg.cache.dirs) == 2


# --------------------------------------------------------------------------- flags


FILE_WITH_EVERYTHING = """\
node_id: file-node
site: file-site
listen: "127.0.0.1:8000"
upstream_retries: 2
admin:
  listen: "127.0.0.1:9000"
upstreams:
  - url: http://file-origin.test
    read_timeout: 30s
cache:
  dirs:
    - {path: /srv/file0, size: 10GiB}
    - {path: /srv/file1, size: 20GiB}
  slice_size: 1MiB
signing:
  key_file: signing.keys
  public_prefixes: [/file/]
limits:
  max_connections: 500
"""


def test_flags_override_file(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", FILE_WITH_EVERYTHING)
    args = parse(
        [
            "--config",
            str(path),
            "-a",
            ":8443",
            "--admin-listen",
            "off",
            "-b",
            "https://a.test/",
            "--upstream",
            "file:///srv/media/",
            "--upstream-credential-file",
            "fill.token",
            "-s",
            "/srv/flag0",
            "--cache-dir",
            "/srv/flag1",
            "--cache-size",
            "100GiB",
            "--slice-size",
            "4MiB",
            "--public-prefix",
            "/a/",
            "--public-prefix",
            "/b/",
            "--node-id",
            "flag-node",
            "--site",
            "flag-site",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.node_id == "flag-node"
    assert cfg.site == "flag-site"
    assert cfg.listen == Listen("", 8443)
    assert cfg.admin.listen is None
    assert cfg.upstreams == (
        UpstreamConfig("https://a.test", in_tmp / "fill.token"),
        UpstreamConfig("file:///srv/media", in_tmp / "fill.token"),
    )
    assert cfg.cache.dirs == (
        CacheDir(Path("/srv/flag0"), 100 * GiB),
        CacheDir(Path("/srv/flag1"), 100 * GiB),
    )
    assert cfg.cache.slice_size == 4 * MiB
    assert cfg.signing.public_prefixes == ("/a/", "/b/")
    # Settings no flag touched keep the file's values.
    assert cfg.signing.key_file == in_tmp / "signing.keys"
    assert cfg.limits.max_connections == 500
    assert cfg.upstream_retries == 2


def test_no_flags_means_file_values(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", FILE_WITH_EVERYTHING)
    assert config_from_args(parse(["--config", str(path)])) == load_config(path)


def test_cache_size_flag_resizes_every_file_dir(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", FILE_WITH_EVERYTHING)
    cfg = config_from_args(parse(["--config", str(path), "--cache-size", "1TiB"]))
    assert [(str(d.path), d.size) for d in cfg.cache.dirs] == [
        ("/srv/file0", 1024 * GiB),
        ("/srv/file1", 1024 * GiB),
    ]


def test_cache_size_flag_alone_resizes_default_dir(in_tmp: Path) -> None:
    cfg = config_from_args(
        parse(["-b", "http://o.test", "--public-prefix", "/", "--cache-size", "5G"])
    )
    assert cfg.cache.dirs == (CacheDir(in_tmp / "var/cache/edge", 5 * GiB),)


def test_upstream_credential_flag_applies_to_file_upstreams(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", FILE_WITH_EVERYTHING)
    cfg = config_from_args(
        parse(["--config", str(path), "--upstream-credential-file", "fill.token"])
    )
    assert cfg.upstreams == (
        UpstreamConfig("http://file-origin.test", in_tmp / "fill.token", read_timeout=30.0),
    )


def test_edge_from_flags_alone(in_tmp: Path) -> None:
    args = parse(
        [
            "-a",
            "127.0.0.1:0",
            "-b",
            "http://origin.test:8081",
            "-s",
            "cache0",
            "--cache-size",
            "256MiB",
            "--signing-key-file",
            "signing.keys",
        ]
    )
    cfg = config_from_args(args)
    assert args.config is None
    assert cfg.listen == Listen("127.0.0.1", 0)
    assert cfg.upstreams == (UpstreamConfig("http://origin.test:8081"),)
    assert cfg.cache.dirs == (CacheDir(in_tmp / "cache0", 256 * MiB),)
    assert cfg.signing == SigningConfig(in_tmp / "signing.keys", ())
    assert cfg.limits == LimitsConfig()


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["--cache-size", "lots"], "--cache-size", 'expected a size like "500GiB", got "lots"'),
        (["--slice-size", "1KiB"], "--slice-size", "must be from 64.0 KiB to 256.0 MiB"),
        (["--listen", "nope"], "--listen", "missing :port"),
        (["--admin-listen", "[::1]"], "--admin-listen", 'must be followed by ":port"'),
        (["-b", "ftp://o.test"], "--upstream", 'unsupported scheme "ftp"'),
        (["--upstream-credential-file", "nope"], "--upstream-credential-file", "cannot read"),
        (["-s", "/srv/a", "-s", "/srv/a/b", "--cache-size", "1G"], "--cache-dir", "must not nest"),
        (["-s", "/srv/a", "-s", "/srv/a/", "--cache-size", "1G"], "--cache-dir", "same directory"),
        (["-s", "/srv/a"], "--cache-dir", "no size for cache dir"),
        (["--signing-key-file", "nope.keys"], "--signing-key-file", "cannot read"),
        (["--public-prefix", "art/"], "--public-prefix", 'starting with "/"'),
        (["--node-id", "bad id"], "--node-id", '"bad id"'),
        (["--site", ""], "--site", "expected a name"),
    ],
)
def test_flag_errors_name_the_flag(argv: list[str], flag: str, fragment: str) -> None:
    base = ["-b", "http://origin.test", "--public-prefix", "/"]
    with pytest.raises(ConfigError) as info:
        config_from_args(parse(base + argv))
    assert str(info.value).startswith(f"{flag}: ")
    assert fragment in str(info.value)
    assert info.value.source == flag


def test_flags_alone_without_upstream_fails(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_args(parse(["--public-prefix", "/"]))
    assert str(info.value).startswith("<no config file>: upstreams: ")
    assert "--upstream" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "start"),
    [
        (
            "limits.max_egress",
            "fast",
            'override limits.max_egress: expected a rate like "10Gbit/s"',
        ),
        (
            "limits.max_ranges",
            "0",
            "override limits.max_ranges: expected an integer from 1 to 1000, got 0",
        ),
        (
            "upstream_retries",
            "many",
            'override upstream_retries: expected an integer from 0 to 10, got "many"',
        ),
    ],
)
def test_override_without_flag_names_the_key(key: str, value: str, start: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {**REQUIRED, key: value})
    assert str(info.value).startswith(start)
    assert info.value.source == f"override {key}"


def test_override_of_unknown_key_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r'^override cache\.slice_sise: unknown key; did you mean "slice_size"'
    ):
        load_config(None, {**REQUIRED, "cache.slice_sise": "1MiB"})


def test_overrides_accept_strings_for_typed_settings() -> None:
    cfg = load_config(
        None,
        {
            **REQUIRED,
            "upstream_retries": "4",
            "log.access_log": "false",
            "limits.max_egress": "10Gbit/s",
            "upstreams[0].read_timeout": "1m",
        },
    )
    assert cfg.upstream_retries == 4
    assert cfg.log.access_log is False
    assert cfg.limits.max_egress == 1_250_000_000
    assert cfg.upstreams[0].read_timeout == 60.0


# --------------------------------------------------------------------------- bad files


BAD_FILES = [
    # (file text, dotted key named in the message, fragment of the message)
    pytest.param(
        UP + OPEN + "cache:\n  slice_sise: 1MiB\n",
        "cache.slice_sise",
        'unknown key; did you mean "slice_size"?',
        id="unknown-key-suggestion",
    ),
    pytest.param(
        UP + OPEN + "upstream_retry: 2\n",
        "upstream_retry",
        'did you mean "upstream_retries"?',
        id="unknown-top-level-key",
    ),
    pytest.param(
        UP + OPEN + "slice_size: 1MiB\n",
        "slice_size",
        'did you mean "cache.slice_size"?',
        id="key-in-wrong-section",
    ),
    pytest.param(
        "upstreams:\n  - url: http://o.test\n    timeout: 5s\n" + OPEN,
        "upstreams[0].timeout",
        'did you mean "read_timeout"?',
        id="unknown-key-in-list-item",
    ),
    pytest.param(
        UP + OPEN + "colour: blue\n",
        "colour",
        "unknown key; known keys here: node_id, site, listen",
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        UP + OPEN + "upstream_retries: four\n",
        "upstream_retries",
        'expected an integer from 0 to 10, got "four"',
        id="wrong-type-int",
    ),
    pytest.param(
        UP + OPEN + 'upstream_retries: "4"\n',
        "upstream_retries",
        'got "4"',
        id="quoted-int",
    ),
    pytest.param(
        UP + OPEN + "node_id: yes\n",
        "node_id",
        "got true (a boolean); quote it in YAML",
        id="yaml-boolean-as-string",
    ),
    pytest.param(
        UP + OPEN + "log:\n  access_log: sometimes\n",
        "log.access_log",
        'expected true or false, got "sometimes"',
        id="wrong-type-bool",
    ),
    pytest.param(
        UP + OPEN + "cache: 5\n",
        "cache",
        "expected a mapping of settings, got 5 (a number)",
        id="section-not-mapping",
    ),
    pytest.param(
        "upstreams:\n  url: http://o.test\n" + OPEN,
        "upstreams",
        "expected a list, got a mapping",
        id="upstreams-not-list",
    ),
    pytest.param(
        "upstreams:\n  - http://o.test\n" + OPEN,
        "upstreams[0]",
        'write "- url: http://o.test"',
        id="upstream-item-not-mapping",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  dirs:\n    - path: /srv/a\n      size: lots\n",
        "cache.dirs[0].size",
        'expected a size like "500GiB", got "lots"',
        id="bad-size",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  dirs:\n    - path: /srv/a\n",
        "cache.dirs[0]",
        'no size for cache dir "/srv/a"',
        id="missing-size",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  dirs: []\n",
        "cache.dirs",
        "at least one cache dir is required",
        id="no-cache-dirs",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  slice_size: 4KiB\n",
        "cache.slice_size",
        "must be from 64.0 KiB to 256.0 MiB",
        id="slice-too-small",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  slice_size: 4MiB\n  dirs:\n    - {path: /srv/a, size: 1MiB}\n",
        "cache.dirs[0].size",
        "must be at least cache.slice_size (4.0 MiB)",
        id="dir-smaller-than-slice",
    ),
    pytest.param(
        "upstreams:\n  - url: http://o.test\n    read_timeout: soon\n" + OPEN,
        "upstreams[0].read_timeout",
        'expected a duration like "10s", got "soon"',
        id="bad-duration",
    ),
    pytest.param(
        "upstreams:\n  - url: http://o.test\n    connect_timeout: 0\n" + OPEN,
        "upstreams[0].connect_timeout",
        "must be greater than 0",
        id="zero-timeout",
    ),
    pytest.param(
        UP + OPEN + "limits:\n  idle_timeout: -5\n",
        "limits.idle_timeout",
        "must not be negative",
        id="negative-duration",
    ),
    pytest.param(
        UP + OPEN + "limits:\n  max_connections: -1\n",
        "limits.max_connections",
        "expected an integer from 1 to 10000000, got -1",
        id="negative-int",
    ),
    pytest.param(
        UP + OPEN + "cache:\n  reserve: -1GiB\n",
        "cache.reserve",
        "must not be negative",
        id="negative-size",
    ),
    pytest.param(
        UP + OPEN + "limits:\n  max_egress: 10Mb/s\n",
        "limits.max_egress",
        "ambiguous",
        id="ambiguous-rate",
    ),
    pytest.param(
        UP + OPEN + "limits:\n  max_egress: 0\n",
        "limits.max_egress",
        "use null for no limit",
        id="zero-rate",
    ),
    pytest.param(
        "upstreams:\n  - url: ftp://o.test/media\n" + OPEN,
        "upstreams[0].url",
        'unsupported scheme "ftp"',
        id="bad-url-scheme",
    ),
    pytest.param(
        "upstreams:\n  - url: o.test\n" + OPEN,
        "upstreams[0].url",
        "no scheme",
        id="url-without-scheme",
    ),
    pytest.param(
        "upstreams:\n  - url: http://o.test/media?x=1\n" + OPEN,
        "upstreams[0].url",
        "no query or fragment",
        id="url-with-query",
    ),
    pytest.param(
        "upstreams:\n  - url: http://user:pw@o.test\n" + OPEN,
        "upstreams[0].url",
        "credential_file",
        id="url-with-credentials",
    ),
    pytest.param(
        "upstreams:\n  - url: http:///media\n" + OPEN,
        "upstreams[0].url",
        "no host",
        id="url-without-host",
    ),
    pytest.param(
        "upstreams:\n  - url: file://media/dir\n" + OPEN,
        "upstreams[0].url",
        "absolute path",
        id="relative-file-url",
    ),
    pytest.param(
        "upstreams:\n  - read_timeout: 5s\n" + OPEN,
        "upstreams[0]",
        'missing required key "url"',
        id="upstream-without-url",
    ),
    pytest.param(OPEN, "upstreams", "at least one upstream is required", id="missing-upstreams"),
    pytest.param(
        "upstreams: []\n" + OPEN,
        "upstreams",
        "at least one upstream is required",
        id="empty-upstreams",
    ),
    pytest.param(
        UP
        + OPEN
        + "cache:\n  dirs:\n    - {path: /srv/a, size: 1GiB}\n    - {path: /srv/a/, size: 1GiB}\n",
        "cache.dirs[1].path",
        'is the same directory as cache.dirs[0].path "/srv/a"',
        id="duplicate-cache-dirs",
    ),
    pytest.param(
        UP
        + OPEN
        + "cache:\n  dirs:\n    - {path: /srv/a, size: 1GiB}\n    - {path: /srv/a/b, size: 1GiB}\n",
        "cache.dirs[1].path",
        'is inside cache.dirs[0].path "/srv/a"',
        id="nested-cache-dirs",
    ),
    pytest.param(
        UP
        + OPEN
        + "cache:\n  dirs:\n    - {path: /srv/a/b, size: 1GiB}\n    - {path: /srv/a, size: 1GiB}\n",
        "cache.dirs[1].path",
        'contains cache.dirs[0].path "/srv/a/b"',
        id="nested-cache-dirs-reversed",
    ),
    pytest.param(
        UP + OPEN + "listen: localhost\n",
        "listen",
        "missing :port",
        id="listen-without-port",
    ),
    pytest.param(
        UP + OPEN + 'listen: "::1:8080"\n',
        "listen",
        "put an IPv6 address in brackets",
        id="listen-bare-ipv6",
    ),
    pytest.param(
        UP + OPEN + 'listen: "0.0.0.0:70000"\n',
        "listen",
        '"70000" is not a port number',
        id="listen-port-range",
    ),
    pytest.param(
        UP + OPEN + "listen: 8080\n",
        "listen",
        "got 8080 (a number); quote it in YAML",
        id="listen-int",
    ),
    pytest.param(
        UP + OPEN + "admin:\n  listen: true\n",
        "admin.listen",
        "got true (a boolean)",
        id="admin-listen-true",
    ),
    pytest.param(
        UP + "signing:\n  key_file: /nonexistent/signing.keys\n",
        "signing.key_file",
        'cannot read signing key file "/nonexistent/signing.keys": No such file or directory',
        id="missing-key-file",
    ),
    pytest.param(
        UP + "signing:\n  key_file: .\n",
        "signing.key_file",
        "cannot read signing key file",
        id="key-file-is-directory",
    ),
    pytest.param(
        UP,
        "signing.key_file",
        "required unless public_prefixes covers what you serve",
        id="no-key-file-no-public-prefixes",
    ),
    pytest.param(
        UP + "signing:\n  public_prefixes: [art/]\n",
        "signing.public_prefixes[0]",
        'expected a path prefix starting with "/", got "art/"',
        id="public-prefix-without-slash",
    ),
    pytest.param(
        UP + "signing:\n  public_prefixes: /art/\n",
        "signing.public_prefixes",
        'expected a list, got "/art/"',
        id="public-prefixes-not-list",
    ),
    pytest.param(
        UP + OPEN + "admin:\n  credential_file: short.token\n",
        "admin.credential_file",
        "has 8 characters; use at least 16",
        id="admin-token-too-short",
    ),
    pytest.param(
        "upstreams:\n  - url: http://o.test\n    credential_file: empty.token\n" + OPEN,
        "upstreams[0].credential_file",
        "holds no token",
        id="empty-credential-file",
    ),
    pytest.param(
        UP + OPEN + "log:\n  level: verbose\n",
        "log.level",
        'expected one of debug, info, warning, error, got "verbose"',
        id="bad-log-level",
    ),
    pytest.param(
        UP + OPEN + 'node_id: "edge 01"\n',
        "node_id",
        'got "edge 01"',
        id="bad-node-id",
    ),
    pytest.param(
        UP + OPEN + "upstream_retries: 11\n",
        "upstream_retries",
        "expected an integer from 0 to 10, got 11",
        id="too-many-upstream-retries",
    ),
    pytest.param(
        UP + OPEN + "workers: 4\n",
        "workers",
        "unknown key; known keys here: node_id, site, listen, admin, upstreams, upstream_retries",
        id="removed-workers-key",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_FILES)
def test_bad_file_names_file_and_key(in_tmp: Path, text: str, key: str, fragment: str) -> None:
    path = write(in_tmp / "edge.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message, message
    assert info.value.source == str(path)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (UP + OPEN + "cache:\n  slice_size: [1MiB\n", "line 7"),
        (UP + "signing:\n\tkey_file: x\n", "line 4"),
        (UP + OPEN + "listen: a: b\n", "line 5"),
    ],
)
def test_yaml_syntax_error_names_file_and_line(in_tmp: Path, text: str, where: str) -> None:
    path = write(in_tmp / "edge.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {where}, column ")
    assert "invalid YAML" in str(info.value)


def test_duplicate_key_is_an_error(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", UP + OPEN + "upstream_retries: 2\nupstream_retries: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line 6, column 1: ")
    assert 'duplicate key "upstream_retries" (first at line 5)' in str(info.value)


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "a list"), ("just words\n", '"just words"'), ("42\n", "42 (a number)")],
)
def test_top_level_must_be_a_mapping(in_tmp: Path, text: str, got: str) -> None:
    path = write(in_tmp / "edge.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: expected a mapping of settings at the top level, got {got}"


def test_missing_config_file(in_tmp: Path) -> None:
    path = in_tmp / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_non_utf8_file(in_tmp: Path) -> None:
    path = in_tmp / "edge.yaml"
    path.write_bytes(b"site: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_second_yaml_document_is_an_error(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", UP + OPEN + "---\nupstream_retries: 2\n")
    with pytest.raises(ConfigError, match="line 5, column 1: invalid YAML"):
        load_config(path)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8080", Listen("0.0.0.0", 8080)),
        ("127.0.0.1:0", Listen("127.0.0.1", 0)),
        (":8080", Listen("", 8080)),
        ("[::1]:8080", Listen("::1", 8080)),
        ("[::]:443", Listen("::", 443)),
        ("localhost:65535", Listen("localhost", 65535)),
        ("edge-1.example.net:80", Listen("edge-1.example.net", 80)),
    ],
)
def test_parse_listen(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected
    assert parse_listen(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["8080", "host", "::1:80", "[::1]", "[nope]:80", "h:", "h:-1", "h:65536", "bad_host:80"]
)
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize("value", ["null", "off", "OFF", '"off"', "false"])
def test_admin_listen_can_be_disabled(in_tmp: Path, value: str) -> None:
    path = write(in_tmp / "edge.yaml", UP + OPEN + f"admin:\n  listen: {value}\n")
    assert load_config(path).admin.listen is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://origin.test", "http://origin.test"),
        ("http://origin.test/", "http://origin.test"),
        ("HTTPS://origin.test:8443/video/", "https://origin.test:8443/video"),
        ("http://[::1]:8081/", "http://[::1]:8081"),
        ("file:///srv/media/", "file:///srv/media"),
        ("file://localhost/srv/media", "file:///srv/media"),
    ],
)
def test_upstream_url_normalised(url: str, expected: str) -> None:
    cfg = load_config(None, {**REQUIRED, "upstreams": [url]})
    assert cfg.upstreams[0].url == expected


def test_read_credential_file(in_tmp: Path) -> None:
    assert read_credential_file(in_tmp / "admin.token") == ADMIN_TOKEN
    with pytest.raises(ValueError, match="holds no token"):
        read_credential_file(in_tmp / "empty.token")
    write(in_tmp / "bad.token", "two words\n")
    with pytest.raises(ValueError, match="spaces or control characters"):
        read_credential_file(in_tmp / "bad.token")


def test_units_in_file(in_tmp: Path) -> None:
    text = (
        UP
        + OPEN
        + "cache:\n  slice_size: 512KiB\n  reserve: 10GB\n"
        + "limits:\n  max_egress: 10Gbit/s\n  header_timeout: 1500ms\n  idle_timeout: 2m\n"
        + "  drain_timeout: 0\n  max_header_bytes: 32KiB\n"
    )
    cfg = load_config(write(in_tmp / "edge.yaml", text))
    assert cfg.cache.slice_size == 512 * KiB
    assert cfg.cache.reserve == 10_000_000_000
    assert cfg.limits.max_egress == 1_250_000_000
    assert cfg.limits.header_timeout == 1.5
    assert cfg.limits.idle_timeout == 120.0
    assert cfg.limits.drain_timeout == 0.0
    assert cfg.limits.max_header_bytes == 32 * KiB


# --------------------------------------------------------------------------- immutability


def test_config_is_frozen() -> None:
    cfg = load_config(None, REQUIRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.upstream_retries = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cache.slice_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.upstreams[0].url = "http://elsewhere.test"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]
    assert isinstance(cfg.upstreams, tuple)
    assert isinstance(cfg.cache.dirs, tuple)
    assert isinstance(cfg.signing.public_prefixes, tuple)
    assert not hasattr(cfg, "__dict__")  # slots: no stray attributes either
    hash(cfg)  # frozen all the way down, so usable as a key


def test_yaml_error_points_at_unclosed_construct(in_tmp: Path) -> None:
    path = write(in_tmp / "edge.yaml", UP + OPEN + "cache:\n  slice_size: [1MiB\n")
    with pytest.raises(ConfigError, match=r"while parsing a flow sequence at line 6\)$"):
        load_config(path)


# --------------------------------------------------------------------------- fill


def test_fill_defaults(in_tmp: Path) -> None:
    from edge.config import FillConfig
    from edge.fillplan import FillWindow

    cfg = load_config(None, REQUIRED)
    assert cfg.fill == FillConfig()
    assert cfg.fill.enabled is True
    assert cfg.fill.window == FillWindow(2 * 60, 14 * 60)
    assert str(cfg.fill.window) == "02:00-14:00"
    assert (cfg.fill.timezone, cfg.fill.rate, cfg.fill.burst) == (None, None, 4 * MiB)
    assert (cfg.fill.concurrency, cfg.fill.parents, cfg.fill.manifest_retry) == (2, (), 60.0)


def test_fill_example_states_true_defaults_and_documents_every_key(in_tmp: Path) -> None:
    from edge.config import FillConfig, FillParent

    cfg = load_config(example_copy(in_tmp))
    assert cfg.fill == FillConfig()
    text = EXAMPLE.read_text()
    section = text[text.index("\nfill:") :]
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in (FillConfig, FillParent)
        for f in dataclasses.fields(cls)
        if f"{f.name}:" not in section
    ]
    assert missing == []


def test_fill_every_key(in_tmp: Path) -> None:
    from edge.config import FillParent
    from edge.fillplan import FillWindow

    text = (
        UP
        + OPEN
        + "fill:\n"
        + "  enabled: false\n"
        + '  window: "22:30-06:00"\n'
        + "  timezone: Europe/Paris\n"
        + "  rate: 400Mbit/s\n"
        + "  burst: 8MiB\n"
        + "  concurrency: 4\n"
        + "  parents:\n"
        + "    - url: http://parent.test:8080/\n"
        + "      credential_file: fill.token\n"
        + "    - {url: https://parent2.test}\n"
        + "  manifest_retry: 2m\n"
    )
    fill = load_config(write(in_tmp / "edge.yaml", text)).fill
    assert fill.enabled is False
    assert fill.window == FillWindow(22 * 60 + 30, 6 * 60)
    assert (fill.timezone, fill.rate, fill.burst, fill.concurrency) == (
        "Europe/Paris",
        50_000_000,
        8 * MiB,
        4,
    )
    assert fill.parents == (
        FillParent("http://parent.test:8080", in_tmp / "fill.token"),
        FillParent("https://parent2.test"),
    )
    assert fill.manifest_retry == 120.0


BAD_FILL = [
    ('  window: "02:00-02:00"\n', "fill.window", "start and end are equal"),
    ('  window: "2am-2pm"\n', "fill.window", '"2am" is not a time of day'),
    ('  window: "02:00-25:00"\n', "fill.window", '"25:00" is not a time of day'),
    ("  window: 12:30\n", "fill.window", "quote it"),
    ("  timezone: Mars/Olympus\n", "fill.timezone", 'unknown time zone "Mars/Olympus"'),
    ("  timezone: ../../etc/passwd\n", "fill.timezone", "unknown time zone"),
    ("  rate: 0\n", "fill.rate", "at least 1 byte/s"),
    ("  rate: fast\n", "fill.rate", ""),
    ("  burst: 1KiB\n", "fill.burst", "at least 64.0 KiB"),
    ("  concurrency: 0\n", "fill.concurrency", "from 1 to 64"),
    ("  enabled: maybe\n", "fill.enabled", "true or false"),
    ("  manifest_retry: 0s\n", "fill.manifest_retry", "greater than 0"),
    ("  parents: [http://p.test]\n", "fill.parents[0]", 'write "- url: http://p.test"'),
    ("  parents:\n    - url: file:///srv\n", "fill.parents[0].url", "http:// or https://"),
    ("  parents:\n    - {credential_file: fill.token}\n", "fill.parents[0]", '"url"'),
    ("  parents:\n    - {url: http://p.test, cred: x}\n", "fill.parents[0].cred", "unknown key"),
    ("  windw: 02:00-14:00\n", "fill.windw", 'did you mean "window"?'),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_FILL)
def test_fill_errors_name_the_key_and_the_file(
    in_tmp: Path, text: str, key: str, fragment: str
) -> None:
    path = write(in_tmp / "edge.yaml", UP + OPEN + "fill:\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}: "), str(info.value)
    assert fragment in str(info.value)
