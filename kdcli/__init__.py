"""kdcli: compress model checkpoints by knowledge distillation."""

__version__ = "0.1.0"
