"""The shared check of the scripts' bad-input tests: a usage error ends in one line on stderr, exit 2."""
from __future__ import annotations

import pytest

from common import cli


def one_line_error(main, argv, capsys) -> str:
    """Run ``main(argv)`` the way a script's ``__main__`` does; assert exit 2 and one line without a traceback;
    return that line."""
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err
