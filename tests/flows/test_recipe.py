"""Recipe validation, overrides and path resolution (no flow runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gristmill.errors import ConfigError
from gristmill.flows.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "coreset.yaml"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(REPO / "recipes" / name, base=REPO)
    assert recipe.inputs == [str(REPO / "data" / "demo")]
    assert Path(recipe.output).is_absolute()
    assert recipe.selectors and recipe.k == "auto"


def test_overrides_and_relative_paths(tmp_path):
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump({"inputs": ["a"], "output": "out",
                                    "selectors": [{"method": "dbp", "budget": 0.5}]}))
    recipe = load_recipe(file, overrides=["inputs=[x, y]", "output=o2",
                                          "selectors.0.budget=0.3", "tokenizer.vocab_size=512",
                                          "embed.device=cpu"], base=tmp_path)
    assert recipe.inputs == [str(tmp_path / "x"), str(tmp_path / "y")]
    assert recipe.output == str(tmp_path / "o2")
    assert recipe.selectors[0].budget == 0.3
    assert recipe.tokenizer.vocab_size == 512 and recipe.embed.device == "cpu"
    assert recipe.step_dirs() == ["01-dbp"]


@pytest.mark.parametrize(("data", "message"), [
    ({"inputs": ["a"], "output": "o", "colour": 1}, "recipe: colour: unknown key"),
    ({"inputs": ["a"], "output": "o", "embed": {"devise": "cpu"}}, "embed.devise: unknown key"),
    ({"inputs": "a", "output": "o"}, "inputs: Input should be a valid list"),
    ({"inputs": ["a"], "output": "o", "k": "many"}, "k"),
    ({"inputs": ["a"]}, "output: Field required"),
    ({"inputs": ["a"], "output": "o", "selectors": [{"method": "nope"}]},
     r"selectors\[0\] \(nope\): no such selector"),
    ({"inputs": ["a"], "output": "o", "selectors": [{"method": "dbp", "taw": 1}]},
     r"selectors\[0\]\.taw: unknown parameter of dbp"),
    ({"inputs": ["a"], "output": "o", "selectors": [{"method": "random", "budget": 10},
                                                    {"method": "random", "budget": 50}]},
     r"selectors\[1\] \(random\): budget 50 rows is impossible"),
    ({"inputs": ["a"], "output": "o", "selectors": [{"method": "random", "budget": 1.5}]},
     r"selectors\[0\] \(random\)"),
])
def test_bad_recipes_fail_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(data=data)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_recipe(data={"inputs": ["a"], "output": "o"}, overrides=["novalue"])
    with pytest.raises(ConfigError, match="not an index"):
        load_recipe(data={"inputs": ["a"], "output": "o", "selectors": []},
                    overrides=["selectors.3.budget=1"])
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_missing_input_fails_before_any_flow_runs(tmp_path):
    from gristmill.errors import InputError
    from gristmill.flows.run import run_curate

    recipe = load_recipe(data={"inputs": [str(tmp_path / "nowhere")], "output": "o"})
    with pytest.raises(InputError, match="nowhere does not exist"):
        run_curate(recipe)
