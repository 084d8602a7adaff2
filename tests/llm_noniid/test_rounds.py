"""The rounds of train.py (``LlmTask`` on ``common.engine``) on quadratic clients and on the tiny GPT-2: FedProx
mu=0 == FedAvg, SCAFFOLD with zero control variates and one step == FedAvg, SCAFFOLD removes client drift and
is the paper's algorithm with unequal clients, the drift metrics, llm's 1-based client streams, and FedProx /
SCAFFOLD with gradient clipping equal to the algorithm written out by hand on the tiny model."""
from __future__ import annotations

import pytest
import torch

from common import engine
from common import params as P
from common.seed import client_generator
from llm_noniid import federated, train
from llm_noniid.model import lm_loss, tiny_gpt2

D, K = 6, 4
F64 = torch.float64


def quadratics(seed=0):
    """Client k: f_k(t) = 0.5 sum_j a_kj (t_j - b_kj)^2, different curvatures and optima."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 2.0 * torch.rand(K, D, generator=g), 3.0 * torch.randn(K, D, generator=g)


class Rows:
    """The part of a run directory the task and the engine use: the rows in memory, no files."""

    is_main = True

    def __init__(self):
        self.logged = []

    def log(self, row):
        self.logged.append(row)

    def rows(self):
        return self.logged

    def save_checkpoint(self, state, periodic=False):
        pass


class Quadratics(federated.LlmTask):
    """train.py's task with client k's loss f_k on one parameter tensor: a client of n examples holds n copies
    of its index (its size is n); every local step's batch gives the same loss."""

    def __init__(self, args, a, b, sizes):
        data = [(torch.full((n, 1), k), torch.full((n, 1), k)) for k, n in enumerate(sizes)]
        theta = torch.zeros(D, requires_grad=True)
        super().__init__(args, Rows(), None, [theta], torch.device("cpu"), data, data, [], {})
        self.a, self.b = a, b

    def loss(self, x, y):
        k = int(x[0, 0])
        return 0.5 * (self.a[k] * (self.params[0] - self.b[k]) ** 2).sum()

    def scores(self):
        return {}


def flags(algorithm="fedavg", rounds=1, steps=1, lr=0.05, *extra):
    return train.get_args_parser().parse_args(
        ["--algorithm", algorithm, "--num-rounds", str(rounds), "--local-steps", str(steps), "--learning-rate",
         str(lr), "--local-optimizer", "sgd", "--num-clients", str(K), "--quiet", *extra])


def run(algorithm, rounds, steps, lr=0.05, a_b=None, sizes=(1, 1, 1, 1), extra=()):
    """The rounds through the engine; returns (the global model, the metric rows)."""
    args = flags(algorithm, rounds, steps, lr, *extra)
    task = Quadratics(args, *(a_b or quadratics()), sizes)
    fed = engine.Federation(task, args)
    engine.run(task, fed, task.rd, ["theta"])
    return fed.models[0][0].clone(), task.rd.rows()


def test_fedprox_mu_zero_is_fedavg_and_mu_pulls_toward_the_global_model():
    avg, rows = run("fedavg", 3, 5)
    assert torch.equal(avg, run("fedprox", 3, 5, extra=["--mu", "0"])[0])
    prox, prox_rows = run("fedprox", 3, 5, extra=["--mu", "1"])
    assert not torch.allclose(prox, avg)
    assert prox_rows[-1]["client_divergence"] < rows[-1]["client_divergence"]  # the proximal term holds clients
    assert prox_rows[-1]["prox_term"] > 0 == rows[-1]["prox_term"]


def test_scaffold_zero_controls_one_step_is_fedavg():
    sizes = (1, 2, 3, 4)
    avg, _ = run("fedavg", 1, 1, sizes=sizes)
    sca, rows = run("scaffold", 1, 1, sizes=sizes, extra=["--scaffold-weighting", "size"])
    assert torch.allclose(avg, sca, rtol=0, atol=1e-6)
    assert rows[0]["cv_norm"] > 0


def test_scaffold_reduces_client_drift_on_heterogeneous_quadratics():
    a, b = quadratics(1)
    star = (a * b).sum(0) / a.sum(0)
    avg, h_avg = run("fedavg", 40, 5, lr=0.1, a_b=(a, b))
    sca, h_sca = run("scaffold", 40, 5, lr=0.1, a_b=(a, b))
    # FedAvg's clients keep pulling toward their own optima; SCAFFOLD's corrected steps do not
    assert h_sca[-1]["client_divergence"] < 0.05 * h_avg[-1]["client_divergence"]
    assert h_avg[-1]["client_divergence"] > 0.5
    # and FedAvg converges to a biased point, SCAFFOLD to the true optimum
    assert (sca - star).norm() < 1e-3
    assert (avg - star).norm() > 0.1


def paper_scaffold(a, b, sizes, steps, lr, lr_g, picks, weighting):
    """Algorithm 1 of Karimireddy et al. (2020), option II, written out in float64: the paper's uniform means over
    the sampled set S (``weighting="uniform"``) or both means size-weighted (``"size"``)."""
    a, b, n = a.double(), b.double(), len(sizes)
    p = torch.tensor(sizes, dtype=F64) / sum(sizes)
    x, c = torch.zeros(D, dtype=F64), torch.zeros(D, dtype=F64)
    ci = [torch.zeros(D, dtype=F64) for _ in range(n)]
    for chosen in picks:
        dys, dcs = {}, {}
        for i in chosen:
            y = x.clone()
            for _ in range(steps):
                y = y - lr * (a[i] * (y - b[i]) - ci[i] + c)
            new = ci[i] - c + (x - y) / (steps * lr)
            dys[i], dcs[i] = y - x, new - ci[i]
            ci[i] = new
        if weighting == "uniform":
            x = x + lr_g * sum(dys.values()) / len(dys)
            c = c + sum(dcs.values()) / n
        else:
            x = x + lr_g * sum(sizes[i] * dys[i] for i in dys) / sum(sizes[i] for i in dys)
            c = c + sum(p[i] * dcs[i] for i in dcs)
    return x


@pytest.mark.parametrize("weighting", ["uniform", "size"])
def test_scaffold_with_unequal_sizes_is_the_papers_algorithm(weighting):
    a, b = quadratics(3)
    sizes = (3, 40, 7, 500)  # very unequal clients: the weighting matters
    x, rows = run("scaffold", 12, 4, a_b=(a, b), sizes=sizes,
                  extra=["--scaffold-weighting", weighting, "--server-lr", "0.8", "--participation-rate", "0.75"])
    picks = [r["participants"] for r in rows]
    assert len({tuple(p) for p in picks}) > 1  # the clients change from round to round
    want = paper_scaffold(a, b, sizes, 4, 0.05, 0.8, picks, weighting)
    torch.testing.assert_close(x.double(), want, rtol=0, atol=1e-4)
    other = paper_scaffold(a, b, sizes, 4, 0.05, 0.8, picks, "size" if weighting == "uniform" else "uniform")
    assert (other - want).abs().max() > 1e-2  # and the two weightings really differ here


def test_drift_metrics_are_the_rms_distance_to_the_mean_and_the_cosine_drift():
    x = [torch.tensor([1.0, 1.0, 0.0])]
    agg = federated.DriftMean(x)
    agg.reset()
    clients = [torch.tensor([2.0, 1, 0]), torch.tensor([0.0, 1, 0]), torch.tensor([1.0, 4, 0])]
    for c in clients:
        agg.add([c], 1.0)
    m = agg.drift()
    mean = torch.stack(clients).mean(0)
    rms = torch.stack([(c - mean).norm() ** 2 for c in clients]).mean().sqrt()
    cos = [float(c @ x[0] / (c.norm() * x[0].norm())) for c in clients]
    assert m["client_divergence"] == pytest.approx(float(rms))
    assert m["client_divergence_rel"] == pytest.approx(float(rms / mean.norm()))
    assert m["cosine_drift"] == pytest.approx(sum(1 - v for v in cos) / 3)
    assert m["update_norm"] == pytest.approx(float((mean - x[0]).norm()))
    torch.testing.assert_close(agg.result()[0], mean)


def test_round_streams_count_from_one_and_empty_clients_sit_out():
    args = flags("fedavg", 2, 1, 0.05, "--participation-rate", "0.5")
    task = Quadratics(args, *quadratics(), (2, 0, 3, 1))
    for r in range(6):
        chosen = task.sample(r)
        assert task.participants == engine.sample_clients(args.seed, r + 1, K, 2, "participants")
        assert chosen == [k for k in task.participants if k != 1]


# ------------------------------------------------------------------------------------------------------------
# the tiny GPT-2: FedProx and SCAFFOLD (after gradient clipping) against the algorithm written out by hand

V, T, LR, MU, CLIP = 40, 8, 0.1, 0.5, 0.5


def tiny_run(algorithm, rounds=2, optimizer="sgd", lr=LR):
    """Two clients of 10 and 6 examples, batches of 4, every parameter trained (AdamW: but the attention's
    query-key-value bias, whose key third has a gradient that is zero in exact arithmetic: AdamW's division
    by sqrt(v) would turn its rounding noise into whole steps); returns the engine's global model, the initial
    model and the clients' data."""
    torch.manual_seed(0)
    model = tiny_gpt2(V, T, 0)
    for name, p in model.named_parameters():
        p.requires_grad_(optimizer == "sgd" or not name.endswith("attn.c_attn.bias"))
    start = [p.detach().clone() for p in P.trainable(model)]
    g = torch.Generator().manual_seed(1)
    data = [(x, x.clone()) for x in (torch.randint(1, V, (n, T), generator=g) for n in (10, 6))]
    args = train.get_args_parser().parse_args(
        ["--algorithm", algorithm, "--mu", str(MU), "--num-rounds", str(rounds), "--num-clients", "2",
         "--batch-size", "4", "--learning-rate", str(lr), "--local-optimizer", optimizer, "--max-grad-norm", str(CLIP)])
    task = federated.LlmTask(args, None, model, P.trainable(model), torch.device("cpu"), data, data, [], {})
    fed = engine.Federation(task, args)
    engine.run(task, fed)
    return fed.models[0], start, model, data


def by_hand(algorithm, start, model, data, rounds=2, optimizer="sgd", lr=LR):
    """FedProx (size-weighted mean of the clients) or SCAFFOLD option II (uniform means, server lr 1) with
    local steps on the clipped gradient, in the batch order of train.py's streams. SGD: SCAFFOLD adds c - c_i
    to the gradient. AdamW (torch's, a fresh one every client and round, no weight decay) takes the clipped
    gradient (+ FedProx's term); SCAFFOLD then moves the parameters by -lr (c - c_i) after each step."""
    params = P.trainable(model)
    x = [t.clone() for t in start]
    c = [torch.zeros_like(t) for t in x]
    ci = [[torch.zeros_like(t) for t in x] for _ in data]
    sizes = [cx.shape[0] for cx, _ in data]
    for r in range(rounds):
        ys, dcs = [], []
        for k, (cx, cy) in enumerate(data):
            y = [t.clone() for t in x]
            adam = torch.optim.AdamW(y, lr=lr, weight_decay=0.0) if optimizer == "adamw" else None
            steps = 0
            for xb, yb in federated.batches(cx, cy, 4, 1, 0, client_generator(0, r + 1, k), torch.device("cpu")):
                with torch.no_grad():
                    for p, t in zip(params, y):
                        p.copy_(t)
                grads = torch.autograd.grad(lm_loss(model, xb, yb), params)
                norm = torch.sqrt(sum((gr.double() ** 2).sum() for gr in grads))
                scale = min(1.0, CLIP / (float(norm) + 1e-6))
                steps += 1
                for i, gr in enumerate(grads):
                    step = gr * scale
                    if algorithm == "fedprox":
                        step = step + MU * (y[i] - x[i])
                    elif optimizer == "sgd":
                        step = step + c[i] - ci[k][i]
                    if adam is None:
                        y[i] = y[i] - lr * step
                    else:
                        y[i].grad = step
                if adam is not None:
                    adam.step()
                    if algorithm == "scaffold":
                        with torch.no_grad():
                            for i in range(len(y)):
                                y[i] -= lr * (c[i] - ci[k][i])
            if algorithm == "scaffold":
                new = [ci[k][i] - c[i] + (x[i] - y[i]) / (steps * lr) for i in range(len(x))]
                dcs.append([n - o for n, o in zip(new, ci[k])])
                ci[k] = new
            ys.append(y)
        if algorithm == "fedprox":
            x = [sum(n * y[i] for n, y in zip(sizes, ys)) / sum(sizes) for i in range(len(x))]
        else:
            x = [x[i] + sum(y[i] - x[i] for y in ys) / len(ys) for i in range(len(x))]
            c = [c[i] + sum(dc[i] for dc in dcs) / len(data) for i in range(len(x))]
    return x


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_fedprox_and_scaffold_on_the_tiny_model_are_the_algorithm_by_hand(algorithm, optimizer):
    lr = LR if optimizer == "sgd" else 0.01
    got, start, model, data = tiny_run(algorithm, optimizer=optimizer, lr=lr)
    want = by_hand(algorithm, start, model, data, optimizer=optimizer, lr=lr)
    assert max(float((a - b).abs().max()) for a, b in zip(got, start)) > 1e-2  # the model did move
    for a, b, s in zip(got, want, start):
        if optimizer == "sgd":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:  # AdamW's sqrt(v) turns rounding in near-zero gradient entries into visible steps: by norm
            assert float((a - b).norm()) <= 1e-3 * float((a - s).norm()) + 1e-7
