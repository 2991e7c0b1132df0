"""Exceptions that name the problem and the fix.

Every user-facing failure in ltrobust raises a subclass of :class:`LtrobustError`; the CLI prints its
message (no traceback) and exits with status 2.
"""

from __future__ import annotations


class LtrobustError(Exception):
    """Base class of every error ltrobust raises on bad input or a broken file."""


class ConfigError(LtrobustError, ValueError):
    """A configuration key or value is invalid (unknown key, out-of-range value, unknown name)."""


class DataError(LtrobustError):
    """A data set is missing, unreadable or inconsistent with the run."""


class CheckpointError(LtrobustError):
    """A checkpoint or result file is missing, truncated, corrupt or does not match the run."""


class TrainingDiverged(LtrobustError):
    """The training loss became non-finite."""


class RunInUse(LtrobustError):
    """Another ltrobust process is writing the same run folder (or the same evaluation tag)."""


#: the packages of each optional extra in pyproject.toml (a test keeps the two equal)
EXTRAS: dict[str, tuple[str, ...]] = {
    "vit": ("timm>=0.9",),
    "ray": ("ray>=2.9",),
    "tensorboard": ("tensorboard>=2.10",),
    "robustbench": ("robustbench>=1.1", "setuptools<81"),
}


def install_hint(extra: str) -> str:
    """How to install an optional extra, for error messages: its packages by name (ltrobust itself is installed
    from its source folder, not from PyPI), or the extra from that folder.

    Example::

        install_hint("robustbench")
        # "pip install 'robustbench>=1.1' 'setuptools<81' (or, in the ltrobust source folder,
        #  pip install -e '.[robustbench]')"
    """
    packages = " ".join(f"'{p}'" for p in EXTRAS[extra])
    return f"pip install {packages} (or, in the ltrobust source folder, pip install -e '.[{extra}]')"
