"""The core's built-in tasks."""
from harness import hookimpl


@hookimpl
def register_tasks(register):
    pass
