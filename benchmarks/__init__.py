"""featvis benchmarks: measured speed and quality, one module per benchmark.

Run them from the repository root as ``python -m benchmarks.<name> ...`` (``--help`` lists the arguments);
:mod:`benchmarks.common` holds what several of them share. They are heavy: on a shared machine run one at a time.
"""
