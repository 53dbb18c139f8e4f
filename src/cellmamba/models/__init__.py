"""Models: SSM mixers (mamba_ssm kernels + pure-PyTorch references), BiMamba, Transformer,
input embeddings, heads, self-describing checkpoints, and the task models built from them.

Files: ``_ref`` (reference scans), ``_backend`` (kernel dispatch), ``ssm`` (Mamba2 / Mamba1
mixers, state-dict compatible with mamba_ssm), ``bimamba`` (padding, directions, blocks),
``transformer``, ``backbone`` (config + model of the sequence model), ``embeddings``,
``heads``, ``checkpoint`` and ``model`` (the whole model and its directory format);
``two_tower`` (one model per modality of paired multi-omics data, and its directory format) and
``perturb`` (the perturbation model and its continuous value encoder). The tasks that train
them are in :mod:`cellmamba.tasks`.
"""
from ._backend import BACKENDS, BackendUnavailableError, kernels_available, resolve_backend
from ._ref import selective_scan_ref, ssd_scan_ref
from .backbone import ARCHS, Backbone, BackboneConfig, BackboneOutput, count_parameters, same_size_transformer
from .bimamba import (MERGES, BiMambaLayer, DirectionMerge, ResidualBlock, RMSNorm, check_right_padded,
                      padded_reversal, reverse_padded, reverse_rows)
from .checkpoint import load_state_dict_strict, read_weights, write_weights
from .embeddings import EMBEDDING_KINDS, EmbeddingConfig, InputEmbedding
from .heads import (HEAD_KINDS, POOLINGS, CellPooling, ClassifierHead, HeadConfig, ProjectionHead,
                    TokenClassificationHead, ValueRegressionHead, build_head, next_token_logits, pool_cells)
from .model import CellModel, CellModelConfig
from .packing import Packing, plan_packing
from .perturb import ContinuousValueEncoder, PerturbationModel, PerturbationModelConfig
from .ssm import GatedRMSNorm, Mamba1Mixer, Mamba2Mixer
from .transformer import TransformerBlock
from .two_tower import TwoTowerConfig, TwoTowerModel

__all__ = [
    # kernels and references
    "BACKENDS", "BackendUnavailableError", "kernels_available", "resolve_backend",
    "ssd_scan_ref", "selective_scan_ref", "Mamba2Mixer", "Mamba1Mixer", "GatedRMSNorm",
    # blocks
    "MERGES", "RMSNorm", "check_right_padded", "padded_reversal", "reverse_rows", "reverse_padded", "ResidualBlock",
    "DirectionMerge",
    "BiMambaLayer", "TransformerBlock",
    # backbone
    "ARCHS", "BackboneConfig", "BackboneOutput", "Backbone", "count_parameters", "same_size_transformer",
    "Packing", "plan_packing",
    # embeddings and heads
    "EMBEDDING_KINDS", "EmbeddingConfig", "InputEmbedding",
    "POOLINGS", "HEAD_KINDS", "HeadConfig", "pool_cells", "CellPooling", "ValueRegressionHead",
    "TokenClassificationHead", "next_token_logits", "ClassifierHead", "ProjectionHead", "build_head",
    # whole model and checkpoints
    "CellModelConfig", "CellModel", "load_state_dict_strict", "read_weights", "write_weights",
    # task models
    "TwoTowerConfig", "TwoTowerModel", "ContinuousValueEncoder", "PerturbationModelConfig", "PerturbationModel",
]
