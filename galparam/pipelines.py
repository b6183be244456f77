"""Batches for Keras's ``fit``, ``evaluate`` and ``predict``, on any backend.

Under TensorFlow galparam feeds ``fit`` with ``tf.data`` (:func:`tf_dataset`,
:func:`tf_generator_dataset`). Elsewhere (JAX) it gives ``keras.utils.PyDataset``\\ s whose batch
``i`` of epoch ``e`` is a function of ``(e, i)`` alone (:class:`ArrayBatches`,
:class:`StreamBatches`). That matters: Keras's JAX trainer takes a batch to build the model and
then starts the epoch again, which would shift a plain generator by a few batches (and a resumed
run would then differ from one that never stopped). The epoch comes from a callback
(``callbacks``, which ``fit`` must be given), not from ``PyDataset.on_epoch_end``, which Keras
also calls on such restarts. :func:`batches` and :func:`generator_batches` choose for the backend.

The ``PyDataset`` classes are made on first use (Keras is imported then, not with this module).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from galparam import backend
from galparam.errors import GalparamError


def epoch_order(indices, epoch: int, shuffle_seed: int | None) -> np.ndarray:
    """An epoch's images in the order they are served: ``indices`` as they are without a
    ``shuffle_seed``, else a permutation drawn from ``(shuffle_seed, epoch)``."""
    indices = np.asarray(indices, dtype=np.int64)
    if shuffle_seed is None:
        return indices
    return np.random.default_rng([shuffle_seed, epoch]).permutation(indices)


def index_batches(indices, batch_size: int, *, shuffle_seed: int | None = None, first_epoch: int = 0):
    """Yield the index batches of one epoch (no shuffling), or of every epoch from ``first_epoch`` on.

    With ``shuffle_seed`` each epoch's order is a permutation drawn from ``(shuffle_seed, epoch)``:
    a run resumed at epoch k sees the same batches as one that never stopped.
    """
    indices = np.asarray(indices, dtype=np.int64)
    epoch = first_epoch
    while True:
        order = epoch_order(indices, epoch, shuffle_seed)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        if shuffle_seed is None:
            return
        epoch += 1


def gather_batch(columns: dict, names, idx) -> list[np.ndarray]:
    """The rows ``idx`` of each named column (:func:`tf_dataset`'s ``columns``), transformed, float32.

    Rows are read in sorted order: faster from a memory map, and the order inside a batch does not matter.
    """
    idx = np.sort(idx)
    return [np.ascontiguousarray(columns[n][1](columns[n][0][idx]), dtype=np.float32) for n in names]


def tf_dataset(
    columns: dict,
    inputs,
    targets,
    indices,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    first_epoch: int = 0,
):
    """A ``tf.data`` pipeline of ``(inputs, targets)`` batches gathered from (memory-mapped) arrays.

    Parameters
    ----------
    columns : dict of str to (array, callable)
        For each model input or output name, the array holding it (indexed by image) and the
        transform that turns a gathered block into the float32 batch (scaling, channel axis).
    inputs, targets : str or tuple of str
        Column names; one name gives a tensor, a tuple a dict keyed by name (Keras matches the
        model's input and output names).
    indices : array of int
        The images to serve.
    batch_size : int
        Images per batch (the last batch of an epoch may be smaller).
    shuffle_seed : int, optional
        Shuffle with a fresh permutation each epoch and repeat forever (give ``steps_per_epoch``
        to ``fit``); without it, one pass in order.
    first_epoch : int
        The epoch the pipeline starts at (for resumed runs).

    Returns
    -------
    tf.data.Dataset
        float32 throughout, prefetched; at most a few batches are in memory at any time.
    """
    import tensorflow as tf

    names = column_names(inputs, targets)
    indices = np.asarray(indices, dtype=np.int64)
    if not len(indices):
        raise GalparamError("no images to serve")

    def gather(idx):
        return gather_batch(columns, names, idx)

    shapes = [a.shape[1:] for a in gather(indices[:1])]
    batches = tf.data.Dataset.from_generator(
        lambda: index_batches(indices, batch_size, shuffle_seed=shuffle_seed, first_epoch=first_epoch),
        output_signature=tf.TensorSpec([None], tf.int64),
    )

    def load(idx):
        tensors = tf.numpy_function(gather, [idx], [tf.float32] * len(names), stateful=False)
        for tensor, shape in zip(tensors, shapes, strict=True):
            tensor.set_shape((None, *shape))
        return structure_batch(names, tensors, inputs, targets)

    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def batches(
    columns: dict,
    inputs,
    targets,
    indices,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    first_epoch: int = 0,
):
    """The ``(inputs, targets)`` batches Keras's ``fit`` and ``evaluate`` take, on any backend.

    Under TensorFlow, :func:`tf_dataset`; on other backends (JAX) an :class:`ArrayBatches` (give
    ``fit`` its ``callbacks``, and both ``steps_per_epoch`` and ``validation_steps``). The batches
    are the same on every backend. Arguments as :func:`tf_dataset`.
    """
    if backend.is_tensorflow():
        return tf_dataset(
            columns, inputs, targets, indices, batch_size, shuffle_seed=shuffle_seed, first_epoch=first_epoch
        )
    return __getattr__("ArrayBatches")(
        columns, inputs, targets, indices, batch_size, shuffle_seed=shuffle_seed, first_epoch=first_epoch
    )


def generator_batches(batches, shapes, inputs, targets, *, steps: int, first_epoch: int = 0):
    """:func:`tf_generator_dataset` under TensorFlow; on other backends a :class:`StreamBatches`
    of the generator's batches (``steps`` an epoch, the first of epoch ``first_epoch``). Other
    arguments as :func:`tf_generator_dataset`."""
    if backend.is_tensorflow():
        return tf_generator_dataset(batches, shapes, inputs, targets)
    return __getattr__("StreamBatches")(batches(), steps, inputs, targets, first_epoch=first_epoch)


def column_names(inputs, targets) -> tuple[str, ...]:
    """The column names of a pipeline: the inputs', then the targets' (a name or a tuple of names each)."""
    return tuple(dict.fromkeys((inputs,) if isinstance(inputs, str) else inputs)) + tuple(
        (targets,) if isinstance(targets, str) else targets
    )


def structure_batch(names, tensors, inputs, targets):
    """``(inputs, targets)`` of one batch: a tensor per name, or a dict where a tuple of names is given."""
    by_name = dict(zip(names, tensors, strict=True))

    def pick(spec):
        return by_name[spec] if isinstance(spec, str) else {n: by_name[n] for n in spec}

    return pick(inputs), pick(targets)


def tf_generator_dataset(batches, shapes, inputs, targets):
    """A ``tf.data`` pipeline of ``(inputs, targets)`` batches that a generator makes.

    Parameters
    ----------
    batches : callable
        Returns a generator of tuples of float32 arrays, one per name of
        :func:`column_names` ``(inputs, targets)``, each of shape (batch, *shape).
    shapes : sequence of tuple
        Each column's shape without the batch axis.
    inputs, targets : str or tuple of str
        As in :func:`tf_dataset`.
    """
    import tensorflow as tf

    names = column_names(inputs, targets)
    signature = tuple(tf.TensorSpec((None, *shape), tf.float32) for shape in shapes)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.map(lambda *tensors: structure_batch(names, tensors, inputs, targets)).prefetch(tf.data.AUTOTUNE)


def _make_classes() -> dict:
    """The PyDataset classes (Keras imported here, on first use)."""
    import keras

    class EpochBatches(keras.utils.PyDataset):
        """The batches of one epoch at a time; the epoch is set by :attr:`callbacks` at each epoch's start.

        Parameters
        ----------
        steps : int
            Batches in an epoch.
        first_epoch : int
            The epoch served until a callback says otherwise.
        """

        def __init__(self, steps: int, first_epoch: int = 0):
            super().__init__(workers=1, use_multiprocessing=False)
            self.steps = int(steps)
            self.epoch = int(first_epoch)

        def __len__(self) -> int:
            return self.steps

        @property
        def callbacks(self) -> list:
            """Give these to ``fit``: they tell the dataset which epoch is starting."""
            dataset = self

            class SetEpoch(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    dataset.epoch = int(epoch)

            return [SetEpoch()]

    class ArrayBatches(EpochBatches):
        """``(inputs, targets)`` batches gathered from (memory-mapped) arrays, as :func:`tf_dataset`.

        Parameters
        ----------
        columns, inputs, targets, indices, batch_size, shuffle_seed, first_epoch
            As :func:`tf_dataset`.
        """

        def __init__(self, columns, inputs, targets, indices, batch_size, *, shuffle_seed=None, first_epoch=0):
            indices = np.asarray(indices, dtype=np.int64)
            if not len(indices):
                raise GalparamError("no images to serve")
            super().__init__(-(-len(indices) // batch_size), first_epoch)
            self.columns, self.inputs, self.targets = columns, inputs, targets
            self.names = column_names(inputs, targets)
            self.indices, self.batch_size, self.shuffle_seed = indices, int(batch_size), shuffle_seed
            self._order = (None, None)

        def __getitem__(self, i: int):
            if self._order[0] != self.epoch:
                self._order = (self.epoch, epoch_order(self.indices, self.epoch, self.shuffle_seed))
            idx = self._order[1][i * self.batch_size : (i + 1) * self.batch_size]
            return structure_batch(self.names, gather_batch(self.columns, self.names, idx), self.inputs, self.targets)

    class StreamBatches(EpochBatches):
        """Batches of an endless, ordered stream (fresh images, :mod:`galparam.fresh`), served by (epoch, step).

        The stream is read in order; the last few batches are kept, so a batch Keras asks for again
        after restarting an epoch is the same batch.

        Parameters
        ----------
        stream : iterator of tuple of ndarray
            The batches from ``first_epoch`` on, ``steps`` an epoch, one array per column of
            :func:`column_names` ``(inputs, targets)``.
        steps : int
            Batches in an epoch.
        inputs, targets : str or tuple of str
            As :func:`tf_dataset`.
        first_epoch : int
            The stream's first epoch.
        """

        KEPT = 8

        def __init__(self, stream, steps: int, inputs, targets, *, first_epoch: int = 0):
            super().__init__(steps, first_epoch)
            self.stream = iter(stream)
            self.inputs, self.targets = inputs, targets
            self.names = column_names(inputs, targets)
            self._next = (int(first_epoch), 0)
            self._kept: OrderedDict = OrderedDict()

        def __getitem__(self, i: int):
            key = (self.epoch, int(i))
            while key not in self._kept:
                if key < self._next:
                    raise RuntimeError(f"batch {key} was asked for after the stream had passed it (at {self._next})")
                self._kept[self._next] = tuple(next(self.stream))
                if len(self._kept) > self.KEPT:
                    self._kept.popitem(last=False)
                epoch, step = self._next
                self._next = (epoch + 1, 0) if step + 1 == self.steps else (epoch, step + 1)
            return structure_batch(self.names, self._kept[key], self.inputs, self.targets)

    class SampleBatches(EpochBatches):
        """Batches of sample keys for images drawn on the device (:mod:`galparam.device_draw`):
        batch ``i`` of epoch ``e`` is ``(keys,)``, keys (b, 2) int32 rows ``(e, j)`` for the
        epoch's samples ``j`` of that batch.

        Parameters
        ----------
        images_per_epoch, batch_size : int
        first_epoch : int
        """

        def __init__(self, images_per_epoch: int, batch_size: int, *, first_epoch: int = 0):
            super().__init__(-(-images_per_epoch // batch_size), first_epoch)
            self.images_per_epoch, self.batch_size = int(images_per_epoch), int(batch_size)

        def __getitem__(self, i: int):
            samples = np.arange(i * self.batch_size, min((i + 1) * self.batch_size, self.images_per_epoch))
            return (np.stack([np.full_like(samples, self.epoch), samples], axis=1).astype(np.int32),)

    return {
        "EpochBatches": EpochBatches,
        "ArrayBatches": ArrayBatches,
        "StreamBatches": StreamBatches,
        "SampleBatches": SampleBatches,
    }


_CLASSES: dict = {}


def __getattr__(name: str):
    if name in ("EpochBatches", "ArrayBatches", "StreamBatches", "SampleBatches"):
        if not _CLASSES:
            _CLASSES.update(_make_classes())
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
