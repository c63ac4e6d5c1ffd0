"""Key-encryption key rotation (issue 17, docs/operations.md "Rotate keys"): the data key
re-wrapped under a new KEK in one transaction; the data set opens with the new key only; a
running switch holds the data directory and the rotation waits for it to stop."""

import os
import shutil

import pytest

from onecard.switch import cli
from onecard.switch.security import keystore
from onecard.switch.store import loader

from conftest import start_switch


@pytest.fixture
def copy(demo_dir, tmp_path):
    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    return path                       # its KEK: the tests' $ONECARD_KEK (conftest)


def test_the_kek_is_rotated_and_only_the_new_one_opens_the_data_set(copy, tmp_path, capsys,
                                                                     monkeypatch):
    before = loader.load(copy).state.accounts["balance_fen"].copy()
    new = tmp_path / "keys" / "new.kek"
    assert cli.main(["keys", "rotate-kek", "--data-dir", str(copy), "--new-kek-file",
                     str(new)]) == 0
    assert "keep the old key" in capsys.readouterr().out
    assert new.stat().st_mode & 0o777 == 0o600
    with pytest.raises(keystore.KekError, match="is not the one"):
        loader.load(copy)                                     # the old key
    monkeypatch.delenv(keystore.ENV_KEK)
    after = loader.load(copy, kek_file=str(new)).state.accounts["balance_fen"]
    assert (after == before).all()
    # without the current key nothing changes
    assert cli.main(["keys", "rotate-kek", "--data-dir", str(copy), "--new-kek-file",
                     str(tmp_path / "third.kek")]) == 2     # no key beside it: none given
    assert "does not exist" in capsys.readouterr().err
    loader.load(copy, kek_file=str(new))


def test_a_running_switch_keeps_its_kek(copy, tmp_path, capsys):
    sw = start_switch(copy)
    try:
        assert cli.main(["keys", "rotate-kek", "--data-dir", str(copy), "--new-kek-file",
                         str(tmp_path / "new.kek")]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        sw.stop()
    loader.load(copy)                                         # still the old key


def test_a_key_that_cannot_be_made_is_one_line_and_leaves_no_data_set(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.delenv(keystore.ENV_KEK)
    locked = tmp_path / "etc"
    locked.mkdir(mode=0o500)                  # the switch's user cannot write here
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[security]\n'
                      f'kek_file = "{locked / "onecard.kek"}"\n')
    if os.geteuid() == 0:                     # root writes anywhere: a file in the way then
        (locked / "onecard.kek").mkdir()
    assert cli.main(["demo-data", "--config", str(config), "--cards", "1000"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the key-encryption key" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "onecard.db").exists()
