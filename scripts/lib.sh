# Shared by the project's scripts: pinned tool versions and project-local installs.
# Source it; it defines functions and sets SQUALL_ROOT, TOOLS, CARGO_TARGET_DIR.
SQUALL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$SQUALL_ROOT/.tools"
# Kept outside the clone so CI reruns and worktrees reuse dependency builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/squall-target}"
export RUSTUP_AUTO_INSTALL=0

MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
CARGO_LAMBDA_VERSION=1.9.2

say() { printf '\n==> %s\n' "$*" >&2; }

ensure_wasm_targets() {
  rustup target add wasm32-wasip2 wasm32-unknown-unknown >/dev/null 2>&1 \
    || rustup target add wasm32-wasip2 wasm32-unknown-unknown
}

# A project-local virtualenv with exactly these pip requirements.
ensure_venv() { # name requirement...
  local name=$1; shift
  local dir="$TOOLS/$name" stamp="$TOOLS/$name/.squall-installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then return; fi
  say "installing $* into .tools/$name"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$*" > "$stamp"
}

ensure_moto() { ensure_venv moto "moto[server]==$MOTO_VERSION"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Start moto on a free loopback port; sets MOTO_PID and SQUALL_TEST_SQS_ENDPOINT.
start_moto() {
  local port; port=$(free_port)
  "$TOOLS/moto/bin/moto_server" -H 127.0.0.1 -p "$port" > "$TOOLS/moto.log" 2>&1 &
  MOTO_PID=$!
  export SQUALL_TEST_SQS_ENDPOINT="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$SQUALL_TEST_SQS_ENDPOINT/moto-api/')" 2>/dev/null; then
      say "moto server on $SQUALL_TEST_SQS_ENDPOINT (pid $MOTO_PID)"; return
    fi
    sleep 0.1
  done
  echo "moto server did not start; log:" >&2; cat "$TOOLS/moto.log" >&2; return 1
}

stop_moto() { if [ -n "${MOTO_PID:-}" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi; }
