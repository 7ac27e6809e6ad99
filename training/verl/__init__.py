"""Scale-out on verl: the simulated user as a verl agent loop, for PPO and GRPO on Ray clusters.

``agent_loop`` and ``policy_client`` (they need verl) play one dialogue per dataset row with
the project's `EmpatheticAgent` and `SimulatedUser`; ``settings``, ``data`` and
``token_budget`` are verl-free: the loop's settings, the persona-to-parquet converter, and
per-dialogue token counts for sizing a run. ``configs/`` and ``launch/`` hold the trainer
overlays and the launch scripts. See ``docs/scale-out.md``.
"""
