"""Recipes: a whole study from one YAML file — `vlmslim sweep RECIPE.yaml`.

    from vlmslim.recipes import load_recipe, make_plan, run_plan
    recipe = load_recipe("study.yaml", overrides=["bench.batch_size=8"])
    plan = make_plan(recipe, "runs/study")         # every artifact, its stamp and status; nothing runs
    result = run_plan(plan)                        # builds what is not done; figures + table at the end

Above the steps: it calls the same library functions as `vlmslim data/prune/quantize/bench/figures`
(schema.py: the file format; steps.py: the step registry; plan.py: stamps and statuses; run.py: running).
Shipped recipes (`SHIPPED`): the demo and one per seed project, runnable by name.
"""

from pathlib import Path

from vlmslim.errors import RecipeError

RECIPES_DIR = Path(__file__).parent
SHIPPED = {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the name of a shipped recipe (`demo`, `seed000-llava-coco`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]
    raise RecipeError(f"no recipe file {name_or_path!r} (shipped recipes: {', '.join(SHIPPED)})")


_API = {"load_recipe": "schema", "Recipe": "schema", "make_plan": "plan", "Plan": "plan", "run_plan": "run",
        "SweepResult": "run"}


def __getattr__(name: str):
    # The schema and runner import torch (through the steps' configs): loaded on first use, so that
    # `vlmslim -h` and `find_recipe` stay light.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"vlmslim.recipes.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
