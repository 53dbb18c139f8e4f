"""Objectives: every loss against a hand-computed case, the leak test on structureless sequences
(passes for the leak-free objectives, fails for a deliberately leaky one), the pathway loss
pulling same-pathway genes together, and the GMT reader on small and shipped files."""
from __future__ import annotations

import gzip
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cellmamba.errors import InputError
from cellmamba.genes import read_gene_table
from cellmamba.models import BackboneConfig, BackboneOutput, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig
from cellmamba.train.objectives import (
    ContrastiveConfig, ContrastiveObjective, GeneMambaConfig, GeneMambaObjective, MaskedGeneObjective,
    MaskedValueObjective, NextTokenObjective, PathwayContrastiveConfig, PathwayContrastiveLoss, build_objective,
    contrastive_loss, cosine_regulariser, info_nce, masked_mse, shift_targets, symmetric_info_nce,
)
from cellmamba.train.pathways import GeneSets, load_gene_sets, map_gene_sets, read_gmt
from cellmamba.vocab import MASK_ID, N_SPECIAL, Vocabulary

LN = math.log
R = 1 / math.sqrt(2)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class IdentityHead(nn.Module):
    """A token head whose logits are the states themselves (hand-set logits)."""

    def logits(self, states):
        return states

    def forward(self, output):
        return output.hidden


class StubModel(nn.Module):
    """Returns fixed states, so an objective's arithmetic can be checked by hand."""

    def __init__(self, hidden, forward=None, reverse=None, head=None):
        super().__init__()
        self.h, self.f, self.r = hidden, forward, reverse
        self.heads = nn.ModuleDict({"gene": head or IdentityHead()})

    def forward(self, inputs, values=None, *, attention_mask=None, value_mask=None):
        return BackboneOutput(self.h, attention_mask, self.f, self.r)


def tiny_model(kind="rank", arch="bimamba_mamba2", *, n_genes=64, heads=None, n_layers=1, seed=0):
    torch.manual_seed(seed)
    vs = N_SPECIAL + n_genes
    emb = EmbeddingConfig(kind=kind, vocab_size=vs, n_bins=8, patch_size=4, max_patches=8)
    bb = BackboneConfig(arch=arch, d_model=16, n_layers=n_layers, d_state=8, headdim=8, chunk_size=16, n_heads=2,
                        backend="torch")
    return CellModel(CellModelConfig(emb, bb, heads or {"gene": HeadConfig("token_classification", n_out=vs)}))


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# ---------------------------------------------------------------------------------------------
# scmamba2: masked values
# ---------------------------------------------------------------------------------------------
def test_masked_mse_hand_computed_and_ignores_unmasked():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan"), 0.0], [-7.0, 0.0, 9.0]])  # NaN / -7 sit outside the mask
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss = masked_mse(pred, target, mask)
    # (1-0)^2 + (3-0)^2 + (6-9)^2 = 1 + 9 + 9 over 3 masked positions
    assert loss.item() == pytest.approx(19 / 3)
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask] != 0)
    # nothing masked: 0, still differentiable
    zero = masked_mse(pred, target, torch.zeros_like(mask))
    assert zero.item() == 0 and zero.requires_grad
    with pytest.raises(InputError, match="one shape"):
        masked_mse(pred, target[:, :2], mask)


def test_masked_value_objective_reads_only_masked_targets():
    model = tiny_model("binned", heads={"value": HeadConfig("value_regression")}, n_genes=12)
    ids = torch.tensor([[1, 5, 7, 9, 11], [1, 6, 8, 0, 0]])
    attn = ids != 0
    values = torch.tensor([[0, 3, 2, 5, 1], [0, 4, 6, 0, 0]])
    vmask = torch.tensor([[False, True, False, True, False], [False, False, True, False, False]])
    targets = torch.where(vmask, values.float(), 0.0)
    batch = {"input_ids": ids, "attention_mask": attn, "values": values.masked_fill(vmask, -1),
             "value_mask": vmask, "value_targets": targets}
    obj = MaskedValueObjective()
    loss, metrics = obj(model, batch)
    pred = model.heads["value"](model(ids, batch["values"], attention_mask=attn, value_mask=vmask))
    want = ((pred - targets)[vmask] ** 2).mean()
    torch.testing.assert_close(loss, want)
    assert metrics["n_masked"] == 3 and metrics["mse"] == pytest.approx(float(want.detach()))
    # targets outside the mask do not matter; inside they do
    other = dict(batch, value_targets=targets + (~vmask).float() * 100)
    assert obj(model, other)[0].item() == pytest.approx(loss.item())
    moved = dict(batch, value_targets=targets + vmask.float())
    assert obj(model, moved)[0].item() != pytest.approx(loss.item())
    with pytest.raises(InputError, match="value_mask"):
        obj(model, {k: v for k, v in batch.items() if k != "value_mask"})


# ---------------------------------------------------------------------------------------------
# genemamba: masked gene and next token, hand-computed
# ---------------------------------------------------------------------------------------------
def test_masked_gene_cross_entropy_with_ignore_hand_computed():
    # 1 cell, 3 positions, 3 classes; labels [2, -100, 0]
    logits = torch.tensor([[[0.0, 0.0, LN(2)], [50.0, -50.0, 9.0], [LN(3), 0.0, 0.0]]])
    model = StubModel(logits)
    batch = {"input_ids": torch.tensor([[MASK_ID, 5, MASK_ID]]), "attention_mask": torch.ones(1, 3, dtype=torch.bool),
             "labels": torch.tensor([[2, -100, 0]])}
    loss, metrics = MaskedGeneObjective()(model, batch)
    # p(2 | pos 0) = 2 / (1 + 1 + 2) = 1/2; p(0 | pos 2) = 3 / (3 + 1 + 1) = 3/5; position 1 ignored
    assert loss.item() == pytest.approx((LN(2) + LN(5 / 3)) / 2)
    assert metrics["n_targets"] == 2 and metrics["accuracy"] == pytest.approx(1.0)
    # the collator's flat target positions select the same targets without a boolean mask (0 and 2 of
    # the (1, 3) batch); a wrong index changes the loss, so the index is what is read
    indexed, indexed_metrics = MaskedGeneObjective()(model, dict(batch, target_index=torch.tensor([0, 2])))
    assert indexed.item() == pytest.approx(loss.item(), rel=1e-7) and indexed_metrics["n_targets"] == 2
    assert MaskedGeneObjective()(model, dict(batch, target_index=torch.tensor([0])))[0].item() == pytest.approx(LN(2))


def test_shift_targets_hand_computed():
    labels = torch.tensor([[1, 4, 5, 6], [1, 7, -100, -100]])
    attn = labels != -100
    nxt, prv = shift_targets(labels, attn)
    assert nxt.tolist() == [[4, 5, 6, -100], [7, -100, -100, -100]]
    assert prv.tolist() == [[-100, -100, 4, 5], [-100, -100, -100, -100]]  # <cls> is not a target
    nxt, prv = shift_targets(labels, attn, predict_special=True)
    assert prv.tolist() == [[-100, 1, 4, 5], [-100, 1, -100, -100]]


def test_next_token_objective_hand_computed():
    C = 6  # 4 special tokens + genes 4, 5
    fwd = torch.zeros(2, 3, C)
    rev = torch.zeros(2, 3, C)
    fwd[0, 0, 5] = LN(3)          # row 0 pos 0 predicts token 5: p = 3 / 8
    rev[0, 2, 5] = LN(5)          # row 0 pos 2 predicts token 5 backwards: p = 5 / 10
    rev[1, 1, 1] = -50.0          # row 1 pos 1 would predict <cls>: not a target, so harmless
    rev[1, 2, :] = -50.0          # padding: would be a huge loss if it were counted
    rev[1, 2, 5] = 50.0
    model = StubModel(torch.zeros(2, 3, C), fwd, rev)
    labels = torch.tensor([[4, 5, 4], [1, 5, -100]])
    attn = labels != -100
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": attn, "labels": labels}
    loss, metrics = NextTokenObjective()(model, batch)
    # forward targets: (r0 p0 -> 5, p = 3/8), (r0 p1 -> 4, 1/6), (r1 p0 -> 5, 1/6)
    loss_next = (LN(8 / 3) + LN(6) + LN(6)) / 3
    # reverse targets: (r0 p1 -> 4, 1/6), (r0 p2 -> 5, 1/2); r1 p1 -> <cls> ignored; r1 p2 padding
    loss_prev = (LN(6) + LN(2)) / 2
    assert metrics["loss_next"] == pytest.approx(loss_next)
    assert metrics["loss_prev"] == pytest.approx(loss_prev)
    assert loss.item() == pytest.approx((loss_next + loss_prev) / 2)
    assert metrics["n_targets"] == 5


def test_next_token_needs_direction_wise_states():
    batch = {"input_ids": torch.randint(4, 20, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.bool)}
    batch["labels"] = batch["input_ids"].clone()
    for arch, kw in (("transformer", {}), ("bimamba_mamba2", {})):
        model = tiny_model(arch=arch, n_genes=16)
        if arch == "bimamba_mamba2":  # merged every layer: no causal direction-wise states either
            model = CellModel(CellModelConfig(model.config.embedding, BackboneConfig(
                **{**model.config.backbone.__dict__, "merge_every": "layer"}), model.config.heads))
        with pytest.raises(InputError, match="next_token objective.*direction-wise"):
            NextTokenObjective()(model, batch)
        # the masked objective works for the same model
        loss, _ = MaskedGeneObjective()(model, dict(batch, labels=batch["labels"].masked_fill(
            torch.rand(2, 6, generator=torch.Generator().manual_seed(0)) > 0.3, -100)))
        assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# the leak test: structureless random sequences
# ---------------------------------------------------------------------------------------------
V = 64  # genes; tokens uniform over them carry no information about each other
STEPS = 80


def random_batch(g, *, masked=False, B=8, L=32):
    ids = torch.randint(N_SPECIAL, N_SPECIAL + V, (B, L), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(B, L, dtype=torch.bool), "labels": ids.clone()}
    if masked:
        hide = torch.rand(B, L, generator=g) < 0.25
        batch["input_ids"] = ids.masked_fill(hide, MASK_ID)
        batch["labels"] = ids.masked_fill(~hide, -100)
    return batch


def train_on_noise(objective, *, masked=False):
    """Mean loss of the last 10 of STEPS Adam steps, each on fresh random sequences."""
    model = tiny_model(n_genes=V)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        loss, _ = objective(model, random_batch(g, masked=masked))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


def leaky_next_token(model, batch):
    """Deliberately wrong: the MERGED states predict the next token (reverse half sees it)."""
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    nxt, _ = shift_targets(batch["labels"], batch["attention_mask"])
    logits = model.heads["gene"](out)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), nxt.reshape(-1)), {}


def leaky_masked_gene(model, batch):
    """Deliberately wrong: the targets are left visible in the input."""
    out = model(batch["labels"].masked_fill(batch["labels"] < 0, MASK_ID), attention_mask=batch["attention_mask"])
    logits = model.heads["gene"](out)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)), {}


def test_next_token_does_not_leak_on_random_sequences():
    assert train_on_noise(NextTokenObjective()) > 0.9 * LN(V)


def test_leak_test_catches_merged_states_predicting_the_next_token():
    assert train_on_noise(leaky_next_token) < 0.8 * LN(V)


def test_masked_gene_does_not_leak_on_random_sequences():
    assert train_on_noise(MaskedGeneObjective(), masked=True) > 0.9 * LN(V)


def test_leak_test_catches_visible_masked_targets():
    assert train_on_noise(leaky_masked_gene, masked=True) < 0.5 * LN(V)


# ---------------------------------------------------------------------------------------------
# InfoNCE, cosine regulariser, scmamba
# ---------------------------------------------------------------------------------------------
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
K = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # lengths do not matter (cosine)
# cos(q_i, k_j), by hand
COS = [[1, R, 0], [0, R, 1], [R, 1, R]]


def test_info_nce_three_items_hand_computed():
    T = 0.5
    s = [[c / T for c in row] for row in COS]
    want = sum(-s[i][i] + lse(*s[i]) for i in range(3)) / 3
    assert info_nce(Q, K, temperature=T).item() == pytest.approx(want, rel=1e-6)
    # key 2 is not a negative of query 0 (e.g. it shares query 0's pathway); diagonal always kept
    exclude = torch.tensor([[False, False, True], [False, True, False], [False, False, False]])
    want_ex = (-s[0][0] + lse(s[0][0], s[0][1]) - s[1][1] + lse(*s[1]) - s[2][2] + lse(*s[2])) / 3
    assert info_nce(Q, K, temperature=T, exclude=exclude).item() == pytest.approx(want_ex, rel=1e-6)
    # symmetric: the transpose's rows
    st = [[s[j][i] for j in range(3)] for i in range(3)]
    want_t = sum(-st[i][i] + lse(*st[i]) for i in range(3)) / 3
    assert symmetric_info_nce(Q, K, temperature=T).item() == pytest.approx((want + want_t) / 2, rel=1e-6)


def test_cosine_regulariser_and_contrastive_loss_hand_computed():
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    # cos = 1/sqrt(2) and -1
    assert cosine_regulariser(za, zb).item() == pytest.approx(((1 - R) + 2) / 2)
    assert cosine_regulariser(za, za).item() == pytest.approx(0.0, abs=1e-7)
    T = 1.0
    s = [[R, 0.0], [R, -1.0]]  # cos(za_i, zb_j) by hand
    nce_ab = (-s[0][0] + lse(*s[0]) - s[1][1] + lse(*s[1])) / 2
    nce_ba = (-s[0][0] + lse(s[0][0], s[1][0]) - s[1][1] + lse(s[0][1], s[1][1])) / 2
    loss, metrics = contrastive_loss(za, zb, temperature=T, cosine_weight=0.5)
    assert metrics["infonce"] == pytest.approx((nce_ab + nce_ba) / 2, rel=1e-6)
    assert loss.item() == pytest.approx((nce_ab + nce_ba) / 2 + 0.5 * ((1 - R) + 2) / 2, rel=1e-6)
    assert metrics["retrieval_acc"] == pytest.approx(0.5)  # row 1's best match is zb_0


def test_contrastive_objective_with_two_patch_towers():
    proj = {"projection": HeadConfig("projection", n_out=8, pooling="last")}
    towers = nn.Module()
    towers.towers = nn.ModuleDict({"rna": tiny_model("patch", arch="mamba2", heads=proj, seed=1),
                                   "atac": tiny_model("patch", arch="mamba2", heads=proj, seed=2)})
    g = torch.Generator().manual_seed(0)
    batch = {"rna_values": torch.randn(4, 3, 4, generator=g), "atac_values": torch.randn(4, 5, 4, generator=g),
             "rna_attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool()}
    obj = build_objective("scmamba", {"modalities": ["rna", "atac"], "temperature": 0.2, "cosine_weight": 0.3})
    loss, metrics = obj(towers, batch)
    assert torch.isfinite(loss) and set(metrics) == {"infonce", "cosine_reg", "retrieval_acc"}
    loss.backward()
    for name in ("rna", "atac"):
        assert towers.towers[name].embed.patch.weight.grad.abs().sum() > 0
    # the same loss from the embeddings directly
    z = [towers.towers[m].heads["projection"](towers.towers[m](batch[f"{m}_values"],
                                                                attention_mask=batch.get(f"{m}_attention_mask")))
         for m in ("rna", "atac")]
    want, _ = contrastive_loss(*z, temperature=0.2, cosine_weight=0.3)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(InputError, match="no tower 'other'"):
        ContrastiveObjective()(towers, batch)


# ---------------------------------------------------------------------------------------------
# pathway-aware contrastive loss
# ---------------------------------------------------------------------------------------------
def toy_sets(n_sets=6, size=4):
    return GeneSets(tuple(f"P{k}" for k in range(n_sets)),
                    tuple(np.arange(size, dtype=np.int64) + N_SPECIAL + size * k for k in range(n_sets)))


def pair_cosines(weight, sets):
    w = nn.functional.normalize(weight.detach(), dim=-1)
    same, diff = [], []
    for a, ma in enumerate(sets.members):
        for b, mb in enumerate(sets.members):
            c = w[torch.as_tensor(ma)] @ w[torch.as_tensor(mb)].T
            if a == b:
                same.append(c[~torch.eye(len(ma), dtype=torch.bool)])
            else:
                diff.append(c.flatten())
    return torch.cat(same).mean().item(), torch.cat(diff).mean().item()


def test_pathway_loss_pulls_same_pathway_genes_together():
    sets = toy_sets()
    torch.manual_seed(0)
    emb = nn.Parameter(torch.randn(N_SPECIAL + 24, 8))
    same0, diff0 = pair_cosines(emb, sets)
    assert abs(same0 - diff0) < 0.3
    loss_fn = PathwayContrastiveLoss(sets, PathwayContrastiveConfig(temperature=0.1, n_pathways=6))
    opt = torch.optim.Adam([emb], lr=0.05)
    first = None
    for _ in range(40):
        loss, metrics = loss_fn(emb)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    same, diff = pair_cosines(emb, sets)
    assert same > diff + 0.5, (same, diff)
    assert loss.item() < first


def test_pathway_sampling_and_false_negatives():
    sets = GeneSets(("A", "B", "C"), (np.array([4, 5, 6]), np.array([6, 7, 8]), np.array([9, 10])))
    loss_fn = PathwayContrastiveLoss(sets, PathwayContrastiveConfig(n_pathways=8))
    torch.manual_seed(0)
    for _ in range(20):
        k, a, p = loss_fn.sample()
        assert sorted(k.tolist()) == [0, 1, 2]
        for kk, aa, pp in zip(k.tolist(), a.tolist(), p.tolist()):
            assert aa != pp and aa in sets.members[kk] and pp in sets.members[kk]
    # gene 6 is in A and B: for an anchor of A it is no negative
    got = loss_fn._members_of(torch.tensor([0, 1, 2]), torch.tensor([6, 8, 10]))
    assert got.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    with pytest.raises(InputError, match="embedding table"):
        loss_fn(torch.zeros(8, 4))  # token id 10 has no row


def test_genemamba_objective_sums_lm_and_weighted_pathway_loss():
    model = tiny_model(n_genes=24)
    batch = random_batch(torch.Generator().manual_seed(0), B=2, L=8)
    batch["input_ids"] = batch["input_ids"].clamp(max=N_SPECIAL + 23)
    batch["labels"] = batch["input_ids"].clone()
    obj = GeneMambaObjective(GeneMambaConfig(pathway_weight=0.5, pathway_n=4), toy_sets())
    torch.manual_seed(3)
    loss, metrics = obj(model, batch)
    lm, _ = NextTokenObjective()(model, batch)
    torch.manual_seed(3)
    pw, _ = obj.pathway(model.embed.gene.weight)
    assert loss.item() == pytest.approx(lm.item() + 0.5 * pw.item(), rel=1e-6)
    assert metrics["lm_loss"] == pytest.approx(lm.item()) and metrics["pathway_loss"] == pytest.approx(pw.item())
    loss.backward()
    assert model.embed.gene.weight.grad[N_SPECIAL:].abs().sum() > 0
    with pytest.raises(InputError, match="needs gene sets"):
        GeneMambaObjective(GeneMambaConfig(pathway_weight=0.1))
    off = GeneMambaObjective(GeneMambaConfig(pathway_weight=0.0, lm="masked_gene"))
    assert off.pathway is None and isinstance(off.lm, MaskedGeneObjective)


# ---------------------------------------------------------------------------------------------
# GMT reading and mapping
# ---------------------------------------------------------------------------------------------
def toy_vocab():
    names = ["TP53", "MYC", "EGFR", "GAPDH", "MYC", "ACTB"]  # MYC twice: maps to the first (token 5)
    return Vocabulary(np.array([f"ENSG{i:011d}" for i in range(len(names))]), np.array(names))


@pytest.mark.parametrize("compressed", [False, True])
def test_read_and_map_small_gmt(tmp_path, caplog, compressed):
    text = ("SET_A\tdesc a\tTP53\tMYC\tNOTAGENE\tTP53\n"
            "SET_B\thttp://x\tEGFR\tFAKE1\n"            # 1 mapped gene: dropped
            "\n"
            "SET_C\t\tGAPDH\tACTB\tEGFR\t\n")
    path = tmp_path / ("s.gmt.gz" if compressed else "s.gmt")
    if compressed:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    sets = read_gmt(path)
    assert sets == {"SET_A": ["TP53", "MYC", "NOTAGENE"], "SET_B": ["EGFR", "FAKE1"],
                    "SET_C": ["GAPDH", "ACTB", "EGFR"]}
    with caplog.at_level(logging.INFO, logger="cellmamba.train.pathways"):
        gs = map_gene_sets(sets, toy_vocab(), source="toy")
    assert gs.names == ("SET_A", "SET_C")
    assert [m.tolist() for m in gs.members] == [[4, 5], [6, 7, 9]]
    assert "5 of 7 distinct symbols" in caplog.text and "2 unmapped" in caplog.text
    assert "1 with < 2 mapped genes dropped" in caplog.text


def test_gmt_errors(tmp_path):
    bad = tmp_path / "bad.gmt"
    bad.write_text("SET_A\tdesc\tTP53\nSET_B\tonly-two-fields\n")
    with pytest.raises(InputError, match=r"bad.gmt:2: expected"):
        read_gmt(bad)
    dup = tmp_path / "dup.gmt"
    dup.write_text("S\td\tTP53\tMYC\nS\td\tEGFR\tACTB\n")
    with pytest.raises(InputError, match="appears twice"):
        read_gmt(dup)
    with pytest.raises(InputError, match="no such gene set file"):
        read_gmt(tmp_path / "missing.gmt")
    one = tmp_path / "one.gmt"
    one.write_text("S\td\tTP53\tNOPE\n")  # a single mapped gene: no usable set
    with pytest.raises(InputError, match="no gene set"):
        load_gene_sets([one], toy_vocab())


SHIPPED = {"h.all.v7.5.1.symbols.gmt": ("HALLMARK_", 50), "c2.cp.reactome.v7.5.1.symbols.gmt.gz": ("REACTOME_", 1615),
           "go_bp_5to500_symbols.gmt.gz": ("GO:", 9006)}


@pytest.fixture(scope="module")
def census_vocab(repo_root):
    table = read_gene_table(repo_root / "resources" / "genes" / "cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    return Vocabulary(table["feature_id"].to_numpy(str), table["feature_name"].to_numpy(str))


def test_shipped_gene_sets(repo_root, census_vocab):
    folder = repo_root / "resources" / "gene_sets"
    assert sorted(p.name for p in folder.iterdir()) == sorted(SHIPPED)
    for name, (prefix, n) in SHIPPED.items():
        sets = read_gmt(folder / name)
        assert len(sets) == n and all(k.startswith(prefix) for k in sets)
        assert not any("KEGG" in k.upper() for k in sets)
    gs = load_gene_sets([folder / "h.all.v7.5.1.symbols.gmt", folder / "c2.cp.reactome.v7.5.1.symbols.gmt.gz"],
                        census_vocab)
    assert len(gs) > 0.95 * (50 + 1615)
    assert all(m.min() >= N_SPECIAL and m.max() < census_vocab.size for m in gs.members)
    tp53 = N_SPECIAL + int(np.flatnonzero(census_vocab.feature_names == "TP53")[0])
    assert tp53 in gs.members[gs.names.index("HALLMARK_P53_PATHWAY")]


# ---------------------------------------------------------------------------------------------
# build_objective
# ---------------------------------------------------------------------------------------------
def test_build_objective(repo_root, census_vocab):
    assert isinstance(build_objective("scmamba2"), MaskedValueObjective)
    assert isinstance(build_objective("masked_gene"), MaskedGeneObjective)
    gm = build_objective("genemamba", {"pathway_weight": 0.0})
    assert isinstance(gm.lm, NextTokenObjective)  # the default language-like objective
    gmt = repo_root / "resources" / "gene_sets" / "h.all.v7.5.1.symbols.gmt"
    gm = build_objective("genemamba", {"lm": "masked_gene"}, vocabulary=census_vocab, gene_sets=[gmt])
    assert isinstance(gm.lm, MaskedGeneObjective) and len(gm.pathway.gene_sets) == 50
    with pytest.raises(InputError, match="compared with"):
        build_objective("transformer")
    with pytest.raises(InputError, match=r"unknown objective settings \['mask_ratio'\]"):
        build_objective("scmamba2", {"mask_ratio": 0.15})
    with pytest.raises(InputError, match="needs gene sets"):
        build_objective("genemamba")
    with pytest.raises(InputError, match="need vocabulary"):
        build_objective("genemamba", gene_sets=[gmt])
    with pytest.raises(InputError, match="lm must be one of"):
        build_objective("genemamba", {"lm": "causal"})
    with pytest.raises(InputError, match="unknown recipe"):
        build_objective("geneformer")
    with pytest.raises(InputError, match="temperature"):
        build_objective("scmamba", {"temperature": -1})
    with pytest.raises(InputError, match="modalities"):
        ContrastiveConfig(modalities=("rna", "rna"))


def test_objectives_leave_their_metrics_on_the_device(monkeypatch):
    """No objective reads a tensor into Python (each read waits for the GPU): metrics are 0-d tensors
    that the training loop reads once per step (issue 23). The values stay the hand-computed ones,
    and a batch without targets still gives a loss of 0 attached to the graph."""
    from _train_toy import ReadCounter

    C = 6
    fwd = torch.zeros(2, 3, C)
    fwd[0, 0, 5] = LN(3)  # row 0 pos 0 predicts its target 5: 1 of the 5 targets right (argmax 0 elsewhere)
    model = StubModel(torch.zeros(2, 3, C), fwd, torch.zeros(2, 3, C))
    labels = torch.tensor([[4, 5, 4], [1, 5, -100]])
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": labels != -100, "labels": labels}
    za, zb = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.5, -1.0]])  # row 0 finds zb_0, row 1 too
    none = {"input_ids": torch.tensor([[1, 5]]), "attention_mask": torch.ones(1, 2, dtype=torch.bool),
            "labels": torch.full((1, 2), -100)}
    counter = ReadCounter(monkeypatch)
    loss, metrics = NextTokenObjective()(model, batch)
    c_loss, c_metrics = contrastive_loss(za, zb, temperature=0.5, cosine_weight=0.5)
    empty, e_metrics = MaskedGeneObjective()(StubModel(torch.zeros(1, 2, C, requires_grad=True)), none)
    reads = counter.n
    monkeypatch.undo()
    assert reads == 0, reads
    assert all(torch.is_tensor(v) and v.ndim == 0 for m in (metrics, c_metrics, e_metrics) for v in m.values())
    assert float(metrics["n_targets"]) == 5 and float(metrics["accuracy"]) == pytest.approx(1 / 5)
    assert float(c_metrics["retrieval_acc"]) == pytest.approx(0.5)
    assert float(empty) == 0.0 and empty.requires_grad and float(e_metrics["n_targets"]) == 0
