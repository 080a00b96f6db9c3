"""Test helpers that build real git repositories and agent scripts in temp dirs."""
