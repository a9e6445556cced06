"""edgecli.training.loop"""
