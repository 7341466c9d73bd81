"""Benchmarks: the one measuring command ``python -m benchmarks.gpu`` (it writes
``benchmarks/results/<device>-<date>.json`` and ``.md``) and the offline compile survey
``python -m benchmarks.kernel_resources``."""
