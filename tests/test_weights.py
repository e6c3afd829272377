"""Pickled weight files that would run code are refused on the driver, in one line, before any
actor loads them; torch's own weights-only loader agrees on what is safe."""
from __future__ import annotations

import os

import pytest
import torch

from factory.config import compose
from factory.errors import SettingError, user_error
from factory.job import load_job
from factory.weights import check_weight_file, check_weight_folder


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def saved(path, obj, zipped=True):
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    return path


@pytest.mark.parametrize("zipped", [True, False])
def test_a_state_dict_passes_and_a_payload_is_refused_as_torch_refuses_it(tmp_path, zipped):
    weights = {"visual.proj": torch.randn(4, 2), "nested": {"bias": torch.zeros(3)}, "step": 7}
    good = saved(tmp_path / "good.pt", weights, zipped)
    check_weight_file(good, "pretrained")
    assert torch.load(good, weights_only=True)["step"] == 7  # torch's loader agrees
    marker = tmp_path / "ran"
    evil = saved(tmp_path / "evil.bin", {"w": torch.ones(1), "x": Payload(str(marker))}, zipped)
    with pytest.raises(SettingError, match=r"pretrained=.*evil\.bin is a pickle that would run code .*system"):
        check_weight_file(evil, "pretrained")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(evil, weights_only=True)
    assert not marker.exists()  # read, never run


def test_a_model_folder_with_a_payload_is_refused_when_the_job_is_built(tmp_path):
    folder = tmp_path / "model" / "unet"
    folder.mkdir(parents=True)
    saved(folder / "diffusion_pytorch_model.bin", {"x": Payload(str(tmp_path / "ran"))})
    with pytest.raises(SettingError, match="is a pickle that would run code"):
        check_weight_folder(tmp_path / "model", "path")
    evil = saved(tmp_path / "clip.pt", {"x": Payload(str(tmp_path / "ran"))})
    with pytest.raises(SettingError) as err:
        load_job(compose([f"scorer.pretrained={evil}"]))
    line = user_error(err.value)
    assert line.startswith(f"scorer.pretrained={evil} is a pickle") and "\n" not in line
    assert not (tmp_path / "ran").exists()
