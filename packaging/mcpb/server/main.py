"""The bundle's entry point: `soul-mcp serve` on stdio, from the soul-mcp wheel that the bundle's
pyproject.toml installs (uv builds the environment; SOUL_MCP_DB comes from the manifest's
user_config, and an empty one means the default database file)."""

import sys

from soul_mcp.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve"]))
