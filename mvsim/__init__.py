"""mvsim: Allen-Zhu & Li's multi-view theory of ensembles and distillation, runnable.

The public API, by concept (one module each): configs and presets (:mod:`mvsim.config`),
the Definition-3.1 sampler (:mod:`mvsim.data`), the patch CNN (:mod:`mvsim.model`) and
other learners, flax.nnx modules included (:mod:`mvsim.learners`), the
vmapped GD trainer (:mod:`mvsim.train`), distillation objectives (:mod:`mvsim.distill`),
statistics and verdicts (:mod:`mvsim.stats`), the verify pipeline and its claims
(:mod:`mvsim.verify`, :mod:`mvsim.claims`), reading the mechanism off a run
(:mod:`mvsim.mechanism`), reports and figures (:mod:`mvsim.report`, :mod:`mvsim.plots`),
sweeps and their result store (:mod:`mvsim.sweep`, :mod:`mvsim.store`, :mod:`mvsim.devices`).
"""

__version__ = "0.1.0"

import types as _types

from mvsim.claims import CLAIMS, ClaimResult, evaluate_all, predicted_error
from mvsim.config import (
    Config,
    ConfigError,
    DataConfig,
    DistillConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    VerifyConfig,
    make_config,
    parse_set,
)
from mvsim.data import Batch, GroundTruth, features, iter_chunks, sample, training_set
from mvsim.mechanism import (
    crossing_steps,
    growth_rates,
    initial_ratio,
    learned_outcome,
    memorisation_split,
    phase1_intervals,
    power_law_slope,
)
from mvsim.model import (
    Network,
    alignment,
    averaged,
    lottery_winner,
    network,
    smoothed_relu,
    view_strength,
    views_learned,
)
from mvsim.stats import Estimate, Verdict, clopper_pearson_interval, verdict, wilson_interval
from mvsim.store import read_results
from mvsim.sweep import build_points, parse_grid, run_points, run_sweep

# The trainer is `mvsim.train.train`: re-exporting it here would shadow its module.
from mvsim.train import DivergenceError, TrainResult, cross_entropy, predict, train_points
from mvsim.verify import Measurements, run, run_many


def neural_tangents() -> _types.ModuleType:
    """The ``neural_tangents`` module, whole on current JAX.

    A plain ``import neural_tangents`` fails there (on TensorFlow and on JAX names it
    imports that JAX has since moved), and parts of it broke on JAX's internals; this
    applies :mod:`mvsim._nt_compat`, the one place that patches, and returns the module:
    its API but the TensorFlow-only ``experimental`` (docs/ntk.md, "neural-tangents on
    current JAX"). Afterwards ``import neural_tangents`` returns the same module. Raises
    ImportError, with the install command, when neural-tangents is not installed, and on
    a JAX older than the patches follow.
    """
    from mvsim._nt_compat import import_neural_tangents

    return import_neural_tangents()


__all__ = [
    "Batch",
    "CLAIMS",
    "ClaimResult",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "DivergenceError",
    "Estimate",
    "ExperimentConfig",
    "GroundTruth",
    "Measurements",
    "ModelConfig",
    "Network",
    "TrainConfig",
    "TrainResult",
    "Verdict",
    "VerifyConfig",
    "alignment",
    "averaged",
    "build_points",
    "clopper_pearson_interval",
    "cross_entropy",
    "crossing_steps",
    "evaluate_all",
    "features",
    "growth_rates",
    "initial_ratio",
    "iter_chunks",
    "learned_outcome",
    "lottery_winner",
    "make_config",
    "memorisation_split",
    "network",
    "neural_tangents",
    "parse_grid",
    "parse_set",
    "phase1_intervals",
    "power_law_slope",
    "predict",
    "predicted_error",
    "read_results",
    "run",
    "run_many",
    "run_points",
    "run_sweep",
    "sample",
    "smoothed_relu",
    "train_points",
    "training_set",
    "verdict",
    "view_strength",
    "views_learned",
    "wilson_interval",
]
