"""The fleet's I/O shell: prepare the data directory, start, watch and stop the services.

``run`` does, in order (each step logged as one ``event=...`` line on stderr):

1. takes the data directory's lock (one fleet per data directory), creates its layout, the
   secrets on first start (random tokens and signing keys, mode 0600; kept afterwards), and
   writes every service's configuration file from the fleet description (services.py), which
   each service's own loader then checks, so a mistake is reported before anything starts;
2. checks that every address is free, so a port in use is named with its service at once;
3. first start: creates the control plane's administrator (``python -m control
   create-admin``);
4. starts the origin, steering, the control plane and the edges (``python -m <service> serve
   --config ...``), each in its own process group with its output in ``logs/<service>.log``;
   on first start makes the sample source with ffmpeg's test sources and starts its ingest
   (``python -m origin ingest``) meanwhile; waits for every ``/healthz``: a child that dies
   meanwhile stops everything with its name, its log file and the log's last lines;
5. waits for the ingest, has the control plane read the origin's catalog feed, makes the demo
   account (signed up, subscribed, its invoice paid by the administrator) on first start,
   writes ``fleet.json`` (pids, URLs, logs: for scripts and tests) and prints what to open;
6. keeps a status line until SIGINT, SIGTERM or SIGHUP, then TERMs every process group it
   made, waits up to ``stop_timeout`` and KILLs what is left (another Ctrl-C kills at once),
   and exits 0.

A service that dies after start is reported (``event=service_exited``) and shown in the
status line; the others keep running (a test may kill an edge on purpose).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from .config import FleetConfig
from .services import SECRETS, Layout, Service, addr, banner, format_status, ladder_doc, services

log = logging.getLogger("fleet")

HEALTH_TIMEOUT = 2.0  # seconds one /healthz may take before the service counts as down
TAIL_LINES = 15  # log lines shown when a service fails to start
SIGNED_TTL = 86400  # the printed master.m3u8 URL's validity
API_TIMEOUT = 30.0  # seconds one control-plane call may take
NO_DEADLINE = 24 * 3600.0  # for work that takes as long as it takes: only Ctrl-C stops it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed
PR_SET_PDEATHSIG = 1
# Looked up in the parent: the child between fork and exec must not import or load anything.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class FleetError(Exception):
    """Something the operator must fix; the message names the service and its log."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop cleanly."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    service: Service | None = None
    reported: bool = False  # its exit was logged


@dataclass
class Fleet:
    cfg: FleetConfig
    config_path: str
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    python: str = sys.executable
    lay: Layout = field(init=False)
    children: list[Child] = field(default_factory=list)
    signals: int = 0
    groups: list[int] = field(default_factory=list)  # every process group it made
    _lock: IO[str] | None = None

    def __post_init__(self) -> None:
        self.lay = Layout(self.cfg.data_dir)
        self.services = services(self.cfg, self.lay)
        # No proxy for loopback health checks and API calls, whatever the environment says.
        self.http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> int:
        t0 = time.monotonic()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        code = 0
        try:
            self.lock()
            self.prepare()
            self.check_ports()
            reused = self.lay.published(self.cfg.sample.title).exists()
            self.ensure_admin()
            for s in self.services:
                self.start_service(s)
            # The sample's encode runs while the services come up.
            ingest = None if reused else self.start_ingest()
            self.wait_healthy()
            if ingest is None:
                log.info("event=sample_reused title=%s", self.cfg.sample.title)
            else:
                self.wait_ingest(ingest)
            password = self.setup_accounts()
            elapsed = time.monotonic() - t0
            self.write_state(ready=True)
            print(self.ready_banner(elapsed, password), file=self.out, flush=True)
            log.info("event=fleet_ready seconds=%.1f reused=%s", elapsed, str(reused).lower())
            self.watch()
        except Interrupted:
            pass
        except FleetError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            self.stop_all()
            if self._lock is not None:  # not another fleet's state file
                with contextlib.suppress(OSError):
                    self.lay.state.unlink()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("event=fleet_stopped code=%d", code)
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a counter: the loops look at it between steps, so no step is cut in half (a
        # child forked but not yet recorded would be left running).
        self.signals += 1

    def check_stop(self) -> None:
        if self.signals:
            raise Interrupted

    def pause(self, seconds: float) -> None:
        self.check_stop()
        time.sleep(seconds)
        self.check_stop()

    # -- the data directory ----------------------------------------------------------------

    def lock(self) -> None:
        self.lay.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(self.lay.lock, "a+")  # noqa: SIM115 - held for the fleet's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise FleetError(
                f"another fleet is running on {self.lay.root} (its lock {self.lay.lock} is held)"
            ) from None
        self._lock = f

    def prepare(self) -> None:
        lay = self.lay
        for d in (lay.conf, lay.logs, lay.origin, lay.control, lay.steering):
            d.mkdir(parents=True, exist_ok=True)
        lay.secrets.mkdir(mode=0o700, exist_ok=True)
        for e in self.cfg.edges:
            lay.edge(e.id).mkdir(parents=True, exist_ok=True)
        made = [name for name in SECRETS if self._secret(name)]
        if made:
            log.info("event=secrets_created files=%s dir=%s", ",".join(made), lay.secrets)
        _write_yaml(lay.ladder, ladder_doc(self.cfg))
        for s in self.services:
            _write_yaml(lay.config(s.name), dict(s.doc))
        self.check_generated()

    def _secret(self, name: str) -> bool:
        """Create the secret file if it is missing (never overwrite: keys and tokens stay)."""
        path = self.lay.secret(name)
        if path.exists() and path.stat().st_size > 0:
            return False
        if name == "signing.keys":
            from edge.tokens import generate_key_line  # what `python -m edge keygen` prints

            text = generate_key_line("k1") + "\n"
        elif name.endswith(".password"):
            text = secrets.token_urlsafe(12) + "\n"
        else:
            text = secrets.token_urlsafe(32) + "\n"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return True

    def check_generated(self) -> None:
        """Each service's own loader on the file written for it: a value the fleet file let
        through but the service refuses is reported now, naming the generated file."""
        from control.config import load_config as control_config
        from edge.config import load_config as edge_config
        from origin.config import load_config as origin_config
        from origin.ladder import load_ladder
        from steering.config import load_config as steering_config

        loaders: dict[str, Callable[[Path], object]] = {
            "origin": origin_config,
            "control": control_config,
            "steering": steering_config,
            "edge": edge_config,
        }
        try:
            load_ladder(self.lay.ladder)
            for s in self.services:
                loaders[s.kind](self.lay.config(s.name))
        except ValueError as exc:
            raise FleetError(f"a generated configuration is refused: {exc}") from None

    def check_ports(self) -> None:
        for s in self.services:
            for key, listen in s.listens:
                family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    # As the services bind: a port in TIME_WAIT is usable, one in use is not.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind((listen.host, listen.port))
                    except OSError as exc:
                        raise FleetError(
                            f"{s.name}: cannot listen on {addr(listen)} ({exc.strerror}); "
                            f"is another fleet or program using it? ({key} in "
                            f"{self.cfg.source})"
                        ) from None

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], log_path: Path) -> Child:
        self.check_stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            out.write(f"--- {stamp} fleet: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own process group: the terminal's Ctrl-C reaches the fleet alone, which
                # then stops every group in order (and a group takes ffmpeg children along).
                process_group=0,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        self.groups.append(proc.pid)  # its group's id (process_group=0)
        child = Child(name, proc, log_path)
        self.children.append(child)
        log.info("event=process_started name=%s pid=%d log=%s", name, proc.pid, log_path)
        return child

    def prune_groups(self) -> None:
        """Forget the groups that are empty now: their ids may be reused by other programs'
        groups later, which stop_all must not signal."""
        self.groups = [g for g in self.groups if _group_exists(g)]

    def start_service(self, s: Service) -> None:
        argv = [self.python, "-m", s.module, "serve", "--config", str(self.lay.config(s.name))]
        child = self.spawn(s.name, argv, self.lay.log(s.name))
        child.service = s

    def died(self, child: Child, what: str) -> FleetError:
        code = child.proc.returncode
        return FleetError(
            f"{child.name} {what} (exit status {code}); its log is {child.log}:\n"
            + _tail(child.log, TAIL_LINES)
        )

    def wait_for(
        self, pred: Callable[[], bool], what: str, timeout: float, watch: Sequence[Child]
    ) -> None:
        """Until ``pred()``; a watched child that exits meanwhile is an error naming it."""
        deadline = time.monotonic() + timeout
        while True:
            for c in watch:
                if c.proc.poll() is not None:
                    raise self.died(c, "exited while the fleet was starting")
            if pred():
                return
            self.prune_groups()
            if time.monotonic() > deadline:
                raise FleetError(f"timed out after {timeout:g} s waiting for {what}")
            self.pause(0.1)

    def service_children(self) -> list[Child]:
        return [c for c in self.children if c.service is not None]

    def wait_healthy(self) -> None:
        pending = {c.name: c for c in self.service_children()}

        def all_ok() -> bool:
            for name, c in list(pending.items()):
                assert c.service is not None
                if self.health(c.service.health_url) in ("ok", "degraded"):
                    log.info("event=service_ready name=%s url=%s", name, c.service.health_url)
                    del pending[name]
            return not pending

        try:
            self.wait_for(
                all_ok, "the services' /healthz", self.cfg.start_timeout, self.service_children()
            )
        except FleetError as exc:
            if pending and "timed out" in str(exc):
                names = ", ".join(f"{n} (log {c.log})" for n, c in pending.items())
                raise FleetError(f"{exc}: not healthy: {names}") from None
            raise

    def health(self, url: str) -> str:
        """``ok``, ``degraded``, ``draining`` (what the service says), ``HTTP 503``, ``down``."""
        try:
            with self.http.open(url, timeout=HEALTH_TIMEOUT) as r:
                body = r.read(65536)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError):
            return "down"
        try:
            doc = json.loads(body)
        except ValueError:
            return "ok"
        state = doc.get("state", doc.get("status", "ok")) if isinstance(doc, dict) else "ok"
        return str(state)

    def stop_all(self) -> None:
        """TERM every process group it made (the edges first), wait, KILL what is left.

        Every group, also those whose leader has exited (an ingest killed, a helper done):
        what the leader started may still run in it. A signal that arrives meanwhile (Ctrl-C
        again, or the first one when stopping after an error) kills at once."""
        alive = [c for c in self.children if c.proc.poll() is None]
        if not self.groups:
            return
        log.info("event=fleet_stopping processes=%d", len(alive))
        for pgid in reversed(self.groups):
            _signal_group(pgid, signal.SIGTERM)
        seen = self.signals
        deadline = time.monotonic() + self.cfg.stop_timeout
        while time.monotonic() < deadline and self.signals == seen:
            if all(c.proc.poll() is not None for c in alive):
                break
            time.sleep(0.05)
        for c in alive:
            if c.proc.poll() is None:
                log.warning("event=process_killed name=%s pid=%d", c.name, c.proc.pid)
        for pgid in self.groups:  # what is left in any group, leader or not
            _signal_group(pgid, signal.SIGKILL)
        for c in alive:
            c.proc.wait()
            log.info("event=process_stopped name=%s code=%d", c.name, c.proc.returncode)
        self.groups.clear()

    # -- the sample title ------------------------------------------------------------------

    def start_ingest(self) -> Child:
        """Make the sample source with ffmpeg's test sources (once), then start its ingest."""
        from origin.ffmpeg import ffmpeg_exe

        s = self.cfg.sample
        src = self.lay.sample_source
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            tmp = src.with_name("source.tmp.mp4")
            t0 = time.monotonic()
            # A test pattern with a moving clock and a 440 Hz tone; encoded near-losslessly
            # and fast, since the ladder's encodes are what matter.
            argv = [
                ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
                "-f", "lavfi", "-i", f"testsrc2=size={s.width}x{s.height}:rate={s.fps}",
                "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                "-t", f"{s.duration:g}", "-pix_fmt", "yuv420p",
                "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16",
                "-c:a", "aac", "-b:a", "128k", str(tmp),
            ]  # fmt: skip
            gen = self.spawn("sample-source", argv, self.lay.log("ingest"))
            # Up to 600 s of a big picture on a slow machine: no deadline but Ctrl-C.
            self.wait_for(lambda: gen.proc.poll() is not None, "the sample source", NO_DEADLINE, [])
            self.children.remove(gen)
            if gen.proc.returncode != 0:
                raise self.died(gen, "could not make the sample source")
            os.replace(tmp, src)
            log.info("event=sample_source_made path=%s seconds=%.1f", src, time.monotonic() - t0)
        argv = [
            self.python, "-m", "origin", "ingest", str(src), "--title", s.title,
            "--config", str(self.lay.config("origin")),
        ]  # fmt: skip
        return self.spawn("ingest", argv, self.lay.log("ingest"))

    def wait_ingest(self, ingest: Child) -> None:
        t0 = time.monotonic()
        # An ingest of a long sample on a slow machine takes a while: no deadline but Ctrl-C.
        self.wait_for(
            lambda: ingest.proc.poll() is not None,
            "the ingest",
            NO_DEADLINE,
            self.service_children(),
        )
        self.children.remove(ingest)
        if ingest.proc.returncode != 0 or not self.lay.published(self.cfg.sample.title).exists():
            raise self.died(ingest, "failed to ingest the sample title")
        log.info(
            "event=sample_ingested title=%s seconds=%.1f",
            self.cfg.sample.title,
            time.monotonic() - t0,
        )

    # -- accounts --------------------------------------------------------------------------

    def accounts(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.lay.accounts.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def save_accounts(self, doc: dict[str, Any]) -> None:
        _write_atomic(self.lay.accounts, json.dumps(doc, indent=2) + "\n")

    def ensure_admin(self) -> None:
        """The control plane's administrator, made by its CLI before it serves (first start)."""
        demo = self.cfg.demo
        if self.accounts().get("admin") == demo.admin_email:
            return
        argv = [
            self.python, "-m", "control", "create-admin", "--config",
            str(self.lay.config("control")), "--email", demo.admin_email,
            "--password-file", str(self.lay.secret("admin.password")),
        ]  # fmt: skip
        child = self.spawn("create-admin", argv, self.lay.log("control"))
        self.wait_for(
            lambda: child.proc.poll() is not None, "create-admin", self.cfg.start_timeout, []
        )
        self.children.remove(child)
        # A start interrupted after this step: the account exists already, which is fine.
        if child.proc.returncode != 0 and "already exists" not in _tail(child.log, 3):
            raise self.died(child, "could not create the administrator")
        self.save_accounts({**self.accounts(), "admin": demo.admin_email})

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str = ""
    ) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.cfg.control_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")

        def send() -> tuple[int, bytes]:
            try:
                with self.http.open(req, timeout=API_TIMEOUT) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        try:
            status, raw = self.interruptible(send)
        except OSError as exc:
            raise FleetError(f"control plane unreachable ({method} {path}): {exc}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def call(
        self, want: int, method: str, path: str, body: dict[str, Any] | None = None, token: str = ""
    ) -> Any:
        status, doc = self.api(method, path, body, token)
        if status != want:
            err = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
            raise FleetError(
                f"control plane: {method} {path} answered {status}"
                + (f" ({err})" if err else "")
                + f"; its log is {self.lay.log('control')}"
            )
        return doc

    def interruptible(self, fn: Callable[[], tuple[int, bytes]]) -> tuple[int, bytes]:
        """``fn()`` in a thread, checking for a stop signal meanwhile: Ctrl-C stops at once
        rather than when the call ends (a blocked call is retried by Python after a signal,
        up to its timeout). Not retried here: a POST sent twice may make two of something.
        Left running when interrupted (a daemon thread; stopping the control plane ends it)."""
        result: list[tuple[int, bytes]] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                result.append(fn())
            except BaseException as exc:  # handed to the caller
                error.append(exc)

        t = threading.Thread(target=target, name="fleet-api", daemon=True)
        t.start()
        while t.is_alive():
            self.check_stop()
            t.join(0.1)
        if error:
            raise error[0]
        return result[0]

    def signin(self, email: str, password: str) -> str:
        doc = self.call(
            201, "POST", "/v1/sessions", {"email": email, "password": password, "device": "fleet"}
        )
        return str(doc["token"])

    def setup_accounts(self) -> str:
        """Catalog sync and the demo viewer (first start); the demo password."""
        demo = self.cfg.demo
        admin_pw = _read_secret(self.lay.secret("admin.password"))
        demo_pw = _read_secret(self.lay.secret("demo.password"))
        admin = self.signin(demo.admin_email, admin_pw)
        # Read the origin's catalog feed now rather than at the next poll, and rebuild the
        # home rows, so the sample title is on the home page at once.
        synced = self.call(200, "POST", "/v1/admin/catalog/sync", token=admin)
        self.call(200, "POST", "/v1/admin/recompute", token=admin)
        log.info("event=catalog_synced applied=%s seq=%s", synced.get("applied"), synced.get("seq"))
        if self.accounts().get("demo") == demo.email:
            return demo_pw
        status, doc = self.api(
            "POST", "/v1/accounts", {"email": demo.email, "password": demo_pw, "name": "Demo"}
        )
        if status == 201:
            token = str(doc["token"])
        elif status == 409:  # made by a start that was interrupted before recording it
            token = self.signin(demo.email, demo_pw)
        else:
            raise FleetError(f"control plane: sign-up of the demo account answered {status}")
        sub = self.call(200, "GET", "/v1/subscription", token=token)
        if sub.get("subscription") is None:
            sub = self.call(201, "POST", "/v1/subscription", {"plan_id": demo.plan}, token=token)
        invoice = sub.get("invoice")
        if invoice is not None and invoice.get("status") == "open":
            self.call(
                200,
                "POST",
                f"/v1/admin/invoices/{invoice['id']}/paid",
                {"reference": "fleet demo"},
                token=admin,
            )
        self.save_accounts({**self.accounts(), "demo": demo.email})
        log.info("event=demo_account_created email=%s plan=%s", demo.email, demo.plan)
        return demo_pw

    # -- ready -----------------------------------------------------------------------------

    def master_url(self) -> str:
        from edge.tokens import load_keys, sign, signed_path

        prefix = f"/v/{self.cfg.sample.title}/"
        keys = load_keys(self.lay.secret("signing.keys"))
        token = sign(keys, prefix, int(time.time()) + SIGNED_TTL)
        return self.cfg.edges[0].url + signed_path(token, prefix) + "master.m3u8"

    def first_segment(self) -> str | None:
        """A media segment of the sample (relative to its directory), for the curl example."""
        try:
            doc = json.loads(self.lay.published(self.cfg.sample.title).read_text())
            names = [f["path"] for f in doc.get("files", []) if isinstance(f, dict)]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        video = [n for n in names if str(n).endswith(".m4s") and not str(n).startswith("audio")]
        return str(sorted(video)[0]) if video else None

    def ready_banner(self, elapsed: float, demo_password: str) -> str:
        return banner(
            self.cfg,
            self.lay,
            elapsed=elapsed,
            master_url=self.master_url(),
            segment=self.first_segment(),
            demo_password=demo_password,
            config_path=self.config_path,
        )

    def write_state(self, *, ready: bool) -> None:
        doc = {
            "pid": os.getpid(),
            "ready": ready,
            "config": self.config_path,
            "control_url": self.cfg.control_url,
            "steering_url": self.cfg.steering_url,
            "origin_url": self.cfg.origin_url,
            "sample_title": self.cfg.sample.title,
            "demo_email": self.cfg.demo.email,
            "demo_password_file": str(self.lay.secret("demo.password")),
            "signing_keys_file": str(self.lay.secret("signing.keys")),
            "services": {
                c.name: {
                    "pid": c.proc.pid,
                    "kind": c.service.kind,
                    "health_url": c.service.health_url,
                    "log": str(c.log),
                    "config": str(self.lay.config(c.name)),
                }
                for c in self.service_children()
                if c.service is not None
            },
        }
        _write_atomic(self.lay.state, json.dumps(doc, indent=2) + "\n")

    def watch(self) -> None:
        """The status line until a signal; a service that dies is reported once."""
        tty = self.out.isatty()
        last = ""
        while True:
            states = []
            for c in self.service_children():
                assert c.service is not None
                if c.proc.poll() is not None:
                    if not c.reported:
                        c.reported = True
                        if tty:
                            print(file=self.out)
                        log.error(
                            "event=service_exited name=%s code=%d log=%s",
                            c.name,
                            c.proc.returncode,
                            c.log,
                        )
                    states.append((c.name, f"exited({c.proc.returncode})"))
                else:
                    states.append((c.name, self.health(c.service.health_url)))
                self.check_stop()
            self.prune_groups()
            line = format_status(states)
            if tty:
                # Rewritten in place; padded so a shorter line hides the previous one.
                print("\r" + line.ljust(len(last)), end="", file=self.out, flush=True)
            elif line.split("  ", 1)[1] != last.split("  ", 1)[-1]:
                print(line, file=self.out, flush=True)
            last = line
            deadline = time.monotonic() + self.cfg.status_interval
            while time.monotonic() < deadline:
                if self.signals:
                    if tty:  # the stop's log lines start on a line of their own
                        print(file=self.out, flush=True)
                    raise Interrupted
                time.sleep(min(0.2, self.cfg.status_interval))


def status(cfg: FleetConfig, out: IO[str]) -> int:
    """Each service's health, for a fleet already running; 0 when all answer ok.

    The addresses come from the running fleet's ``fleet.json`` in the data directory when
    there is one (it may have been started with other ``--set`` values), else from the file.
    """
    fleet = Fleet(cfg, cfg.source, out)
    urls = [(s.name, s.health_url) for s in fleet.services]
    try:
        doc = json.loads(fleet.lay.state.read_text())
        if not _is_fleet(int(doc["pid"])):
            raise ValueError("stale")  # the pid is another program's now
        urls = [(name, str(s["health_url"])) for name, s in doc["services"].items()]
        print(f"fleet running (pid {doc['pid']}), data in {fleet.lay.root}", file=out)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(f"no fleet.json of a running fleet in {fleet.lay.root}; from {cfg.source}", file=out)
    bad = 0
    for name, url in urls:
        state = fleet.health(url)
        bad += state != "ok"
        print(f"  {name:<10} {state:<12} {url}", file=out)
    return 0 if bad == 0 else 1


# -- helpers -------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_yaml(path: Path, doc: object) -> None:
    head = "# Written by `python -m fleet run` from the fleet description; edits are overwritten.\n"
    _write_atomic(path, head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def _read_secret(path: Path) -> str:
    return path.read_text().strip()


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # Only this start's lines: the log is appended to, each start after a "--- " header.
    mine = text.rsplit("\n--- ", 1)[-1].splitlines()[1:] if "\n--- " in text else text.splitlines()
    return "\n".join("    " + line for line in mine[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    # Also when its leader has exited: the group lives on while any member does. ESRCH: none
    # does any more.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent(parent: int) -> None:
    """In the child before exec (Linux): SIGTERM when the fleet dies, even by SIGKILL, so no
    service outlives it; if the fleet is gone already (it died between the fork and here),
    exit at once."""
    if _LIBC is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(1)


def _is_fleet(pid: int) -> bool:
    """Whether ``pid`` is a running ``python -m fleet``: a stale fleet.json's pid may have been
    reused by another program since."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False  # no such process
        try:  # no /proc (not Linux): only whether it exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except OSError:
        return False
    args = cmdline.split(b"\0")
    return b"fleet" in args or any(a.endswith(b"fleet/__main__.py") for a in args)
