"""The core's built-in metrics."""
from harness import hookimpl


@hookimpl
def register_metrics(register):
    pass
