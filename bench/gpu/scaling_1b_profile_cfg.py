# ruff: noqa: F403, F405
# bench/gpu/scaling_1b_cfg.py plus a torch.profiler trace of iterations 21..24 on every rank (with 2
# micro-batches per optimiser step: two no-sync and two gradient-sync micro-batches), written to
# <work_dir>/profile.rank<r>.{json,txt}. Where does a 2-GPU sync step spend its time:
#   CFG=bench/gpu/scaling_1b_profile_cfg.py ACCUM=2 STEPS=15 bash bench/gpu/scaling_run.sh
from mmengine.config import read_base

with read_base():
    from .scaling_1b_cfg import *

from bench.harness.profile_hook import ProfileItersHook

custom_hooks = [*custom_hooks, dict(type=ProfileItersHook, start=21, iters=4)]
