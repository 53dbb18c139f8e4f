"""Pretraining: data loading over token shards, objectives, the training loop, and the wiring of
one pretraining run (:func:`run_pretraining`)."""
from .checkpoint import latest_good_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint
from .data import (DataConfig, DistributedBucketSampler, MaskedGeneCollator, MaskedGeneCollateConfig, MaskedValueCollator,
                   MaskedValueCollateConfig, NextTokenCollator, PatchCollator, TokenDataset, build_dataloader)
from .config import OptimConfig, TrainConfig
from .loop import TrainState, evaluate, resume, train, train_step
from .objectives import build_objective
from .pathways import GeneSets, load_gene_sets, read_gmt
from .pretrain import PretrainConfig, build_pretrain_model, run_pretraining

__all__ = [
    "DataConfig", "TokenDataset", "DistributedBucketSampler", "build_dataloader",
    "MaskedValueCollateConfig", "MaskedValueCollator", "MaskedGeneCollateConfig", "MaskedGeneCollator", "NextTokenCollator",
    "PatchCollator", "build_objective", "GeneSets", "read_gmt", "load_gene_sets",
    "OptimConfig", "TrainConfig", "TrainState", "train", "train_step", "evaluate", "resume",
    "save_checkpoint", "load_checkpoint", "verify_checkpoint", "latest_good_checkpoint",
    "PretrainConfig", "build_pretrain_model", "run_pretraining",
]
