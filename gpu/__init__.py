"""shipslog.gpu: the torch compute core (tensor files, LoRA merge, async checkpoints).

The only package of shipslog that imports torch; nothing else imports it.
"""

__all__: list[str] = []
