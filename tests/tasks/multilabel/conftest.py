"""The multi-label tests' data and run (`mosaics`, `tiny_multilabel_run`) live in tests/conftest.py, shared with
tests/serve/test_multilabel.py."""
