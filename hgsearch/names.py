"""The library's choice lists, in a module without heavy imports so `hgsearch --help` needs no torch."""

from __future__ import annotations

FAMILIES = ("hourglass", "conventional")
FAMILY_CHOICES = (*FAMILIES, "both")
TASKS = ("denoise", "superres", "classify")
AUGMENTS = ("none", "flips")
DEVICES = ("auto", "cpu", "cuda")
# data.registry holds their readers; npz and folder are the user's own images (data.formats.npz, .folder).
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagenet32", "idx", "npz", "folder")
PRUNING_RULES = ("none", "pareto-asha", "psnr-bins")
# How new configurations are drawn (search.sampler.make_sampler; chosen by bench/search_quality.py).
SAMPLERS = ("gp", "tpe-mv", "tpe", "qmc", "random")
