"""``spectra show DIR [--plots OUT]``: the summary of a saved result; it never writes into DIR.

The plots (``spectrum.png``, and ``training_curve.png`` when the folder holds
a training history) are redrawn only into another folder, ``--plots OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._io import read_json_object, save_figure
from ..errors import InvalidInputError
from ..pipeline import SPECTRUM_PNG, TRAINING_JSON, TRAINING_PNG, spectrum_figure, training_figure
from ..result import format_summary, format_value, load


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("show", help="print the summary of a saved result (and redraw its plots elsewhere)",
                       description="Print the summary of a result saved by 'spectra analyze', without recomputing "
                                   "and without writing into its folder; --plots OUT redraws its plots "
                                   f"({SPECTRUM_PNG}, {TRAINING_PNG}) into the folder OUT.")
    p.add_argument("dir", metavar="DIR", help="a folder written by 'spectra analyze'")
    p.add_argument("--plots", metavar="OUT", help="redraw the plots into this folder (not DIR itself)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir).expanduser()
    result = load(folder)
    plots = None if args.plots is None else Path(args.plots).expanduser()
    if plots is not None and plots.resolve() == folder.resolve():
        raise InvalidInputError(f"--plots {args.plots!r} is the result folder itself; spectra show never writes "
                                "there: choose another folder")
    prov = result.provenance

    def name_of(key: str) -> str:  # provenance is free-form: a hand-edited one must not crash show
        entry = prov.get(key)
        return str(entry.get("name", key)) if isinstance(entry, dict) else key

    print(f"{name_of('model')} on {name_of('data')}: P={result.num_params}, N={result.num_samples}, "
          f"method={result.method}")
    print(format_summary(result.summary()))
    history = _history(folder)
    if history is not None:
        print(f"trained {history.get('steps_taken')} steps with {history.get('optimizer')} "
              f"({history.get('stop_reason')}): final loss {format_value(history.get('final_loss'))}, "
              f"gradient norm {format_value(history.get('final_grad_norm'))}")
    if plots is not None:
        save_figure(spectrum_figure(result), plots / SPECTRUM_PNG)
        drawn = [SPECTRUM_PNG]
        if history is not None:
            try:
                figure = training_figure(history)
            except (TypeError, ValueError) as exc:  # lists of unequal length, strings for numbers
                raise InvalidInputError(f"{folder / TRAINING_JSON} is corrupt: cannot plot it ({exc})") from None
            save_figure(figure, plots / TRAINING_PNG)
            drawn.append(TRAINING_PNG)
        print(f"drew {', '.join(drawn)} in {plots}/")
    return 0


def _history(folder: Path) -> dict[str, Any] | None:
    """The training history saved beside the result, if any."""
    path = folder / TRAINING_JSON
    return read_json_object(path) if path.is_file() else None
