"""edgecli.analysis"""
