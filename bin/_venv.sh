# Sourced by bin/run and bin/test: creates .venv and installs the project with
# its test extras, reinstalling only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OPENCDN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.opencdn-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing opencdn and its dependencies into $VENV ..." >&2
    log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
           "$VENV/bin/python" -m pip install -e "$ROOT[test]"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "installation failed; full log in $log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"

# The web player's JavaScript dependencies (package.json: hls.js, and playwright-core for the
# browser test) from the npm registry, reinstalled only when package-lock.json changes.
# bin/test also needs Debian's chromium (tests/test_web_player.py), ffmpeg (the remux
# through an edge in tests/test_fleet.py), promtool and systemd-analyze; as root, bin/test installs what is missing with
# apt-get. bin/run works without either (the page then says what to do).
_apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "Installing $* with apt-get ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
        >"$VENV/apt.log" 2>&1 || { tail -n 20 "$VENV/apt.log" >&2; return 1; }
}
_testing=0
[ "$(basename "$0")" = test ] && _testing=1
if ! command -v npm >/dev/null && [ "$_testing" = 1 ]; then
    _apt_install npm || echo "npm is missing: the web player test will fail" >&2
fi
if command -v npm >/dev/null; then
    npm_stamp="$ROOT/node_modules/.opencdn-installed"
    npm_want="$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)"
    if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$npm_want" ]; then
        echo "Installing the web player's npm packages (npm ci) ..." >&2
        if (cd "$ROOT" && npm ci --no-audit --no-fund) >"$VENV/npm.log" 2>&1; then
            echo "$npm_want" > "$npm_stamp"
        else
            tail -n 30 "$VENV/npm.log" >&2
            echo "npm ci failed; full log in $VENV/npm.log" >&2
            [ "$_testing" = 1 ] && exit 1
        fi
    fi
else
    echo "npm is missing: the web player will not find hls.js (apt-get install npm)" >&2
fi
if [ "$_testing" = 1 ]; then
    _apt_missing=()
    [ -x /usr/bin/chromium ] || _apt_missing+=(chromium)
    [ -x /usr/bin/ffmpeg ] || _apt_missing+=(ffmpeg)
    # promtool checks conf/prometheus (tests/test_monitoring.py); systemd-analyze verifies
    # the units in systemd/ (tests/test_systemd.py).
    command -v promtool >/dev/null || _apt_missing+=(prometheus)
    command -v systemd-analyze >/dev/null || _apt_missing+=(systemd)
    if [ "${#_apt_missing[@]}" -gt 0 ]; then
        _apt_install "${_apt_missing[@]}" ||
            echo "${_apt_missing[*]} missing: the tests that need it will fail under CI" >&2
    fi
    unset _apt_missing
fi
unset _testing
cd "$ROOT"
