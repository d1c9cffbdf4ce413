"""Classification of images and texts: task.py (the two Task classes: what differs between images and texts),
recipe.py and options.py (what a user sets), module.py and losses.py (training), metrics.py (the Scorer of `sft eval`
and the final metrics), calibration.py, report.py and interpret.py (report.html, Grad-CAM, token attributions),
export.py (the run's model files), onnx.py and hf.py (`sft export`), serving.py (`sft predict` rows, `sft serve`),
probe.py (the converged-probe head start), and tools/ (audit, rank, transferability, `strategy: auto`)."""
