"""The work of each verb: each stage reads a ModelFile and a recipe and returns an Artifact."""
