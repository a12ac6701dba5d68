"""``make bench``: ratios measured in one run on identical weights."""
