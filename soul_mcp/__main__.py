from soul_mcp.cli import main

raise SystemExit(main())
