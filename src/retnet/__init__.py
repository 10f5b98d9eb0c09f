"""retnet: Retentive Networks in PyTorch."""

from retnet.models import RetNetConfig, RetNetForCausalLM, RetNetState

__version__ = "0.1.0"
__all__ = ["RetNetConfig", "RetNetForCausalLM", "RetNetState", "__version__"]
