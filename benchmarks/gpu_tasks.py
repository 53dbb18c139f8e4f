"""Issue 6's task models on a GPU: kernel-vs-reference check, then training throughput and peak
memory at the papers' scales, on generated inputs (no AnnData needed on the GPU machine).

- Perturbation (Norman scale): PerturbationModel over a d512 pretrained-shape backbone, 5,045
  genes; training steps of 64 (control, perturbed) pairs x 1,536 genes (scGPT's max_seq_len),
  prediction of 64 pairs x all 5,045 genes; bimamba_mamba2 and its same-size Transformer.
- Multi-omics (BMMC multiome scale): scMamba's two towers, RNA 13,431 genes + ATAC 116,490 peaks
  in patches of 256 (53 + 456 patches per cell), 256 cells per step; mamba2 (published),
  bimamba_mamba2 (ours) and the same-size Transformer.

    python benchmarks/gpu_tasks.py --out OUTDIR [--layers 6] [--steps 20]

Writes OUTDIR/gpu_tasks.csv (device, date, model, arch, parameters, step time, throughput, peak
memory) and prints the kernel-vs-reference differences (fp32, padded batch).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cellmamba.models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, same_size_transformer
from cellmamba.models.perturb import PerturbationModel
from cellmamba.tasks.multiomics import ModalityData, MultiomicsConfig, build_two_tower
from cellmamba.tasks.multiomics import _batch as two_tower_batch
from cellmamba.train.objectives import ContrastiveConfig, ContrastiveObjective, masked_mse
from cellmamba.vocab import N_SPECIAL

N_GENES = 5045
DEV = torch.device("cuda")


def pert_model(arch: str, *, layers: int, backend: str, d_model: int = 512) -> PerturbationModel:
    mamba = BackboneConfig(arch="bimamba_mamba2", d_model=d_model, n_layers=layers, backend=backend)
    backbone = same_size_transformer(mamba) if arch == "transformer" else mamba
    cell = CellModel(CellModelConfig(embedding=EmbeddingConfig(kind="binned", vocab_size=N_SPECIAL + N_GENES),
                                     backbone=backbone))
    return PerturbationModel(cell, seed=0)


def pert_batch(b: int, length: int, rng: np.random.Generator, *, pad: int = 0) -> dict[str, torch.Tensor]:
    genes = np.sort(np.stack([rng.choice(N_GENES, length, replace=False) for _ in range(b)]), axis=1)
    values = rng.gamma(0.5, 1.0, size=(b, length)).astype(np.float32) * (rng.random((b, length)) < 0.4)
    flags = np.zeros((b, length), dtype=np.int64)
    flags[np.arange(b), rng.integers(0, length, b)] = 1
    mask = np.ones((b, length), dtype=bool)
    if pad:
        mask[1::2, length - pad:] = False
    ids = np.where(mask, genes + N_SPECIAL, 0)
    t = {"input_ids": ids, "values": values * mask, "flags": flags * mask, "attention_mask": mask,
         "target": (values + rng.normal(0, 0.1, values.shape).astype(np.float32)) * mask}
    return {k: torch.as_tensor(v).to(DEV) for k, v in t.items()}


def check_pert(layers: int) -> float:
    """Max |kernel - reference| of the perturbation model's output, fp32, padded batch."""
    torch.manual_seed(0)
    cuda = pert_model("bimamba_mamba2", layers=layers, backend="cuda").to(DEV)
    ref = pert_model("bimamba_mamba2", layers=layers, backend="torch").to(DEV)
    ref.load_state_dict(cuda.state_dict(), strict=True)
    b = pert_batch(4, 700, np.random.default_rng(1), pad=200)
    with torch.no_grad():
        out = [m(b["input_ids"], b["values"], b["flags"], b["attention_mask"]) for m in (cuda, ref)]
    return float((out[0] - out[1]).abs()[b["attention_mask"]].max())


def time_steps(step, steps: int, warmup: int = 3) -> tuple[float, float]:
    """Mean seconds per step (after warm-up) and peak GiB."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated() / 2**30


def bench_pert(arch: str, *, layers: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    model = pert_model(arch, layers=layers, backend="cuda" if arch != "transformer" else "auto").to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    train_b, pred_b = pert_batch(64, 1536, rng), pert_batch(64, N_GENES, rng)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(train_b["input_ids"], train_b["values"], train_b["flags"], train_b["attention_mask"])
        loss = masked_mse(pred.float(), train_b["target"], train_b["attention_mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(pred_b["input_ids"], pred_b["values"], pred_b["flags"], pred_b["attention_mask"])

    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for what, step, b, length in (("train", train_step, 64, 1536), ("predict", predict_step, 64, N_GENES)):
        sec, gib = time_steps(step, steps)
        rows.append({"task": "perturbation", "arch": arch, "phase": what, "layers": layers, "params": n_params,
                     "batch": b, "tokens_per_seq": length, "sec_per_step": round(sec, 4),
                     "items_per_s": round(b / sec, 1), "tokens_per_s": round(b * length / sec),
                     "peak_gib": round(gib, 2)})
        print(rows[-1], flush=True)
    return rows


def modality(name: str, n_features: int, n_cells: int, density: float, rng) -> ModalityData:
    m = sp.random(n_cells, n_features, density=density, format="csr", dtype=np.float32, random_state=rng)
    m.data = np.log1p(m.data * 10).astype(np.float32)
    return ModalityData(name=name, features=[f"{name}{i}" for i in range(n_features)], matrix=m, patch_size=256)


def bench_two_tower(arch: str, *, layers: int, steps: int, data) -> list[dict]:
    cfg = MultiomicsConfig(arch=arch, d_model=512, n_layers=layers, d_state=64, patch_size=256, d_out=128,
                           batch_size=256, backend="cuda" if arch != "transformer" else "auto")
    model = build_two_tower(data, cfg, fit_chunk=False).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    objective = ContrastiveObjective(ContrastiveConfig(modalities=tuple(data)))
    rows_idx = np.arange(256)
    batch = {k: v.to(DEV) for k, v in two_tower_batch(data, rows_idx).items()}

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = objective(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec, gib = time_steps(train_step, steps)
    n_tokens = sum(d.n_patches for d in data.values()) * 256
    row = {"task": "multiomics", "arch": arch, "phase": "train", "layers": layers,
           "params": sum(p.numel() for p in model.parameters()), "batch": 256,
           "tokens_per_seq": "+".join(str(d.n_patches) for d in data.values()), "sec_per_step": round(sec, 4),
           "items_per_s": round(256 / sec, 1), "tokens_per_s": round(n_tokens / sec), "peak_gib": round(gib, 2)}
    print(row, flush=True)
    return [row]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    print("perturbation model, kernel vs reference (fp32, padded): max abs diff", check_pert(2), flush=True)
    rows = []
    for arch in ("bimamba_mamba2", "transformer"):
        rows += bench_pert(arch, layers=args.layers, steps=args.steps)
        torch.cuda.empty_cache()
    rng = np.random.default_rng(0)
    data = {"rna": modality("rna", 13431, 256, 0.08, rng), "atac": modality("atac", 116490, 256, 0.03, rng)}
    for arch in ("mamba2", "bimamba_mamba2", "transformer"):
        rows += bench_two_tower(arch, layers=args.layers, steps=args.steps, data=data)
        torch.cuda.empty_cache()
    date = dt.date.today().isoformat()
    with open(args.out / "gpu_tasks.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["device", "date", *rows[0].keys()])
        w.writeheader()
        for r in rows:
            w.writerow({"device": device, "date": date, **r})
    print((args.out / "gpu_tasks.csv").read_text())


if __name__ == "__main__":
    main()
