"""The async shell: main loop, agent pool, group commit."""
