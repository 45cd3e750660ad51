"""``danceopd demo``: a local web page comparing models on one prompt or edit, with the judge's verdicts."""
