#!/usr/bin/env bash
# Build the Python sample plugins into plugins/dist/python-<folder>.wasm with componentize-py.
# Installs the pinned componentize-py into <repo>/.tools/py-plugins on first use; later runs
# reuse it. Each plugin is a folder here with `app.py` and a `WORLD` file naming its world.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.tools/py-plugins"
wit="$root/wit/v0.3.0"
dist="$root/plugins/dist"
cpy="$venv/bin/componentize-py"

if ! [ -x "$cpy" ] || [ "$("$cpy" --version 2>/dev/null | awk '{print $2}')" != "$COMPONENTIZE_PY_VERSION" ]; then
    echo "python: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

mkdir -p "$dist"
for dir in "$here"/*/; do
    dir=${dir%/}
    [ -f "$dir/app.py" ] || continue
    name=$(basename "$dir")
    world=$(tr -d '[:space:]' < "$dir/WORLD")
    out="$dist/python-$name.wasm"
    # Skip when the component is newer than its sources and the WIT.
    if [ -f "$out" ] && [ -z "$(find "$dir" "$wit" -newer "$out" -type f -print -quit)" ]; then
        echo "python: $name is up to date" >&2
        continue
    fi
    echo "python: building $name (world $world)" >&2
    (cd "$dir" && "$cpy" -d "$wit" -w "$world" componentize app -o "$out.tmp")
    mv "$out.tmp" "$out"
done
