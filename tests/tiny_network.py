"""The command-line override giving the Text4Point downstream tasks' language-guided network (``model.network``) the
tiny random CLIP, for tests that run the CLI."""
from __future__ import annotations

import json


def tiny_rn_network(**network_args) -> list[str]:
    """``--model.network`` as a dict (jsonargparse reads "null" given to a nested class's argument on the command
    line, ``--model.network.clip_pretrained null``, as the string "None"); ``network_args``: other arguments of the
    network (e.g. ``width``)."""
    settings = {"clip_model": "lang3d-tiny-RN", "clip_pretrained": None, **network_args}
    return ["--model.network", json.dumps({"init_args": settings})]
