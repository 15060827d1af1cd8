"""The exceptions attrpatch raises. The native module raises the same classes (it imports them
from here), so a message from the Rust library and one from the argument checks in Python are
caught alike."""

from __future__ import annotations


class Error(Exception):
    """Any attrpatch failure. The message is the one the command line prints: it names the file,
    node, op, tensor or argument concerned, what was expected, and what to do instead."""


class InputError(Error, ValueError):
    """Bad input: prompt pairs, answers, options, the tokenizer, or a file that cannot be read."""


class ModelError(Error):
    """The model cannot be used: not an ONNX model, missing pieces, or an op on the path from the
    hooks to the metric that attrpatch cannot differentiate."""


class BackendError(Error):
    """The runtime (ONNX Runtime or tract) is missing, cannot be loaded, or failed."""


class NumericError(Error):
    """NaN, infinity or a division by zero in the numbers computed (e.g. equal clean and corrupted
    baselines)."""
