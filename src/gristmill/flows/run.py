"""Running flows from the CLI: `curate` locally or on Ray, deployments, the local UI server.

- `run_curate(recipe, runner="local" | "ray")`: one flow run. With `ray`, tasks run on a Ray
  cluster through prefect-ray (`pip install 'gristmill[ray]'`): a local one with every CPU, or
  the cluster `RAY_ADDRESS` names; embedding asks Ray for one GPU when CUDA is visible.
- `serve_deployments(recipes, cron=...)`: a deployment of `curate` per recipe (with the
  schedule), plus one per stage flow, served until interrupted. Needs a reachable server
  (`PREFECT_API_URL`), else the error says how to start one.
- `start_ui(port)`: `prefect server start` bound to 127.0.0.1 with SQLite, analytics off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from gristmill.errors import ConfigError, InputError, MissingDependencyError
from gristmill.flows.recipe import Recipe

RUNNERS = ("local", "ray")


def ray_runner() -> Any:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise MissingDependencyError("--runner ray needs prefect-ray: pip install "
                                     "'gristmill[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return RayTaskRunner(address=address)
    return RayTaskRunner(init_kwargs={"num_cpus": os.cpu_count() or 1,
                                      "include_dashboard": False})


def run_curate(recipe: Recipe, *, runner: str = "local") -> dict[str, Any]:
    """Run the curate flow over `recipe` and return its outcomes (raises on failure)."""
    from gristmill.flows.curate import curate

    if runner not in RUNNERS:
        raise ConfigError(f"--runner must be one of {RUNNERS}, got {runner!r}")
    check_inputs(recipe)
    flow = curate if runner == "local" else curate.with_options(task_runner=ray_runner())
    return flow(recipe=recipe.model_dump(mode="json"), runner=runner)


def check_inputs(recipe: Recipe) -> None:
    """Every input path (or glob) exists, before any flow starts."""
    import glob

    for spec in recipe.inputs:
        if not glob.glob(spec) and not os.path.exists(spec):
            raise InputError(f"recipe input {spec} does not exist; fix `inputs:` or pass "
                             f"--set inputs=[PATH,...]")


def check_server() -> str:
    """The reachable API URL, or ConfigError with the command to start a server."""
    import httpx

    url = os.environ.get("PREFECT_API_URL")
    hint = ("start one with `gristmill ui` (or `prefect server start --host 127.0.0.1`) and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    if not url:
        raise ConfigError(f"serving needs a Prefect server and PREFECT_API_URL is not set; "
                          f"{hint}")
    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=5)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"no Prefect server answers at {url} ({type(exc).__name__}); "
                          f"{hint}") from None
    return url


def deployments(recipes: list[Recipe], *, cron: str | None = None) -> list[Any]:
    """Deployment objects: curate per recipe (scheduled when `cron`), plus each stage flow."""
    from gristmill.flows.curate import STAGE_FLOWS

    made = []
    names = set()
    for recipe in recipes:
        if recipe.name in names:
            raise ConfigError(f"two recipes are named {recipe.name!r}; give each a `name:`")
        names.add(recipe.name)
        made.append(STAGE_FLOWS["curate"].to_deployment(
            name=recipe.name, cron=cron, parameters={"recipe": recipe.model_dump(mode="json")},
            description=f"curate {recipe.output} from {', '.join(recipe.inputs)}",
            tags=["gristmill"]))
    for stage, flow in STAGE_FLOWS.items():
        if stage != "curate":
            made.append(flow.to_deployment(name=f"gristmill-{stage}", tags=["gristmill"]))
    return made


def serve_deployments(recipes: list[Recipe], *, cron: str | None = None,
                      announce: Callable[[str], None] = print) -> None:
    """Register and serve the deployments until interrupted (Ctrl-C)."""
    from prefect import serve

    url = check_server()
    made = deployments(recipes, cron=cron)
    for d in made:
        announce(f"deployment {d.flow_name}/{d.name}"
                 + (f" (cron {cron})" if cron and d.flow_name == "curate" else ""))
    announce(f"serving {len(made)} deployments on {url}; trigger them in the UI or with "
             f"`prefect deployment run 'curate/<name>'`")
    serve(*made, print_starting_message=False)


def start_ui(port: int, *, announce: Callable[[str], None] = print) -> None:
    """Run a local Prefect server (blocks until interrupted)."""
    # The UI's own API address: without it the browser app calls port 4200 whatever --port.
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    announce(f"Prefect UI: http://127.0.0.1:{port}  (in another shell: export "
             f"PREFECT_API_URL=http://127.0.0.1:{port}/api)")
    prefect = shutil.which("prefect") or os.path.join(os.path.dirname(sys.executable), "prefect")
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--analytics-off"]
    try:
        subprocess.run(command, env=env, check=False)
    except KeyboardInterrupt:
        pass
