"""Benchmarks of lmr-jax: every timing, its PyTorch side and its slow reference implementations.

Nothing in :mod:`lmr_jax` imports this package. Run each benchmark as a module from the
repository root, so that ``benchmarks`` and the independent PyTorch models of
``tests.torch_reference`` are importable without path edits::

    python -m benchmarks.summary --quick      # what `make bench` runs
    python -m benchmarks.input_pipeline
    python -m benchmarks.rerank --mode loop
    python -m benchmarks.ann_search
    python -m benchmarks.extraction --arch resnet50

Modules: ``timing`` (median timing, a timing context, peak memory in GiB), ``throughput``
(the jitted training step and embedding forward), ``torch_side`` (the PyTorch reference model,
its ArcFace + SGD training step and its forward), ``input_pipeline``, ``rerank`` with its
per-query loop baseline ``loop_rerank``, ``ann_search``, ``extraction``, and ``summary`` (the
one command that runs the main ones, each in its own process). Results go in
docs/benchmarks.md.
"""
