"""edgecli distill"""

from edgecli.cli.flow import model_command
from edgecli.formats.detect import Format

distill = model_command(
    "distill",
    "edgecli.stages.distill:distill",
    lambda _: Format.PT2,
    "Train a small student .pt2 from MODEL (the teacher, any format) on --data.",
)
