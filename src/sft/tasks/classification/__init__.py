"""Classification of images and texts, and its tools: calibration, interpretation, the report, audit, rank,
transferability scores and the choice of `strategy: auto`."""
