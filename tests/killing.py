"""A simulated kill for resume tests: a training hook that raises after a chosen step."""

from invkeras.training import TrainingHook


class Interrupt(Exception):
    """Stands for the process being killed (nothing after it runs)."""


class KillAt(TrainingHook):
    """Raise `Interrupt` once `step` optimiser steps are done, or at that step's checkpoint
    (after the loop has saved its state) with `at_checkpoint`."""

    def __init__(self, step: int, at_checkpoint: bool = False):
        self.step, self.at_checkpoint = step, at_checkpoint

    def on_step_end(self, step, logs):
        if not self.at_checkpoint and step == self.step:
            raise Interrupt

    def on_checkpoint(self, step, logs):
        if self.at_checkpoint and step == self.step:
            raise Interrupt
