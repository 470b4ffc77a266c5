"""MoP (Mixture of Products) for harness: score-space boolean mixers, token gates and a cookbook.

Importing this package stays light (no torch): the harness loads ``harness_mop.plugin`` at start-up
and the modules holding the torch code are imported only when a mixer or model is built.
"""
__version__ = "0.1.0"
