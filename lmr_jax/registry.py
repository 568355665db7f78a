"""One registry pattern for every component chosen by name.

Backbones, poolings, losses, samplers and re-ranking methods each have one ``Registry``. A
component registers its factory with a decorator next to its definition::

    LOSSES = Registry("loss", builtin_modules=("lmr_jax.train.losses",))

    @LOSSES.register("arcface")
    def arcface(*, logit_scale: float = 30.0, margin: float = 0.3) -> LossFn: ...

and callers build it from its config sub-dict: ``LOSSES.build(cfg.name, **cfg_without_name)``.
``build`` checks the keyword arguments against the factory's signature, so a mistyped config
key is an error that names the key and the accepted ones instead of being ignored.

Where a config offers several components of one kind and selects one by name (a stage picks
its sampler, a config picks its loss), the options of each live in a sub-dict named after it,
and :meth:`Registry.build_selected` builds the selected one::

    loss = {"name": "arcface", "arcface": {"label_smoothing": 0.0}, "cosface": {...}}
    LOSSES.build_selected(loss, context={"scale": 30.0, "margin": 0.3})
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., Any])


def _parameters(factory: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of a factory; of a class, those of its ``__init__`` without ``self``
    (metaclasses such as NNX's hide the constructor's signature from ``inspect.signature``)."""
    if inspect.isclass(factory):
        return list(inspect.signature(factory.__init__).parameters.values())[1:]
    return list(inspect.signature(factory).parameters.values())


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
        params = _parameters(self.get(name))
        return [p.name for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)``, refusing keyword arguments the factory does not take.

        Raises:
          ValueError: unknown ``name``, or keyword arguments the factory does not accept (the
            message names them and lists the accepted ones).
        """
        factory = self.get(name)
        params = _parameters(factory)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            accepted = self.accepted_kwargs(name)
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} does not take {unknown}; it takes: "
                                 f"{', '.join(accepted) or 'no options'}")
        return factory(*args, **kwargs)

    def build_offered(self, name: str, /, *args: Any, context: Mapping[str, Any],
                      **kwargs: Any) -> Any:
        """``build(name, *args, **kwargs)`` plus the ``context`` entries the factory names.

        ``context`` holds values a caller can supply to every component of the kind (a stage's
        logit scale, a model config's fields); each factory takes the ones it declares, so one
        component can use a value another does not take. ``kwargs`` win over ``context``.
        """
        accepted = set(self.accepted_kwargs(name))
        offered = {k: v for k, v in context.items() if k in accepted}
        return self.build(name, *args, **{**offered, **kwargs})

    def build_selected(self, config: Mapping[str, Any], /, *args: Any,
                       context: Mapping[str, Any] | None = None, **extra: Any) -> Any:
        """Builds the component ``config["name"]`` with the options of its sub-dict.

        Args:
          config: ``{"name": selected, selected: {options}, other_name: {...}, ...}``; the
            selected component's sub-dict may be absent (all defaults).
          *args: positional arguments of the factory.
          context: values offered as in :meth:`build_offered`.
          **extra: keyword arguments passed in any case (checked like the options).
        """
        name = config["name"]
        options = config.get(name) or {}
        options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
        return self.build_offered(name, *args, context=context or {}, **{**options, **extra})

    def build_from_config(self, config: Mapping[str, Any], /, *args: Any,
                          name_key: str = "name", **extra: Any) -> Any:
        """``build(config[name_key], *args, **rest_of_config, **extra)`` for a config sub-dict."""
        options = {k: v for k, v in dict(config).items() if k != name_key}
        return self.build(config[name_key], *args, **options, **extra)
