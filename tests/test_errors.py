"""errors.py: the one family of errors, the install line of a missing extra, and an exception's first line."""

from __future__ import annotations

import pytest

from alexnet_cli.errors import AlexNetError, ConfigError, MissingExtra, first_line, require_extra


def test_a_missing_extra_names_its_install_line_and_exits_as_a_config_error():
    error = MissingExtra("plots need matplotlib", "plots", then=", then alexnet plot RUN_DIR")
    assert str(error) == "plots need matplotlib: pip install 'alexnet-cli[plots]', then alexnet plot RUN_DIR"
    assert isinstance(error, ConfigError) and error.exit_code == 2 and error.extra == "plots"


def test_require_extra_names_the_first_module_that_is_not_there():
    require_extra("json needs nothing", "none", ("json", "csv"))  # both importable: nothing raised
    with pytest.raises(MissingExtra) as missing:
        require_extra("alexnet serve needs its extra", "serve", ("json", "no_such_module_here", "also_missing"))
    assert str(missing.value) == ("alexnet serve needs its extra (no_such_module_here is not installed): "
                                  "pip install 'alexnet-cli[serve]'")


@pytest.mark.parametrize("exc, line", [
    (RuntimeError("first\nsecond\nthird"), "first"),
    (ValueError("  padded  \n"), "padded"),
    (KeyError(), "KeyError"),  # no message: the class says what it was
    (AlexNetError(""), "AlexNetError"),
])
def test_first_line(exc, line):
    assert first_line(exc) == line
