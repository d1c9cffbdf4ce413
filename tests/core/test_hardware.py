import pytest
import torch

from sft.core import hardware
from sft.core.hardware import loader_workers, local_processes


@pytest.mark.parametrize("cores, device, processes, decodes, expected", [
    (2, "cpu", 1, True, 1),      # this machine: one worker overlaps decoding, the cores stay with the model
    (16, "cpu", 1, True, 2),
    (2, "cpu", 2, True, 0),      # two CPU processes already share two cores
    (16, "cuda", 1, True, 8),    # a GPU needs every decoder it can get, up to 8
    (16, "cuda", 4, True, 3),    # four GPUs on 16 cores: a share each, one core left for the step
    (2, "cuda", 1, True, 1),
    (16, "cuda", 1, False, 0),   # texts tokenize a batch at a time in the training process
])
def test_auto_workers(monkeypatch, cores, device, processes, decodes, expected):
    monkeypatch.setattr(hardware, "usable_cores", lambda: cores)
    assert loader_workers("auto", torch.device(device), processes, decodes) == expected


def test_a_number_is_kept():
    assert loader_workers(5, torch.device("cpu"), 1, False) == 5


def test_local_processes():
    assert local_processes(2, torch.device("cpu")) == 2
    assert local_processes("auto", torch.device("cpu")) == 1
    assert local_processes("2", torch.device("cpu")) == 2 and local_processes("0,2", torch.device("cuda")) == 2
