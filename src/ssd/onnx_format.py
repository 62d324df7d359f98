"""What ``ssd export`` writes: the ONNX opsets it supports and the format marker in the file's metadata.

Importing this module does not import torch (``ssd export --help`` reads it).
"""

DEFAULT_OPSET = 18
"""The opset ``ssd export`` writes unless told otherwise."""

MIN_OPSET = 18
"""The oldest opset the exporter writes (torch.export-based ONNX export)."""

FORMAT = "ssd-onnx"
"""``ssd.format`` in an exported file's metadata."""

FORMAT_VERSION = 1
"""``ssd.format_version``: files of a newer version are refused with an upgrade hint."""
