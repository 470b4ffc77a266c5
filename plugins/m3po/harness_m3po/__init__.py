"""M3PO (Lv et al. 2025, multi-path collaborative reasoning) as a harness plugin; see README.md."""
__version__ = "0.1.0"
