"""The lab's measuring code, kept out of the product (``projects/sa2va`` and ``tools/`` never import it).

* :mod:`bench.harness.speed`: training throughput and memory at real shapes, reference vs optimised step
  (``bench/benchmark.py``, ``bench/gpu/speed_bench.py``);
* :mod:`bench.harness.flops`: model FLOPs per training sample, for MFU;
* :mod:`bench.harness.data_pipeline`: host cost of the training data pipeline per sample
  (``bench/benchmark_data.py``);
* :mod:`bench.harness.checkpoint_io`: time and memory of writing, loading and exporting an official folder
  (``bench/gpu/checkpoint_bench.py``);
* :mod:`bench.harness.presets`: model shapes read from the ``_base_`` model configs;
* :mod:`bench.harness.profile_hook`: ``ProfileItersHook``, a ``torch.profiler`` trace of chosen training
  iterations (``bench/gpu/scaling_1b_profile_cfg.py``).
"""
