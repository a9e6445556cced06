"""edgecli.data.dataset"""
