"""retnet: Retentive Networks in PyTorch.

The ``transformers`` integration lives in :mod:`retnet.hf`; importing it registers the Auto classes.
"""

from retnet.models import RetNetConfig, RetNetForCausalLM, RetNetState

__version__ = "0.1.0"
__all__ = ["RetNetConfig", "RetNetForCausalLM", "RetNetState", "__version__"]
