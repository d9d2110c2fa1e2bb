# ruff: noqa: F403, F405
# tests/bench/test_profile_hook.py: the scaling settings on the tiny model plus a profile of iterations 2..3.
from mmengine.config import read_base

with read_base():
    from .tiny_scaling import *

from bench.harness.profile_hook import ProfileItersHook

custom_hooks = [*custom_hooks, dict(type=ProfileItersHook, start=2, iters=2)]
