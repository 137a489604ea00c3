"""The commands invkeras offers, each one registered object (`base.Command`).

Importing this package registers the built-in commands, in the order `invkeras --help`
lists them. A command defined elsewhere registers itself with `register_command` when its
module is imported, and is then a CLI command and a recipe step like these.
"""

from invkeras.commands.base import (Command, StepAccess, command_class, recipe_commands,  # noqa: F401
                                    register_command, registered_commands)
from invkeras.commands import (listing, inspection, training, recipe, inverter, analyses,  # noqa: F401,E402
                               factors)
