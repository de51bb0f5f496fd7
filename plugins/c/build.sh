#!/usr/bin/env bash
# Build the C sample plugins into plugins/dist/c-<folder>.wasm.
#
# Toolchain, installed on first use and reused afterwards:
#   - Debian clang-19, lld-19, libclang-rt-19-dev-wasm32, wasi-libc (apt-get, needs root);
#   - wit-bindgen's C generator, pinned, in <repo>/.tools/wit-bindgen (cargo install);
#   - plugins/c/encoder, a small Rust tool that wraps the core module as a component with the
#     WASI preview1 adapter of the host's wasmtime release (cargo build).
# Each plugin is a folder with its .c files and a WORLD file naming its world. The bindings
# are generated at build time into <repo>/.tools/c-build/<folder>/ and never committed.
set -euo pipefail

WIT_BINDGEN_VERSION=0.63.0
APT_PACKAGES=(clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc)

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tools="$root/.tools"
wit="$root/wit/v0.1.0"
dist="$root/plugins/dist"
clang=/usr/lib/llvm-19/bin/clang
wit_bindgen="$tools/wit-bindgen/bin/wit-bindgen"

if ! [ -x "$clang" ] || ! [ -x /usr/lib/llvm-19/bin/wasm-ld ] || ! [ -f /usr/lib/wasm32-wasi/libc.a ] \
    || ! ls /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
    echo "c: installing ${APT_PACKAGES[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${APT_PACKAGES[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${APT_PACKAGES[@]}" >/dev/null; }
fi

if [ "$("$wit_bindgen" --version 2>/dev/null | awk '{print $2}')" != "$WIT_BINDGEN_VERSION" ]; then
    echo "c: installing wit-bindgen-cli $WIT_BINDGEN_VERSION into $tools/wit-bindgen" >&2
    cargo install wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked \
        --no-default-features --features c --root "$tools/wit-bindgen" --quiet
fi

# Its own target dir: small, built once, and never waits on the lock of a shared one.
encoder_target="$tools/c-encoder"
cargo build --release --locked --quiet --manifest-path "$here/encoder/Cargo.toml" --target-dir "$encoder_target"
encoder="$encoder_target/release/squall-c-encoder"

mkdir -p "$dist"
for dir in "$here"/*/; do
    dir=${dir%/}
    [ -f "$dir/WORLD" ] || continue
    name=$(basename "$dir")
    world=$(tr -d '[:space:]' < "$dir/WORLD")
    out="$dist/c-$name.wasm"
    if [ -f "$out" ] && [ -z "$(find "$dir" "$wit" -newer "$out" -type f -print -quit)" ]; then
        echo "c: $name is up to date" >&2
        continue
    fi
    echo "c: building $name (world $world)" >&2
    build="$tools/c-build/$name"
    rm -rf "$build" && mkdir -p "$build"
    "$wit_bindgen" c --world "$world" --out-dir "$build" "$wit" >/dev/null
    stem=${world//-/_}
    "$clang" --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 \
        -Wall -Wextra -Werror -Wno-unused-parameter -I "$build" \
        -o "$build/core.wasm" "$dir"/*.c "$build/$stem.c" "$build/${stem}_component_type.o"
    "$encoder" "$build/core.wasm" "$out.tmp"
    mv "$out.tmp" "$out"
done
