"""Recipes: YAML files of invkeras steps (`schema`), run in order and resumably (`runner`)."""

from invkeras.commands.analyses import CompareStep, EstimateMIStep, SampleStep  # noqa: F401
from invkeras.commands.inverter import train_inverter_step  # noqa: F401
from invkeras.recipes.runner import StepResult, run_recipe, step_outputs  # noqa: F401
from invkeras.recipes.schema import Recipe, describe_validation_error, load_recipe  # noqa: F401
