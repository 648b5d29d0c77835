"""The agent: sandboxes, tools, ask_expert, policy and expert backends, loop detection (METHOD §1, §2, §6)."""
