"""shipslog.recovery: start-up recovery planning and execution, invariants and the crash harness."""

__all__: list[str] = []
