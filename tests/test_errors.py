"""How failures are reported (`vst_vla.errors`), torchcodec's load failure (`vst_vla.video_decoding`) and
`vst-vla info`'s model check, in-process; tests/test_cli.py runs the real command on the user errors."""

from __future__ import annotations

import importlib
import json
import logging
import shutil

import pytest
import torch

from vst_vla import video_decoding
from vst_vla.backbone import CheckpointError
from vst_vla.errors import (
    DEBUG_HINT,
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    debug_requested,
    describe,
    report_failure,
)
from vst_vla.runtime import resolve_dtype


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001 (the test classifies whatever comes out)
        return err
    raise AssertionError("expected an exception")


def test_our_validation_is_a_user_error_and_a_library_failure_is_internal():
    code, line = describe(_raised(resolve_dtype, "fp8", torch.device("cpu")), "sft")
    assert code == EXIT_USER_ERROR and line.startswith("model.dtype='fp8' is not one of auto, ")
    # A ValueError raised inside the json module is not our validation: a bug, with the way to its traceback.
    code, line = describe(_raised(json.loads, "{"), "sft")
    assert code == EXIT_INTERNAL_ERROR
    assert line.startswith("internal error: JSONDecodeError: Expecting property name") and line.endswith(f"({DEBUG_HINT})")
    code, line = describe(FileNotFoundError("/data/x.parquet: no such file or directory\n  (check the path)"), "sft")
    assert (code, line) == (EXIT_USER_ERROR, "/data/x.parquet: no such file or directory (check the path)")


def test_report_failure_prints_one_line_and_the_traceback_only_in_debug(capsys):
    err = _raised(resolve_dtype, "fp8", torch.device("cpu"))
    assert report_failure("vla", err) == EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [f"vst-vla vla: {describe(err, 'vla')[1]}"]
    report_failure("vla", err, debug=True)
    stderr = capsys.readouterr().err.splitlines()
    assert stderr[0] == "Traceback (most recent call last):" and stderr[-1].startswith("vst-vla vla: model.dtype=")


def test_debug_is_asked_by_the_environment_or_hydra_verbose(monkeypatch):
    monkeypatch.delenv("VST_VLA_DEBUG", raising=False)
    assert not debug_requested(["head=flow", "hydra.verbose=false"])
    assert debug_requested(["head=flow", "hydra.verbose=true"]) and debug_requested(["hydra.verbose=[__root__]"])
    monkeypatch.setenv("VST_VLA_DEBUG", "0")
    assert not debug_requested([])
    monkeypatch.setenv("VST_VLA_DEBUG", "1")
    assert debug_requested([])


@pytest.fixture
def torchcodec_filter():
    """The process-wide filter, reset before and restored after the test."""
    state = video_decoding._torchcodec_filter
    saved = (state.video_in_use, state.reported)
    state.video_in_use, state.reported = None, False
    yield state
    state.video_in_use, state.reported = saved


def _torchcodec_loads() -> bool:
    try:
        importlib.import_module("torchcodec")
    except (ImportError, OSError, RuntimeError):  # what LeRobot's probe catches
        return False
    return True


def _torchcodec_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "torchcodec" in r.getMessage()]


def test_torchcodec_load_failure_is_silent_for_images_and_one_line_once_for_videos(torchcodec_filter, caplog):
    from lerobot.utils.import_utils import get_safe_default_video_backend

    fails = not _torchcodec_loads()  # no FFmpeg libraries on this machine: LeRobot logs a ~120-line traceback
    caplog.set_level(logging.WARNING)
    video_decoding.quiet_torchcodec(video_in_use=False)
    get_safe_default_video_backend()
    assert _torchcodec_records(caplog) == []
    video_decoding.quiet_torchcodec(video_in_use=True)
    backends = {get_safe_default_video_backend(), get_safe_default_video_backend()}
    assert _torchcodec_records(caplog) == ([video_decoding._TORCHCODEC_ONE_LINE] if fails else [])
    assert backends == {"pyav" if fails else "torchcodec"}


def test_opening_an_image_dataset_says_nothing_about_torchcodec(torchcodec_filter, caplog, tmp_path):
    from policies.data import open_dataset
    from policies.synthetic_dataset import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", episodes=1, frames=4, image_size=32, cameras=("front",))
    assert video_decoding.dataset_has_video(tmp_path / "data") is False
    torchcodec_filter.video_in_use, torchcodec_filter.reported = None, False  # as in a fresh `vst-vla vla`
    caplog.clear()
    caplog.set_level(logging.WARNING)
    dataset = open_dataset(tmp_path / "data")
    assert dataset.num_frames == 4 and _torchcodec_records(caplog) == []


def test_info_checks_the_model_config_and_tokenizer(tiny_checkpoint_dir, tmp_path):
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from vst_vla.info import check_model

    described = check_model(OmegaConf.create({"source": str(tiny_checkpoint_dir)}))
    assert described.startswith(f"{tiny_checkpoint_dir} (qwen2_5_vl, text hidden 128 x 2 layers, ")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"cannot load the config or tokenizer of {broken}"):
        check_model(OmegaConf.create({"source": str(broken)}))
    # The shipped real-model presets read model.source from $VST_VLA_MODEL_PATH, else "???".
    with pytest.raises(CheckpointError, match="model.source is not set"):
        check_model(OmegaConf.create({"source": "${oc.env:VST_VLA_TEST_UNSET_PATH,???}"}))
    with pytest.raises(MissingMandatoryValue):
        check_model(OmegaConf.create({"model": {"source": "???"}}).model)
