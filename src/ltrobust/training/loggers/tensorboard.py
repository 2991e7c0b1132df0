"""TensorBoard: ``train.logger=tensorboard`` (the ``tensorboard`` extra: ``pip install -e '.[tensorboard]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError, install_hint
from ...registry import LOGGERS


@LOGGERS.register("tensorboard")
class TensorBoardLogger:
    """TensorBoard event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``).

    A resumed run purges the events at and after its first epoch, so an epoch redone after a kill is
    shown once. The resolved config is stored as the text summary ``config``.
    """

    def __init__(self, run_dir: Path, start_step: int = 0, config: Mapping[str, Any] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"train.logger=tensorboard needs the tensorboard package: {install_hint('tensorboard')}; "
                              "or set train.logger=none.") from None
        _quiet_writer_threads()
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=start_step if start_step > 0 else None)
        if config and start_step == 0:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```", 0)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # one row per epoch: cheap, and a killed run keeps its curves

    def close(self) -> None:
        self.writer.close()


def _quiet_writer_threads() -> None:
    """Keep the traceback of TensorBoard's event-writer thread off stderr (installed once per process).

    When a write fails (read-only folder, full disk), that thread dies printing its traceback and the writer
    re-raises the error on the next call, where :class:`~ltrobust.training.loggers.Guarded` turns it into one
    warning. Exceptions of every other thread still reach the previous hook.
    """
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "_ltrobust_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.thread, _AsyncWriterThread):
            return
        previous(args)

    hook._ltrobust_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook
