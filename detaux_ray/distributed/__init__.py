"""The thin Ray layer: Ray Data streams, Ray Train stages, the pipeline. Everything algorithmic lives in the core."""

import os as _os

from .logs import quiet_env as _quiet_env

# Before any module here imports Ray Data (which reads its logging config once): Ray's chatter stays in its logs.
for _key, _value in _quiet_env().items():
    _os.environ.setdefault(_key, _value)
