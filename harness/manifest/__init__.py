"""Run manifests and reproduction (``harness reproduce``).

``build``: the manifest of one run (resolved suite, versions, sources, device, determinism, data
hashes) and logging it to MLflow; ``sources``: checkout or wheel, git commit and dirty flag;
``environment``: versions, device, determinism settings; ``drift``: what differs between a manifest
and this environment; ``compare``: final metrics, exact or within a tolerance; ``reproduce``: the
re-run itself. Light at import: torch and mlflow load inside the functions.
"""
from harness.manifest.build import FORMAT, build_manifest, log_manifest, run_suite_data

__all__ = ["FORMAT", "build_manifest", "log_manifest", "run_suite_data"]
