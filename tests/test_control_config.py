"""Control plane configuration: defaults, the example loads, every error names file and key."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from control.auth import KdfParams
from control.config import (
    DEFAULT_PLANS,
    CatalogFeedConfig,
    ConfigError,
    ControlConfig,
    DatabaseConfig,
    PlanConfig,
    PlaybackConfig,
    ProfilesConfig,
    RateConfig,
    RateLimitsConfig,
    RecommendConfig,
    SessionsConfig,
    load_config,
    parse_config,
)
from edge.config import Listen
from edge.tokens import generate_key_line

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "control.example.yaml"
TOKEN = "feed-token-0123456789abcdef"


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "control.yaml"
    f.write_text(text)
    return f


def test_no_file_means_defaults():
    config = load_config(None)
    assert config == ControlConfig()
    assert config.listen == Listen("127.0.0.1", 8090)
    assert config.database.url == "sqlite:///" + os.path.abspath("var/control/control.db")
    assert config.database.sqlite_path == Path(os.path.abspath("var/control/control.db"))
    assert (config.database.pool_min, config.database.pool_max) == (1, 10)
    assert config.public_url is None and config.cors_origins == ()
    assert config.max_body == 64 * 1024
    assert config.sessions == SessionsConfig(ttl=30 * 86400, max_per_account=20)
    assert (config.kdf.n, config.kdf.r, config.kdf.p) == (16384, 8, 1)
    assert config.rate_limits.enabled
    assert config.rate_limits.signin_per_address == RateConfig(1.0, 10)
    assert config.rate_limits.signin_per_account == RateConfig(0.2, 5)
    assert config.rate_limits.signup_per_address == RateConfig(0.05, 3)
    assert [(p.id, p.max_streams, p.max_height, p.price_cents) for p in config.plans] == [
        ("basic", 1, 480, 799),
        ("standard", 2, 1080, 1299),
        ("premium", 4, 2160, 1799),
    ]
    assert {(p.currency, p.period_days) for p in config.plans} == {("USD", 30)}
    assert config.profiles.max_per_account == 5
    assert config.playback == PlaybackConfig()
    assert config.playback.signing_keys is None
    assert (config.playback.token_ttl, config.playback.lease_ttl) == (6 * 3600, 120)
    assert config.playback.steering_timeout == 1.0 and not config.playback.bind_client_ip
    assert config.catalog_feed == CatalogFeedConfig(url=None, credential_file=None, interval=30)
    assert config.recommend == RecommendConfig(3600, 10, 3.0, 2)
    assert config.log_level == "info"


def test_empty_file_and_null_sections_mean_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == ControlConfig()
    text = "".join(f"{k}: null\n" for k in ("database", "sessions", "kdf", "plans", "playback"))
    assert load_config(_write(tmp_path, text)) == ControlConfig()


def test_example_loads_and_documents_every_setting():
    config = load_config(EXAMPLE)
    assert config.database.url == "sqlite:////var/lib/opencdn/control/control.db"
    assert config.plans == DEFAULT_PLANS
    assert dataclasses.replace(config, database=DatabaseConfig()) == ControlConfig()
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"\b([a-z_]+):", text))
    classes = (
        ControlConfig,
        DatabaseConfig,
        SessionsConfig,
        RateConfig,
        RateLimitsConfig,
        PlanConfig,
        ProfilesConfig,
        PlaybackConfig,
        CatalogFeedConfig,
        RecommendConfig,
    )
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name != "signing_keys":  # derived from signing_keys_file
                assert f.name in documented, f"{cls.__name__}.{f.name}"
    for name in ("n", "r", "p"):
        assert name in documented


def test_a_full_configuration(tmp_path):
    keys = tmp_path / "signing.keys"
    keys.write_text(f"# current first\n{generate_key_line('k2')}\n{generate_key_line('k1')}\n")
    cred = tmp_path / "feed.token"
    cred.write_text(f"# for the origin\n{TOKEN}\n")
    f = _write(
        tmp_path,
        f"""
listen: "0.0.0.0:9000"
database: {{url: "postgresql://cdn:s3cret@db.example:5432/control?sslmode=require",
            pool_min: 2, pool_max: 4}}
public_url: "https://API.example.com/"
cors_origins: ["*", "HTTP://127.0.0.1:8090", "https://www.example.com:443", "http://[::1]:80"]
max_body: 1MiB
sessions: {{ttl: 1h30m, max_per_account: 3}}
kdf: {{n: 2, r: 1, p: 1}}
rate_limits: {{enabled: false, signin_per_account: {{rate: 2, burst: 1}}}}
plans: [{{id: solo, name: Solo, max_streams: 1, max_height: 720, price_cents: 0}}]
profiles: {{max_per_account: 1}}
playback:
  signing_keys_file: {keys.name}
  token_ttl: 1d
  lease_ttl: 30
  bind_client_ip: true
  steering_url: "http://127.0.0.1:8100/"
  steering_timeout: 500ms
  fallback_url: "http://127.0.0.1:8081"
catalog_feed: {{url: "http://127.0.0.1:8000", credential_file: {cred}, interval: 1m}}
recommend: {{interval: 0, row_size: 50, half_life_days: 0.5, min_support: 1}}
log_level: debug
""",
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths resolve against the start directory
    try:
        config = load_config(f)
    finally:
        os.chdir(cwd)
    assert config.listen == Listen("0.0.0.0", 9000)
    assert config.database.pool_min == 2 and not config.database.is_sqlite
    assert config.database.sqlite_path is None
    assert "s3cret" not in repr(config) and "s3cret" not in config.database.redacted_url
    assert config.public_url == "https://API.example.com"
    assert config.cors_origins == (
        "*",
        "http://127.0.0.1:8090",
        "https://www.example.com",
        "http://[::1]",
    )
    assert config.max_body == 1024 * 1024
    assert config.sessions == SessionsConfig(5400.0, 3)
    assert config.kdf == KdfParams(n=2, r=1, p=1)
    assert not config.rate_limits.enabled
    assert config.rate_limits.signin_per_account == RateConfig(2.0, 1)
    assert config.rate_limits.signin_per_address == RateConfig(1.0, 10)
    assert config.plans == (PlanConfig("solo", "Solo", 1, 720, 0, "USD", 30),)
    pb = config.playback
    assert pb.signing_keys_file == keys and pb.signing_keys is not None
    assert pb.signing_keys.current == "k2" and set(pb.signing_keys.keys) == {"k1", "k2"}
    assert (pb.token_ttl, pb.lease_ttl, pb.bind_client_ip) == (86400, 30, True)
    assert pb.steering_url == pb.steering_public_url == "http://127.0.0.1:8100"
    assert pb.steering_timeout == 0.5 and pb.fallback_url == "http://127.0.0.1:8081"
    assert config.catalog_feed == CatalogFeedConfig("http://127.0.0.1:8000", cred, 60.0)
    assert config.recommend == RecommendConfig(0.0, 50, 0.5, 1)
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("90s", 90), (3600, 3600), ("1h30m", 5400), (61.5, 61.5), ("1m", 60)],
)
def test_durations(tmp_path, text, seconds):
    config = load_config(_write(tmp_path, f"sessions: {{ttl: {text!r}}}\n"))
    assert config.sessions.ttl == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("64KiB", 65536), (2048, 2048), ("1MiB", 1 << 20), ("16M", 16 << 20)]
)
def test_sizes(tmp_path, text, size):
    assert load_config(_write(tmp_path, f"max_body: {text!r}\n")).max_body == size


def test_relative_sqlite_path_is_made_absolute(tmp_path):
    config = load_config(_write(tmp_path, 'database: {url: "sqlite:///data/c.db"}\n'))
    assert config.database.sqlite_path == Path(os.path.abspath("data/c.db"))
    with pytest.raises(ConfigError, match=r"database\.url: an in-memory SQLite database"):
        load_config(_write(tmp_path, 'database: {url: "sqlite:///:memory:"}\n'))


def test_steering_public_url_overrides_steering_url(tmp_path):
    f = _write(
        tmp_path,
        "playback: {steering_url: 'http://10.0.0.5:8100', "
        "steering_public_url: 'https://steer.example.com/'}\n",
    )
    pb = load_config(f).playback
    assert (pb.steering_url, pb.steering_public_url) == (
        "http://10.0.0.5:8100",
        "https://steer.example.com",
    )


def test_overrides_and_parse_config(tmp_path):
    f = _write(tmp_path, "database: {pool_max: 3}\nkdf: {n: 4}\n")
    config = load_config(f, {"listen": "127.0.0.1:0", "kdf.n": 2, "database.pool_min": 3})
    assert config.listen.port == 0 and config.kdf.n == 2
    assert (config.database.pool_min, config.database.pool_max) == (3, 3)
    assert parse_config({"kdf": {"n": 2}}).kdf.n == 2
    with pytest.raises(ConfigError, match=r"^demo: kdf\.n: "):
        parse_config({"kdf": {"n": 3}}, "demo")


def _key_file(tmp_path: Path, text: str) -> str:
    (tmp_path / "bad.keys").write_text(text)
    return str(tmp_path / "bad.keys")


def _token_file(tmp_path: Path, text: str) -> str:
    (tmp_path / "feed.token").write_text(text)
    return str(tmp_path / "feed.token")


def _plan(**changes: object) -> str:
    """A plan as YAML flow mapping; a change to None leaves the key out."""
    plan: dict[str, object] = {
        "id": "a", "name": "A", "max_streams": 1, "max_height": 480, "price_cents": 1, **changes
    }  # fmt: skip
    return "{" + ", ".join(f"{k}: {v}" for k, v in plan.items() if v is not None) + "}"


BAD = [
    # (yaml text, dotted key, a fragment of the message); "{tmp}" is the test's directory
    ("sesions: {ttl: 1d}\n", "sesions", 'did you mean "sessions"'),
    ("sessions: {tll: 1d}\n", "sessions.tll", 'did you mean "ttl"'),
    ("playback: {token_tl: 1h}\n", "playback.token_tl", 'did you mean "token_ttl"'),
    ("listen: nowhere\n", "listen", "port"),
    ("database: {url: 'mysql://x/db'}\n", "database.url", "postgresql://"),
    ("database: {url: 'sqlite://rel.db'}\n", "database.url", "three slashes"),
    ("database: {url: 'sqlite:///'}\n", "database.url", "path"),
    ("database: {url: 'postgresql://u:hunter2@db:99999/x'}\n", "database.url", "port"),
    ("database: {url: 'postgresql://db.example'}\n", "database.url", "database"),
    ("database: {pool_min: 5, pool_max: 2}\n", "database.pool_min", "pool_max"),
    ("database: {pool_max: 0}\n", "database.pool_max", "1 to 1000"),
    ("public_url: 'ftp://x'\n", "public_url", "http(s) URL"),
    ("cors_origins: 'http://x'\n", "cors_origins", "list"),
    ("cors_origins: ['http://x/app']\n", "cors_origins[0]", "no path"),
    ("cors_origins: ['*', 'www.example.com']\n", "cors_origins[1]", "origin"),
    ("max_body: 512\n", "max_body", "1.0 KiB to 16.0 MiB"),
    ("max_body: lots\n", "max_body", "size"),
    ("sessions: {ttl: 30s}\n", "sessions.ttl", "1m to 365d"),
    ("sessions: {ttl: forever}\n", "sessions.ttl", "duration"),
    ("sessions: {max_per_account: true}\n", "sessions.max_per_account", "boolean"),
    ("sessions: {max_per_account: '20'}\n", "sessions.max_per_account", "integer"),
    ("kdf: {n: 1000}\n", "kdf.n", "power of two"),
    ("kdf: {n: 4194304}\n", "kdf.n", "2 to 1048576"),
    ("kdf: {r: 0}\n", "kdf.r", "1 to 32"),
    ("kdf: {n: 1048576, r: 8}\n", "kdf", "128*r*n"),
    ("rate_limits: {enabled: 'yes please'}\n", "rate_limits.enabled", "true or false"),
    ("rate_limits: {signin_per_address: {rate: 0}}\n", "rate_limits.signin_per_address.rate", ""),
    ("rate_limits: {signup_per_address: {burst: 0}}\n", "rate_limits.signup_per_address.burst", ""),
    ("rate_limits: {signin_per_account: {rate: yes}}\n", "rate_limits.signin_per_account.rate", ""),
    ("rate_limits: {signin_per_account: 3}\n", "rate_limits.signin_per_account", "mapping"),
    ("plans: []\n", "plans", "at least one"),
    (f"plans: [{_plan()}, {_plan(name='B')}]\n", "plans[1].id", "duplicate"),
    (f"plans: [{_plan(id='Basic')}]\n", "plans[0].id", "[a-z0-9_-]"),
    (f"plans: [{_plan(name=None)}]\n", "plans[0].name", "required"),
    (f"plans: [{_plan(name=[])}]\n", "plans[0].name", "text"),
    (f"plans: [{_plan(max_streams=17)}]\n", "plans[0].max_streams", "1 to 16"),
    (f"plans: [{_plan(max_height=100)}]\n", "plans[0].max_height", "144 to 4320"),
    (f"plans: [{_plan(price_cents=-1)}]\n", "plans[0].price_cents", "integer"),
    (f"plans: [{_plan(currency='usd')}]\n", "plans[0].currency", "ISO 4217"),
    (f"plans: [{_plan(period_days=0)}]\n", "plans[0].period_days", "1 to 366"),
    (f"plans: [{_plan(colour='red')}]\n", "plans[0].colour", "unknown key"),
    ("plans: [null]\n", "plans[0]", "null"),
    ("profiles: {max_per_account: 21}\n", "profiles.max_per_account", "1 to 20"),
    ("playback: {signing_keys_file: /nonexistent/keys}\n", "playback.signing_keys_file", "exist"),
    ("playback: {signing_keys_file: '{bad_keys}'}\n", "playback.signing_keys_file", "bad.keys:2"),
    ("playback: {token_ttl: 8d}\n", "playback.token_ttl", "1m to 7d"),
    ("playback: {lease_ttl: 5s}\n", "playback.lease_ttl", "10s to 1h"),
    ("playback: {bind_client_ip: 1}\n", "playback.bind_client_ip", "true or false"),
    ("playback: {steering_url: 'http://x:8100?a=1'}\n", "playback.steering_url", "no query"),
    ("playback: {steering_public_url: '//x'}\n", "playback.steering_public_url", "URL"),
    ("playback: {steering_timeout: 0.01}\n", "playback.steering_timeout", "0.05s to 30s"),
    ("playback: {fallback_url: 'http://'}\n", "playback.fallback_url", "URL"),
    ("catalog_feed: {url: 'http://127.0.0.1:8000'}\n", "catalog_feed.credential_file", "required"),
    ("catalog_feed: {credential_file: '{short_token}'}\n", "catalog_feed.credential_file", "16"),
    ("catalog_feed: {interval: 0}\n", "catalog_feed.interval", "1s to 1d"),
    ("recommend: {interval: 30s}\n", "recommend.interval", "0 (off) or 1m to 30d"),
    ("recommend: {row_size: 0}\n", "recommend.row_size", "1 to 50"),
    ("recommend: {half_life_days: true}\n", "recommend.half_life_days", "boolean"),
    ("recommend: {min_support: 1.5}\n", "recommend.min_support", "integer"),
    ("log_level: verbose\n", "log_level", "debug, info"),
    ("- just a list\n", "(top level)", "mapping"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD)
def test_errors_name_file_and_key(tmp_path, text, key, fragment):
    text = text.replace("{bad_keys}", _key_file(tmp_path, generate_key_line("k1") + "\nk2\n"))
    text = text.replace("{short_token}", _token_file(tmp_path, "short\n"))
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    message = str(info.value)
    assert message.startswith(f"{f}: {key}: "), message
    assert fragment in message, message
    assert "hunter2" not in message


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
