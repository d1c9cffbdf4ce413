"""The bottom layer: what every other layer may use and that knows nothing of tasks, models or data."""
