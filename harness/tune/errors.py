"""The error every tuning module raises for a problem that is not a suite key."""
from __future__ import annotations


class TuneError(Exception):
    """A tuning problem that is not a suite key: storage, study, workers, ``run --best``. One line per
    problem (the CLI prints each line with the suite path)."""
