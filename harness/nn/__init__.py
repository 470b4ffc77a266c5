"""Neural-network building blocks: the mixer contract, the reference mixer and the backbones."""
from harness.nn.aux import collect_aux, report_loss, report_stat
from harness.nn.context import SeqContext
from harness.nn.masks import attention_mask, masked_mean

__all__ = ["SeqContext", "attention_mask", "masked_mean", "report_loss", "report_stat", "collect_aux"]
