"""harness: a plugin-architecture benchmark harness for attention research.

Plugin authors need only ``hookimpl`` and the spec classes::

    from harness import hookimpl, MixerSpec

    @hookimpl
    def register_mixers(register):
        register(MixerSpec("my_mixer", "my_pkg.mixer:MyMixer", causal_ok=True))
"""
from harness.hookspecs import hookimpl
from harness.specs import ComponentSpec, MetricSpec, MixerSpec, ModelSpec, TaskSpec

__version__ = "0.1.0"
__all__ = ["hookimpl", "MixerSpec", "ModelSpec", "TaskSpec", "MetricSpec", "ComponentSpec", "__version__"]
