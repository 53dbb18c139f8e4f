"""Backbones: padding never matters, directions are causal, layers learn, same-size Transformer."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cellmamba.errors import InputError
from cellmamba.models import (
    Backbone, BackboneConfig, BiMambaLayer, Mamba1Mixer, Mamba2Mixer, ResidualBlock, check_right_padded, padded_reversal,
    count_parameters, reverse_padded, same_size_transformer,
)

f64 = torch.float64
LENGTHS = (13, 29)  # neither a multiple of the chunk size (8)
SEQ_LEN = 32


def small(arch, **kw):
    base = dict(arch=arch, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=8, n_heads=2, backend="torch")
    return BackboneConfig(**{**base, **kw})


CASES = [small(a, merge=m, merge_every=e)
         for a in ("bimamba_mamba2", "bimamba_mamba1") for m in ("mean", "sum", "gate") for e in ("stack", "layer")]
CASES += [small("mamba2"), small("mamba1"), small("transformer")]


def _id(c):
    return f"{c.arch}-{c.merge}-{c.merge_every}"


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LENGTHS), SEQ_LEN, 16, generator=g, dtype=f64)
    mask = torch.arange(SEQ_LEN) < torch.tensor(LENGTHS)[:, None]
    x[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16, generator=g, dtype=f64)  # loud padding
    return x, mask


@pytest.mark.parametrize("config", CASES, ids=_id)
def test_padded_batch_equals_per_cell_runs(config):
    torch.manual_seed(0)
    model = Backbone(config).double().eval()
    x, mask = padded_batch()
    with torch.no_grad():
        out = model(x, mask)
        # the caller's word that the batch is padded (the collators' batch["padded"]) skips only the check
        hinted = model(x, mask, padded=True)
        for name in ("hidden", "forward", "reverse", "cls"):
            got, want = getattr(hinted, name), getattr(out, name)
            assert (got is None) == (want is None) and (got is None or torch.equal(got, want)), name
        for b, n in enumerate(LENGTHS):
            one = model(x[b:b + 1, :n])  # no padding at all
            unpadded = model(x[b:b + 1, :n], torch.ones(1, n, dtype=torch.bool), padded=False)
            assert torch.equal(unpadded.hidden, one.hidden)
            for name in ("hidden", "forward", "reverse"):
                got, want = getattr(out, name), getattr(one, name)
                assert (got is None) == (want is None)
                if got is not None:
                    torch.testing.assert_close(got[b, :n], want[0], rtol=1e-10, atol=1e-10, msg=f"{name}, cell {b}")
                    assert torch.all(got[b, n:] == 0), f"{name} is not zero at padding"
    if config.arch.startswith("bimamba") and config.merge_every == "stack":
        assert out.forward is not None and out.reverse is not None


@pytest.mark.parametrize("arch", ["bimamba_mamba2", "bimamba_mamba1"])
def test_direction_states_are_causal_in_their_direction(arch):
    """Forward states at i see tokens <= i; reverse states at i see real tokens >= i (leak-free next-token)."""
    torch.manual_seed(0)
    model = Backbone(small(arch, merge="gate")).double().eval()
    x, mask = padded_batch()
    j = 9
    x2 = x.clone()
    x2[:, j] += 1.0
    with torch.no_grad():
        a, b = model(x, mask), model(x2, mask)
    torch.testing.assert_close(a.forward[:, :j], b.forward[:, :j], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.reverse[:, j + 1:], b.reverse[:, j + 1:], rtol=0, atol=1e-12)
    assert (a.forward[:, j:] - b.forward[:, j:]).abs().max() > 1e-6
    assert (a.reverse[:, :j + 1] - b.reverse[:, :j + 1]).abs().max() > 1e-6


def test_reverse_padded_reverses_real_tokens_only_and_is_an_involution():
    x = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([4, 6])
    r = reverse_padded(x, lengths)
    assert r[0, :, 0].tolist() == [3, 2, 1, 0, 4, 5]
    assert r[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]
    assert torch.equal(reverse_padded(r, lengths), x)
    # lengths None: nothing padded, every row reversed whole
    assert reverse_padded(x, None)[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert torch.equal(reverse_padded(x, None), reverse_padded(x, torch.tensor([6, 6])))


def test_left_or_interleaved_padding_is_refused():
    assert check_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [2, 3]
    for bad in ([[0, 1, 1]], [[1, 0, 1]]):
        with pytest.raises(InputError, match="right-padded"):
            check_right_padded(torch.tensor(bad, dtype=torch.bool))
    model = Backbone(small("bimamba_mamba2"))
    with pytest.raises(InputError, match="right-padded"):
        model(torch.randn(1, 3, 16), torch.tensor([[False, True, True]]))


def _check_learns(module, *args):
    x = args[0]
    out = module(*args)
    assert (out - x).abs().max() > 1e-3, "the layer returns its input"
    out.pow(2).sum().backward()
    dead = [n for n, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("mixer_cls", [Mamba2Mixer, Mamba1Mixer])
@pytest.mark.parametrize("merge", ["mean", "sum", "gate"])
def test_bimamba_layer_is_not_identity_and_every_parameter_learns(mixer_cls, merge):
    torch.manual_seed(0)
    kw = dict(headdim=8) if mixer_cls is Mamba2Mixer else {}
    layer = BiMambaLayer(mixer_cls(16, d_state=8, chunk_size=8, backend="torch", **kw), 16, merge=merge)
    x = torch.randn(2, 20, 16)
    mask = (torch.arange(20) < torch.tensor([[15], [20]])).unsqueeze(-1).float()
    _check_learns(layer, x, mask, padded_reversal(torch.tensor([15, 20]), 20))


@pytest.mark.parametrize("config", [c for c in CASES if c.merge == "gate" or not c.arch.startswith("bimamba")], ids=_id)
def test_every_backbone_parameter_learns(config):
    torch.manual_seed(0)
    model = Backbone(config)
    x, mask = padded_batch()
    out = model(x.float(), mask)
    assert (out.hidden - x.float())[mask].abs().max() > 1e-3
    (out.hidden.pow(2).sum() + (0 if out.forward is None else out.forward.sum())).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"parameters without gradient: {dead}"


def test_residual_block_leaves_padding_untouched():
    torch.manual_seed(0)
    block = ResidualBlock(Mamba2Mixer(16, d_state=8, headdim=8, chunk_size=8, backend="torch"), 16)
    x = torch.randn(1, 10, 16)
    mask = (torch.arange(10) < 6).view(1, 10, 1).float()
    assert torch.equal(block(x, mask)[:, 6:], x[:, 6:])


@pytest.mark.parametrize("arch", ["bimamba_mamba2", "bimamba_mamba1", "mamba2"])
@pytest.mark.parametrize("d_model,n_layers", [(32, 2), (512, 6)])
def test_same_size_transformer_is_within_ten_percent(arch, d_model, n_layers):
    mamba = BackboneConfig(arch=arch, d_model=d_model, n_layers=n_layers, d_state=16 if arch.endswith("1") else 64,
                           headdim=16 if d_model == 32 else 64, merge="gate", backend="torch")
    peer = same_size_transformer(mamba)
    assert peer.arch == "transformer" and peer.d_model == mamba.d_model and peer.n_layers == mamba.n_layers
    with torch.device("meta"):
        n_mamba, n_peer = count_parameters(Backbone(mamba)), count_parameters(Backbone(peer))
    assert abs(n_peer - n_mamba) <= 0.10 * n_mamba, (n_peer, n_mamba)
    assert torch.equal(torch.tensor(peer.mlp_hidden), torch.tensor(round(peer.mlp_ratio * d_model)))


def test_same_size_transformer_refuses_an_impossible_match():
    tiny = BackboneConfig(arch="mamba2", d_model=64, n_layers=2, d_state=1, expand=1, headdim=64, backend="torch")
    with pytest.raises(InputError, match="same_size_transformer"):
        same_size_transformer(tiny, tolerance=0.01)


@pytest.mark.parametrize("bad", [dict(arch="bimamba"), dict(merge="max"), dict(backend="gpu"),
                                 dict(d_model=20, headdim=16), dict(arch="transformer", n_heads=3), dict(dropout=1.0),
                                 dict(merge_every="block")])
def test_backbone_config_rejects_bad_values(bad):
    with pytest.raises(InputError, match="BackboneConfig"):
        dataclasses.replace(small("bimamba_mamba2"), **bad)


def test_int32_pieces_cut_the_batch_under_the_kernel_limit(monkeypatch):
    """Inputs over 2**31 elements are run in batch pieces (mamba_ssm indexes with int32)."""
    import torch

    from cellmamba.models import ssm

    monkeypatch.setattr(ssm, "_INT32_LIMIT", 3 * 5 * 4)  # 3 rows of 5 x 4 per piece
    seen = []

    def fn(t, scale):
        seen.append(t.shape[0])
        return t * scale

    x = torch.randn(8, 5, 4)
    out = ssm._in_int32_pieces(fn, x, 2.0)
    assert seen == [3, 3, 2]
    assert torch.equal(out, x * 2.0)
    seen.clear()
    ssm._in_int32_pieces(fn, x, 1.0, width=40)  # one row of 5 x 40 > limit: one row per piece
    assert seen == [1] * 8


# --- the fused CUDA stack's residual bookkeeping (cellmamba.models._fused), checked on CPU ---

def _add_rms_norm_formula(x, residual, weight, eps):
    """What _fused.add_rms_norm computes, written out: (RMSNorm(x + residual), x + residual) in float32."""
    cd = torch.promote_types(x.dtype, torch.float32)
    r = x.to(cd) if residual is None else x.to(cd) + residual
    y = r * torch.rsqrt(r.square().mean(-1, keepdim=True) + eps) * weight
    return y.to(x.dtype), r


@pytest.mark.parametrize("arch,merge_every", [("bimamba_mamba2", "stack"), ("bimamba_mamba2", "layer"),
                                              ("mamba2", "stack"), ("bimamba_mamba1", "stack")])
def test_fused_stack_bookkeeping_matches_plain_blocks(monkeypatch, arch, merge_every):
    """Backbone._stack on the fused path (residual add inside the next norm) computes the same
    function, padding included, as the blocks' own h + update(norm(h)); the fused kernels are
    replaced by their formula so this runs without CUDA (tests/gpu checks the kernels)."""
    import cellmamba.models._fused as fused

    torch.manual_seed(0)
    # backend "auto": on CPU the mixers run the reference; "torch" would keep the stack off the fused path
    cfg = BackboneConfig(arch=arch, d_model=16, n_layers=3, d_state=4, headdim=8, chunk_size=8, merge="gate",
                         merge_every=merge_every, backend="auto")
    model = Backbone(cfg).double()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norm weights, so a misplaced norm shows
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 21, 16, dtype=torch.float64)
    mask = torch.arange(21) < torch.tensor([[21], [9], [1]])
    plain = model(x, mask)
    calls = []
    monkeypatch.setattr(fused, "available", lambda t: True)
    monkeypatch.setattr(fused, "add_rms_norm", lambda *a: calls.append(1) or _add_rms_norm_formula(*a))
    fused_out = model(x, mask)
    assert len(calls) == cfg.n_layers + 1  # one per layer and the final norm: the fused branch ran
    for name in ("hidden", "forward", "reverse"):
        a, b = getattr(plain, name), getattr(fused_out, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_backend_torch_keeps_the_stack_off_the_fused_kernels(monkeypatch):
    """backend "torch" asks for the PyTorch reference: the stack must not take mamba_ssm's fused
    add + norm kernel even where it is available (it did, on CUDA, before)."""
    import cellmamba.models._fused as fused

    def refuse(*args):
        raise AssertionError("fused add_rms_norm called under backend='torch'")

    monkeypatch.setattr(fused, "available", lambda t: True)
    monkeypatch.setattr(fused, "add_rms_norm", refuse)
    cfg = BackboneConfig(arch="bimamba_mamba2", d_model=16, n_layers=2, d_state=4, headdim=8, chunk_size=8,
                         backend="torch")
    out = Backbone(cfg)(torch.randn(2, 9, 16))
    assert out.hidden.shape == (2, 9, 16)
    with pytest.raises(AssertionError, match="fused add_rms_norm"):  # the same model under "auto" takes it
        Backbone(dataclasses.replace(cfg, backend="auto"))(torch.randn(2, 9, 16))


def test_recompute_reaches_every_mamba2_mixer():
    from cellmamba.models import Mamba2Mixer
    from cellmamba.train.pretrain import PretrainConfig, build_pretrain_model

    model = build_pretrain_model(PretrainConfig(recipe="scmamba2", d_model=32, n_layers=2, d_state=8,
                                                recompute=True), n_genes=10)
    mixers = [m for m in model.modules() if isinstance(m, Mamba2Mixer)]
    assert len(mixers) == 2 and all(m.recompute for m in mixers)
    assert not any(m.recompute for m in Backbone(BackboneConfig(d_model=32, n_layers=2, d_state=8)).modules()
                   if isinstance(m, Mamba2Mixer))
