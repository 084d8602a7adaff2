"""FedProx in fedavg_rounds.py is the algorithm as written: one client, two local steps of AdamW on the loss plus
(mu/2) ||theta - theta_global||^2, i.e. mu (theta - theta_global) added to the clipped gradient; the client
adapter the run saves equals the one trained here by hand from the same start, batches and optimizer."""
from __future__ import annotations

import copy

import torch
from transformers import AutoModelForSequenceClassification

from common import seed as seeding
from lora_glue_fl import adapters, fedavg_rounds, glue_shards, glue_tasks, modeling

SEED, MU, LR, STEPS, BATCH, N = 42, 0.5, 5e-3, 2, 8, 24


def by_hand(base, data, idx, mu: float) -> dict[str, torch.Tensor]:
    """The fresh LoRA of the run (its own init stream), then STEPS steps: loss.backward, clip to norm 1, add
    mu (theta - theta_start) to the gradient, AdamW with its linear decay; batches and dropout of round 1, client 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.stream_seed(SEED, "lora-init"))
        model = modeling.attach_lora(copy.deepcopy(base), 4, 4, 0.0, fedavg_rounds.QUICK["target_modules"])
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / STEPS)
    order = idx[torch.randperm(len(idx), generator=seeding.client_generator(SEED, 1, 0))]
    model.train()
    with seeding.client_rng(SEED, 1, 0):
        for step in range(STEPS):
            model(**data.batch(order[step * BATCH:(step + 1) * BATCH], "cpu")).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            with torch.no_grad():
                for p, p0 in zip(params, start):
                    p.grad += mu * (p - p0)
            opt.step()
            sched.step()
            opt.zero_grad()
    return adapters.from_model(model).state_dict()


def test_fedprox_client_matches_the_proximal_steps_written_out(tmp_path):
    fedavg_rounds.main(["--quick", "--quiet", "--num-clients", "1", "--max_train_samples", str(N), "--rounds", "1",
                        "--local-steps", str(STEPS), "--batch_size", str(BATCH), "--learning_rate", str(LR),
                        "--algorithm", "fedprox", "--mu", str(MU), "--save_client_adapters", "last",
                        "--out-dir", str(tmp_path), "--run-name", "r"])
    run = tmp_path / "r"
    got = adapters.load(run / "round_1/client_1/adapter").state_dict()
    base = AutoModelForSequenceClassification.from_pretrained(run / "base_model", trust_remote_code=False)
    tokenizer = modeling.load_tokenizer(str(run / "base_model"))
    train = glue_tasks.load_glue("sst2", "synthetic", None, None)["train"].subset(range(N))
    idx = torch.as_tensor(glue_shards.make_client_splits(train, "sst2", 1, "iid", seed=SEED)["client_indices"][0])
    data = modeling.encode(tokenizer, train, 48, modeling.uses_token_types(base))
    want, plain = by_hand(base, data, idx, MU), by_hand(base, data, idx, 0.0)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    # the proximal term moved the adapter: plain local steps end elsewhere, far beyond that tolerance
    assert max(float((plain[k] - want[k]).abs().max()) for k in want) > 1e-4
