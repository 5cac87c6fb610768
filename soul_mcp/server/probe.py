"""What an MCP client sees when it connects: for `soul-mcp doctor`.

It builds the real server on the same settings and talks to it through the SDK's in-process client,
so the answer covers the tools, resources and prompts exactly as a host would list them. It reads
the wake_up prompt rather than calling the wake_up tool: the tool records a session, and a health
check should leave no trace in the client activity that `stats` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp import Client

from soul_mcp.config import Settings
from soul_mcp.server.app import build_server


@dataclass
class ClientView:
    """The server as a client lists it: names only, in the order the server gives them."""

    server: str | None  # "name version", as the server introduces itself
    tools: list[str]
    resources: list[str]
    resource_templates: list[str]
    prompts: list[str]
    wake_up_prompt_chars: int


async def client_view(settings: Settings) -> ClientView:
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
        resources = (await client.list_resources()).resources
        templates = (await client.list_resource_templates()).resource_templates
        prompts = (await client.list_prompts()).prompts
        woken = await client.get_prompt("wake_up", {})
        info = client.server_info
    text = "".join(getattr(m.content, "text", "") for m in woken.messages)
    return ClientView(
        server=f"{info.name} {info.version}" if info else None,
        tools=[t.name for t in tools],
        resources=[str(r.uri) for r in resources],
        resource_templates=[t.uri_template for t in templates],
        prompts=[p.name for p in prompts],
        wake_up_prompt_chars=len(text),
    )
