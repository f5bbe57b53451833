"""One family's search as the run loop, claims and trial runs share it: study, settings, family, data, reporter."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from hgsearch.config import RunConfig
from hgsearch.data.tasks import TaskData
from hgsearch.events import Reporter


@dataclass(frozen=True)
class FamilySearch:
    """What every step of one family's search reads; fixed for the whole run_search."""

    study: optuna.Study
    cfg: RunConfig
    family: str
    data: TaskData
    reporter: Reporter
    batch: int = 1  # new configurations claimed together (a pack): a draw sees its batch-mates as still training
