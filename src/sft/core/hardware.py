"""The machine a run trains on: the device this process uses and how many loader processes keep it fed."""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (a container or `taskset` can grant fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def training_device(accelerator: str) -> torch.device:
    """The device this process trains on, as Lightning picks it: its GPU when there is one and the recipe allows."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def local_processes(devices: int | str, device: torch.device) -> int:
    """Training processes on this machine (each gets its share of the cores)."""
    if isinstance(devices, int) or devices.strip().isdigit():
        return max(int(devices), 1)
    if devices == "auto":
        return torch.cuda.device_count() if device.type == "cuda" else 1
    return max(len([d for d in devices.split(",") if d.strip()]), 1)  # Lightning's "0,2": those devices


def loader_workers(setting: int | str, device: torch.device, processes: int, decodes: bool) -> int:
    """data.num_workers: auto. A GPU trains thousands of images a second, more than one process decodes: up to 8
    workers per GPU process from the cores it has, one core left for the step. On a CPU the same cores compute the
    step and preparing an image costs a few percent of it, so one or two workers overlap it without taking the
    model's cores. Texts (a fast tokenizer per batch) load in the training process."""
    if setting != "auto":
        return int(setting)
    if not decodes:
        return 0
    cores = usable_cores() // max(processes, 1)
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return min(2, cores // 2)
