#!/usr/bin/env bash
# Build the JavaScript sample plugins into plugins/dist/js-<folder>.wasm with componentize-js
# (SpiderMonkey), and the samples also into plugins/dist/qjs-<folder>.wasm with componentize-qjs
# (QuickJS; pinned in the same lock file, as a dependency of jco) for the languages bench.
# `npm ci` installs the exact versions pinned in package.json / package-lock.json into
# plugins/js/node_modules on first use (or when the lock file changes); later runs reuse it.
# Each plugin is a folder here with `app.js` and a `WORLD` file naming its world.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
wit="$root/wit/v0.3.0"
dist="$root/plugins/dist"
cjs="$here/node_modules/.bin/componentize-js"
qjs="$here/node_modules/.bin/componentize-qjs"
stamp="$here/node_modules/.squall-lock-stamp"

if ! [ -x "$cjs" ] || ! cmp -s "$here/package-lock.json" "$stamp"; then
    echo "js: installing componentize-js from package-lock.json into $here/node_modules" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$stamp"
fi

mkdir -p "$dist"
for dir in "$here"/*/; do
    dir=${dir%/}
    [ -f "$dir/app.js" ] || continue
    name=$(basename "$dir")
    world=$(tr -d '[:space:]' < "$dir/WORLD")
    out="$dist/js-$name.wasm"
    if [ -f "$out" ] && [ -z "$(find "$dir" "$wit" -newer "$out" -type f -print -quit)" ]; then
        echo "js: $name is up to date" >&2
        continue
    fi
    echo "js: building $name (world $world)" >&2
    # No outbound HTTP, no fetch event, no WASI randomness or clocks: the plugin needs only the
    # host interface, plus stdio so an uncaught exception is reported before the trap.
    "$cjs" "$dir/app.js" --wit "$wit" --world-name "$world" \
        --disable http fetch-event random clocks -o "$out.tmp"
    mv "$out.tmp" "$out"
done

# The same sources with QuickJS (`--sync`: the host runs components without the
# component-model async ABI). Fixtures are SpiderMonkey-only.
for dir in "$here"/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    [ -f "$dir/app.js" ] && [ "${name#fixture-}" = "$name" ] || continue
    world=$(tr -d '[:space:]' < "$dir/WORLD")
    out="$dist/qjs-$name.wasm"
    if [ -f "$out" ] && [ -z "$(find "$dir" "$wit" -newer "$out" -type f -print -quit)" ]; then
        echo "js (quickjs): $name is up to date" >&2
        continue
    fi
    echo "js (quickjs): building $name (world $world)" >&2
    "$qjs" --wit "$wit" --js "$dir/app.js" -n "$world" --sync -o "$out.tmp" >/dev/null
    mv "$out.tmp" "$out"
done
