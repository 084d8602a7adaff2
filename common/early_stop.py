"""The plateau rule: stop when ``patience`` evaluations in a row fail to fall below reference x (1 -
``min_improvement``), the reference being the value at the last such improvement. The best parameters (lowest
value at any evaluation) are kept on the CPU: a run that stops, or reaches its budget, reports them.

    if stop.update(val_ppl, step, params):   # at each evaluation; True: plateaued
        break
    stop.restore_(params)                     # the best-validation parameters

With ``budget_at`` (a step or round) the best model up to it is kept too, the equal-compute result of a shorter
run (its prefix at a constant learning rate); the run never stops before it; ``restore_(params, budget=True)``.
"""
from __future__ import annotations

import torch


class EarlyStop:
    SUMMARY_KEYS = ("best_val_ppl", "best_at", "stopped", "stopped_at", "patience", "min_improvement", "budget_at",
                    "budget_best_val_ppl", "budget_best_at")

    def __init__(self, patience: int, min_improvement: float = 0.01, budget_at: int | None = None):
        self.patience, self.min_improvement = int(patience), float(min_improvement)
        self.budget_at = None if budget_at is None else int(budget_at)
        self.budget = None  # (best value, where, parameters) of the evaluations up to budget_at, once reached
        self.reference = float("inf")  # the value at the last improvement that counted
        self.bad = 0                   # evaluations since then
        self.best, self.best_at, self.best_params = float("inf"), None, None
        self.stopped_at = None

    def update(self, value: float, at: int, params: list[torch.Tensor]) -> bool:
        """Record an evaluation (``at``: its step or round); True when the run has plateaued."""
        if self.budget_at is not None and self.budget is None and at > self.budget_at:
            self.budget = (self.best, self.best_at, self.best_params)  # the budget fell between two evaluations
        if value < self.best:
            self.best, self.best_at = float(value), int(at)
            self.best_params = [p.detach().to("cpu", copy=True) for p in params]
        if value < self.reference * (1 - self.min_improvement):
            self.reference, self.bad = float(value), 0
        else:
            self.bad += 1
        if self.budget_at is not None and self.budget is None and at >= self.budget_at:
            self.budget = (self.best, self.best_at, self.best_params)  # best_params is replaced, never written
        if self.patience > 0 and self.bad >= self.patience and (self.budget_at is None or at >= self.budget_at):
            self.stopped_at = int(at)
        return self.stopped_at is not None

    def restore_(self, params: list[torch.Tensor], budget: bool = False) -> None:
        """Load the best parameters seen (``budget``: up to ``budget_at``), if any, into ``params``."""
        kept = (self.budget[2] if self.budget else None) if budget else self.best_params
        if kept is not None:
            with torch.no_grad():
                for p, b in zip(params, kept):
                    p.copy_(b)

    def summary(self) -> dict:
        """What summary.json reports: the best value and where, and whether the rule stopped the run."""
        return {"best_val_ppl": self.best, "best_at": self.best_at, "stopped": "plateau" if self.stopped_at
                else "budget", "stopped_at": self.stopped_at, "patience": self.patience,
                "min_improvement": self.min_improvement,
                **({"budget_at": self.budget_at, "budget_best_val_ppl": self.budget and self.budget[0],
                    "budget_best_at": self.budget and self.budget[1]} if self.budget_at is not None else {})}

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("reference", "bad", "best", "best_at", "best_params", "stopped_at",
                                              "budget")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
