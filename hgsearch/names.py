"""The library's choice lists, in a module without heavy imports so `hgsearch --help` needs no torch."""

from __future__ import annotations

FAMILIES = ("hourglass", "conventional")
FAMILY_CHOICES = (*FAMILIES, "both")
TASKS = ("denoise", "superres", "classify")
AUGMENTS = ("none", "flips")
DEVICES = ("auto", "cpu", "cuda")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagenet32", "idx")  # data.registry holds their readers
PRUNING_RULES = ("none", "pareto-asha", "psnr-bins")
