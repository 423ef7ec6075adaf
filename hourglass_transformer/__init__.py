"""2D hourglass transformer backbone for SUNDAE-VQGAN: tokens (B, h, w) -> logits (B, h, w, V)."""
from .errors import HourglassError
from .model import HourglassTransformerLM

__all__ = ["HourglassError", "HourglassTransformerLM"]
