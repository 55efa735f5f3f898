"""Agent backends: claude (Claude Agent SDK), command (any CLI), sim (simulated)."""
