"""soul-mcp: one persistent self (soul, memories, intent, north star) for every MCP client."""

import os

__version__ = "0.1.0"

# numpy's OpenBLAS threads keep spinning for a while after each product, and with hybrid recall
# that starved the embedding engine's threads: a query embedded in 9 ms took 106 ms right after a
# matrix-vector product on 2 cores (bench/README.md). soul-mcp's numpy work is small (one product
# per recall), so one BLAS thread is enough. Set before numpy is first imported (soul_mcp imports
# it lazily); a value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
