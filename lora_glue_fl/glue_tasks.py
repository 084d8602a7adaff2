"""The nine GLUE tasks: one table, three data sources, and the metrics of each task.

Sources, never a silent fallback from one to another: ``hf`` (``datasets.load_dataset("glue", task)``), ``dir``
(``--data_dir`` in the original GLUE TSV layout: train.tsv, dev.tsv, for MNLI dev_matched.tsv and
dev_mismatched.tsv) and ``synthetic`` (the embedded sst2, mrpc and stsb of ``common.synthetic``, read as ``dir``).
A split is an ``Examples`` record.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import cli
from common import evaluate as ev
from common.errors import check_no_nul

# The task table. tsv: (column of text_a, column of text_b, column of label, header?) in the GLUE files;
# names are header names, ints are positions (CoLA has no header). label_map maps TSV strings to HF ids.
NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
NLI2 = {"entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class Task:
    keys: tuple[str, str | None]          # HF column names of the two texts
    num_labels: int                       # 1 = regression (STS-B)
    metrics: tuple[str, ...]              # reported on the validation split(s)
    main_metric: str                      # the one number of the results table
    tsv: tuple                            # (text_a col, text_b col, label col, has_header)
    label_map: dict | None = None
    eval_splits: tuple[str, ...] = ("validation",)


TASKS: dict[str, Task] = {
    "cola": Task(("sentence", None), 2, ("matthews_corrcoef", "accuracy"), "matthews_corrcoef", (3, None, 1, False)),
    "sst2": Task(("sentence", None), 2, ("accuracy",), "accuracy", ("sentence", None, "label", True)),
    "mrpc": Task(("sentence1", "sentence2"), 2, ("accuracy", "f1"), "f1", ("#1 String", "#2 String", "Quality", True)),
    "stsb": Task(("sentence1", "sentence2"), 1, ("pearson", "spearman"), "pearson",
                 ("sentence1", "sentence2", "score", True)),
    "qqp": Task(("question1", "question2"), 2, ("accuracy", "f1"), "f1",
                ("question1", "question2", "is_duplicate", True)),
    "mnli": Task(("premise", "hypothesis"), 3,
                 ("accuracy_matched", "accuracy_mismatched", "accuracy_mean"), "accuracy_mean",
                 ("sentence1", "sentence2", "gold_label", True), NLI3,
                 ("validation_matched", "validation_mismatched")),
    "qnli": Task(("question", "sentence"), 2, ("accuracy",), "accuracy", ("question", "sentence", "label", True), NLI2),
    "rte": Task(("sentence1", "sentence2"), 2, ("accuracy",), "accuracy",
                ("sentence1", "sentence2", "label", True), NLI2),
    "wnli": Task(("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", ("sentence1", "sentence2", "label", True)),
}
SYNTHETIC_TASKS = ("sst2", "mrpc", "stsb")  # the layouts common.synthetic embeds
SELECTION = "selection"  # an optional split carved from the training data: every choice is made on it
TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", SELECTION: "selection.tsv",
             "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}


def get_task(name: str) -> Task:
    name = name.lower()
    cli.check(name in TASKS, f"unknown GLUE task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class Examples:
    text_a: list[str]
    text_b: list[str] | None   # None for single-sentence tasks
    label: np.ndarray          # [N] int64 class ids, or float32 scores (STS-B)
    genre: list[str] | None = None

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, idx) -> Examples:
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]
        return Examples(pick(self.text_a), pick(self.text_b), self.label[idx], pick(self.genre))

    def head(self, n: int | None) -> Examples:
        """The first ``n`` examples (``--max_train_samples`` / ``--max_eval_samples``); all of them when None."""
        return self if n is None else self.subset(range(min(n, len(self))))

    def column(self, key: str) -> list:
        """A text column by name for ``--category_key`` (genre; ``glue_shards.category_values`` reads the labels)."""
        if key == "genre" and self.genre is not None:
            return list(self.genre)
        raise cli.UsageError(f"--category_key {key!r} is not a column of this task; expected label"
                             + (" or genre" if self.genre is not None else ""))


def read_tsv(path: Path, task_name: str) -> Examples:
    """One GLUE TSV file (quotes are literal text in GLUE, so csv quoting is off; a UTF-8 BOM is dropped)."""
    task = get_task(task_name)
    col_a, col_b, col_y, has_header = task.tsv
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise cli.UsageError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); expected the original "
                             f"GLUE {task_name.upper()} TSV file") from None
    except (OSError, csv.Error) as e:
        raise cli.UsageError(f"{path} cannot be read as a TSV file ({type(e).__name__}: {e})") from None
    for line_no, row in enumerate(rows, start=1):  # QUOTE_NONE: one row a line
        check_no_nul(path, line_no, row)
    cli.check(len(rows) > int(has_header), f"{path} holds no examples")
    header = [h.strip() for h in rows[0]] if has_header else None

    def position(col):
        if col is None or isinstance(col, int):
            return col
        cli.check(col in header, f"{path}: column {col!r} missing from the header {header}; "
                                  f"expected the original GLUE {task_name.upper()} layout")
        return header.index(col)

    ia, ib, iy = position(col_a), position(col_b), position(col_y)
    ig = header.index("genre") if header and "genre" in header else None
    body = rows[1:] if has_header else rows
    kept = []  # (row, its label column)
    for line_no, row in enumerate(body, start=2 if has_header else 1):
        if not row or row == [""]:
            continue
        if task_name == "mnli":  # gold_label is the last column whatever the number of annotator columns
            iy = max(len(row) - 1, ib + 1)  # (and comes after the sentences: a shorter row is refused below)
        last = max(i for i in (ia, ib, iy) if i is not None)
        if len(row) <= last:
            raise cli.UsageError(f"{path}:{line_no}: {len(row)} columns, expected at least {last + 1} "
                                 f"(original GLUE {task_name.upper()} layout)")
        kept.append((row, iy))
    column = lambda i: None if i is None else [row[i] for row, _ in kept]
    return Examples(column(ia), column(ib), _labels([row[j].strip() for row, j in kept], task, path), column(ig))


def _labels(raw: list[str], task: Task, path) -> np.ndarray:
    try:
        if task.num_labels == 1:
            out = np.asarray([float(v) for v in raw], dtype=np.float32)
        elif task.label_map is not None and raw and raw[0] in task.label_map:
            out = np.asarray([task.label_map[v] for v in raw], dtype=np.int64)
        else:
            out = np.asarray([int(v) for v in raw], dtype=np.int64)
    except (ValueError, KeyError) as e:
        raise cli.UsageError(f"{path}: unreadable label ({e}); expected the original GLUE layout") from None
    return check_labels(out, task, path)


def check_labels(labels: np.ndarray, task: Task, where) -> np.ndarray:
    """Labels as the task defines them, whatever the source: class ids in 0..num_labels-1, or STS-B scores that
    are finite and within 0..5 (a ``nan`` score is bad input, not a divergence found rounds later)."""
    if task.num_labels == 1:
        lo, hi = 0.0, 5.0  # STS-B similarity scores
        bad = np.flatnonzero(~(np.isfinite(labels) & (labels >= lo) & (labels <= hi)))
        if bad.size:
            raise cli.UsageError(f"{where}: the score of example {bad[0] + 1} is {labels[bad[0]]}, not a number in "
                                 f"{lo:g}..{hi:g}; expected STS-B similarity scores")
    else:
        cli.check(labels.size == 0 or (labels.min() >= 0 and labels.max() < task.num_labels),
                  f"{where}: labels outside 0..{task.num_labels - 1}")
    return labels


def read_glue_dir(data_dir, task_name: str) -> dict[str, Examples]:
    """train + validation split(s) from a folder in the original GLUE layout, plus the selection split when it
    holds ``selection.tsv`` (train.tsv's columns; examples held out of training, scored every epoch / round while
    the validation split is scored once, at the end)."""
    task = get_task(task_name)
    data_dir = Path(data_dir)
    expected = ", ".join(TSV_FILES[s] for s in ("train", *task.eval_splits))
    out = {}
    splits = ("train", *task.eval_splits) + ((SELECTION,) if (data_dir / TSV_FILES[SELECTION]).is_file() else ())
    for split in splits:
        path = data_dir / TSV_FILES[split]
        cli.check(path.is_file(), f"--data_dir {data_dir}: {path.name} not found; expected the original GLUE "
                                  f"{task_name.upper()} files ({expected})")
        out[split] = read_tsv(path, task_name)
    return out


def read_glue_hf(task_name: str, cache_dir=None) -> dict[str, Examples]:
    """Through ``datasets.load_dataset('glue', task)``; a clear line when the hub cannot be reached."""
    import datasets

    task = get_task(task_name)
    try:
        raw = datasets.load_dataset("glue", task_name, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 -- offline / not cached / broken cache: choose another source
        raise cli.UsageError(f"cannot load GLUE {task_name} through Hugging Face datasets ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160]}); use --data_dir with the GLUE TSV files "
                             f"or --data synthetic") from None
    ka, kb = task.keys
    out = {}
    for split in ("train", *task.eval_splits):
        d = raw[split]
        y = check_labels(np.asarray(d["label"], dtype=np.float32 if task.num_labels == 1 else np.int64), task,
                         f"GLUE {task_name} {split}")
        out[split] = Examples(list(d[ka]), list(d[kb]) if kb else None, y,
                              list(d["genre"]) if "genre" in d.column_names else None)
    return out


def resolve_task(args) -> Task:
    """--task_name checked and lower-cased; --data, else its default: dir when --data_dir is given, synthetic with
    --quick, else hf."""
    task = get_task(args.task_name)
    args.task_name = args.task_name.lower()
    args.data = args.data or ("dir" if args.data_dir else ("synthetic" if getattr(args, "quick", False) else "hf"))
    return task


def load_glue(task_name: str, data: str = "hf", data_dir=None, cache_dir=None) -> dict[str, Examples]:
    """All splits a run needs: ``train`` plus the task's evaluation split(s)."""
    task_name = task_name.lower()
    get_task(task_name)
    if data_dir is not None and data == "hf":
        data = "dir"  # giving --data_dir is choosing the local source
    if data == "dir":
        cli.check(data_dir is not None, "--data dir needs --data_dir pointing at the GLUE TSV files")
        return read_glue_dir(data_dir, task_name)
    if data == "synthetic":
        cli.check(task_name in SYNTHETIC_TASKS, f"--data synthetic embeds {', '.join(SYNTHETIC_TASKS)}; "
                                                f"task {task_name!r} needs --data hf or --data_dir")
        from common import synthetic
        return read_glue_dir(synthetic.ensure(f"glue-{task_name}"), task_name)
    cli.check(data == "hf", f"--data {data!r} unknown; expected hf, dir or synthetic")
    return read_glue_hf(task_name, cache_dir)


# Metrics: common.evaluate, plain NumPy (the `evaluate` package would fetch metric code from the hub)
def majority_label(task_name: str, train_labels) -> int | None:
    """The most frequent training label (None for STS-B's regression or no labels)."""
    task = get_task(task_name)
    if task.num_labels == 1 or len(train_labels) == 0:
        return None
    return int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=task.num_labels).argmax())


def majority_metrics(task_name: str, train_labels, eval_sets: dict[str, Examples]) -> dict[str, float]:
    """The task's metrics of always predicting the most frequent training label ({} for STS-B)."""
    majority = majority_label(task_name, train_labels)
    if majority is None:
        return {}
    one_hot = np.eye(get_task(task_name).num_labels)[majority]  # the logits of every example
    return compute_metrics(task_name, {split: (np.tile(one_hot, (len(ex), 1)), np.asarray(ex.label))
                                       for split, ex in eval_sets.items()})


def baselines(task_name: str, train_labels, eval_sets: dict[str, Examples], select: Examples | None) -> dict:
    """A run's summary.json keys that plots/plot_lora_glue.py draws beside the metric (plots read run directories
    only): the majority-class baseline on ``eval_sets``, its label, the number of labels and, with a selection
    split, its size and majority-class baseline."""
    out = {"majority": majority_metrics(task_name, train_labels, eval_sets),
           "majority_label": majority_label(task_name, train_labels), "num_labels": get_task(task_name).num_labels}
    if select is not None:
        out.update(selection_examples=len(select),
                   selection_majority=majority_metrics(task_name, train_labels, {SELECTION: select}))
    return out


def compute_metrics(task_name: str, outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """outputs: eval split -> (logits [N, C] or scores [N, 1], labels [N]) -> the task's metrics (``Task.metrics``;
    MNLI's accuracy_mean is the mean of matched and mismatched)."""
    task = get_task(task_name)
    out = {}
    for split, (logits, labels) in outputs.items():
        logits = np.asarray(logits)
        if task.num_labels == 1:
            s = logits.reshape(-1)
            out.update(pearson=ev.pearson(s, labels), spearman=ev.spearman(s, labels))
            continue
        pred = logits.argmax(-1)
        if task_name == "mnli" and split.startswith("validation_"):
            out["accuracy_" + split.split("_")[1]] = ev.accuracy(pred, labels)
            continue
        out["accuracy"] = ev.accuracy(pred, labels)
        if task_name == "cola":
            out["matthews_corrcoef"] = ev.matthews_corrcoef(pred, labels)
        if "f1" in task.metrics:
            out["f1"] = ev.f1_score(pred, labels)
    if task_name == "mnli":  # a selection split of MNLI's training data is one split: its accuracy
        out["accuracy_mean"] = ((out["accuracy_matched"] + out["accuracy_mismatched"]) / 2
                                if "accuracy_matched" in out else out["accuracy"])
    return out
