"""edgecli.stages.quantize.stage"""
