"""galparam: neural-network estimators of galaxy parameters, measured against the best possible."""

__version__ = "0.1.0"

from galparam.render import LABEL_NAMES  # noqa: E402

__all__ = ["LABEL_NAMES", "__version__", "load_dataset", "load_estimator"]


def load_dataset(path, **kwargs):
    """Load and check a galparam dataset (see :func:`galparam.data.load_dataset`)."""
    from galparam.data import load_dataset as _load

    return _load(path, **kwargs)


def load_estimator(run_dir):
    """Load a finished training run as an estimator (see :func:`galparam.estimator.load_estimator`)."""
    from galparam.estimator import load_estimator as _load

    return _load(run_dir)
