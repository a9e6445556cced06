"""edgecli: prune, distill, quantize, convert and bench models for edge devices."""

__version__ = "0.1.0"
