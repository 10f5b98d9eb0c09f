"""Registering RetNet with ``transformers``' Auto classes, eagerly (:func:`register`) or on import (:func:`install`).

Importing ``transformers``' Auto machinery takes seconds, so ``import retnet`` must not do it. Instead
:func:`install` (called by ``retnet/__init__.py``) registers at once what is already imported and puts a small
finder on ``sys.meta_path`` that registers the rest right after ``transformers`` itself imports the module that
holds each mapping:

- ``transformers.models.auto.configuration_auto`` -> ``AutoConfig`` knows ``model_type: "retnet"``;
- ``transformers.models.auto.modeling_auto`` -> ``AutoModelForCausalLM`` builds ``RetNetHFForCausalLM``;
- ``transformers.models.auto.tokenization_auto`` -> ``AutoTokenizer`` gives a ``PreTrainedTokenizerFast``.

So after ``import retnet`` the Auto classes load our directories with no further call, whatever was imported
first; a user who imports nothing of ``transformers`` pays nothing. :func:`register` does all three at once.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"
TOKENIZATION_AUTO = "transformers.models.auto.tokenization_auto"


def register_config() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from retnet.hf.configuration import RetNetHFConfig

    CONFIG_MAPPING.register(RetNetHFConfig.model_type, RetNetHFConfig, exist_ok=True)


def register_models() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from retnet.hf.configuration import RetNetHFConfig
    from retnet.hf.modeling import RetNetHFForCausalLM

    MODEL_FOR_CAUSAL_LM_MAPPING.register(RetNetHFConfig, RetNetHFForCausalLM, exist_ok=True)


def register_tokenizer() -> None:
    from transformers.models.auto.tokenization_auto import AutoTokenizer
    from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast

    from retnet.hf.configuration import RetNetHFConfig

    AutoTokenizer.register(RetNetHFConfig, tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)


HOOKS: dict[str, Callable[[], None]] = {
    CONFIG_AUTO: register_config,
    MODELING_AUTO: register_models,
    TOKENIZATION_AUTO: register_tokenizer,
}


def register() -> None:
    """Register RetNet with ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoTokenizer`` now (idempotent)."""
    for hook in HOOKS.values():
        hook()


def _run(name: str) -> None:
    try:
        HOOKS[name]()
    except Exception as exc:  # never break the user's import of transformers
        warnings.warn(
            f"retnet could not register with transformers after importing {name}: {exc!r}; "
            "call retnet.hf.register() once transformers is imported",
            RuntimeWarning,
            stacklevel=2,
        )


class _HookedLoader(importlib.abc.Loader):
    """Runs the real loader, then the registration hook for that module."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader  # hide the wrapper from now on
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run(self._name)

    def __getattr__(self, item):  # get_source, is_package, get_resource_reader, ...
        return getattr(self._loader, item)


class _RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the watched ``transformers`` modules (one shot each)."""

    def __init__(self, names: set[str]) -> None:
        self.pending = set(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            _uninstall(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookedLoader(spec.loader, fullname)
        return spec


def _uninstall(finder: _RegistrationFinder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


def install() -> None:
    """Register now what ``transformers`` has already imported; hook the rest (cheap: imports nothing)."""
    if any(isinstance(f, _RegistrationFinder) for f in sys.meta_path):
        return
    pending = set()
    for name in HOOKS:  # in order: the config first
        if name in sys.modules:
            _run(name)
        else:
            pending.add(name)
    if pending:
        sys.meta_path.insert(0, _RegistrationFinder(pending))
