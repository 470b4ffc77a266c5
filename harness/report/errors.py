"""The one error the report package raises for a source it cannot read or report on."""
from __future__ import annotations


class ReportError(ValueError):
    """A results source that cannot be read or reported on; the message says why, in one line."""
