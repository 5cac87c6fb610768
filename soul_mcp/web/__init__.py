"""The web page for the person who owns the self (issue 17): server-rendered pages over AgentSelf.

`soul-mcp ui` serves it on loopback behind a one-time link; `soul-mcp serve --http` mounts it under
/ui beside /mcp, behind a login with a token. Nothing here is imported until one of them runs.
"""
