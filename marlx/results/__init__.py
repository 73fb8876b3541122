"""Compare runs: learning curves over seeds (``marlx plot``) and multi-seed reports with bootstrap confidence
intervals and interquartile means (``marlx report``)."""
