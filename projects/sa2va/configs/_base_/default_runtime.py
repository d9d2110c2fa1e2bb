# Runtime shared by every Sa2VA config: hooks, logging, environment, checkpoint policy.
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer

from projects.sa2va.engine.runner import Sa2VARunner
from projects.sa2va.evaluation.vis_backends import OptionalTensorboardVisBackend

runner_type = Sa2VARunner
default_scope = None
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Checkpoints hold the trainable tensors only (Sa2VAModel.state_dict); keep the last 2.
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=500, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
# scalars.json always; TensorBoard event files too where tensorboard is installed.
visualizer = dict(
    type=Visualizer,
    vis_backends=[dict(type=LocalVisBackend), dict(type=OptionalTensorboardVisBackend)],
)
log_level = "INFO"
log_processor = dict(by_epoch=False, window_size=10)
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
# DDP: device_ids=None works for CPU (gloo) and single-GPU-per-process CUDA ranks alike. The SAM2 IoU and
# object-score heads are trainable (as in the reference) but get no gradient from the mask losses.
model_wrapper_cfg = dict(
    type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False, find_unused_parameters=True
)
