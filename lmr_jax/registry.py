"""One registry pattern for every component chosen by name.

Backbones, poolings, losses, samplers and re-ranking methods each have one ``Registry``. A
component registers its factory with a decorator next to its definition::

    LOSSES = Registry("loss", builtin_modules=("lmr_jax.train.losses",))

    @LOSSES.register("arcface")
    def arcface(*, logit_scale: float = 30.0, margin: float = 0.3) -> LossFn: ...

and callers build it from its config sub-dict: ``LOSSES.build(cfg.name, **cfg_without_name)``.
``build`` checks the keyword arguments against the factory's signature, so a mistyped config
key is an error that names the key and the accepted ones instead of being ignored.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., Any])


class Registry(Generic[Factory]):
    """Factories of one kind of component, by name.

    Args:
      kind: what the registry holds, for error messages (``"backbone"``, ``"loss"``, ...).
      builtin_modules: modules whose import registers the built-in factories; imported the first
        time a name is looked up, so that defining a registry imports nothing heavy.
    """

    def __init__(self, kind: str, builtin_modules: Sequence[str] = ()):
        self.kind = kind
        self._builtin_modules = tuple(builtin_modules)
        self._loaded = not self._builtin_modules
        self._factories: dict[str, Factory] = {}

    def register(self, name: str) -> Callable[[Factory], Factory]:
        """Decorator registering ``factory`` under ``name`` (each name once)."""

        def wrap(factory: Factory) -> Factory:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._factories[name] = factory
            return factory

        return wrap

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self._load()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._factories

    def get(self, name: str) -> Factory:
        """The factory registered as ``name``; a ``ValueError`` listing the known names if none."""
        self._load()
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def accepted_kwargs(self, name: str) -> list[str]:
        """The keyword arguments ``build(name, ...)`` accepts (the factory's named parameters)."""
        params = inspect.signature(self.get(name)).parameters.values()
        return [p.name for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)``, refusing keyword arguments the factory does not take.

        Raises:
          ValueError: unknown ``name``, or keyword arguments the factory does not accept (the
            message names them and lists the accepted ones).
        """
        factory = self.get(name)
        params = inspect.signature(factory).parameters.values()
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            accepted = self.accepted_kwargs(name)
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} does not take {unknown}; it takes: "
                                 f"{', '.join(accepted) or 'no options'}")
        return factory(*args, **kwargs)

    def build_from_config(self, config: Mapping[str, Any], /, *args: Any,
                          name_key: str = "name", **extra: Any) -> Any:
        """``build(config[name_key], *args, **rest_of_config, **extra)`` for a config sub-dict."""
        options = {k: v for k, v in dict(config).items() if k != name_key}
        return self.build(config[name_key], *args, **options, **extra)
