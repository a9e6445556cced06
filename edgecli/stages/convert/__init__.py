"""edgecli.stages.convert.stage"""
