"""The systemd units in systemd/: verified by systemd-analyze, hardened, and runnable as written.

Each unit is copied into a temporary directory with /opt/opencdn/current (the release the units
run, docs/install.md) rewritten to this checkout, so that its ExecStart= binary exists, and then:

- ``systemd-analyze verify`` has nothing to say about it;
- every hardening option of the table below is set, and ``systemd-analyze security --offline``
  rates its exposure at most MAX_EXPOSURE;
- every command it runs exists (``python -m MODULE SUBCOMMAND --help``), and its ExecStartPre
  check passes on the shipped example configuration (conf/*.example.yaml with its /etc, /var and
  /srv paths moved into the temporary directory);
- what the example configuration writes lies inside the unit's writable paths;
- the sysusers and tmpfiles files create the units' users and directories (in a scratch root
  given to systemd-sysusers and systemd-tmpfiles with --root, never on this machine).

Without systemd-analyze (Debian's systemd package; bin/test installs it) the tests skip with
the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.tokens import generate_key_line
from edge.units import parse_duration

from .conftest import ROOT, subprocess_env

SYSTEMD = ROOT / "systemd"
RELEASE = "/opt/opencdn/current"
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
TIMEOUT = 60.0
# systemd-analyze security: 0 is a perfectly sandboxed unit, 10 an unprotected one, "OK" below
# 2 ("MEDIUM" below 5). Network access, which every service here needs, accounts for 1.0.
MAX_EXPOSURE = 1.5

# Every long-running process of the product, and the unit that runs it.
SERVICES = {
    "opencdn-edge.service": ("edge", "serve"),
    "opencdn-origin.service": ("origin", "serve"),
    "opencdn-origin-worker.service": ("origin", "worker"),
    "opencdn-steering.service": ("steering", "serve"),
    "opencdn-control.service": ("control", "serve"),
}

# Options every service unit sets, with the value required (None: any value).
HARDENING: dict[str, str | None] = {
    "Type": "exec",
    "User": None,
    "Group": None,
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "KillSignal": "SIGTERM",
    "KillMode": "mixed",
    "TimeoutStopSec": None,
    "LimitNOFILE": None,
    "UMask": "0027",
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "PrivateMounts": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelLogs": "true",
    "ProtectControlGroups": "true",
    "ProtectClock": "true",
    "ProtectHostname": "true",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "true",
    "RestrictRealtime": "true",
    "RestrictSUIDSGID": "true",
    "RemoveIPC": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "CapabilityBoundingSet": "",
}
SYSCALL_FILTERS = ["@system-service", "~@privileged @resources"]

# What each unit's example configuration writes: (config file, key path) -> must be writable.
WRITES = {
    "opencdn-edge.service": ("edge", ["cache.dirs[*].path"]),
    "opencdn-origin.service": (
        "origin",
        ["storage.root", "catalog_db", "jobs.db", "ingest.work_dir"],
    ),
    "opencdn-origin-worker.service": (
        "origin",
        ["storage.root", "catalog_db", "jobs.db", "ingest.work_dir"],
    ),
    "opencdn-control.service": ("control", ["database.url"]),
    "opencdn-steering.service": ("steering", []),
}


@pytest.fixture(scope="module")
def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is not None:
        return exe
    reason = "systemd-analyze is missing (Debian's systemd package; bin/test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd lets many keys repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return parse_unit((SYSTEMD / name).read_text())["Service"]


def localized(tmp: Path) -> Path:
    """The units, with the release path pointing at this checkout."""
    out = tmp / "units"
    out.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace(RELEASE, str(ROOT))
        (out / name).write_text(text)
    return out


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# -- systemd-analyze ---------------------------------------------------------------------------


def test_every_long_running_process_has_a_unit():
    assert set(UNITS) == set(SERVICES)
    for name, (module, command) in SERVICES.items():
        argv = shlex.split(service(name)["ExecStart"][-1])
        assert argv[:4] == [f"{RELEASE}/.venv/bin/python", "-m", module, command], name


def test_verify_has_no_complaint(analyze: str, tmp_path: Path):
    units = localized(tmp_path)
    r = run(analyze, "verify", "--man=no", *sorted(units.iterdir()), cwd=units)
    assert r.returncode == 0, r.stderr
    # verify exits 0 even for unknown keys and unparsable values: every line it prints about
    # our units is a complaint.
    complaints = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if str(units) in line or any(name in line for name in UNITS)
    ]
    assert complaints == []


def test_security_exposure(analyze: str, tmp_path: Path):
    units = localized(tmp_path)
    scores = {}
    for name in UNITS:
        r = run(analyze, "security", "--offline=true", "--no-pager", units / name, cwd=units)
        assert r.returncode == 0, r.stderr
        m = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d) (\w+)", r.stdout)
        assert m, r.stdout[-2000:]
        scores[name] = (float(m.group(1)), m.group(2))
    print("systemd-analyze security --offline:", scores)
    for name, (exposure, rating) in scores.items():
        assert exposure <= MAX_EXPOSURE, (name, exposure, rating)
        assert rating in ("SAFE", "OK"), (name, exposure, rating)


# -- the unit files themselves -------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_hardening_options(name: str):
    svc = service(name)
    missing = [k for k in HARDENING if k not in svc]
    assert missing == [], f"{name} lacks {missing}"
    for key, want in HARDENING.items():
        if want is not None:
            assert svc[key][-1] == want, (name, key, svc[key])
    assert svc["User"][-1].startswith("opencdn-"), name
    assert svc["SystemCallFilter"] == SYSCALL_FILTERS, name
    assert int(svc["LimitNOFILE"][-1]) >= 65536, name
    install = parse_unit((SYSTEMD / name).read_text())["Install"]
    assert install["WantedBy"] == ["multi-user.target"], name


# systemd's defaults (DefaultStartLimitIntervalSec=, DefaultStartLimitBurst=).
START_LIMIT_DEFAULTS = ("10s", "5")


def start_limit_hit_at(interval: float, burst: int, restart: float, fails_after: float) -> int:
    """The start systemd refuses (start-limit-hit) when every start fails ``fails_after`` seconds
    in and is restarted ``restart`` seconds later; 0 when it never does. The start limit is
    ratelimit_below() of systemd's src/basic/ratelimit.c, applied to every start, restarts
    included."""
    begin, count, now = -1.0, 0, 0.0
    for attempt in range(1, 1000):
        if begin < 0 or now - begin > interval:
            begin, count = now, 1
        else:
            count += 1
            if count > burst:
                return attempt
        now += fails_after + restart
    return 0


def test_start_limit_model():
    # The defaults with a restart every 2 s: a start that fails at once is refused at the
    # sixth, one that takes a fifth of a second never is.
    assert start_limit_hit_at(10.0, 5, 2.0, 0.0) == 6
    assert start_limit_hit_at(10.0, 5, 2.0, 0.2) == 0


@pytest.mark.parametrize("name", UNITS)
def test_a_configuration_error_ends_at_the_start_limit(name: str):
    """RestartPreventExitStatus= does not apply to ExecStartPre= (systemd.service(5)): a
    check-config that fails (exit 2) is restarted like a crash. The start limit must end that
    after a few tries, however long the check takes, rather than retry it every RestartSec=
    forever (check-config takes 0.1-0.3 s)."""
    unit = parse_unit((SYSTEMD / name).read_text())["Unit"]
    interval = parse_duration(unit.get("StartLimitIntervalSec", [START_LIMIT_DEFAULTS[0]])[-1])
    burst = int(unit.get("StartLimitBurst", [START_LIMIT_DEFAULTS[1]])[-1])
    restart = parse_duration(service(name)["RestartSec"][-1])
    for fails_after in (0.0, 0.1, 0.2, 0.5, 1.0, 2.0):
        refused = start_limit_hit_at(interval, burst, restart, fails_after)
        assert 0 < refused <= burst + 1, (name, fails_after, interval, burst, restart)


@pytest.mark.parametrize("name", ["opencdn-origin.service", "opencdn-origin-worker.service"])
def test_origin_units_start_without_the_local_asset_root(name: str):
    """The worker runs "anywhere that reaches the bucket", and an origin on S3 has no local
    asset root: a ReadWritePaths= entry that does not exist fails the unit (226/NAMESPACE)
    unless it starts with "-"."""
    paths = [p for v in service(name).get("ReadWritePaths", []) for p in v.split()]
    assert paths, name
    assert all(p.startswith("-") for p in paths), (name, paths)


def test_edge_stop_timeout_outlasts_its_drain():
    """systemd must not kill an edge that is still finishing requests after TERM."""
    example = yaml.safe_load((ROOT / "conf" / "edge.example.yaml").read_text())
    drain = parse_duration(example["limits"]["drain_timeout"])
    stop = parse_duration(service("opencdn-edge.service")["TimeoutStopSec"][-1])
    assert stop >= drain + 10


def _writable(svc: dict[str, list[str]]) -> list[str]:
    paths = [p.lstrip("-") for v in svc.get("ReadWritePaths", []) for p in v.split()]
    paths += [f"/var/lib/{d}" for v in svc.get("StateDirectory", []) for d in v.split()]
    return paths


def _values(doc: object, key: str) -> list[str]:
    """Values at a dotted key path; "[*]" walks a list."""
    items = [doc]
    for part in key.split("."):
        star = part.endswith("[*]")
        part = part.removesuffix("[*]")
        items = [i[part] for i in items if isinstance(i, dict) and i.get(part) is not None]
        if star:
            items = [x for i in items for x in i]
    return [str(i) for i in items]


@pytest.mark.parametrize("name", UNITS)
def test_example_config_writes_only_inside_the_writable_paths(name: str):
    conf, keys = WRITES[name]
    text = (SYSTEMD / name).read_text()
    assert f"--config /etc/opencdn/{conf}.yaml" in text
    example = yaml.safe_load((ROOT / "conf" / f"{conf}.example.yaml").read_text())
    writable = _writable(service(name))
    for key in keys:
        values = _values(example, key)
        assert values, (conf, key)
        for value in values:
            path = value.removeprefix("sqlite:///")
            assert path.startswith("/"), (conf, key, value)
            assert any(path == w or path.startswith(w + "/") for w in writable), (
                f"{conf}.example.yaml {key} = {value} is not writable by {name} ({writable})"
            )


# -- the commands the units run ------------------------------------------------------------


def _commands(name: str) -> list[list[str]]:
    svc = service(name)
    return [shlex.split(v) for k in ("ExecStartPre", "ExecStart") for v in svc.get(k, [])]


@pytest.mark.parametrize("name", UNITS)
def test_every_command_exists(name: str):
    for argv in _commands(name):
        assert argv[0] == f"{RELEASE}/.venv/bin/python", argv
        assert argv[1] == "-m", argv
        r = run(sys.executable, "-m", argv[2], argv[3], "--help", cwd=ROOT)
        assert r.returncode == 0, (argv, r.stderr)
        for option in (a for a in argv[4:] if a.startswith("--")):
            assert option in r.stdout, (argv, option)
    reload = service(name).get("ExecReload")
    if reload is not None:
        assert reload == ["/bin/kill -HUP $MAINPID"], name


def _example_in(tmp: Path, conf: str) -> Path:
    """conf/<conf>.example.yaml with its absolute paths moved below ``tmp``, and the files it
    reads (keys, credentials) made there."""
    text = (ROOT / "conf" / f"{conf}.example.yaml").read_text()
    moves = {
        "/etc/opencdn/": tmp / "etc",
        "/var/cache/opencdn/": tmp / "cache",
        "/var/lib/": tmp / "lib",
        "/srv/opencdn/": tmp / "srv",
    }
    for old, new in moves.items():
        new.mkdir(exist_ok=True)
        text = text.replace(old, f"{new}/")
    for ref in sorted(set(re.findall(rf"{re.escape(str(tmp / 'etc'))}/[\w.-]+", text))):
        path = Path(ref)
        if path.name.endswith(".keys"):
            path.write_text(generate_key_line("k1") + "\n")
        else:
            path.write_text("token-for-the-example-config-0123456789\n")
    path = tmp / "etc" / f"{conf}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_pre_accepts_the_example_config(name: str, tmp_path: Path):
    conf, _ = WRITES[name]
    config = _example_in(tmp_path, conf)
    pre = service(name)["ExecStartPre"]
    assert len(pre) == 1, name
    argv = shlex.split(pre[0].replace(RELEASE, str(ROOT)))
    assert argv[argv.index("--config") + 1] == f"/etc/opencdn/{conf}.yaml"
    argv[argv.index("--config") + 1] = str(config)
    r = run(*argv, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("configuration ok"), r.stdout


# -- users and directories -----------------------------------------------------------------


def test_sysusers_and_tmpfiles_make_the_users_and_directories(analyze: str, tmp_path: Path):
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    assert sysusers is not None and tmpfiles is not None  # same package as systemd-analyze
    root = tmp_path / "root"
    for kind in ("sysusers", "tmpfiles"):
        d = root / "etc" / f"{kind}.d"
        d.mkdir(parents=True)
        for f in SYSTEMD.glob(f"*.{kind}.conf"):
            shutil.copy(f, d / f.name.replace(f".{kind}.conf", ".conf"))
    r = run(sysusers, f"--root={root}")
    assert r.returncode == 0 and "ignoring" not in r.stderr, r.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    for name in UNITS:
        user = service(name)["User"][-1]
        assert user in users, (name, user)
        assert users[user][6] == "/usr/sbin/nologin"
    r = run(tmpfiles, f"--root={root}", "--create")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    origin_uid = int(users["opencdn-origin"][2])
    for d in ("srv/opencdn/assets", "srv/opencdn/incoming"):
        st = (root / d).stat()
        assert st.st_uid == origin_uid, d
    assert (root / "var/cache/opencdn").stat().st_uid == 0  # mount points stay root's


# -- the install guide's cache disks -----------------------------------------------------------

FSTAB_GENERATOR = "systemd/system-generators/systemd-fstab-generator"


def _mount_unit_name(where: str) -> str:
    """systemd-escape --path --suffix=mount, for the plain paths of the guide."""
    return where.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def test_install_guide_mounts_the_cache_disks_before_the_edge_starts(analyze: str, tmp_path: Path):
    """docs/install.md's fstab lines, through systemd's own fstab generator: each cache mount is
    ordered before opencdn-edge.service. `nofail` alone drops the mount's ordering before
    local-fs.target, so the edge's After=local-fs.target does not wait for it, and at boot the
    edge could start on empty, root-owned mount points and take every disk for dead."""
    generator = next(
        (
            p / FSTAB_GENERATOR
            for p in (Path("/usr/lib"), Path("/lib"))
            if (p / FSTAB_GENERATOR).exists()
        ),
        None,
    )
    if generator is None:
        reason = "systemd-fstab-generator is missing (Debian's systemd package)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    guide = (ROOT / "docs" / "install.md").read_text()
    lines = re.findall(r"^echo '([^']+)' >> /etc/fstab$", guide, re.M)
    assert lines, "no fstab line in docs/install.md"
    fstab = tmp_path / "fstab"
    fstab.write_text("\n".join(lines) + "\n")
    out = tmp_path / "generated"
    out.mkdir()
    r = subprocess.run(
        [str(generator), str(out), str(out), str(out)],
        env={**subprocess_env(), "SYSTEMD_FSTAB": str(fstab)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    for line in lines:
        where, options = line.split()[1], line.split()[3].split(",")
        assert where.startswith("/var/cache/opencdn/"), line
        assert "nofail" in options, line  # a dead disk must not stop the boot
        unit = parse_unit((out / _mount_unit_name(where)).read_text())["Unit"]
        before = [u for v in unit.get("Before", []) for u in v.split()]
        assert "opencdn-edge.service" in before, (line, unit)
