"""vlmslim: prune, quantize and benchmark vision-language models."""

__version__ = "0.1.0"
