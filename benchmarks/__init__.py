"""Benchmarks: pytest-benchmark suites (CPU sizes in CI, real sizes on a GPU) and the GPU script
``python -m benchmarks.gpu`` that writes ``benchmarks/results/<device>-<date>.json`` and ``.md``."""
