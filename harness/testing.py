"""Public contract checks for plugin authors.

``check_mixer("my.mixer", **options)`` builds a registered mixer at tiny sizes, in float64, and
verifies the mixer contract. A failure raises ``AssertionError`` naming each broken property and
its measured deviation; on success it returns the figures. ``contract_report`` returns every
property's measurement, threshold and verdict instead of raising (``harness check`` prints it).

Properties (names usable in ``checks=``):

- ``meta``: construction on the meta device, with the same parameter count (the budget matcher
  counts there);
- ``shape``, ``finite``: output shape and finite outputs, at every length;
- ``gradients``: finite gradients, and a non-zero gradient for every parameter (routers included);
- ``gradcheck``: ``torch.autograd.gradcheck`` with respect to the input and every parameter (a wrong
  custom backward, scores from ``x.detach()``); skipped for mixers that declare
  ``surrogate_gradients`` (straight-through or sampled routing), which get the other gradient checks;
- ``reach``: the input gradient of one output reaches every position that output may read;
- ``mixing``: perturbing one token changes another token's output;
- ``determinism``: two builds with the same seed give the same outputs;
- ``batch``: perturbing one sample leaves the others' outputs exactly unchanged;
- ``causal`` (when ``causal_ok``): perturbing tokens after every cut point leaves the outputs up
  to it unchanged, at every length;
- ``padding`` (when ``padding_ok``): perturbing padded positions leaves real outputs unchanged;
- ``truncation`` (when ``padding_ok`` and not ``fixed_len``): the real outputs of a padded sequence
  equal the outputs of the sequence cut to its real tokens (left and right padding; grid mixers:
  whole trailing rows);
- ``kv_cache`` (when ``kv_cache``): decoding in chunks equals one causal forward;
- ``compiled`` (opt-in: ``compiled=True``): ``torch.compile`` of the module gives the eager outputs
  and gradients (input and every parameter) within float32 rounding (relative 1e-4) at T = 16,
  bidirectional and causal/padded, so no compiled number comes from a different function. It
  compiles two graphs, which takes seconds to minutes on a CPU: mark tests that use it slow.

Lengths: 16 (a 4x4 grid), 12 (3x4, not a square) and 40 (5x8, longer than 32), so a fast path that
only kicks in at some lengths is exercised; a ``fixed_len`` mixer is checked at its one length.
Call it from a plugin's tests; the core's own tests run it over every registered mixer.

The measurements themselves live in ``harness.contract`` (one method per property on ``Checker``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from harness.contract import (OPT_IN, PROPERTIES, TITLES, Checker, ContractFailure, ContractReport,
                              PropertyCheck, grids_for)
from harness.registry import mixer as mixer_spec


def check_mixer(name: str, *, dim: int = 32, heads: int = 4, batch: int = 2, seed: int = 0,
                checks: tuple[str, ...] | None = None, max_len: int = 16, compiled: bool = False,
                **options: Any) -> dict[str, float]:
    """Check the contract of mixer ``name`` built with ``options``; raise AssertionError listing
    every broken property, else return the figures (max deviations, smallest gradient, ...).

    ``checks`` restricts the properties (see the module docstring); by default every property that
    applies to the mixer's capabilities is checked. ``max_len`` is the length of a ``fixed_len`` mixer.
    ``compiled=True`` adds the opt-in ``compiled`` property (``checks=("compiled",)`` runs it alone)."""
    report = contract_report(name, dim=dim, heads=heads, batch=batch, seed=seed, checks=checks, max_len=max_len,
                             compiled=compiled, **options)
    report.raise_if_failed()
    return report.figures


def contract_report(name: str, *, dim: int = 32, heads: int = 4, batch: int = 2, seed: int = 0,
                    checks: tuple[str, ...] | None = None, max_len: int = 16,
                    grids: tuple[tuple[int, int], ...] | None = None, cut_sample: int | None = None,
                    compiled: bool = False, **options: Any) -> ContractReport:
    """Measure every property that applies; never raises for a broken property (a mixer that
    crashes is recorded as failing the property that crashed). ``grids`` replaces the default
    lengths; ``cut_sample`` checks a seeded sample of that many causal cut points instead of all."""
    spec = mixer_spec(name)
    wanted = set(checks or PROPERTIES) | ({"compiled"} if compiled else set())
    unknown = wanted - set(PROPERTIES) - set(OPT_IN)
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(sorted(unknown))}; properties: "
                         f"{', '.join(PROPERTIES + OPT_IN)}")
    applies = {"causal": spec.causal_ok, "kv_cache": spec.kv_cache and spec.causal_ok, "padding": spec.padding_ok,
               "truncation": spec.padding_ok and not spec.fixed_len, "gradcheck": not spec.surrogate_gradients,
               "batch": batch > 1}
    wanted = {p for p in wanted if applies.get(p, True)}
    report = ContractReport(name, dict(options))
    checker = Checker(name, dim, heads, batch, seed, options, report)
    checker.cut_sample = cut_sample
    for prop in PROPERTIES + OPT_IN:
        if prop not in wanted:
            continue
        try:
            getattr(checker, f"check_{prop}")(grids or grids_for(spec, max_len), spec)
        except ContractFailure as failed:
            report.record(prop, failed.measured, failed.threshold, False, failed.detail, failed.title)
        except Exception as exc:  # the mixer crashed while this property was measured
            report.record(prop, float("nan"), "-", False, f"raised {type(exc).__name__}: {exc}")
    return report



def leak_probes(name: str, *, length: int, causal: bool, padding: bool, dim: int = 32, heads: int = 4,
                cut_sample: int = 8, **options: Any) -> ContractReport:
    """The fast part of the contract a suite's run depends on: the causal leak (a sample of cut
    points) when ``causal`` and the padding leak when ``padding``, at the suite's length and width.
    What ``harness validate`` and ``harness run`` check before any training."""
    checks = tuple(p for p, wanted in (("causal", causal), ("padding", padding)) if wanted)
    h = max(d for d in range(1, int(length ** 0.5) + 1) if length % d == 0)
    return contract_report(name, dim=dim, heads=heads, checks=checks, grids=((h, length // h),),
                           cut_sample=cut_sample, **options)


@contextmanager
def temporary_plugin(plugin: object, name: str | None = None) -> Iterator[None]:
    """Register a plugin object (module or class with hookimpls) for the duration of a block.

    For tests of plugins that are not installed, e.g. a deliberately broken mixer::

        with temporary_plugin(MyTestPlugin):
            check_mixer("my_test_mixer")
    """
    from harness import plugins

    registered = plugins.register(plugin, name)
    try:
        yield
    finally:
        plugins.unregister(plugin, registered)


__all__ = ["check_mixer", "contract_report", "leak_probes", "TITLES", "ContractReport", "PropertyCheck", "PROPERTIES",
           "temporary_plugin"]
