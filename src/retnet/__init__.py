"""retnet: Retentive Networks in PyTorch."""

__version__ = "0.1.0"
