"""A study: a grid of conditions x seeds, each cell a training run, summarized with confidence intervals."""
