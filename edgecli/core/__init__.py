"""edgecli.core"""
