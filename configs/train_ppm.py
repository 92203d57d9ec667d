"""PPM config. Defaults are the paper/reference numbers (rstar_reference.md §4.5,
microsoft/rStar train/rm.py, train_RM.py and the README command); `get_config("tiny")`
is a CPU-sized override."""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                # §4.5: training seed 0 (value-head dropout masks)
    c.data_seed = 42          # §4.5: pairs shuffled with seed 42
    c.holdout_fraction = 0.05  # §4.5: 5% held out
    c.holdout_seed = 42        # §4.5: split with seed 42
    c.epochs = 2              # §4.5 README: 2 epochs
    c.batch_size = 512        # §4.5: 16 per device x grad-accum 4 x 8 GPUs = 512 pairs/step
    c.micro_batch_size = 128  # §4.5: 16 per device x 8 GPUs per accumulation micro-step
    c.eval_batch_size = 128
    c.max_length = 2048       # §4.5: max_length 2048
    # §4.5 pads to 2048; right padding + last-token read make buckets equivalent.
    c.bucket_lengths = (512, 1024, 1536, 2048)
    # HF Trainer's group_by_length (off in the reference, §4.5): batches of similar lengths,
    # less padding; the data order stays a pure function of the seed.
    c.group_by_length = False
    c.value_head_dropout = 0.1   # §4.5: ValueHead Dropout(0.1) in training
    # §4.5: the reference sums -logsigmoid * 1/(pos*neg) over each device's 16 pairs; HF
    # then averages over 8 devices x 4 accumulation steps. "sum" reproduces that (one
    # denominator unit per sum_group_size pairs); "mean" divides by the number of pairs.
    c.loss_reduction = "sum"
    c.sum_group_size = 16     # §4.5: per-device batch the reference sums over
    c.compute_dtype = "bfloat16"  # §4.5: bf16
    c.remat = True            # §4.5: gradient checkpointing
    c.remat_policy = "full"   # "full": recompute each layer; "dots": keep matmul outputs
    # "auto": cuDNN flash attention on GPU in bf16 (batches are right-padded), XLA elsewhere
    c.attention_impl = "auto"
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=7e-6,   # §4.5 README: lr 7e-6
        schedule="linear",    # HF Trainer default lr_scheduler_type (the RM command sets none)
        warmup_steps=0,       # HF default
        weight_decay=0.0,     # HF default (the RM command sets none)
        b1=0.9, b2=0.999, eps=1e-8,   # HF adamw_torch defaults
        max_grad_norm=1.0))   # HF default
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # §4.5: FSDP full_shard
    c.checkpoint = ml_collections.ConfigDict(dict(
        save_every=750,       # §4.5: save every 750 steps
        keep=5,               # §4.5: save_total_limit 5
        async_save=True))
    c.log_every = 1
    c.eval_every = 750        # §4.5: eval every 750 steps
    c.max_steps = -1
    c.export_dtype = "bfloat16"
    c.tensorboard = False
    if variant == "tiny":
        _tiny(c)
    elif variant:
        raise ValueError(f"configs/train_ppm.py: unknown variant {variant!r} (use '' or 'tiny')")
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    c.epochs = 10
    c.batch_size = 16
    c.micro_batch_size = 8
    c.eval_batch_size = 16
    c.max_length = 128
    c.bucket_lengths = (32, 64, 128)
    c.holdout_fraction = 0.2   # more held-out pairs so accuracy is measurable at tiny scale
    c.compute_dtype = "float32"
    c.remat = False
    c.sum_group_size = 8
    c.optim.learning_rate = 1e-3
    c.mesh.fsdp = 1
    c.mesh.data = -1
    c.checkpoint.save_every = 20
    c.checkpoint.async_save = False
    c.log_every = 5
    c.eval_every = 0
    c.export_dtype = "float32"
