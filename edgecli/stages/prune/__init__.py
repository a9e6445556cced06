"""edgecli.stages.prune.stage"""
