"""Keras input pipelines for backends other than TensorFlow (JAX): ``keras.utils.PyDataset``\\ s.

Under TensorFlow galparam feeds ``fit`` with ``tf.data`` (:func:`galparam.data.tf_dataset`). Elsewhere
it gives these datasets, whose batch ``i`` of epoch ``e`` is a function of ``(e, i)`` alone. That
matters: Keras's JAX trainer takes a batch to build the model and then starts the epoch again,
which would shift a plain generator by a few batches (and a resumed run would then differ from
one that never stopped). The epoch comes from a callback (:attr:`EpochBatches.callbacks`, which
``fit`` must be given), not from ``PyDataset.on_epoch_end``, which Keras also calls on such restarts.
"""

from __future__ import annotations

from collections import OrderedDict

import keras
import numpy as np

from galparam.errors import GalparamError


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
    """``(inputs, targets)`` batches gathered from (memory-mapped) arrays, as :func:`galparam.data.tf_dataset`.

    Parameters
    ----------
    columns, inputs, targets, indices, batch_size, shuffle_seed, first_epoch
        As :func:`galparam.data.tf_dataset`.
    """

    def __init__(self, columns, inputs, targets, indices, batch_size, *, shuffle_seed=None, first_epoch=0):
        from galparam.data import column_names

        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            raise GalparamError("no images to serve")
        super().__init__(-(-len(indices) // batch_size), first_epoch)
        self.columns, self.inputs, self.targets = columns, inputs, targets
        self.names = column_names(inputs, targets)
        self.indices, self.batch_size, self.shuffle_seed = indices, int(batch_size), shuffle_seed
        self._order = (None, None)

    def __getitem__(self, i: int):
        from galparam.data import epoch_order, gather_batch, structure_batch

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
        :func:`galparam.data.column_names` ``(inputs, targets)``.
    steps : int
        Batches in an epoch.
    inputs, targets : str or tuple of str
        As :func:`galparam.data.tf_dataset`.
    first_epoch : int
        The stream's first epoch.
    """

    KEPT = 8

    def __init__(self, stream, steps: int, inputs, targets, *, first_epoch: int = 0):
        from galparam.data import column_names

        super().__init__(steps, first_epoch)
        self.stream = iter(stream)
        self.inputs, self.targets = inputs, targets
        self.names = column_names(inputs, targets)
        self._next = (int(first_epoch), 0)
        self._kept: OrderedDict = OrderedDict()

    def __getitem__(self, i: int):
        from galparam.data import structure_batch

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
