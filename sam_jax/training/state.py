"""The sharded training state: a mesh from the config, the model, optimizer and TrainState
with their shardings (parameters created or restored already sharded, optimizer state
sharded like its parameters), and the jitted train step over global batches."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sam_jax.io.checkpoint import abstract_params
from sam_jax.modeling import sharding as shd
from sam_jax.modeling.configs import build_sam
from sam_jax.training.optimizer import make_optimizer
from sam_jax.training.step import TrainState, train_step


def _opt_state_shardings(tx, abstract_opt_state, param_shardings, mesh):
    """Optimizer-state leaves that stand for a parameter (Adam's moments) get that
    parameter's sharding; everything else (counts, masked-out frozen parameters) is
    replicated. optax tells which leaves are parameters (`optax.tree_map_params`)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(leaf, sharding):
        return leaf if isinstance(leaf, optax.MaskedNode) else sharding

    return optax.tree_map_params(
        tx,
        pick,
        abstract_opt_state,
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, (NamedSharding, optax.MaskedNode)),
    )


def _put_global(value, sharding):
    """A host array (identical on every process) -> a global array with `sharding`."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


class Trainer:
    """Everything the loop needs, built from a config; also used by tests and benchmarks."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        m = config.mesh
        self.mesh = mesh if mesh is not None else shd.make_mesh(m.data, m.fsdp, m.tensor)
        self.module = build_sam(config.model)
        abstract = abstract_params(config.model)
        self.tx, self.schedule = make_optimizer(config, abstract, config.model.encoder_depth)
        self.param_shardings = shd.param_shardings(abstract, self.mesh)
        abstract_opt = jax.eval_shape(self.tx.init, abstract)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.state_shardings = TrainState(
            step=replicated,
            params=self.param_shardings,
            opt_state=_opt_state_shardings(self.tx, abstract_opt, self.param_shardings, self.mesh),
        )
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract, abstract_opt),
            self.state_shardings,
        )
        self.replicated = replicated
        self.batch_shardings = {
            "image": shd.batch_sharding(self.mesh, 4),
            "input_size": shd.batch_sharding(self.mesh, 2),
            "masks": shd.batch_sharding(self.mesh, 4),
            "mask_valid": shd.batch_sharding(self.mesh, 2),
        }
        if config.text.source:
            if not config.model.text_embed_dim:
                raise ValueError(
                    f"text.source={config.text.source!r} needs model.text_embed_dim > 0 (the "
                    "size of the prompt embeddings)"
                )
            self.batch_shardings["text_embedding"] = shd.batch_sharding(self.mesh, 3)
            self.batch_shardings["text_valid"] = shd.batch_sharding(self.mesh, 2)
        self.step_fn = jax.jit(
            functools.partial(
                train_step, module=self.module, tx=self.tx, schedule=self.schedule, config=config
            ),
            in_shardings=(self.state_shardings, self.batch_shardings, replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )

    def init_state(self, params) -> TrainState:
        """Sharded TrainState from host params (the optimizer state is created sharded)."""
        params = jax.tree_util.tree_map(_put_global, params, self.param_shardings)
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
        step = _put_global(np.int32(0), self.replicated)
        return TrainState(step, params, opt_state)

    def global_batch(self, local_batch: dict) -> dict:
        return {
            k: jax.make_array_from_process_local_data(self.batch_shardings[k], np.asarray(v))
            for k, v in local_batch.items()
        }
