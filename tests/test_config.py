"""Configuration files: keys renamed to put the qualifier last still load, each with one
warning that names its new key; a file cannot set a key under both names."""

import json
import logging

import pytest

from onecard.switch import config
from onecard.switch.config import RENAMED_KEYS, ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "onecard.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("section", "old"), sorted(RENAMED_KEYS))
def test_an_old_key_loads_with_one_warning_naming_the_new_key(tmp_path, caplog, section, old):
    new = RENAMED_KEYS[section, old]
    default = getattr(getattr(config.Config(), section), new)
    value = default + 1 if isinstance(default, int) else "0.0.0.0"      # not the default
    path = write(tmp_path, f"[{section}]\n{old} = {json.dumps(value)}\n")
    with caplog.at_level(logging.WARNING, logger="onecard.config"):
        loaded = config.load(path)
    assert getattr(getattr(loaded, section), new) == value
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "\n" not in line and old in line and new in line and str(path) in line


def test_new_keys_load_without_warnings(tmp_path, caplog):
    path = write(tmp_path, "[server]\nnative_batch_max = 500\nwaiting_batches_max = 64\n"
                           "[limits]\namount_fen_max = 1000\ntopup_fen_max = 2000\n")
    with caplog.at_level(logging.WARNING, logger="onecard.config"):
        loaded = config.load(path)
    assert caplog.records == []
    assert (loaded.server.native_batch_max, loaded.server.waiting_batches_max) == (500, 64)
    assert (loaded.limits.amount_fen_max, loaded.limits.topup_fen_max) == (1000, 2000)


def test_a_key_under_both_names_stops_startup(tmp_path):
    path = write(tmp_path, "[limits]\nmax_topup_fen = 5\ntopup_fen_max = 6\n")
    with pytest.raises(ConfigError, match="max_topup_fen and topup_fen_max"):
        config.load(path)


def test_an_old_key_is_still_checked_against_the_bounds(tmp_path):
    path = write(tmp_path, "[server]\nmax_native_batch = 0\n")
    with pytest.raises(ConfigError, match="native_batch_max"):
        config.load(path)
