"""Test support that ships in the wheel: ``fake_server``, a scripted OpenAI-compatible server
with injected faults, and ``tiny_model``, a tiny random Qwen2 built locally; used by the
tests, the collector benchmark and the GPU smoke bundle. Nothing at runtime imports it.
"""
