"""edgecli.stages.distill.stage"""
