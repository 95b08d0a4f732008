"""Unit tests of the decoder model: learning, causality, padding, losses, representations."""

from __future__ import annotations

import re

import pytest
import torch

import torch.nn.functional as F

from recsys.modeling.models import BLOCKS, ModelConfig, SeqRecModel, base
from recsys.modeling.models.blocks import Dropout, LowPassFilter
from recsys.modeling.models.losses import CE_CHUNK_BYTES, CE_GROUP_BYTES, SoftmaxCrossEntropy
from recsys.modeling.runs import model_from_checkpoint
from recsys.processed import left_pad

N_ITEMS, N_CATALOGUE, FEATURE_DIM = 30, 36, 12


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model(seed: int = 0, **overrides) -> SeqRecModel:
    torch.manual_seed(seed)
    values = dict(
        n_items=N_ITEMS,
        n_catalogue=N_CATALOGUE,
        n_users=5,
        max_len=16,
        d_model=16,
        n_layers=2,
        n_heads=2,
        dropout=0.0,
        feature_dim=FEATURE_DIM,
    )
    values.update(overrides)
    config = ModelConfig(**values)
    features = None
    if config.item_repr != "id":
        features = torch.randn(N_CATALOGUE + 1, FEATURE_DIM)
        features[0] = 0
    return SeqRecModel(config, features)


def random_batch(batch: int = 8, length: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, N_ITEMS + 1, (batch, length + 1), generator=generator)
    for row in range(batch):  # left padding of varying length
        tokens[row, : row % 4] = 0
    return tokens[:, :-1], tokens[:, 1:]


def train_steps(model: SeqRecModel, steps: int, lr: float = 1e-2) -> list[float]:
    items, targets = random_batch()
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model.loss(items, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS)
def test_overfits_one_batch_to_near_zero_loss(block):
    torch.manual_seed(0)
    losses = train_steps(make_model(d_model=32, block=block), steps=250)
    assert losses[0] > 3.0  # about log(30) at the start
    assert losses[-1] < 0.05


@pytest.mark.parametrize(
    "loss, sampler",
    [
        ("ce", "uniform"),
        ("sampled", "uniform"),
        ("sampled", "popularity"),
        ("sampled", "in-batch"),
        ("bce", "uniform"),
        ("bpr", "uniform"),
    ],
)
def test_each_loss_runs_and_decreases(loss, sampler):
    model = make_model(loss=loss, sampler=sampler, n_negatives=8)
    model.item_counts[1 : N_ITEMS + 1] = torch.arange(1, N_ITEMS + 1).float()
    torch.manual_seed(0)
    losses = train_steps(model, steps=40)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first


@pytest.mark.parametrize("item_repr", ["id", "text", "hybrid"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("origin", ["start", "end"])
@pytest.mark.parametrize("block", BLOCKS)
def test_causality_later_items_never_change_earlier_outputs(item_repr, positions, origin, block):
    model = make_model(
        item_repr=item_repr, positions=positions, position_origin=origin, block=block
    ).eval()
    items, _ = random_batch()
    changed = items.clone()
    changed[:, 8:] = (changed[:, 8:] % N_ITEMS) + 1  # every later item differs
    with torch.no_grad():
        before, after = model(items), model(changed)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-5)
    assert not torch.allclose(before[:, 8:], after[:, 8:], atol=1e-3)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("use_user", [False, True])
def test_last_position_alone_equals_the_full_pass(block, use_user):
    """Scoring computes the final block at the last position only; nothing may change."""
    model = make_model(item_repr="hybrid", block=block, use_user=use_user).eval()
    items, _ = random_batch()
    items[:2, :5] = 0  # left padding in some rows
    users = torch.tensor([1, 2, 3, 4, 0, 1, 2, 3])[: len(items)]
    with torch.no_grad():
        full = model.encode(items, users)[:, -1:]
        last = model.encode(items, users, last_only=True)
    assert last.shape == (len(items), 1, 16)
    assert torch.allclose(full, last, atol=1e-5)
    table = model.item_table()
    assert torch.allclose(
        model.score(items, users)[:, 1:], (full[:, 0] @ table.T)[:, 1:], atol=1e-4
    )


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("origin", ["start", "end"])
@pytest.mark.parametrize("block", BLOCKS)
def test_left_padding_does_not_change_scores(positions, origin, block):
    model = make_model(
        item_repr="hybrid", positions=positions, position_origin=origin, block=block
    ).eval()
    histories = [torch.tensor([3, 7, 1, 9]).numpy(), torch.tensor([5, 2]).numpy()]
    short = model.score(torch.from_numpy(left_pad(histories, 4)))
    long = model.score(torch.from_numpy(left_pad(histories, 16)))
    assert torch.allclose(short[:, 1:], long[:, 1:], atol=1e-5)


def test_training_positions_match_scoring_the_prefix():
    """What position t learns to predict is exactly what score() gives for the prefix up to t
    (with positions counted from the start; counted from the end, a position moves as items
    are appended, as in SASRec)."""
    model = make_model(position_origin="start").eval()
    sequence = torch.tensor([[0, 0, 4, 8, 15, 16, 23]])
    with torch.no_grad():
        every_position = model(sequence)
    for t in range(2, sequence.shape[1]):
        prefix = model.score(sequence[:, : t + 1])
        assert torch.allclose(prefix[:, 1:], every_position[:, t, 1:], atol=1e-5)


def test_score_and_item_table_shapes_and_padding_column():
    model = make_model(item_repr="hybrid").eval()
    scores = model.score(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert scores.shape == (2, N_CATALOGUE + 1)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    assert model.item_table().shape == (N_CATALOGUE + 1, 16)
    hidden = model.encode(torch.tensor([[0, 1, 2]]))[:, -1]
    assert torch.allclose(scores[0, 1:], (hidden @ model.item_table().T)[0, 1:], atol=1e-5)


def test_text_model_scores_cold_items_from_their_features():
    """Two cold items with identical text get identical scores; a different text does not."""
    model = make_model(item_repr="text").eval()
    model.item_features[N_CATALOGUE] = model.item_features[N_CATALOGUE - 1]
    scores = model.score(torch.tensor([[1, 2, 3]]))[0]
    assert torch.isclose(scores[N_CATALOGUE], scores[N_CATALOGUE - 1])
    assert not torch.isclose(scores[N_CATALOGUE], scores[N_ITEMS + 1])


@pytest.mark.parametrize("cold", [3, N_ITEMS])
def test_hybrid_gives_an_item_never_trained_on_its_text_part_alone(cold):
    model = make_model(item_repr="hybrid")
    counts = torch.zeros(N_CATALOGUE + 1)
    counts[1 : N_ITEMS + 1] = 2.0
    counts[cold] = 0.0
    model.set_item_counts(counts)
    table, text = model.item_table(), model.text_proj(model.item_features)
    warm = torch.tensor([i for i in range(1, N_ITEMS + 1) if i != cold])
    assert torch.equal(table[cold], text[cold])
    assert torch.equal(table[N_ITEMS + 1 :], text[N_ITEMS + 1 :])  # item-table-only items too
    assert torch.equal(table[warm], model.item_emb.weight[warm] + text[warm])
    assert not torch.allclose(model.item_emb.weight[cold], torch.zeros(16))  # the row exists
    items = torch.tensor([[1, 2, cold], [cold, 4, 5]])
    model.loss(items, torch.tensor([[2, cold, 6], [4, 5, 6]])).backward()
    assert model.item_emb.weight.grad[cold].abs().sum() == 0  # read, yet never trained
    id_model = make_model(item_repr="id")
    id_model.set_item_counts(counts)
    assert torch.equal(id_model.item_table(), id_model.item_emb.weight)


@pytest.mark.parametrize("item_repr", ["text", "hybrid"])
def test_inference_builds_the_item_table_once_per_state_of_the_weights(item_repr, monkeypatch):
    """Scoring batch after batch reuses one table; a training step, weights swapped in through
    ``.data`` (as weight averaging does), an edited feature row or autocast rebuild it, and
    outside inference mode it is always fresh (with its graph)."""
    model = make_model(item_repr=item_repr).eval()
    builds = []
    build = model._build_item_table
    monkeypatch.setattr(model, "_build_item_table", lambda: builds.append(1) or build())
    items = torch.tensor([[1, 2, 3], [0, 4, 5]])
    with torch.inference_mode():
        first = model.score(items)
        assert torch.equal(model.score(items), first)
    assert len(builds) == 1
    train_steps(model, 1)
    model.eval()
    with torch.inference_mode():
        assert not torch.allclose(model.score(items), first)
        model.score(items)
    assert len(builds) == 3  # one for the training step's loss, one after it
    before = model.text_proj.weight.detach().clone()
    model.text_proj.weight.data.copy_(before * 2)
    with torch.inference_mode():
        doubled = model.score(items)
    model.text_proj.weight.data.copy_(before)
    with torch.inference_mode():
        assert not torch.allclose(doubled, model.score(items))
    assert len(builds) == 5
    with torch.inference_mode():
        model.item_features[7] += 1.0
        model.score(items)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.item_table()
    assert len(builds) == 7
    assert model.item_table().requires_grad


def test_cold_candidates_are_excluded_from_the_training_softmax():
    """An item switched off as a candidate (cold) gets no gradient unless it is an input."""
    items, targets = random_batch()
    items, targets = items.clamp(max=N_ITEMS - 1), targets.clamp(max=N_ITEMS - 1)
    for is_candidate in (True, False):
        model = make_model()
        model.candidate_mask[N_ITEMS] = is_candidate
        model.loss(items, targets).backward()
        grad = model.item_emb.weight.grad
        assert bool(grad[N_ITEMS].abs().sum() > 0) == is_candidate
        assert grad[N_ITEMS + 1 :].abs().sum() == 0  # item-table-only rows never in the softmax


def test_user_embedding_changes_scores_only_when_enabled():
    items = torch.tensor([[0, 1, 2, 3]])
    with_user = make_model(use_user=True).eval()
    a = with_user.score(items, torch.tensor([1]))
    b = with_user.score(items, torch.tensor([2]))
    assert not torch.allclose(a[:, 1:], b[:, 1:])
    without = make_model().eval()
    assert torch.equal(without.score(items, torch.tensor([1])), without.score(items))


def test_param_groups_decay_only_linear_matrices():
    model = make_model(item_repr="hybrid")
    decay, no_decay = model.param_groups(0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed and "text_proj.weight" in decayed
    assert not any("ln" in n or n.endswith("bias") or "emb" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_checkpoint_dict_round_trip_gives_identical_scores(tmp_path):
    model = make_model(item_repr="hybrid").eval()
    counts = torch.ones(N_CATALOGUE + 1)
    counts[[0, 4, 9]] = 0.0
    model.set_item_counts(counts)
    path = tmp_path / "model.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "recsys": {"model_config": model.config.to_dict()}}, path)
    restored = model_from_checkpoint(torch.load(path, weights_only=True))
    items = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    assert torch.equal(model.score(items), restored.score(items))
    assert torch.equal(restored.id_trained, counts > 0)  # what serving needs to rank cold items
    assert not restored.training


@pytest.mark.parametrize(
    "change, message",
    [
        ({"item_repr": "bert"}, "item_repr must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"block": "post-ln"}, "block must be one of"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"dropout": 1.5}, "dropout"),
        ({"item_repr": "text", "feature_dim": 0}, "needs text features"),
        ({"n_catalogue": 10}, "n_catalogue"),
    ],
)
def test_bad_model_config_is_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        make_model(**change)


def test_feature_shape_mismatch_is_rejected():
    config = ModelConfig(n_items=3, n_catalogue=4, item_repr="text", feature_dim=8)
    with pytest.raises(ValueError, match="n_catalogue"):
        SeqRecModel(config, torch.zeros(4, 8))


def test_too_long_sequence_is_rejected():
    with pytest.raises(ValueError, match="max_len"):
        make_model().score(torch.ones(1, 17, dtype=torch.long))


def masked_cross_entropy_case(n: int = 40, width: int = 8, seed: int = 0):
    """Hidden rows, a table, targets among the candidates and the -inf bias of the others."""
    torch.manual_seed(seed)
    hidden, table = torch.randn(n, width), torch.randn(N_CATALOGUE + 1, width)
    candidates = torch.ones(N_CATALOGUE + 1, dtype=torch.bool)
    candidates[[0, 3, 17]] = False  # padding and two held-out items
    targets = torch.multinomial(candidates.float(), n, replacement=True)
    bias = torch.zeros(N_CATALOGUE + 1).masked_fill(~candidates, float("-inf"))
    return hidden, table, candidates, targets, bias


def reference_cross_entropy(hidden, table, candidates, targets):
    """Loss and gradients of autograd's F.cross_entropy over the candidate columns, float32."""
    h, w = hidden.float().clone().requires_grad_(), table.float().clone().requires_grad_()
    column = candidates.long().cumsum(0) - 1
    loss = F.cross_entropy(h @ w[candidates].T, column[targets])
    loss.backward()
    return loss.detach(), h.grad, w.grad


def fused_cross_entropy(hidden, table, bias, targets, chunk_bytes=CE_CHUNK_BYTES, group_bytes=1):
    """The fused loss and its gradients; by default one chunk a group (the table gradient is
    summed after every chunk)."""
    h, w = hidden.clone().requires_grad_(), table.clone().requires_grad_()
    loss = SoftmaxCrossEntropy.apply(h, w, bias, targets, True, chunk_bytes, group_bytes)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize(
    "chunk_bytes, group_bytes",
    [
        (CE_CHUNK_BYTES, CE_GROUP_BYTES),  # one chunk, one group
        (4 * (N_CATALOGUE + 1) * 7, 1),  # chunks of 7 rows, each its own group
        (4 * (N_CATALOGUE + 1) * 7, 4 * (N_CATALOGUE + 1) * 15),  # groups of 14 rows
        (1, 1),  # one row at a time
    ],
)
def test_fused_cross_entropy_matches_autograd_over_the_candidates(chunk_bytes, group_bytes):
    hidden, table, candidates, targets, bias = masked_cross_entropy_case()
    fused = fused_cross_entropy(hidden, table, bias, targets, chunk_bytes, group_bytes)
    reference = reference_cross_entropy(hidden, table, candidates, targets)
    for mine, expected in zip(fused, reference):
        assert torch.allclose(mine, expected, atol=1e-6, rtol=1e-5)
    assert fused[2][[0, 3, 17]].abs().sum() == 0  # non-candidates get no gradient


@pytest.mark.parametrize("inputs", ["bf16", "autocast"])
def test_bf16_cross_entropy_sums_the_table_gradient_in_float32(inputs):
    """With bf16 matmuls (bf16 tensors, or float32 ones under CPU autocast) the loss and the
    gradients stay within bf16 rounding of float32 autograd on the same bf16-rounded inputs,
    over 512 one-row chunks and groups. A table gradient summed in bf16 drifts far past that
    bound."""
    hidden, table, candidates, targets, bias = masked_cross_entropy_case(n=512, width=16)
    hidden, table = hidden.bfloat16().float(), table.bfloat16().float()
    reference = reference_cross_entropy(hidden, table, candidates, targets)
    if inputs == "bf16":
        loss, d_hidden, d_table = fused_cross_entropy(
            hidden.bfloat16(), table.bfloat16(), bias, targets, chunk_bytes=1
        )
        assert d_hidden.dtype == d_table.dtype == torch.bfloat16
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, d_hidden, d_table = fused_cross_entropy(hidden, table, bias, targets, 1)
        assert d_hidden.dtype == d_table.dtype == torch.float32
    assert abs(loss.item() - reference[0].item()) < 0.02 * reference[0].item()
    for mine, expected in ((d_hidden, reference[1]), (d_table, reference[2])):
        error = (mine.float() - expected).norm() / expected.norm()
        assert error < 0.02, error
    # The same sum in bf16 (what a bf16 accumulator would hold) is measurably worse.
    rows = torch.softmax(hidden.bfloat16() @ table.bfloat16().T + bias.bfloat16(), dim=1)
    rows[torch.arange(len(targets)), targets] -= 1
    summed = torch.zeros_like(table, dtype=torch.bfloat16)
    for row, h in zip(rows, hidden.bfloat16()):
        summed += row[:, None] * h[None, :] / len(targets)
    bf16_error = (summed.float() - reference[2]).norm() / reference[2].norm()
    assert bf16_error > 2 * (d_table.float() - reference[2]).norm() / reference[2].norm()


def test_fused_cross_entropy_without_grads_gives_the_same_loss():
    """Under no_grad the loss skips the gradient products and gives the same value."""
    hidden, table, _, targets, bias = masked_cross_entropy_case()
    with_grads = SoftmaxCrossEntropy.apply(hidden, table, bias, targets, True)
    without = SoftmaxCrossEntropy.apply(hidden, table, bias, targets, False)
    assert torch.equal(with_grads, without)


def test_chunked_cross_entropy_never_holds_all_the_scores():
    """No [N, C] tensor is made: the largest one is a chunk's."""
    torch.manual_seed(0)
    n, c = 64, 50
    hidden = torch.randn(n, 8, requires_grad=True)
    table = torch.randn(c, 8, requires_grad=True)
    targets = torch.randint(1, c, (n,))
    sizes = []
    real_addmm = torch.addmm

    def recording_addmm(*args, **kwargs):
        out = real_addmm(*args, **kwargs)
        sizes.append(out.numel())
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "addmm", recording_addmm)
        loss = SoftmaxCrossEntropy.apply(hidden, table, torch.zeros(c), targets, True, 4 * c * 16)
        loss.backward()
    assert sizes and max(sizes) == 16 * c  # 16 rows at a time, scored once
    assert len(sizes) == n // 16


def test_gated_block_gates_both_residual_branches_and_uses_swiglu():
    model = make_model(block="gated")
    block = model.blocks[0]
    assert {"gate", "up", "proj"} <= {name for name, _ in block.mlp.named_children()}
    items, targets = random_batch()
    model.loss(items, targets).backward()
    for gate in (block.attn_gate, block.mlp_gate, block.mlp.gate):
        assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0
    with torch.no_grad():  # closing the gates leaves the stream as it came in
        for gate in (block.attn_gate, block.mlp_gate):
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
    x = torch.randn(2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(block(x, mask), x)


def test_dropout_drops_a_share_p_and_rescales_the_rest_in_training_only():
    torch.manual_seed(0)
    dropout = Dropout(0.4)
    x = torch.ones(200, 500, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(1.0 - kept.float().mean().item() - 0.4) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.6))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient goes through the same mask
    dropout.eval()
    assert dropout(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_draws_every_element_alike_and_anew_each_call():
    """Each random word gives four elements their draws; the fourth's top bit is never set, so
    a mask that read it would drop that element at another rate."""
    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.ones(301, 333, dtype=torch.bfloat16)  # an odd count: the last word is cut short
    first, second = dropout(x) != 0, dropout(x) != 0
    for quarter in range(4):
        share = first.flatten()[quarter::4].float().mean().item()
        assert abs(share - 0.7) < 0.01, (quarter, share)
    assert not torch.equal(first, second)
    assert dropout(x).dtype == torch.bfloat16


def test_bf16_attention_on_the_cpu_matches_float32_within_bf16_rounding():
    """Under CPU autocast attention takes SDPA's math path (faster there); its output and the
    gradients it sends back stay within bf16 rounding of the float32 pass."""
    config = ModelConfig(
        n_items=30, n_catalogue=30, max_len=12, d_model=32, n_heads=2, dropout=0.0
    )
    model = SeqRecModel(config)
    items = torch.randint(1, 31, (8, 12))

    def run(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden = model.encode(items)
        hidden.float().pow(2).sum().backward()
        grad = model.blocks[0].attn.qkv.weight.grad.clone()
        return hidden.detach().float(), grad

    (exact, exact_grad), (low, low_grad) = run(False), run(True)
    assert (low - exact).norm() / exact.norm() < 2e-2
    assert (low_grad - exact_grad).norm() / exact_grad.norm() < 5e-2


def test_low_pass_filter_is_bsarec_s_filter_at_the_window_end():
    """At the last position of a full max_len window, the causal filter's low band is what
    BSARec's FFT low-pass gives there; earlier positions read no later ones, so they differ."""
    config = ModelConfig(
        n_items=N_ITEMS, n_catalogue=N_ITEMS, max_len=20, d_model=4, filter_alpha=0.7
    )
    low_pass = LowPassFilter(config).eval()
    with torch.no_grad():
        low_pass.high_gain.zero_()  # the output is then the low band alone
    x = torch.randn(3, 20, 4)
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, 5 // 2 + 1 :] = 0
    bsarec = torch.fft.irfft(spectrum, n=20, dim=1, norm="ortho")
    real = torch.ones(3, 20, dtype=torch.bool)
    with torch.no_grad():
        every, last = low_pass(x, real), low_pass(x, real, last_only=True)
    assert torch.allclose(every[:, -1], bsarec[:, -1], atol=1e-5)
    assert torch.allclose(last[:, 0], bsarec[:, -1], atol=1e-5)
    assert not torch.allclose(every[:, :-1], bsarec[:, :-1], atol=1e-2)
    with torch.no_grad():
        low_pass.high_gain.fill_(1.0)  # unit gain on the high band passes x through
        assert torch.allclose(low_pass(x, real), x, atol=1e-5)


@pytest.mark.parametrize("block", BLOCKS)
def test_filtered_blocks_stay_causal(block):
    model = make_model(item_repr="hybrid", block=block, filter_alpha=0.7).eval()
    items, _ = random_batch()
    changed = items.clone()
    changed[:, 8:] = (changed[:, 8:] % N_ITEMS) + 1
    with torch.no_grad():
        before, after = model(items), model(changed)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-5)
    assert not torch.allclose(before[:, 8:], after[:, 8:], atol=1e-3)


@pytest.mark.parametrize("block", BLOCKS)
def test_filtered_blocks_ignore_left_padding_and_score_the_last_position_alone(block):
    model = make_model(item_repr="hybrid", block=block, filter_alpha=0.7, filter_cutoff=3)
    model.eval()
    with torch.no_grad():
        for layer in model.blocks:
            layer.filter.high_gain.fill_(0.5)  # a gain away from 1 makes the low band count
    histories = [torch.tensor([3, 7, 1, 9]).numpy(), torch.tensor([5, 2]).numpy()]
    short = torch.from_numpy(left_pad(histories, 4))
    long = torch.from_numpy(left_pad(histories, 16))
    with torch.no_grad():
        assert torch.allclose(model.score(short)[:, 1:], model.score(long)[:, 1:], atol=1e-5)
        full = model.encode(long)[:, -1:]
        assert torch.allclose(full, model.encode(long, last_only=True), atol=1e-5)
        unfiltered = make_model(item_repr="hybrid", block=block).eval()
        assert not torch.allclose(full, unfiltered.encode(long)[:, -1:], atol=1e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(filter_alpha=1.5), "filter_alpha must be in [0, 1]"),
        (dict(filter_alpha=0.5, filter_cutoff=16), "filter_cutoff must keep between 1"),
        (dict(filter_alpha=0.5, family="bert4rec"), "not family=bert4rec"),
        (
            dict(filter_alpha=0.5, item_repr="semantic", code_vocab=(4, 4)),
            "item_repr=semantic",
        ),
    ],
)
def test_filter_settings_it_cannot_take_are_refused_in_one_line(overrides, message):
    values = dict(n_items=N_ITEMS, n_catalogue=N_ITEMS, max_len=16)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        ModelConfig(**{**values, **overrides})
    assert "\n" not in str(raised.value)


def test_a_short_window_needs_no_filter_cutoff_while_the_filter_is_off():
    """The default cutoff keeps 3 frequencies, more than a 4-long window has: that only
    matters once the filter is on."""
    ModelConfig(n_items=N_ITEMS, n_catalogue=N_ITEMS, max_len=4)
    with pytest.raises(ValueError, match="filter_cutoff must keep between 1"):
        ModelConfig(n_items=N_ITEMS, n_catalogue=N_ITEMS, max_len=4, filter_alpha=0.5)


def test_validation_loss_is_cross_entropy_over_the_training_candidates(monkeypatch):
    config = ModelConfig(n_items=30, n_catalogue=36, max_len=8, d_model=16, n_heads=2)
    model = SeqRecModel(config)
    model.candidate_mask[[4, 9]] = False  # held out of training, as cold-start runs do
    scores = torch.randn(7, 37)
    targets = torch.tensor([1, 5, 30, 12, 3, 8, 21])
    expected = F.cross_entropy(
        scores.masked_fill(~model.candidate_mask, float("-inf")), targets, reduction="sum"
    )
    for block in (2**18, 37, 74):  # one block, one row a block, two rows a block
        monkeypatch.setattr(base, "LOSS_BLOCK", block)
        loss = model.validation_loss(torch.zeros(7, 3, dtype=torch.long), targets, scores)
        assert torch.allclose(loss, expected, rtol=1e-6)
    held_out = torch.tensor([4, 5])  # a target the loss may not score: infinite, as before
    assert model.validation_loss(None, held_out, scores[:2]).item() == float("inf")
