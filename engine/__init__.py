"""shipslog.engine: events, operation state machines, the pure reducer and the engine core.

Never imports shipslog.recovery, shipslog.gpu or torch.
"""

__all__: list[str] = []
