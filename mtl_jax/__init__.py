"""mtl_jax: multi-task learning in JAX/Flax."""

from mtl_jax import aggregators, data, ensemble, metrics, models, penalties, sharding
from mtl_jax.loop import NonFiniteLossError, evaluate, fit
from mtl_jax.tasks import Task, Tasks, binary, classification, regression
from mtl_jax.train import TrainState, init_state, make_eval_step, make_train_step

__all__ = ["NonFiniteLossError", "Task", "Tasks", "TrainState", "aggregators", "binary",
           "classification", "data", "ensemble", "evaluate", "fit", "init_state", "make_eval_step",
           "make_train_step", "metrics", "models", "penalties", "regression", "sharding"]
__version__ = "0.1.0"
