import pytest

from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest


@pytest.mark.parametrize("changes,message", [
    ({"width": 65}, "multiple of 8"),
    ({"height": 8}, "between"),
    ({"width": 8192}, "between"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "integer"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"seed": -5}, "seed"),
    ({"strength": 1.5}, "strength"),
    ({"batch_size": 0}, "batch_size"),
    ({"mask": "m.png"}, "init image"),
    ({"outpaint": {"left": 64}}, "init image"),
    ({"outpaint": {"sideways": 8}, "init_image": "x.png"}, "outpaint side"),
    ({"outpaint": {"left": 60}, "init_image": "x.png"}, "multiple of 8"),
    ({"hires_upscaler": ""}, "hires_upscaler"),  # unknown names: Engine.resolve (the registry is on disk)
    ({"sd_upscale": 8}, "sd_upscale"),
    ({"colorize": True}, "init-image"),
    ({"init_upscaler": "R-ESRGAN 4x+"}, "init-image"),
])
def test_invalid_requests_have_clear_messages(changes, message):
    with pytest.raises(InvalidRequest, match=message):
        GenerationRequest("p", **changes).validate()


def test_round_trip_through_dict():
    request = GenerationRequest("p", seed=3, loras=[("a", 0.5)], outpaint={"left": 8}, init_image="x.png")
    again = GenerationRequest.from_dict(request.to_dict())
    assert again == request


def test_unknown_fields_are_rejected():
    with pytest.raises(InvalidRequest, match="unknown request field"):
        GenerationRequest.from_dict({"prompt": "p", "guidance": 3})


def test_random_seed_resolution_keeps_explicit_seeds():
    import random

    request = GenerationRequest("p", seed=11).with_seeds_resolved(random.Random(0))
    assert request.seed == 11 and 0 <= request.subseed < 2**32
