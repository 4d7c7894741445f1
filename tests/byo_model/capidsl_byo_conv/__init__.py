"""A bring-your-own model for capidsl: a causal-convolution language model (see family.py)."""

from capidsl_byo_conv.family import CausalConv, CausalConvFamily

__all__ = ["CausalConv", "CausalConvFamily"]
