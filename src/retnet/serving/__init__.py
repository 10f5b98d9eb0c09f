"""An OpenAI-compatible server for RetNet whose conversations cost constant memory.

Each stored conversation is one fixed-size recurrent state (``RetNetState``) on disk, so a new turn processes
only its new tokens. ``create_app`` builds the FastAPI app; ``retnet serve`` runs it with uvicorn.
"""

from retnet.serving.config import ServerConfig

__all__ = ["ServerConfig"]
