"""``synthetic.ensure``: every kind deterministic for a seed, generated fast, cached by parameters, safe
under concurrent callers."""
from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from common import synthetic as S
from common.cli import UsageError


def read_tsv(path: Path) -> list[list[str]]:
    """As the GLUE readers do: tab-separated, no quoting, BOM stripped when present."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize("kind, params, name", [
    ("ag_news", {"n_train": 40, "n_test": 8}, "train.csv"),
    ("glue-mrpc", {"n_train": 30, "n_dev": 5, "n_test": 5}, "train.tsv"),
    ("glue-stsb", {"n_train": 30, "n_dev": 5, "n_test": 5}, "dev.tsv"),
    ("cifar100", {"n_train_per_class": 1, "n_test_per_class": 1}, "cifar-100-python/train"),
])
def test_every_kind_is_deterministic_for_a_seed(tmp_path, kind, params, name):
    a = S.ensure(kind, root=tmp_path / "a", seed=1, **params) / name
    b = S.ensure(kind, root=tmp_path / "b", seed=1, **params) / name
    c = S.ensure(kind, root=tmp_path / "c", seed=2, **params) / name
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_ensure_caches_and_keys_by_params(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLAB_DATA", str(tmp_path))
    a = S.ensure("glue-sst2", n_train=20, n_dev=5, n_test=5)
    assert a.parent == tmp_path and (a / "train.tsv").is_file()
    stamp = (a / "train.tsv").stat().st_mtime_ns
    assert S.ensure("glue-sst2", n_train=20, n_dev=5, n_test=5) == a
    assert (a / "train.tsv").stat().st_mtime_ns == stamp                 # not regenerated
    b = S.ensure("glue-sst2", n_train=21, n_dev=5, n_test=5)
    assert b != a and len(read_tsv(b / "train.tsv")) == 22
    with pytest.raises(UsageError, match="unknown"):
        S.ensure("imagenet")
    with pytest.raises(UsageError, match="bad parameters"):
        S.ensure("ag_news", n_rows=3)


def test_cache_key_covers_every_writer_module(tmp_path, monkeypatch):
    """Data cached by an older generator is never served: the key hashes every module that writes a kind."""
    hashed = {m.__name__ for m in S._GENERATORS}
    for kind, writer in S.KINDS.items():
        assert getattr(writer, "func", writer).__module__ in hashed, kind
    module = tmp_path / "writer.py"
    module.write_text("SIZE = 1\n")
    try:
        monkeypatch.setattr(S, "_GENERATORS", (SimpleNamespace(__file__=str(module)),))
        S._code_digest.cache_clear()
        before = S._code_digest()
        module.write_text("SIZE = 2\n")
        S._code_digest.cache_clear()
        assert S._code_digest() != before
    finally:
        monkeypatch.undo()
        S._code_digest.cache_clear()


def test_ensure_concurrent_callers_get_one_complete_copy(tmp_path):
    results, errors = [], []

    def worker():
        try:
            results.append(S.ensure("ag_news", root=tmp_path, n_train=40, n_test=8))
        except Exception as e:            # noqa: BLE001 -- surfaced below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]      # no temp folders left behind
    with open(results[0] / "train.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 40
