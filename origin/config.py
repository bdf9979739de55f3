"""Typed, frozen configuration of the origin, loaded once from YAML and validated.

Every error names the file (or flag) and the dotted key, like the edge's. Relative
paths resolve against the directory the origin starts in. An empty file means
every default: local storage under ``var/origin``, listening on 127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import Listen, parse_listen
from edge.units import UnitError, parse_duration, parse_size
from edge.yamlconfig import KeyChecker, read_yaml


class ConfigError(ValueError):
    """An invalid origin configuration; the message names the source and the key."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    backend: str = "local"  # "local" | "s3"
    root: Path = Path("var/origin/assets")  # local: the asset root
    bucket: str = ""  # s3
    prefix: str = ""  # s3: key prefix inside the bucket
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph RGW)
    access_key_id: str | None = None  # none: boto3's usual chain (env, instance role)
    secret_access_key_file: Path | None = None

    def spec(self) -> dict[str, object]:
        """The mapping ``origin.storage.open_storage`` takes."""
        if self.backend == "local":
            return {"backend": "local", "root": str(self.root)}
        secret = None
        if self.secret_access_key_file is not None:
            secret = _first_line(self.secret_access_key_file)
        return {
            "backend": "s3",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "access_key_id": self.access_key_id,
            "secret_access_key": secret,
        }


@dataclass(frozen=True, slots=True)
class IngestConfig:
    work_dir: Path = Path("var/origin/work")  # scratch space for encodes (local disk)
    ladder_file: Path | None = None  # YAML ladder; default: origin.ladder.DEFAULT_LADDER
    preset: str = "veryfast"  # x264 preset
    segment_seconds: float = 4.0
    parallel: int = 0  # renditions encoded at once; 0 = the machine's cores
    retries: int = 1  # extra attempts per failed rendition


@dataclass(frozen=True, slots=True)
class JobsConfig:
    db: Path = Path("var/origin/jobs.sqlite")
    lease: float = 60.0  # seconds a worker holds a job without a heartbeat
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class OriginConfig:
    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 8000))
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Tokens edges send as "Authorization: Bearer ..."; one per line, all accepted, so a
    # credential rotates by adding the new line, updating the edges, then removing the old.
    fill_credentials_file: Path | None = None
    # Tokens the control plane uses to read the catalog feed; same format.
    catalog_credentials_file: Path | None = None
    catalog_db: Path = Path("var/origin/catalog.sqlite")
    metadata_ttl: float = 5.0  # seconds object metadata is cached
    ingest: IngestConfig = field(default_factory=IngestConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    log_level: str = "info"
    access_log: bool = True


def _first_line(path: Path) -> str:
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"{path}: empty")


def read_tokens(path: Path) -> list[str]:
    """Credentials, one per line; '#' comments and blank lines ignored."""
    tokens = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < 16 or any(c.isspace() or ord(c) < 33 for c in line):
            raise ValueError(f"{path}:{n}: a credential is >= 16 printable characters, no spaces")
        tokens.append(line)
    if not tokens:
        raise ValueError(f"{path}: no credentials")
    return tokens


class _Reader(KeyChecker):
    def section(self, raw: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        return self.mapping(raw, key, allowed)

    def string(self, d: Mapping[str, Any], key: str, name: str, default: str) -> str:
        v = d.get(name, default)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {v!r}")
        return v

    def path(self, d: Mapping[str, Any], key: str, name: str, default: Path | None) -> Path | None:
        v = d.get(name)
        if v is None:
            return Path(os.path.abspath(default)) if default is not None else None
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"expected a path, got {v!r}")
        return Path(os.path.abspath(v))

    def file(self, d: Mapping[str, Any], key: str, name: str) -> Path | None:
        p = self.path(d, key, name, None)
        if p is not None and not os.access(p, os.R_OK):
            raise self.fail(key, f"{p} does not exist or is not readable")
        return p

    def seconds(
        self, d: Mapping[str, Any], key: str, name: str, default: float, lo: float, hi: float
    ) -> float:
        v = d.get(name, default)
        try:
            if isinstance(v, bool):
                raise UnitError("not a duration", value=v)
            n = parse_duration(v) if isinstance(v, str) else float(v)
        except (UnitError, ValueError, TypeError):
            raise self.fail(key, f"expected a number or duration, got {v!r}") from None
        if not lo <= n <= hi:
            raise self.fail(key, f"expected {lo:g} to {hi:g}, got {n:g}")
        return n

    def integer(
        self, d: Mapping[str, Any], key: str, name: str, default: int, lo: int, hi: int
    ) -> int:
        v = d.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer from {lo} to {hi}, got {v!r}")
        return v


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> OriginConfig:
    source, raw = read_yaml(path, ConfigError)
    r = _Reader(source, ConfigError)
    top = dict(
        r.section(
            raw,
            "",
            (
                "listen",
                "storage",
                "fill_credentials_file",
                "catalog_credentials_file",
                "catalog_db",
                "metadata_ttl",
                "ingest",
                "jobs",
                "log_level",
                "access_log",
            ),
        )
    )
    for k, v in (overrides or {}).items():
        if "." in k:
            sec, name = k.split(".", 1)
            top[sec] = {**(top.get(sec) or {}), name: v}
        else:
            top[k] = v

    try:
        listen = parse_listen(r.string(top, "listen", "listen", "127.0.0.1:8000"))
    except ValueError as exc:
        raise r.fail("listen", str(exc)) from None

    s = r.section(
        top.get("storage"),
        "storage",
        (
            "backend",
            "root",
            "bucket",
            "prefix",
            "region",
            "endpoint_url",
            "access_key_id",
            "secret_access_key_file",
        ),
    )
    backend = r.string(s, "storage.backend", "backend", "local")
    if backend not in ("local", "s3"):
        raise r.fail("storage.backend", f'expected "local" or "s3", got {backend!r}')
    bucket = r.string(s, "storage.bucket", "bucket", "")
    if backend == "s3" and not bucket:
        raise r.fail("storage.bucket", "required for the s3 backend")
    endpoint = s.get("endpoint_url")
    if endpoint is not None and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        raise r.fail("storage.endpoint_url", f"expected an http(s) URL, got {endpoint!r}")
    storage = StorageConfig(
        backend=backend,
        root=r.path(s, "storage.root", "root", Path("var/origin/assets"))
        or Path("var/origin/assets"),
        bucket=bucket,
        prefix=r.string(s, "storage.prefix", "prefix", "").strip("/"),
        region=s.get("region"),
        endpoint_url=endpoint,
        access_key_id=s.get("access_key_id"),
        secret_access_key_file=r.file(
            s, "storage.secret_access_key_file", "secret_access_key_file"
        ),
    )

    i = r.section(
        top.get("ingest"),
        "ingest",
        ("work_dir", "ladder_file", "preset", "segment_seconds", "parallel", "retries"),
    )
    preset = r.string(i, "ingest.preset", "preset", "veryfast")
    presets = (
        "ultrafast",
        "superfast",
        "veryfast",
        "faster",
        "fast",
        "medium",
        "slow",
        "slower",
        "veryslow",
    )
    if preset not in presets:
        raise r.fail("ingest.preset", f"expected one of {', '.join(presets)}, got {preset!r}")
    ingest = IngestConfig(
        work_dir=r.path(i, "ingest.work_dir", "work_dir", Path("var/origin/work")) or Path(),
        ladder_file=r.file(i, "ingest.ladder_file", "ladder_file"),
        preset=preset,
        segment_seconds=r.seconds(i, "ingest.segment_seconds", "segment_seconds", 4.0, 1.0, 20.0),
        parallel=r.integer(i, "ingest.parallel", "parallel", 0, 0, 64),
        retries=r.integer(i, "ingest.retries", "retries", 1, 0, 5),
    )
    j = r.section(top.get("jobs"), "jobs", ("db", "lease", "max_attempts"))
    jobs = JobsConfig(
        db=r.path(j, "jobs.db", "db", Path("var/origin/jobs.sqlite")) or Path(),
        lease=r.seconds(j, "jobs.lease", "lease", 60.0, 1.0, 3600.0),
        max_attempts=r.integer(j, "jobs.max_attempts", "max_attempts", 3, 1, 20),
    )
    level = r.string(top, "log_level", "log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise r.fail("log_level", f"expected debug, info, warning or error, got {level!r}")
    access_log = top.get("access_log", True)
    if not isinstance(access_log, bool):
        raise r.fail("access_log", f"expected true or false, got {access_log!r}")
    config = OriginConfig(
        listen=listen,
        storage=storage,
        fill_credentials_file=r.file(top, "fill_credentials_file", "fill_credentials_file"),
        catalog_credentials_file=r.file(
            top, "catalog_credentials_file", "catalog_credentials_file"
        ),
        catalog_db=r.path(top, "catalog_db", "catalog_db", Path("var/origin/catalog.sqlite"))
        or Path(),
        metadata_ttl=r.seconds(top, "metadata_ttl", "metadata_ttl", 5.0, 0.0, 3600.0),
        ingest=ingest,
        jobs=jobs,
        log_level=level,
        access_log=access_log,
    )
    for key in ("fill_credentials_file", "catalog_credentials_file"):
        p = getattr(config, key)
        if p is not None:
            try:
                read_tokens(p)
            except ValueError as exc:
                raise r.fail(key, str(exc)) from None
    return config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration (default: built-in)")
    parser.add_argument(
        "-a", "--listen", help="HOST:PORT to serve edges on (default 127.0.0.1:8000)"
    )
    parser.add_argument("--root", help="local asset root (storage.backend local)")
    parser.add_argument("--fill-credentials-file", help="file of accepted edge fill tokens")


def config_from_args(args: argparse.Namespace) -> OriginConfig:
    overrides: dict[str, object] = {}
    if getattr(args, "listen", None):
        overrides["listen"] = args.listen
    if getattr(args, "root", None):
        overrides["storage.root"] = args.root
    if getattr(args, "fill_credentials_file", None):
        overrides["fill_credentials_file"] = args.fill_credentials_file
    return load_config(args.config, overrides)


__all__ = [
    "ConfigError",
    "IngestConfig",
    "JobsConfig",
    "OriginConfig",
    "StorageConfig",
    "add_config_arguments",
    "config_from_args",
    "load_config",
    "parse_size",
    "read_tokens",
]
