"""train.py's options that act only together with others: each is refused (one line, before
any work; ``--check-args`` runs them too) when it is set away from its default where it cannot
act, so that no value is accepted and then silently ignored. The model's options (stitching,
layers) are judged on the built SN-Net by :func:`snnet.run_config.check_model_effects`."""

from __future__ import annotations

from typing import Any, Callable

from ..config import Needs, builtin_defaults, refuse_without_effect

# timm's schedulers that read each schedule option (timm.scheduler.create_scheduler_v2)
CYCLE_SCHEDS = ("cosine", "tanh", "poly")
DECAY_RATE_SCHEDS = ("step", "multistep", "plateau", "poly")


def _mixup_on(a: Any) -> bool:
    return (a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None) and not a.no_aug


def _augmenting(a: Any) -> bool:
    return not a.no_aug


def _distilling(a: Any) -> bool:
    return a.distillation_type != "none"


def _uniform_rates(a: Any) -> bool:
    """Some anchor has a drop-path rate for ``--drop-path-schedule uniform`` to spread."""
    from ..run_config import ModelConfig

    model = ModelConfig.from_args(a)  # --drop-path is in its model_kwargs
    return any("drop_path_rate" in k for k in (model.model_kwargs, *(model.anchor_kwargs or ())))


TRAIN_RULES = (
    Needs("flops_gap", lambda a: a.sample_by == "flops-groups",
          "sets the gap between FLOPs groups and acts only with --sample-by flops-groups (no grouped sampler runs)"),
    Needs("ls_init_images", lambda a: a.ls_init, "acts only with --ls-init"),
    Needs("ls_init_batch_size", lambda a: a.ls_init, "acts only with --ls-init"),
    Needs("ls_init_combine", lambda a: a.ls_init, "acts only with --ls-init"),
    Needs("drop_path_schedule", _uniform_rates,
          "spreads a drop-path rate and no anchor has one: add --drop-path P"),
    Needs("batch_size", lambda a: a.global_batch_size is None,
          "is replaced by --global-batch-size (divided over the processes): give one of them", "--batch-size"),
    Needs("scale", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("ratio", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("hflip", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("vflip", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("aa", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("color_jitter", lambda a: _augmenting(a) and (not a.aa or "3a" in a.aa),
          "is an augmentation that --no-aug turns off and timm leaves out under --aa (but for 3a)"),
    Needs("reprob", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("remode", lambda a: a.reprob > 0 and _augmenting(a), "sets random erasing: acts only with --reprob > 0"),
    Needs("recount", lambda a: a.reprob > 0 and _augmenting(a), "sets random erasing: acts only with --reprob > 0"),
    Needs("resplit", lambda a: a.reprob > 0 and _augmenting(a), "sets random erasing: acts only with --reprob > 0"),
    Needs("mixup", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("cutmix", lambda a: _augmenting(a) and a.cutmix_minmax is None,
          "is an augmentation that --no-aug turns off and --cutmix-minmax overrides"),
    Needs("cutmix_minmax", _augmenting, "is an augmentation and --no-aug turns augmentation off"),
    Needs("mixup_prob", _mixup_on, "acts only with --mixup or --cutmix (and without --no-aug)"),
    Needs("mixup_switch_prob", lambda a: _mixup_on(a) and a.mixup > 0 and (a.cutmix > 0 or a.cutmix_minmax),
          "chooses between mixup and cutmix: acts only with both --mixup and --cutmix"),
    Needs("mixup_mode", _mixup_on, "acts only with --mixup or --cutmix (and without --no-aug)"),
    Needs("mixup_off_epoch", _mixup_on, "acts only with --mixup or --cutmix (and without --no-aug)"),
    Needs("teacher", _distilling, "is built only for distillation: add --distillation-type soft or hard"),
    Needs("teacher_checkpoint", lambda a: _distilling(a) and a.teacher, "acts only with --teacher and distillation"),
    Needs("teacher_kwargs", lambda a: _distilling(a) and a.teacher, "acts only with --teacher and distillation"),
    Needs("distillation_alpha", _distilling, "acts only with --distillation-type soft or hard"),
    Needs("distillation_tau", lambda a: a.distillation_type == "soft", "acts only with --distillation-type soft"),
    Needs("clip_mode", lambda a: a.clip_grad is not None, "acts only with --clip-grad"),
    Needs("lr_base", lambda a: a.lr is None, "scales into the learning rate only when --lr is not given"),
    Needs("lr_base_size", lambda a: a.lr is None, "scales into the learning rate only when --lr is not given"),
    Needs("lr_base_scale", lambda a: a.lr is None, "scales into the learning rate only when --lr is not given"),
    Needs("lr_noise_pct", lambda a: a.lr_noise is not None, "acts only with --lr-noise"),
    Needs("lr_noise_std", lambda a: a.lr_noise is not None, "acts only with --lr-noise"),
    Needs("lr_cycle_mul", lambda a: a.sched in CYCLE_SCHEDS, f"acts only with --sched {'/'.join(CYCLE_SCHEDS)}"),
    Needs("lr_cycle_decay", lambda a: a.sched in CYCLE_SCHEDS, f"acts only with --sched {'/'.join(CYCLE_SCHEDS)}"),
    Needs("lr_cycle_limit", lambda a: a.sched in CYCLE_SCHEDS, f"acts only with --sched {'/'.join(CYCLE_SCHEDS)}"),
    Needs("lr_k_decay", lambda a: a.sched in ("cosine", "poly"), "acts only with --sched cosine/poly"),
    Needs("decay_epochs", lambda a: a.sched in ("step", "wsd", "rsqrt"), "acts only with --sched step (or wsd/rsqrt)"),
    Needs("decay_milestones", lambda a: a.sched == "multistep", "acts only with --sched multistep"),
    Needs("patience_epochs", lambda a: a.sched == "plateau", "acts only with --sched plateau"),
    Needs("decay_rate", lambda a: a.sched in DECAY_RATE_SCHEDS, f"acts only with --sched {'/'.join(DECAY_RATE_SCHEDS)}"),
    Needs("warmup_lr", lambda a: a.warmup_epochs > 0, "acts only with --warmup-epochs > 0"),
    Needs("warmup_prefix", lambda a: a.warmup_epochs > 0, "acts only with --warmup-epochs > 0"),
    Needs("amp_dtype", lambda a: a.amp, "acts only with --amp"),
    Needs("amp_impl", lambda a: a.amp, "acts only with --amp"),
    Needs("model_ema_decay", lambda a: a.model_ema, "acts only with --model-ema"),
    Needs("model_ema_warmup", lambda a: a.model_ema, "acts only with --model-ema"),
    Needs("model_ema_force_cpu", lambda a: a.model_ema, "acts only with --model-ema"),
    Needs("torchcompile_mode", lambda a: a.torchcompile, "acts only with --torchcompile"),
)  # fmt: skip


def check_train_effects(args: Any, info: Any, log: Callable[[str], None]) -> None:
    """Refuse train.py's options that cannot act as given (:data:`TRAIN_RULES`, and the model's
    options judged from the arguments, :data:`snnet.run_config.MODEL_RULES`); log once (rank 0)
    those that only the process count makes idle."""
    from ..cli import build_train_parser
    from ..run_config import MODEL_DEFAULTS, MODEL_RULES, ModelConfig

    refuse_without_effect(args, TRAIN_RULES, builtin_defaults(build_train_parser()))
    refuse_without_effect(ModelConfig.from_args(args), MODEL_RULES, MODEL_DEFAULTS)
    if info.world_size == 1 and info.is_primary:
        for idle, line in (
            (args.grad_sync == "ddp", "--grad-sync ddp: one process averages no gradients (no DDP wrapper)"),
            (args.dist_bn != "reduce", f"--dist-bn '{args.dist_bn}': one process has no BatchNorm statistics to sync"),
            (args.sample_per_rank, "--sample-per-rank: one process draws one network per step either way"),
        ):
            if idle:
                log(line)


def needs_built_net(args: Any) -> bool:
    """Whether ``--check-args`` must build the (random-weight) SN-Net: FLOPs groups, or a model
    option that only the built net can judge (layer sizes for a LoRA rank, junction layouts)."""
    from ..run_config import MODEL_DEFAULTS

    judged = ("stitch_layer", "stitch_stride", "class_token", "prefix_tokens", "train_only")
    return args.sample_by == "flops-groups" or any(getattr(args, k) != MODEL_DEFAULTS[k] for k in judged)
