"""common.batched: a round's clients trained together equal the engine's one-at-a-time path (each client's model,
loss and step count; whole runs through engine.run) on linear clients with unequal, partial and no batches;
FedProx; the one-line refusals."""
from __future__ import annotations

import pytest
import torch

from common import batched, engine
from common.errors import UsageError
from common.seed import client_generator

SIZES = [7, 0, 3, 12, 5]  # samples per client: unequal step counts, partial last batches, one client without data
DIM, OUT, BATCH, EPOCHS = 4, 2, 3, 2


class Linear(engine.Task):
    """Client k: EPOCHS shuffles of its samples in batches of BATCH, SGD on the mean squared error of x W + b."""

    def __init__(self, per_round=5, rounds=2, momentum=0.0):
        g = torch.Generator().manual_seed(0)
        self.x = [torch.randn(n, DIM, generator=g, dtype=torch.float64) for n in SIZES]
        self.y = [torch.randn(n, OUT, generator=g, dtype=torch.float64) for n in SIZES]
        self.w = torch.nn.Parameter(torch.randn(DIM, OUT, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(OUT, dtype=torch.float64))
        self.params, self.device, self.seed, self.sizes = [self.w, self.b], torch.device("cpu"), 0, list(SIZES)
        self.rounds, self.eval_every, self.per_round = rounds, 1, per_round
        self.optimizer = torch.optim.SGD(self.params, lr=0.1, momentum=momentum)
        self.seen = []

    def lr(self, r):
        return 0.1

    def client_batches(self, k, r):
        gen, picks = client_generator(self.seed, r, k), []
        for _ in range(EPOCHS):
            order = torch.randperm(SIZES[k], generator=gen)
            picks += [order[i:i + BATCH] for i in range(0, SIZES[k], BATCH)]
        return batched.Batches(picks, lambda pick: (self.x[k][pick], self.y[k][pick]))

    def train_client(self, k, r, opt, algo):
        total, steps = torch.zeros((), dtype=torch.float64), 0
        for x, y in self.client_batches(k, r):
            opt.zero_grad(set_to_none=True)
            loss = ((x @ self.w + self.b - y) ** 2).sum(-1).mean()
            loss.backward()
            algo.adjust_grads(self.params)
            opt.step()
            total += loss.detach()
            steps += 1
        return {"loss": total / max(steps, 1), "steps": steps}

    def stacked_losses(self, params, x, y):
        w, b = params
        return ((torch.baddbmm(b.unsqueeze(1), x, w) - y) ** 2).sum(-1)

    def round_end(self, rnd):
        self.seen.append(rnd["losses"])

    def evaluate(self, rnd):
        return None


def clients(mode: str, **flags):
    """Round 0's clients trained by ``mode``: {k: (model, loss, steps)}."""
    task = Linear()
    fed = engine.Federation(task, engine.namespace_defaults(client_batching=mode, **flags))
    chosen = list(range(len(SIZES)))
    for x in fed.models:  # FedProx's anchor differs from the start in round 0 only if the model moved: move it
        for p in x:
            p.add_(0.05)
    train = batched.train_round if mode == "stacked" else engine.one_at_a_time
    return {k: ([p.detach().clone() for p in task.params], float(out["loss"]), out["steps"])
            for k, out in train(task, fed, chosen, 0, 0.1)}


@pytest.mark.parametrize("flags", [{}, {"algorithm": "fedprox", "mu": 0.5}])
def test_each_client_equals_its_one_at_a_time_training(flags):
    want, got = clients("off", **flags), clients("stacked", **flags)
    assert list(got) == list(want)  # the engine's order
    assert [s for _, _, s in got.values()] == [6, 0, 2, 8, 4]  # 2 epochs of ceil(n / 3) batches each
    for k in want:
        for a, b in zip(want[k][0], got[k][0]):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        assert got[k][1] == pytest.approx(want[k][1], rel=1e-12, abs=1e-15)
    start = [p + 0.05 for p in Linear().params]
    assert all(torch.equal(a, b) for a, b in zip(got[1][0], start))  # no batches: the start, untouched


def test_whole_runs_agree_and_a_subset_of_clients_per_round_is_served():
    runs = {}
    for mode in ("off", "stacked"):
        task = Linear(per_round=3, rounds=3)
        fed = engine.Federation(task, engine.namespace_defaults(client_batching=mode))
        engine.run(task, fed)
        runs[mode] = (fed.models[0], task.seen, fed.comm)
    (x0, seen0, comm0), (x1, seen1, comm1) = runs["off"], runs["stacked"]
    for a, b in zip(x0, x1):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert [list(s) for s in seen1] == [list(s) for s in seen0] and comm1 == comm0
    for s0, s1 in zip(seen0, seen1):
        assert s1 == pytest.approx(s0, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("vmap", [True, False])
def test_a_stacked_forward_equals_each_copy_s_own(vmap):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5), torch.nn.GELU(), torch.nn.Linear(5, 2))
    copies = [torch.nn.Sequential(*[m for m in model]) for _ in range(3)]
    stacked = {k: torch.stack([v + 0.1 * i for i in range(3)]).requires_grad_() for k, v in model.state_dict().items()}
    x = torch.randn(3, 4, 3)
    out = batched.stacked_forward(model, stacked, x, vmap=vmap)
    out.pow(2).sum().backward()
    for i in range(3):
        own = {k: (v[i].detach() + 0).requires_grad_() for k, v in stacked.items()}
        y = torch.func.functional_call(copies[i], own, (x[i],))
        y.pow(2).sum().backward()
        torch.testing.assert_close(out[i], y)
        for k in own:
            torch.testing.assert_close(stacked[k].grad[i], own[k].grad, msg=k)


def test_what_stacked_training_cannot_reproduce_is_refused_in_one_line():
    args = lambda **kw: engine.namespace_defaults(client_batching="stacked", **kw)  # noqa: E731
    for kw, words in [({"algorithm": "scaffold"}, "--algorithm scaffold changes each client's steps"),
                      ({"client_opt_state": "persist"}, "--client-opt-state persist keeps per-client state"),
                      ({"clustering": "data"}, "--clustering data does not"),
                      ({"aggregator": "fisher"}, "--aggregator fisher asks each trained client for its fisher")]:
        with pytest.raises(UsageError, match=words):
            batched.check_args(args(**kw))
    batched.check_args(args(algorithm="fedprox", aggregator="median"))  # robust aggregators need only the models
    with pytest.raises(UsageError, match="takes plain SGD steps; this task's local optimizer is SGD"):
        engine.Federation(Linear(momentum=0.9), args())
