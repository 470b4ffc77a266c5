"""PoH (Pointer-over-Heads) for harness: head-routed attention, an iterative refiner with ACT
halting, a parameter-parity stack and a synthetic sorting task.

Importing this package stays light (no torch): the harness loads ``harness_poh.plugin`` at start-up
and the modules holding the torch code are imported only when a mixer, model or task is built.
"""
__version__ = "0.1.0"
