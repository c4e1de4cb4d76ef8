"""What a training run writes in its folder, once the run is known to start (every check passed):
``args.yaml`` and ``train.log`` (:mod:`snnet.train.runlog`), ``steps.jsonl`` (a record per rank
and step), ``summary.csv`` and the tensorboard events (rank 0, each epoch), and the checkpoints:
timm's saver (``checkpoint-N``, ``model_best``, ``last``, its top-k list kept when resuming in the
same folder) and the step-level ``last.pth.tar``. What a checkpoint holds is the
:class:`~snnet.train.trainer.Trainer`'s ``state_dict``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from ..config import plain
from ..distributed import DistInfo
from ..run_config import TrainConfig
from .checkpoint import checkpoint_saver_class
from .metrics import StepLog
from .runlog import start_run_files

_logger = logging.getLogger("train")


class RunOutputs:
    """The run folder's files while a run trains. ``checkpoint_state(metric)`` is the trainer's
    end-of-epoch checkpoint (collective; the dict on rank 0); ``saver_state`` the saver's state
    from a checkpoint of this folder, to continue its top-k list."""

    def __init__(
        self,
        out_dir: Path,
        args: TrainConfig,
        info: DistInfo,
        checkpoint_state: Callable[[Optional[float]], Optional[dict]],
        saver_state: Optional[dict] = None,
    ):
        self.out_dir, self.info = out_dir, info
        self.saver = checkpoint_saver_class()(
            checkpoint_state,
            checkpoint_dir=str(out_dir),
            recovery_dir=str(out_dir),
            decreasing=args.eval_metric == "loss",
            max_history=args.checkpoint_hist,
        )
        if saver_state:
            self.saver.load_state_dict(saver_state)
        # every check passed: the run starts (folder, args.yaml with the values the run uses, train.log)
        start_run_files(_logger, out_dir, args, info.is_primary)
        self.writer = None
        if info.is_primary:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir))
        self.step_log = StepLog(out_dir / "steps.jsonl")

    def log_train(self, text: str, global_loss: float, lr: float, global_step: int) -> None:
        """A training log line (every ``--log-interval`` steps) and its tensorboard scalars."""
        _logger.info(text)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", global_loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def write_epoch(self, epoch: int, per_net: dict, train_metrics: dict, eval_metrics: dict, lr: float) -> None:
        """The epoch's validation: its log line, a ``summary.csv`` row (timm's columns) and the
        tensorboard scalars (rank 0 only)."""
        from timm.utils import update_summary

        if not self.info.is_primary:
            return
        desc = "  ".join(f"{cfg}: {v['top1']:.2f}" for cfg, v in per_net.items())
        _logger.info(
            f"Eval: {epoch}  mean top-1 {eval_metrics['top1']:.2f}  top-5 "
            f"{eval_metrics['top5']:.2f}  loss {eval_metrics['loss']:.4f}  per network top-1 [{desc}]"
        )
        summary = self.out_dir / "summary.csv"
        update_summary(
            epoch, train_metrics, eval_metrics, filename=str(summary), lr=lr, write_header=not summary.exists()
        )
        for k, v in eval_metrics.items():
            self.writer.add_scalar(f"eval/{k}", v, epoch)
        self.writer.add_scalar("train/epoch_loss", train_metrics["loss"], epoch)
        self.writer.flush()

    def save_epoch(self, epoch: int, metric: float) -> Optional[tuple]:
        """The end-of-epoch checkpoints through timm's saver (rank 0); the best (metric, epoch) so far."""
        return self.saver.save_checkpoint(epoch, metric=metric)

    def save_last(self, state: Optional[dict]) -> None:
        """A step-level ``last.pth.tar`` from the trainer's checkpoint ``state`` (rank 0's; None
        elsewhere, which writes nothing), with the saver's top-k list."""
        from ..io.checkpoint import save_checkpoint

        if state is not None:
            state["saver"] = plain(self.saver.state_dict())
            save_checkpoint(state, self.out_dir / "last.pth.tar")

    def close(self) -> None:
        self.step_log.close()
        if self.writer is not None:
            self.writer.close()
