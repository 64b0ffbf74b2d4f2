"""Stage history: the bench reports of many runs, kept in a database, and where their rows stepped.

`rnnc bench --history HISTORY` appends each report (`store.append`); `rnnc gate --history` and
`rnnc history` read the runs back (`store.load`) as frozen records. A history is what one report
cannot give: the noise a row shows from run to run on the same machine, and the commit at which
its speed changed (`steps.find_steps`). Rendering the trend is the next stage's (`rnnc.reports`).
"""
from __future__ import annotations

from rnnc.history.steps import Step, find_steps, noise
from rnnc.history.store import (SCHEMA_VERSION, HistoryRow, HistoryRun, append, check_reachable, describe, keys,
                                load, series)

__all__ = ["SCHEMA_VERSION", "HistoryRow", "HistoryRun", "Step", "append", "check_reachable", "describe",
           "find_steps", "keys", "load", "noise", "series"]
