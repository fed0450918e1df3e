"""Prefect flows and deployments wiring the stages together; the only place importing prefect.

- `recipe`: the YAML recipe schema (`load_recipe`, unknown keys refused with their path).
- `tasks`: one cached task per stage (keys from input fingerprints + parameters + version).
- `curate`: the `curate` flow over a whole recipe, one flow per stage, UI artifacts.
- `serve`: deployments with schedules served to a Prefect server; the local UI server.

The stage functions work without any of this: flows only call them.
"""

from gristmill.flows.recipe import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe"]
