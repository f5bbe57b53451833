"""The library's choice lists, in a module without heavy imports so `hgsearch --help` needs no torch."""

from __future__ import annotations

FAMILIES = ("hourglass", "conventional")
FAMILY_CHOICES = (*FAMILIES, "both")
TASKS = ("denoise", "superres", "classify")
AUGMENTS = ("none", "flips")
DEVICES = ("auto", "cpu", "cuda")
