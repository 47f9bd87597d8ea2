"""defectlab: visual defect inspection of industrial products.

Higher anomaly score = more anomalous, everywhere in this package.
"""

__version__ = "0.1.0"
