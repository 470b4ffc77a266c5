"""FLOP counting with torch.utils.flop_counter, including CPU attention kernels it leaves out.

torch's counter knows the CUDA SDPA kernels but not ``_scaled_dot_product_flash_attention_for_cpu``,
so on CPU the softmax mixer's attention would count as free while a mixer written with plain
matmuls is charged in full. Registering the same formulas for the CPU kernels keeps FLOPs fair.
"""
from __future__ import annotations

import torch
from torch.utils import flop_counter as fc

_registered = False


def _register_cpu_sdpa() -> None:
    global _registered
    if _registered:
        return
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in fc.flop_registry:
        @fc.register_flop_formula(forward)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None and backward not in fc.flop_registry:
        @fc.register_flop_formula(backward)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _registered = True


def flop_counter() -> fc.FlopCounterMode:
    """A FlopCounterMode (display off) that also counts the CPU attention kernels."""
    _register_cpu_sdpa()
    return fc.FlopCounterMode(display=False)
