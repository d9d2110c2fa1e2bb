"""The lab's measuring code, kept out of the product (``projects/sa2va`` never imports it).

* :mod:`bench.harness.checkpoint_io`: time and memory of writing, loading and exporting an official folder
  (``bench/gpu/checkpoint_bench.py``);
* :mod:`bench.harness.profile_hook`: ``ProfileItersHook``, a ``torch.profiler`` trace of chosen training
  iterations (``bench/gpu/scaling_1b_profile_cfg.py``).
"""
