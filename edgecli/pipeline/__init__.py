"""edgecli run: pipelines of verb steps chained through files, skipped when nothing they depend on changed."""
