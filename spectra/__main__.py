"""``python -m spectra`` runs the ``spectra`` command."""

from spectra.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
