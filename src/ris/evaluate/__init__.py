"""Evaluation: protocols (queries and gallery), retrieval metrics declared once, and query latency.

Import the modules themselves (``ris.evaluate.evaluation``, ``.protocols``, ``.declarations``, ``.latency``): this
package imports nothing, so the report stage reads metric declarations without loading any index library.
"""
