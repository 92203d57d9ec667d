"""Policy SFT config. Defaults are the paper/reference numbers (rstar_reference.md §4.4,
microsoft/rStar train/train_SFT.py and its README command); `get_config("tiny")` is a
CPU-sized override for the tiny model and tests."""

import ml_collections


def optim_defaults() -> ml_collections.ConfigDict:
    """AdamW as HF `adamw_torch` with the Trainer defaults the reference leaves unset."""
    o = ml_collections.ConfigDict()
    o.learning_rate = 7e-6    # §4.4 README: lr 7e-6
    o.schedule = "linear"     # §4.4 README: linear schedule ("linear" | "cosine" | "constant")
    o.warmup_steps = 0        # §4.4 README: warmup 0
    o.weight_decay = 0.1      # §4.4 README: weight_decay 0.1 (not on biases and norms, as HF)
    o.b1 = 0.9                # HF TrainingArguments adam_beta1 default
    o.b2 = 0.999              # HF adam_beta2 default
    o.eps = 1e-8              # HF adam_epsilon default
    o.max_grad_norm = 1.0     # HF max_grad_norm default (the reference does not change it)
    return o


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 42               # §4.4: seed 42 (also the per-step RNG base)
    c.data_seed = 42          # HF Trainer shuffles with the training seed
    c.epochs = 2              # §4.4 README: 2 epochs
    c.batch_size = 128        # §4.4: 4 per device x grad-accum 4 x 8 GPUs = 128 rows/step
    c.micro_batch_size = 32   # §4.4: 4 per device x 8 GPUs per accumulation micro-step
    c.max_length = 2048       # §4.4: model_max_length 2048, right truncation
    # Our choice: pad each batch to the next bucket so the step compiles <= 4 times.
    c.bucket_lengths = (512, 1024, 1536, 2048)
    # HF Trainer's group_by_length (off in the reference, §4.4): batches of similar lengths,
    # less padding; the data order stays a pure function of the seed.
    c.group_by_length = False
    c.compute_dtype = "bfloat16"  # §4.4: --bf16; fp32 master weights and optimizer
    c.remat = True            # memory for FLOPs; not a numerics change
    c.remat_policy = "full"   # "full": recompute each layer; "dots": keep matmul outputs
    # "auto": cuDNN flash attention on GPU in bf16 (batches are right-padded), XLA elsewhere
    c.attention_impl = "auto"
    c.optim = optim_defaults()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # §4.4: FSDP full_shard
    c.checkpoint = ml_collections.ConfigDict(dict(
        save_every=200,       # our choice (the reference saves per epoch)
        keep=3,
        async_save=True))
    c.log_every = 1
    c.max_steps = -1          # > 0 stops early (the schedule still spans all epochs)
    c.export_dtype = "bfloat16"   # the exported HF policy (what search loads)
    c.tensorboard = False     # needs tensorboardX
    if variant == "tiny":
        _tiny(c)
    elif variant:
        raise ValueError(f"configs/train_sft.py: unknown variant {variant!r} (use '' or 'tiny')")
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """CPU scale: a few-hundred-parameter-thousand model learns in seconds."""
    c.epochs = 40
    c.batch_size = 8
    c.micro_batch_size = 4
    c.max_length = 256
    c.bucket_lengths = (64, 128, 256)
    c.compute_dtype = "float32"
    c.remat = False
    c.optim.learning_rate = 3e-3
    c.optim.weight_decay = 0.0
    c.mesh.fsdp = 1
    c.mesh.data = -1
    c.checkpoint.save_every = 10
    c.checkpoint.async_save = False
    c.log_every = 5
    c.export_dtype = "float32"
