"""Pipeline steps; each module exposes `add_arguments(parser)` and `run(settings, **args) -> dict`."""
