"""What differs between Keras's backends, in one place.

galparam's models, losses and training loop are written in Keras layers and ``keras.ops``, so they
run on TensorFlow (the default) and on JAX (``KERAS_BACKEND=jax``, for example on a borrowed GPU
without TensorFlow). Three things are backend-specific:

* the input pipeline: ``tf.data`` under TensorFlow, ``keras.utils.PyDataset``\\ s otherwise
  (:func:`galparam.data.batches`, :mod:`galparam.pipelines`);
* distribution: ``tf.distribute`` strategies exist under TensorFlow only (:func:`strategy`);
* determinism: TensorFlow's kernels must be asked for it; JAX's are deterministic.

Nothing here imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import weakref

from galparam.errors import TrainingError

TENSORFLOW = "tensorflow"


def name() -> str:
    """The Keras backend of this process: ``"tensorflow"``, ``"jax"``, … (``KERAS_BACKEND``)."""
    import keras

    return keras.backend.backend()


def is_tensorflow() -> bool:
    """Whether the models run on TensorFlow (and ``tf.data``, ``tf.distribute`` are there)."""
    return name() == TENSORFLOW


class _OneDevice:
    """A stand-in for ``tf.distribute``'s default strategy: builds models as they are."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


class _DataParallel:
    """Keras's ``DataParallel`` distribution over every device JAX sees: the variables replicated,
    each batch split across the devices, the gradients summed (the same losses as one device, to
    float rounding). It is global in Keras, so :func:`distributing` sets it for a whole training."""

    def __init__(self):
        import jax
        import keras

        self.devices = jax.devices()
        self.num_replicas_in_sync = len(self.devices)
        self.distribution = keras.distribution.DataParallel(devices=self.devices)

    def scope(self):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def distributing(self):
        import keras

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(self.distribution)
        try:
            yield self
        finally:
            keras.distribution.set_distribution(previous)


def distributing(strategy):
    """The context a training runs in: Keras's global distribution set for ``data_parallel``,
    nothing for the others (a ``tf.distribute`` strategy acts through its ``scope``)."""
    return strategy.distributing() if isinstance(strategy, _DataParallel) else contextlib.nullcontext()


def strategy(kind: str | None):
    """The distribution strategy of an experiment's ``strategy`` setting.

    Parameters
    ----------
    kind : {None, "mirrored", "multi_worker", "data_parallel"}
        None: one device (TensorFlow's default strategy, or a plain scope on other backends);
        ``data_parallel``: Keras's distribution API over JAX's devices (:func:`distributing`).

    Raises
    ------
    TrainingError
        A ``tf.distribute`` strategy on another backend, or ``multi_worker`` without ``TF_CONFIG``.
    """
    import os

    if kind == "data_parallel":
        if name() != "jax":
            raise TrainingError(
                f"strategy data_parallel runs on Keras's JAX backend (this process runs on {name()}); "
                "on TensorFlow use strategy mirrored"
            )
        return _DataParallel()
    if not is_tensorflow():
        if kind is not None:
            raise TrainingError(
                f"strategy {kind} needs Keras's TensorFlow backend (this process runs on {name()}); "
                "leave strategy unset to train on one device"
            )
        return _OneDevice()
    import tensorflow as tf

    if kind is None:
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise TrainingError("strategy multi_worker needs TF_CONFIG describing the cluster (see tf.distribute)")
    return tf.distribute.MultiWorkerMirroredStrategy()


PREDICT_BATCH = 1024
"""Images per forward pass of :func:`predict` on JAX (all batches of a call run in one compiled loop)."""

_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model, inputs, *, batch_size: int | None = None):
    """The model's outputs for every row of ``inputs`` (an array or a dict of arrays), as numpy.

    On JAX the inputs go to the device once and every batch runs inside one compiled loop
    (``jax.lax.map`` over the model's ``stateless_call``): no host round trip per batch, as
    ``model.predict`` makes. Elsewhere it is ``model.predict``. The same outputs either way, to
    float rounding (XLA may fuse a batch's arithmetic differently).

    Parameters
    ----------
    model : keras.Model
        The network, built.
    inputs : ndarray or dict of ndarrays, each (N, ...)
        Its inputs, one row per example.
    batch_size : int, optional
        Rows per forward pass (default :data:`PREDICT_BATCH` on JAX, 256 elsewhere).

    Returns
    -------
    ndarray, or a dict of them for a model with named outputs
    """
    if name() != "jax":
        return model.predict(inputs, batch_size=batch_size or 256, verbose=0)
    import jax
    import numpy as np

    batch = int(batch_size or PREDICT_BATCH)
    leaves = jax.tree_util.tree_leaves(inputs)
    rows = len(leaves[0])
    if rows == 0:
        return model.predict(inputs, batch_size=batch, verbose=0)
    batch = min(batch, rows)
    padded = -(-rows // batch) * batch

    def stack(a):  # (N, ...) → (batches, batch, ...), the last batch padded by repeating row 0
        a = np.asarray(a)
        if padded > rows:
            a = np.concatenate([a, np.repeat(a[:1], padded - rows, axis=0)])
        return a.reshape(padded // batch, batch, *a.shape[1:])

    fn = _PREDICTORS.get(model)
    if fn is None:

        def run(trainable, non_trainable, stacked):
            def one(x):
                return model.stateless_call(trainable, non_trainable, x, training=False)[0]

            return jax.lax.map(one, stacked)

        fn = _PREDICTORS[model] = jax.jit(run)
    out = fn(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        jax.tree_util.tree_map(stack, inputs),
    )
    return jax.tree_util.tree_map(lambda y: np.asarray(y).reshape(padded, *y.shape[2:])[:rows], out)


GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's own ceiling for its dynamic mmap threshold on 64-bit systems (its trim threshold is
kept at twice it, as glibc's dynamic rule does)."""


def restore_allocator() -> None:
    """Undo what TensorFlow's generator datasets do to glibc's ``malloc`` once they have run.

    ``tf.data.Dataset.from_generator`` sets ``M_TRIM_THRESHOLD`` to 128 kB, which also switches
    off glibc's dynamic mmap threshold: every later allocation over 128 kB in the process is then a
    fresh ``mmap`` whose pages fault in on first use. The numpy renderer's temporaries are such
    allocations, so posteriors and fits that follow a training in the same process (the demo, the
    tests, a notebook) ran 2.5 times slower (measured: 99 s against 40 s for the same chain).
    Called after each ``fit``; nothing happens off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(GLIBC_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # another C library (musl): TensorFlow's patch is glibc's
        return


def make_deterministic() -> None:
    """Ask for run-to-run identical kernels: TensorFlow's op determinism. JAX's CPU kernels are
    deterministic already; on a GPU, XLA's are only with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``
    set before the process starts (galparam does not set it: it costs speed)."""
    if is_tensorflow():
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def require_tensorflow(what: str) -> None:
    """Refuse ``what`` (a one-line :class:`TrainingError`) where the backend is not TensorFlow."""
    if not is_tensorflow():
        raise TrainingError(f"{what} runs on Keras's TensorFlow backend only (this process runs on {name()})")
