"""Gene embeddings and per-position predictions of a tiny random genemamba model
(cellmamba.gene_analyses) against naive per-cell loops."""
import numpy as np
import pytest
import torch

from cellmamba.errors import InputError
from cellmamba.gene_analyses import (contextual_embeddings, load_gene_model, predict_positions, sample_cells,
                                   token_embeddings)
from cellmamba.tasks.tokens import DatasetTokens
from cellmamba.tokenize import TokenBatch
from cellmamba.vocab import MASK_ID, N_SPECIAL

N_GENES = 30


def _model(backbone="bimamba_mamba2", lm="masked_gene", merge_every=None, seed=0):
    from cellmamba.train.pretrain import PretrainConfig, build_pretrain_model

    torch.manual_seed(seed)
    config = PretrainConfig(recipe="genemamba", backbone=backbone, d_model=32, n_layers=2, d_state=8, backend="torch",
                            lm=lm, merge_every=merge_every)
    return build_pretrain_model(config, n_genes=N_GENES).eval()


def _tokens(lengths=(5, 9, 3, 7, 9), seed=0) -> DatasetTokens:
    rng = np.random.default_rng(seed)
    cells = [rng.choice(N_GENES, size=n, replace=False) + N_SPECIAL for n in lengths]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cells])]).astype(np.int64)
    batch = TokenBatch(offsets=offsets, tokens=np.concatenate(cells).astype(np.uint32), values=None)
    return DatasetTokens(batch, np.ones(N_GENES, bool), "rank", "counts", N_GENES, 0, max(lengths))


def _cells(tokens):
    return [torch.as_tensor(tokens.batch.cell(c)[0].astype(np.int64)) for c in range(len(tokens.batch))]


def test_input_table_embedding_is_the_embedding_rows_of_the_genes():
    model = _model()
    ids = np.array([N_SPECIAL + 3, N_SPECIAL, N_SPECIAL + 29])
    got = token_embeddings(model, ids)
    assert got.shape == (3, 32)
    assert np.array_equal(got, model.embed.gene.weight.detach()[torch.as_tensor(ids)].numpy())


def test_contextual_average_equals_a_naive_loop_over_cells():
    model, tokens = _model(), _tokens()
    wanted = np.array([N_SPECIAL + g for g in range(N_GENES)])
    means, counts = contextual_embeddings(model, tokens, wanted, batch_size=2, device="cpu")  # padded batches
    sums, naive_counts = np.zeros((N_GENES, 32)), np.zeros(N_GENES, dtype=int)
    with torch.no_grad():
        for ids in _cells(tokens):  # one cell at a time: no padding
            hidden = model(ids[None]).hidden[0].double().numpy()
            for pos, tok in enumerate(ids.tolist()):
                sums[tok - N_SPECIAL] += hidden[pos]
                naive_counts[tok - N_SPECIAL] += 1
    assert np.array_equal(counts, naive_counts)
    seen = naive_counts > 0
    assert (~seen).any() and seen.sum() > 10  # some genes appear in no cell: zeros there
    assert np.allclose(means[seen], sums[seen] / naive_counts[seen, None], atol=1e-5)
    assert np.array_equal(means[~seen], np.zeros(((~seen).sum(), 32)))


def test_masked_reconstruction_predicts_each_position_once_hidden():
    model, tokens = _model(), _tokens()
    got = predict_positions(model, tokens, lm="masked_gene", mask_ratio=0.34, seed=7, batch_size=2, device="cpu")
    n_passes = 3  # round(1 / 0.34)
    head = model.heads["gene"]
    with torch.no_grad():
        for c, ids in enumerate(_cells(tokens)):  # the documented scheme, cell by cell
            order = np.random.default_rng([7, 24, c]).permutation(len(ids))
            group = np.empty(len(ids), dtype=int)
            group[order] = np.arange(len(ids)) % n_passes
            expected = np.full(len(ids), -1)
            for k in range(n_passes):
                hide = torch.from_numpy(group == k)
                logits = head.logits(model(ids.masked_fill(hide, MASK_ID)[None]).hidden[0])
                expected[hide.numpy()] = (logits[:, N_SPECIAL:].argmax(-1) + N_SPECIAL).numpy()[hide.numpy()]
            assert np.array_equal(got[c], expected), c
            assert (got[c] >= N_SPECIAL).all()  # a gene everywhere, never a special token
    # the prediction at a position never reads the gene there (it was hidden): change one gene, same prediction
    changed = _tokens()
    start = int(changed.batch.offsets[1])
    original = int(changed.batch.tokens[start + 2])
    changed.batch.tokens[start + 2] = next(t for t in range(N_SPECIAL, N_SPECIAL + N_GENES)
                                           if t not in changed.batch.cell(1)[0])
    again = predict_positions(model, changed, lm="masked_gene", mask_ratio=0.34, seed=7, batch_size=2, device="cpu")
    assert original != int(changed.batch.tokens[start + 2])
    assert again[1][2] == got[1][2]


def test_next_token_reconstruction_reads_the_neighbours_states():
    model, tokens = _model(backbone="mamba2", lm="next_token"), _tokens()  # unidirectional: forward states only
    got = predict_positions(model, tokens, lm="next_token", batch_size=3, device="cpu")
    head = model.heads["gene"]
    with torch.no_grad():
        for c, ids in enumerate(_cells(tokens)):
            logits = head.logits(model(ids[None]).hidden[0])
            assert got[c][0] == -1  # nothing before position 0 predicts it
            assert np.array_equal(got[c][1:], (logits[:-1, N_SPECIAL:].argmax(-1) + N_SPECIAL).numpy())
    bi = _model(lm="next_token", merge_every="stack")
    both = predict_positions(bi, tokens, lm="next_token", batch_size=2, device="cpu")
    assert all((p >= N_SPECIAL).all() for p in both)  # both neighbours: every position predicted
    with pytest.raises(InputError, match="lm must be"):
        predict_positions(model, tokens, lm="masked_value")


def test_scratch_control_is_the_seeded_initialisation_of_the_model_s_config(tmp_path):
    from cellmamba._util import seed_all

    trained = _model(seed=0)
    with torch.no_grad():
        trained.embed.gene.weight.add_(1.0)  # "pretrained" weights differ from any initialisation
    trained.save_pretrained(tmp_path / "model")
    from cellmamba.train.pretrain import PretrainConfig, build_pretrain_model

    seed_all(5)
    expected = build_pretrain_model(PretrainConfig(recipe="genemamba", d_model=32, n_layers=2, d_state=8,
                                                   backend="torch"), n_genes=N_GENES).state_dict()
    scratch = load_gene_model(tmp_path / "model", init="scratch", seed=5).state_dict()
    loaded = load_gene_model(tmp_path / "model").state_dict()
    assert all(torch.equal(scratch[k], expected[k]) for k in expected)
    assert torch.equal(loaded["embed.gene.weight"], trained.state_dict()["embed.gene.weight"])
    assert not torch.equal(scratch["embed.gene.weight"], loaded["embed.gene.weight"])


def test_cell_sample_is_seeded_and_sorted():
    a = sample_cells(100, 10, 3)
    assert len(a) == 10 and (np.diff(a) > 0).all() and np.array_equal(a, sample_cells(100, 10, 3))
    assert np.array_equal(sample_cells(5, 10, 3), np.arange(5))
