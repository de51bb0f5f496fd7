#!/usr/bin/env bash
# Builds the Rust sample plugins for wasm32-wasip2 and copies the components to
# plugins/dist/<crate-name>.wasm: every one, or only the crates named (scripts/demo).
#
#   plugins/rust/build.sh [CRATE...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist="$(cd "$here/.." && pwd)/dist"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/squall-plugins-target}"
mkdir -p "$dist"
packages=(--workspace)
if [[ $# -gt 0 ]]; then
    packages=()
    for name in "$@"; do packages+=(-p "$name"); done
fi
cargo build --manifest-path "$here/Cargo.toml" "${packages[@]}" --release --target wasm32-wasip2 --target-dir "$target_dir"
for manifest in "$here"/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    if [[ $# -gt 0 ]] && [[ " $* " != *" $name "* ]]; then continue; fi
    # Library crates (the allocator) build no component.
    grep -q 'crate-type = \[.*"cdylib"' "$manifest" || continue
    artifact="$target_dir/wasm32-wasip2/release/${name//-/_}.wasm"
    if [[ ! -f "$artifact" ]]; then
        echo "plugins/rust/build.sh: expected $artifact after the build" >&2
        exit 1
    fi
    cp "$artifact" "$dist/$name.wasm"
    echo "plugins/dist/$name.wasm ($(wc -c <"$artifact") bytes)"
done
