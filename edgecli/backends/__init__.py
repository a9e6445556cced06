"""edgecli.backends"""
