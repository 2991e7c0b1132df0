"""TensorBoard: ``train.logger=tensorboard`` (``pip install 'ltrobust[tensorboard]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError
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
            raise ConfigError("train.logger=tensorboard needs the tensorboard package: pip install "
                              "'ltrobust[tensorboard]', or set train.logger=none.") from None
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
