# The CPU demo config plus test-only fault hooks (tests/engine/fault_hooks.py), switched per test with
# --cfg-options, e.g. custom_hooks.0.at=3 (kill after iteration 3) or custom_hooks.1.rank=1.
from mmengine.config import read_base

with read_base():
    from ....projects.sa2va.configs.sa2va_tiny_demo import *  # noqa: F403

from tests.engine.fault_hooks import KillAtIterHook, NaNLossAtHook, RaiseOnRankHook

custom_hooks = [
    dict(type=KillAtIterHook, at=-1),
    dict(type=RaiseOnRankHook, rank=-1),
    dict(type=NaNLossAtHook, iters=[]),
]
