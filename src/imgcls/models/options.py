"""The names of the architecture options (no torch needed to list them)."""

NORMS = ("batch", "group", "layer", "instance", "none")
ATTNS = ("none", "se", "eca", "cbam")
