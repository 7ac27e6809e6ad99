"""Test support that ships in the wheel: ``fake_server``, a scripted OpenAI-compatible server
with injected faults, used by the tests, the collector benchmark and the GPU smoke bundle.
Nothing at runtime imports it.
"""
