"""shipslog.recovery: the start-up recovery planner and executor, and the invariants.

``plan(state, listing)`` is pure and table-driven; ``execute`` journals each
action's intent before its effect, so a crash during recovery is itself
recovered.  ``check_invariants`` is used after every recovery and by
``shipslog verify``.  Never imports torch.
"""

from ._execute import ActionResult, RecoveryReport, close_event, execute
from ._invariants import INVARIANTS, Violation, check_invariants
from ._plan import ENGINE_FOLDERS, Action, RootListing, list_root, plan, quarantine_name
from ._salvage import SalvageDecision, SalvageReport, salvage

__all__ = [
    "ENGINE_FOLDERS",
    "INVARIANTS",
    "Action",
    "ActionResult",
    "RecoveryReport",
    "RootListing",
    "SalvageDecision",
    "SalvageReport",
    "Violation",
    "check_invariants",
    "close_event",
    "execute",
    "list_root",
    "plan",
    "quarantine_name",
    "salvage",
]
