"""`invkeras inspect`: from a user's classifier and images to a report on every layer, in a time budget.

    layers   which layers to invert (the default rule), and the checks that the model is a classifier
    plan     calibration of each model's step time, and the budget split over layers and kinds
    config   InspectConfig, the command's settings
    run      the orchestration: extract, train, evaluate, report; rerunning resumes
"""

from invkeras.inspection.config import InspectConfig, parse_duration  # noqa: E402,F401


def inspect_classifier(config: InspectConfig, console=None):
    """Inspect a classifier's layers within a budget; see `invkeras.inspection.run`."""
    from invkeras.inspection.run import inspect_classifier as run

    return run(config, console=console)
