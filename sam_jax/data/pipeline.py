"""Grain input pipeline: source -> seeded shuffle -> per-process shard -> parallel decode
and mask sampling -> fixed-shape batches, with a checkpointable iterator.

    ds = make_dataset(SA1BTarSource("shards/"), spec, batch_size=8, seed=0)
    it = iter(ds)
    batch = next(it)        # dict of numpy arrays with a leading batch axis
    state = it.get_state()  # save next to the model; it.set_state(state) resumes exactly
"""

from __future__ import annotations

import logging

import grain
import jax
import numpy as np

from sam_jax.data.decode import ExampleSpec, SkipCounter, prepare_example
from sam_jax.data.sources import DataError

log = logging.getLogger(__name__)


class PrepareOrSkip:
    """`prepare_example`, turning a bad example into None (logged and counted)."""

    def __init__(self, spec: ExampleSpec, counter: SkipCounter, embedder=None):
        self.spec = spec
        self.counter = counter
        self.embedder = embedder

    def __call__(self, desc: dict, rng: np.random.Generator):
        try:
            record = prepare_example(desc, rng, self.spec, self.embedder)
        except DataError as e:
            log.warning("skipping example: %s", e)
            self.counter.skip(str(e))
            return None
        except Exception as e:  # anything else from one file must not end a long run
            log.warning("skipping example %s: %s: %s", desc.get("key"), type(e).__name__, e)
            self.counter.skip(f"{desc.get('key')}: {type(e).__name__}: {e}")
            return None
        self.counter.ok()
        return record


def make_dataset(
    source,
    spec: ExampleSpec,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_threads: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    counter: SkipCounter | None = None,
    embedder=None,
) -> grain.IterDataset:
    """A batched, checkpointable dataset over `source` for this process.

    batch_size is per process. num_epochs None repeats forever (reshuffling each epoch).
    Bad examples are dropped (see `counter`); batches are always full. `embedder` adds each
    sampled mask's prompt embedding (see `prepare_example`).
    """
    if len(source) == 0:
        raise DataError("the data source is empty")
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    counter = counter if counter is not None else SkipCounter()
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    # Random before sharding: an example's RNG follows its global index, so N processes
    # build the same global batch as one process does.
    ds = ds.random_map(PrepareOrSkip(spec, counter, embedder), seed=seed)
    ds = ds[process_index::process_count]
    ds = ds.filter(lambda r: r is not None)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
    it = it.batch(batch_size, drop_remainder=True)
    it.skip_counter = counter
    return it
