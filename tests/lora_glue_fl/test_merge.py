"""LoRA merge math against dense references, and fused adapters against peft's own loader."""
from __future__ import annotations

import pytest
import torch

from common import cli
from lora_glue_fl import adapters


def make_adapter(out_dim, in_dim, r, alpha, seed, modules=("l0.query", "l0.value"), head=True):
    g = torch.Generator().manual_seed(seed)
    factors = {f"base_model.model.{m}": (torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g))
               for m in modules}
    h = {"base_model.model.classifier.out_proj.weight": torch.randn(2, 4, generator=g)} if head else {}
    return adapters.Adapter(factors, h, r, float(alpha), sorted(m.split(".")[-1] for m in modules))


def mean_delta(clients, weights):
    total = sum(weights)
    return {m: sum((w / total) * c.scale * (c.factors[m][1] @ c.factors[m][0]) for c, w in zip(clients, weights))
            for m in clients[0].factors}


# out != in so that a transposed product cannot even be formed; ranks and alphas differ per client
CLIENTS = [{"r": 2, "alpha": 4, "seed": 1}, {"r": 3, "alpha": 3, "seed": 2}, {"r": 2, "alpha": 16, "seed": 3}]
WEIGHTS = [5.0, 2.0, 3.0]


@pytest.fixture
def clients():
    return [make_adapter(7, 12, **c) for c in CLIENTS]


@pytest.mark.parametrize("rank,alpha", [(1, None), (3, None), (3, 8.0)])
def test_svd_merge_is_best_rank_r_approximation(clients, rank, alpha):
    fused = adapters.merge(clients, WEIGHTS, "svd", rank=rank, alpha=alpha)
    assert fused.r == rank and fused.alpha == (alpha if alpha is not None else rank)
    target = mean_delta(clients, WEIGHTS)
    got = fused.delta()
    for m, M in target.items():
        U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
        best = (U[:, :rank] * S[:rank]) @ Vh[:rank]   # Eckart-Young: the optimal rank-r approximation
        assert got[m].shape == M.shape == (7, 12)
        torch.testing.assert_close(got[m].double(), best, atol=1e-4, rtol=1e-4)
        # and its error is exactly the tail of the spectrum
        err = torch.linalg.matrix_norm(M.double() - got[m].double())
        assert err == pytest.approx(float(S[rank:].pow(2).sum().sqrt()), rel=1e-3, abs=1e-5)


def test_error_by_rank_is_the_merge_error_of_every_rank(clients):
    """The one-pass curve (singular values of dW_bar) against its definition: one merge per rank, each scored by
    merge_rel_error; lossless from the widest module's min(out, in) = 7 on (here also the sum of the ranks, 7)."""
    curve = adapters.error_by_rank(clients, WEIGHTS)
    want = [adapters.merge_rel_error(clients, WEIGHTS, adapters.merge(clients, WEIGHTS, "svd", rank=r))
            for r in range(1, 8)]
    assert len(curve) == 7 and curve[-1] == 0.0 and all(a > b for a, b in zip(curve, curve[1:]))
    assert curve == pytest.approx(want, rel=1e-4, abs=1e-6)
    # more clients than the layers are wide: the curve stops where the merge is lossless (min(out, in) = 7)
    many = [make_adapter(7, 12, 2, 2, seed) for seed in range(6)]
    assert len(adapters.error_by_rank(many, [1.0] * 6)) == 7


def test_svd_merge_exact_when_rank_covers_all_clients(clients):
    rank = sum(c["r"] for c in CLIENTS)          # 7 = sum of client ranks
    fused = adapters.merge(clients, WEIGHTS, "svd", rank=rank)
    target = mean_delta(clients, WEIGHTS)
    for m, M in target.items():
        torch.testing.assert_close(fused.delta()[m], M, atol=1e-4, rtol=1e-4)
    assert adapters.merge_rel_error(clients, WEIGHTS, fused) < 1e-5
    lossy = adapters.merge(clients, WEIGHTS, "svd", rank=2)
    assert adapters.merge_rel_error(clients, WEIGHTS, lossy) > 1e-2   # the error measure is not blind


def test_exact_aggregation_reproduces_weighted_mean(clients):
    fused = adapters.merge(clients, WEIGHTS, "exact", alpha=3.0)
    assert fused.r == 7 and fused.alpha == 3.0
    for m, M in mean_delta(clients, WEIGHTS).items():
        torch.testing.assert_close(fused.delta()[m], M, atol=1e-5, rtol=1e-5)


def test_exact_aggregation_caps_rank_at_full_rank_losslessly():
    clients = [make_adapter(5, 6, r=3, alpha=3, seed=s) for s in range(3)]   # sum r = 9 > min(5, 6)
    fused = adapters.merge(clients, [1, 1, 1], "exact")
    assert fused.r == 5
    for m, M in mean_delta(clients, [1, 1, 1]).items():
        torch.testing.assert_close(fused.delta()[m], M, atol=1e-4, rtol=1e-4)


def test_naive_merge_is_product_of_averaged_factors():
    clients = [make_adapter(7, 12, r=3, alpha=6, seed=s) for s in range(3)]
    fused = adapters.merge(clients, WEIGHTS, "naive")
    w = [x / sum(WEIGHTS) for x in WEIGHTS]
    for m in clients[0].factors:
        A = sum(wk * c.factors[m][0] for wk, c in zip(w, clients))
        B = sum(wk * c.factors[m][1] for wk, c in zip(w, clients))
        torch.testing.assert_close(fused.delta()[m], 2.0 * B @ A, atol=1e-5, rtol=1e-5)
        # ... which is not the mean update (the reason for the SVD merge)
        assert not torch.allclose(fused.delta()[m], mean_delta(clients, WEIGHTS)[m], atol=1e-2)


def test_naive_merge_keeps_the_rslora_scaling():
    """Naive averaging keeps the clients' r and alpha, so also their rsLoRA scaling alpha / sqrt(r): merging copies
    of one adapter gives that adapter's update (with alpha / r it was halved at r = 4)."""
    one = make_adapter(7, 12, r=4, alpha=8, seed=0)
    one.use_rslora = True
    fused = adapters.merge([one, one, one], WEIGHTS, "naive")
    assert fused.use_rslora and fused.scale == 4.0
    for m in one.factors:
        torch.testing.assert_close(fused.delta()[m], one.delta()[m])


def test_dora_and_bias_adapters_refused(tmp_path, clients):
    import json
    adapters.save(clients[0], tmp_path / "a", "some/base")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    plain = json.loads(cfg_path.read_text())
    for change in ({"use_dora": True}, {"bias": "lora_only"}):
        cfg_path.write_text(json.dumps(plain | change))
        with pytest.raises(cli.UsageError, match="DoRA adapter or one with trained biases"):
            adapters.load(tmp_path / "a")


def test_heads_averaged_with_the_same_weights(clients):
    fused = adapters.merge(clients, WEIGHTS, "svd", rank=2)
    key = "base_model.model.classifier.out_proj.weight"
    expect = sum(w * c.head[key] for w, c in zip(WEIGHTS, clients)) / sum(WEIGHTS)
    torch.testing.assert_close(fused.head[key], expect)


def test_mismatched_target_modules_refused(clients):
    other = make_adapter(7, 12, r=2, alpha=2, seed=9, modules=("l0.query", "l0.key"))
    with pytest.raises(cli.UsageError, match="same target modules"):
        adapters.merge([clients[0], other], [1, 1], "svd", rank=2, names=["a", "b"])


def test_save_load_round_trip(tmp_path, clients):
    fused = adapters.merge(clients, WEIGHTS, "svd", rank=3, alpha=6.0)
    adapters.save(fused, tmp_path / "fused", "some/base")
    back = adapters.load(tmp_path / "fused")
    assert (back.r, back.alpha, back.target_modules) == (3, 6.0, ["query", "value"])
    assert back.extra["base_model_name_or_path"] == "some/base"
    for m in fused.factors:
        torch.testing.assert_close(back.delta()[m], fused.delta()[m])
    with pytest.raises(cli.UsageError, match="not a peft adapter folder"):
        adapters.load(tmp_path)


def test_fused_adapter_loads_in_peft_with_same_logits(tmp_path):
    """Two trained-looking client adapters on a tiny RoBERTa -> fused adapter -> PeftModel.from_pretrained
    gives the logits of the base model with W += dW_fused on query/value and the averaged head."""
    from peft import PeftModel
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from lora_glue_fl import modeling

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=20, pad_token_id=1, type_vocab_size=1,
                        num_labels=3)
    base = RobertaForSequenceClassification(cfg).eval()
    base.save_pretrained(tmp_path / "base")

    def load_base():  # as a user reads a model folder: never its own code
        return RobertaForSequenceClassification.from_pretrained(tmp_path / "base", trust_remote_code=False)

    clients = []
    for r, alpha in [(2, 4.0), (4, 4.0)]:
        m = modeling.attach_lora(load_base(), r, alpha, 0.0, ["query", "value"])
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))   # as if trained: B != 0, head moved
        clients.append(adapters.from_model(m))
    fused = adapters.merge(clients, [3, 1], "svd", rank=6)     # rank >= 2 + 4: exact
    adapters.save(fused, tmp_path / "fused", str(tmp_path / "base"))

    ids = torch.randint(3, 50, (4, 9), generator=torch.Generator().manual_seed(1))
    peft_model = PeftModel.from_pretrained(load_base(), tmp_path / "fused").eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
        ref = load_base().eval()
        sd = ref.state_dict()
        for name, dW in mean_delta(clients, [3, 1]).items():
            sd[name.removeprefix("base_model.model.") + ".weight"] += dW
        for key, t in fused.head.items():
            sd[key.removeprefix("base_model.model.")] = t
        ref.load_state_dict(sd)
        want = ref(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)   # the adapter does change the model
    # an adapter is only copied into a model that scales it the same way
    model = modeling.attach_lora(load_base(), 6, 5.0, 0.0, ["query", "value"])
    with pytest.raises(cli.UsageError, match="model LoRA alpha 5.0 .* differs from the adapter's 6.0"):
        adapters.load_into(model, fused)


def test_fedprox_local_steps_match_the_proximal_term_by_hand():
    """The clients' local training with --algorithm fedprox: AdamW with linear decay on the clipped gradient plus
    mu (theta - theta_global), the proximal term written out here (same batches, same optimizer)."""
    from types import SimpleNamespace

    from common import algorithms
    from common import seed as seeding
    from lora_glue_fl import modeling

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, y):
            return SimpleNamespace(loss=torch.nn.functional.cross_entropy(self.lin(x), y))

    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(12, 4, generator=g), torch.randint(0, 2, (12,), generator=g)
    data = SimpleNamespace(batch=lambda b, device: {"x": X[b], "y": Y[b]})
    mu, lr, idx = 0.7, 0.1, list(range(2, 11))
    torch.manual_seed(1)
    model = Tiny()
    start = [p.detach().clone() for p in model.parameters()]
    prox = algorithms.FedProx(mu)
    prox.client_start(0, start)
    modeling.train_local(model, data, idx, epochs=2, batch_size=4, lr=lr, seed=3, round_idx=1, client=2,
                         device=torch.device("cpu"), adjust=prox.adjust_grads)
    ref = Tiny()
    with torch.no_grad():
        for p, s in zip(ref.parameters(), start):
            p.copy_(s)
    params = list(ref.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = 6  # ceil(9 / 4) batches per epoch, two epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    gen, order = seeding.client_generator(3, 1, 2), torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) == 0:
            order = torch.as_tensor(idx)[torch.randperm(len(idx), generator=gen)]
        b, order = order[:4], order[4:]
        ref(X[b], Y[b]).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        with torch.no_grad():
            for p, s in zip(params, start):
                p.grad += mu * (p - s)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    for a, b in zip(model.parameters(), params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plain = Tiny()
    with torch.no_grad():
        for p, s in zip(plain.parameters(), start):
            p.copy_(s)
    modeling.train_local(plain, data, idx, epochs=2, batch_size=4, lr=lr, seed=3, round_idx=1, client=2,
                         device=torch.device("cpu"))
    assert not torch.allclose(next(plain.parameters()), next(model.parameters()))  # the term acted
