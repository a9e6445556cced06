"""edgecli prune"""

from edgecli.cli.flow import model_command
from edgecli.formats.detect import Format

prune = model_command(
    "prune",
    "edgecli.stages.prune:prune",
    lambda _: Format.PT2,
    "Zero the smallest-magnitude weights of a .pt2 model, optionally fine-tuning on --data.",
)
