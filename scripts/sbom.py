#!/usr/bin/env python3
"""The deployment zip's software bill of materials (CycloneDX 1.5, JSON).

Reads the bootstrap's crates as cargo-cyclonedx listed them, adds one component per bundled
plugin (file name, SHA-256, the squall:plugin WIT version it implements), and writes the
merged document after checking it against the CycloneDX schema. Both halves are built by
maintained tools (cargo-cyclonedx for the crates, cyclonedx-python-lib here); nothing is
written by hand. Run by scripts/package-lambda with the .tools/cyclonedx virtualenv:

    sbom.py --crates CRATES.cdx.json --plugin NAME SHA256 WIT [--plugin ...] --out FILE
"""

import argparse
import json
import sys

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot5
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crates", required=True, help="cargo-cyclonedx output (JSON)")
    parser.add_argument(
        "--plugin",
        nargs=3,
        action="append",
        default=[],
        metavar=("FILE", "SHA256", "WIT"),
        help="a bundled plugin: its path in the zip, SHA-256 (hex), WIT version",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    with open(args.crates, encoding="utf-8") as f:
        bom = Bom.from_json(json.load(f))  # type: ignore[attr-defined]
    root = bom.metadata.component
    plugins = []
    for path, digest, wit in args.plugin:
        name = path.rsplit("/", 1)[-1]
        plugin = Component(
            type=ComponentType.LIBRARY,
            name=name,
            bom_ref=f"squall-plugin:{name}",
            description=f"WebAssembly component implementing squall:plugin@{wit}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest)],
            properties=[
                Property(name="squall:kind", value="plugin"),
                Property(name="squall:path", value=path),
                Property(name="squall:wit-version", value=wit),
            ],
        )
        bom.components.add(plugin)
        plugins.append(plugin)
    if root is not None and plugins:
        # The plugins are loaded by the bootstrap at init: they are its dependencies too.
        bom.register_dependency(root, plugins)

    text = JsonV1Dot5(bom).output_as_string(indent=2)
    errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if errors:
        print(f"sbom.py: the merged SBOM is not valid CycloneDX 1.5: {errors}", file=sys.stderr)
        return 1
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
