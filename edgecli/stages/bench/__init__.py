"""edgecli.stages.bench.stage"""
