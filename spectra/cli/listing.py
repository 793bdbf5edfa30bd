"""``spectra list [KIND] [--json]``: what the plugins provide, or the plugins themselves."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import plugins

DEFAULT_KINDS = ("models", "datasets", "backends")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    kinds = (*plugins.KINDS, "plugins")
    p = sub.add_parser("list", help="list models, datasets, backends, matrices, losses, ... or plugins",
                       description="List what the plugins provide (models, datasets and backends when no kind "
                                   "is given), with each entry's aliases and parameters.")
    p.add_argument("kind", nargs="?", choices=kinds, metavar="KIND", help=f"one of {', '.join(kinds)}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the entries of one kind (models, datasets and backends when none is given), or the plugins."""
    kinds = [args.kind] if args.kind else list(DEFAULT_KINDS)
    data: dict[str, Any] = {}
    for kind in kinds:
        data[kind] = plugins.list_plugins() if kind == "plugins" else plugins.list_entries(kind)
    if args.json:
        print(json.dumps(data if len(kinds) > 1 else data[kinds[0]], indent=2, default=str))
        return 0
    blocks = []
    for kind, rows in data.items():
        lines = [f"{kind} ({len(rows)}):"]
        if kind == "plugins":
            for r in rows:
                provides = "; ".join(f"{k}: {', '.join(r[k])}" for k in plugins.KINDS if r[k])
                lines.append(f"  {r['name']}  [{r['source']}]  {'ok' if r['ok'] else 'FAILED'}")
                if provides:
                    lines.append(f"      provides {provides}")
                lines.extend(f"      error: {e}" for e in r["errors"])
        else:
            width = max((len(r["name"]) for r in rows), default=0)
            for r in rows:
                lines.append(f"  {r['name'].ljust(width)}  {r['description']}  [{r['plugin']}]")
                if r["aliases"]:
                    lines.append(f"  {' ' * width}  also: {', '.join(r['aliases'])}")
                if r["parameters"]:
                    lines.append(f"  {' ' * width}  parameters: {', '.join(r['parameters'])}")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0
