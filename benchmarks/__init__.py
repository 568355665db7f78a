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
its ArcFace + SGD training step and its forward), ``xla_cpu_conv`` (one convolution at a time,
XLA:CPU against oneDNN), ``input_pipeline``, ``rerank`` with its per-query loop baseline
``loop_rerank``, ``rerank_limits`` (the GEMM rate and the exact re-ranking against it),
``local_sets`` (the k-reciprocal local sets step by step), ``rerank_approx`` (approximate
against exact re-ranking), ``ann_search``, ``extraction``, ``baidu_embedding``, ``serving``,
and ``summary`` (the one command that runs the main ones, each in its own process). Results
go in docs/benchmarks.md.
"""
