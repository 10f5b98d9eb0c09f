"""retnet: Retentive Networks in PyTorch."""

from retnet.hf.registration import install as _install_transformers_hooks
from retnet.models import RetNetConfig, RetNetForCausalLM, RetNetState

__version__ = "0.1.0"
__all__ = ["RetNetConfig", "RetNetForCausalLM", "RetNetState", "__version__"]

# Registers RetNet with transformers' Auto classes when (or if) transformers loads them; imports nothing now.
_install_transformers_hooks()
