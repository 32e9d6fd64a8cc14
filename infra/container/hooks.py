"""What the container adds to training: metric lines for SageMaker and a checkpoint on SIGTERM.

On SIGTERM (spot interruption, StopTrainingJob, ``docker stop``) during training, the trainer saves
a checkpoint at the end of the current step and the process exits with 143; before or after
training, the job stops at once (finished steps are kept and skipped on restart). Under torchrun
the signal goes to torchrun, which passes it to every rank; the ranks agree on the step to stop at.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from infra.container.contract import emit


def callbacks(distributed: bool = False) -> list:
    """Trainer callbacks for the container: metric lines and the SIGTERM checkpoint."""
    from transformers import TrainerCallback

    from job.evaluate.retrieval import per_dim_metrics

    class MetricLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                emit("train_loss", logs["loss"])

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.is_world_process_zero and metrics:
                for dim, m in per_dim_metrics(metrics, "validation").items():
                    emit(f"val_ndcg@10_dim{dim}", m.get("ndcg@10"))

    class SaveOnSigterm(TrainerCallback):
        """Turns a SIGTERM into: save a checkpoint at the end of this step, then stop with exit 143."""

        def __init__(self) -> None:
            self.stopping = False

        def on_train_begin(self, args, state, control, **kwargs):
            SIGTERM.training = True

        def on_train_end(self, args, state, control, **kwargs):
            SIGTERM.training = False

        def on_step_end(self, args, state, control, **kwargs):
            flag = SIGTERM.received
            if distributed:  # every rank must take the same decision, or the collectives hang
                import torch
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    t = torch.tensor([1 if flag else 0], device=args.device)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    flag = bool(t.item())
            if flag and not self.stopping:
                self.stopping = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.stopping:
                raise Interrupted(
                    f"Stopped by SIGTERM during training; a checkpoint of step {state.global_step} was saved in "
                    f"{args.output_dir}."
                )

    return [MetricLines(), SaveOnSigterm()]


# --- SIGTERM -------------------------------------------------------------------------------------
class Interrupted(Exception):
    """The job was stopped by SIGTERM (spot interruption, StopTrainingJob, docker stop)."""


class _SigtermState:
    def __init__(self) -> None:
        self.received = False
        self.training = False
        self.child: subprocess.Popen | None = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]  # (this class is never subclassed)

    def handler(self, signum, frame) -> None:
        self.received = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
            return
        if not self.training:
            raise Interrupted("Stopped by SIGTERM before training had started or after it had finished.")
        print("SIGTERM received: saving a checkpoint at the end of this step", file=sys.stderr, flush=True)


SIGTERM = _SigtermState()
