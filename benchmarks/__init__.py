"""fffcpu benchmarks: ``python -m benchmarks`` (``make bench``) runs every module of ``benchmarks.__main__.MODULES``
and writes ``docs/benchmarks.md``. Each module exposes ``run(quick: bool = False) -> Section``."""
