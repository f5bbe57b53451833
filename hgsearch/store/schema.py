"""The schema of what hgsearch stores in Optuna: trial and study attribute keys, objectives, finished states.

Every key is written here once; the rest of the package imports it from here.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

DIRECTIONS = ["minimize", "maximize"]  # (parameter count, validation PSNR)


METRIC_NAMES = ["params", "psnr_val"]


SETTINGS_KEY = "hgsearch_settings"


# study user attr: the data `run` last read, as an absolute path (its --data-dir). Not one of the settings
# (the same files may move; their checksum is the setting): frontier, report and confirm read the data
# from here when given no --data-dir, so a study of the user's own files needs the path only once.
DATA_PATH_KEY = "data_path"


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # final outcomes: what --trials counts


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def family_study_name(study: str, family: str) -> str:
    return f"{study}.{family}"


WORKER_ATTR = "worker"  # user attr: the process that runs a RUNNING trial (host, boot, pid, start)


# user attr, set when a new trial is created: the process that claimed it. Until the trial names its
# WORKER_ATTR (after its first heartbeat), this is how a process on the same host finds it abandoned at once.
CLAIMED_BY_ATTR = "claimed_by"


DRAW_ATTR = "draw"  # user attr: the place of a trial's configuration in its family's sequence of new ones


RETRY_ATTR = "retry_of"  # user attr: numbers of the earlier, cut-off trials of this configuration


# user attr on a queued retry: how many of its configuration's attempts in a row were cut off before they
# finished an epoch (search.trial.close_trial drops the configuration past MAX_STALLED_RETRIES)
STALLS_ATTR = "stalled_cutoffs"


# user attr: why a trial ended without completing: a FAIL's reason, and a PRUNED trial's stop reason too.
# The key predates early stopping and stored studies (and trials.csv's column) use it, so it keeps its name.
REASON_ATTR = "fail_reason"


STOPPED_AT_EPOCH_ATTR = "stopped_at_epoch"  # user attr: the epochs a PRUNED trial finished before it was stopped


CURVE_KEY = "curve"


CURVE_SECONDS_KEY = "curve_seconds"


SEEDS = "seeds"  # <study>.seeds holds `hgsearch confirm`'s retrainings of fixed configurations


def seeds_study_name(study: str) -> str:
    return f"{study}.{SEEDS}"
