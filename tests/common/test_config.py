"""``--config FILE.yaml`` values go through the flags' own argparse conversion: what the command line refuses,
a config file cannot set; every refusal is one line naming the key and what the flag expects."""
from __future__ import annotations

import pytest
from clicases import one_line_error

from common import cli, config
from lora_glue_fl import make_shards
from mamba_fl import fed_avg


def _parse(tmp_path, text: str | bytes, parser=None, argv=()):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    return cli.parse(parser or fed_avg.get_args_parser(), ["--config", str(cfg), *argv])


def test_values_are_converted_by_the_flags_own_types(tmp_path):
    a = _parse(tmp_path, "rounds: 3\nlr: 1e-3\nreport_to: tensorboard\nquick: true\noverwrite: false\n")
    assert (a.rounds, a.lr, a.report_to, a.quick, a.overwrite) == (3, 1e-3, ["tensorboard"], True, False)
    assert isinstance(a.lr, float) and isinstance(a.rounds, int)
    assert _parse(tmp_path, "rounds: 3\n", argv=["--rounds", "4"]).rounds == 4  # the command line wins


def test_a_store_false_flag_reads_as_its_flag_or_its_destination(tmp_path):
    p = make_shards.get_args_parser
    cfg = tmp_path / "s.yaml"
    for text, expect in (("no_bin_stsb: true\n", False), ("no-bin-stsb: false\n", True),
                         ("bin_stsb: false\n", False), ("bin_stsb: true\n", True)):
        cfg.write_text(text)
        assert config.read_config(cfg, p())["bin_stsb"] is expect, text


@pytest.mark.parametrize("text, expect", [
    ('overwrite: "false"\n', "overwrite: 'false' is not a boolean"),
    ("overwrite: 0\n", "expected true or false for --overwrite"),
    ("lr: [0.1, 0.2]\n", "lr: a list is not allowed here; expected a number > 0 for --lr"),
    ("out_dir: [a, b]\n", "expected a folder path for --out-dir"),
    ("model_config: {name: x}\n", "model_config: a mapping is not allowed here"),
    ("report_to: [[tensorboard]]\n", "a nested list"),
    ("lr: null\n", "null is not a value"),
    ("run_name: 2020-01-01\n", "(date) is not a value"),
    ("rounds: true\n", "True is a boolean"),
    ("rounds: 2.5\n", "expected an integer at least 1 for --rounds"),
    ("lr: nan\n", "--lr"),
    ("report_to: [bogus]\n", "invalid choice: 'bogus'"),
    ("report_to: []\n", "an empty list"),
    ("lr: 0.1\nlr: 0.2\n", "key 'lr' is given twice"),
    ("num_clients: 1\nnum-clients: 2\n", "which an earlier key already set"),
    ("roundz: 3\n", "unknown key 'roundz'"),
    ("[1, 2]\n", "must be a mapping"),
    ("lr: [\n", "not valid YAML"),
    (bytes(range(256)), "not UTF-8"),
    ("lr: 0.1 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
])
def test_what_the_command_line_refuses_a_config_cannot_set(tmp_path, text, expect, capsys):
    assert expect in one_line_error(lambda argv: _parse(tmp_path, text), [], capsys)
