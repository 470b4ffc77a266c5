"""harness: a plugin-architecture benchmark harness for attention research.

Plugin authors need only ``hookimpl``, the spec classes and ``SeqContext``::

    from harness import hookimpl, MixerSpec, SeqContext

    @hookimpl
    def register_mixers(register):
        register(MixerSpec("my_mixer", "my_pkg.mixer:MyMixer", causal_ok=True))
"""
from typing import Any

from harness.hookspecs import hookimpl
from harness.specs import ComponentSpec, MetricSpec, MixerSpec, ModelSpec, TaskSpec

__version__ = "0.1.0"
__all__ = ["hookimpl", "MixerSpec", "ModelSpec", "TaskSpec", "MetricSpec", "ComponentSpec", "SeqContext",
           "__version__"]


def __getattr__(name: str) -> Any:
    # SeqContext lives in harness.nn, which imports torch: load it only when asked for, so that
    # `import harness` (and `harness --help`) stays light.
    if name == "SeqContext":
        from harness.nn.context import SeqContext

        return SeqContext
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
