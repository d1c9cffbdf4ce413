"""`sft export RUN --format onnx` for image and text classification, and the exported model back as a callable for
`sft predict --engine onnx` and `sft serve --engine onnx`: the export every pooled-vector task shares
(sft.tasks.pooled; its docstring shows the folder), its parity check on the run's calibrated probabilities.
"""

from __future__ import annotations

from pathlib import Path

from sft.tasks.pooled import OnnxPooled, OnnxPooledText
from sft.tasks.pooled import export_onnx as export_pooled

OnnxClassifier, OnnxTextClassifier = OnnxPooled, OnnxPooledText


def export_onnx(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
                overwrite: bool) -> tuple[Path, dict]:
    """The run's ONNX export, checked on its probabilities at the run's temperature."""
    return export_pooled(task, run_dir, out, force=force, overwrite=overwrite,
                         terms=lambda info: {"temperature": info.temperature})
