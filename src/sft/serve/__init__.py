"""Serving a finished run over HTTP (`sft serve`): the layer between the command and the tasks; it asks the run's
task for a predictor and knows nothing of what the model does."""
