"""Recipes: YAML files of invkeras steps (`schema`), run in order and resumably (`runner`)."""

from invkeras.recipes.runner import RUNNERS, StepResult, run_recipe, step_outputs  # noqa: F401
from invkeras.recipes.schema import (  # noqa: F401
    CompareStep,
    EstimateMIStep,
    Recipe,
    SampleStep,
    describe_validation_error,
    load_recipe,
    train_inverter_step,
)
