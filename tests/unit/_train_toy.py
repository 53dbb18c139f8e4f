"""A toy task for the training-loop tests, importable by them and runnable as a script (subprocess,
torchrun) so that a real process can be killed and resumed.

Task: token classification y = (3 * x + 1) mod V on random token sequences (learnable exactly by
embedding + linear). The collator masks tokens at random with the global torch RNG and the model
has dropout, so determinism after resume covers RNG restoration, not only weights.

Script: ``python _train_toy.py OUT --steps 8 [--kill-at 5] [--batch-size 4] ...``; under torchrun
each rank takes its DistributedSampler share.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

VOCAB, SEQ_LEN, N_ROWS, D_MODEL = 16, 8, 48, 16
MASK_ID = 0


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.mix = nn.Parameter(torch.eye(D_MODEL))  # 2-d but flagged: never decayed
        self.mix._no_weight_decay = True
        self.norm = nn.LayerNorm(D_MODEL)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(D_MODEL, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(self.embed(input_ids) @ self.mix)))


def toy_objective(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(batch["input_ids"])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), batch["labels"].reshape(-1))
    acc = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    return loss, {"accuracy": acc}


def toy_dataset(seed: int = 1234) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (N_ROWS, SEQ_LEN), generator=g)
    return TensorDataset(x, (3 * x + 1) % VOCAB)


class MaskingCollator:
    """Stack rows into a dict batch; hide a random fraction of inputs (global torch RNG)."""

    def __init__(self, mask_prob: float):
        self.mask_prob = mask_prob

    def __call__(self, rows):
        x = torch.stack([r[0] for r in rows])
        y = torch.stack([r[1] for r in rows])
        if self.mask_prob > 0:
            x = x.masked_fill(torch.rand(x.shape) < self.mask_prob, MASK_ID)
        return {"input_ids": x, "labels": y, "attention_mask": torch.ones_like(x, dtype=torch.bool)}


def toy_loader(batch_size: int, *, mask_prob: float = 0.15, rank: int = 0, world_size: int = 1,
               shuffle: bool = True, sampler: str = "distributed") -> DataLoader:
    """sampler "distributed": DistributedSampler (seeded, set_epoch); "random": torch's RandomSampler
    (no set_epoch; draws its seed from the global torch RNG when the epoch starts)."""
    ds = toy_dataset()
    if sampler == "random":
        return DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=MaskingCollator(mask_prob), drop_last=True)
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=7, drop_last=True)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=MaskingCollator(mask_prob), drop_last=True)


def main(argv=None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from cellmamba.runlog import setup_logging
    from cellmamba.train.loop import TrainConfig, train

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--kill-at", type=int, default=None, help="SIGKILL this process after this step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--sampler", choices=("distributed", "random"), default="distributed")
    a = p.parse_args(argv)

    setup_logging(Path(a.out) / f"log-{os.getpid()}.txt")
    torch.set_num_threads(1)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    torch.manual_seed(0)
    model = ToyModel(dropout=a.dropout)
    config = TrainConfig(lr=0.05, warmup_steps=2, max_steps=a.steps, grad_clip=1.0, grad_accum=a.grad_accum,
                         batch_size=a.batch_size, log_every=1, checkpoint_every=a.checkpoint_every,
                         keep_checkpoints=None, seed=3, progress=False)

    def kill(state):
        if a.kill_at is not None and state.step == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    loader = toy_loader(a.batch_size, mask_prob=a.mask_prob, rank=rank, world_size=world, sampler=a.sampler)
    train(model, toy_objective, loader, config, out_dir=a.out, step_callback=kill)



class ReadCounter:
    """Counts the reads of tensor values into Python (``item``, ``tolist``, ``float()``, ``int()``,
    ``bool()``): on a GPU each waits for the device. ``paused`` while the optimizer updates (AdamW
    reads its CPU step counter; that is no device wait)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__")

    def __init__(self, monkeypatch):
        self.n, self.paused = 0, False
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, **k):
                if not self.paused:
                    self.n += 1
                return _original(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, counted)


if __name__ == "__main__":
    main()
