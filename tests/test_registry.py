"""The generic name -> factory registry (lmr_jax.registry)."""

import pytest

from lmr_jax.registry import Registry


def _registry() -> Registry:
    reg = Registry("widget")

    @reg.register("plain")
    def plain(*, size: int = 1, colour: str = "red"):
        return ("plain", size, colour)

    @reg.register("open")
    def open_ended(**options):
        return ("open", options)

    return reg


def test_build_passes_options_and_defaults():
    reg = _registry()
    assert reg.build("plain") == ("plain", 1, "red")
    assert reg.build("plain", size=3) == ("plain", 3, "red")
    assert reg.build_from_config({"name": "plain", "colour": "blue"}) == ("plain", 1, "blue")
    assert reg.names() == ["open", "plain"]
    assert "plain" in reg and "other" not in reg


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown widget 'other'; known: open, plain"):
        _registry().build("other")


def test_mistyped_option_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"does not take \['sise'\]; it takes: size, colour"):
        _registry().build("plain", sise=2)


def test_var_keyword_factory_takes_anything():
    assert _registry().build("open", anything=1) == ("open", {"anything": 1})


def test_registering_a_name_twice_is_refused():
    reg = _registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("plain")(lambda: None)


def test_builtin_modules_are_imported_on_first_lookup():
    from lmr_jax.models.registry import BACKBONES
    assert "resnet50" in BACKBONES.names()
